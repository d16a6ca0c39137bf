require ["body","comparator-i;ascii-numeric","copy","envelope","fileinto","imap4flags","regex","relational"];
# rule:[Mailing lists]
if anyof (header :contains "list-id" "dev.lists.example.org", header :contains "sender" "owner-ietf-mta-filters")
{
	fileinto "Lists";
	stop;
}
# rule:[Boss]
if allof (address :is "from" "boss@example.com", header :value "le" :comparator "i;ascii-numeric" "x-priority" "2")
{
	addflag "\\Flagged";
	fileinto :copy "Boss";
}
# rule:[Alerts]
if header :regex "subject" "^\\[(alert|warn)\\]"
{
	fileinto "Alerts";
}
# rule:[Disabled rule]
if false # header :contains "subject" "lunch"
{
	discard;
}
# rule:[Invoices]
if anyof (body :text :contains "invoice", header :contains "subject" "invoice")
{
	fileinto "Invoices";
}
# rule:[Big messages]
if size :over 10K
{
	addflag "$Big";
}
# rule:[From my domain]
if envelope :domain :is "from" "example.org"
{
	addflag "$label1";
}
# rule:[Many recipients]
if address :count "ge" :comparator "i;ascii-numeric" ["to","cc"] "3"
{
	fileinto "Mass mail";
}
