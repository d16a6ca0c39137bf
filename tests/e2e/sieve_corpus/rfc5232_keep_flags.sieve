require ["imap4flags"];
if exists "list-id" {
    keep :flags ["\\Seen", "$MailingList"];
    stop;
}
setflag "$Unfiled";
