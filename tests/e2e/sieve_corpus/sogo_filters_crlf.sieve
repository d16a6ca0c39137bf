require ["fileinto","reject","envelope","vacation","imap4flags"];
if allof (not exists "list-help", not exists "list-unsubscribe", not exists "list-subscribe", not exists "list-owner", not exists "list-post", not exists "list-archive", not exists "list-id", not exists "Mailing-List", not header :comparator "i;ascii-casemap" :is "Precedence" ["list", "bulk", "junk"], not header :comparator "i;ascii-casemap" :matches "To" "Multiple recipients of*") {
vacation :days 7 :addresses ["bob@example.com", "robert@example.com"] :subject "Absent" text:
I am out of the office.
..Dot-stuffed line.
.
;
}
if anyof (header :contains "subject" "urgent", header :contains "subject" "lunch") {
    addflag "\\Flagged";
    fileinto "INBOX/Urgent";
    stop;
}
if allof (header :contains "from" "boss", size :over 1000K) {
    fileinto "INBOX/Big";
}
if anyof (header :contains "x-spam-flag" "YES") {
    fileinto "Junk";
    stop;
}
