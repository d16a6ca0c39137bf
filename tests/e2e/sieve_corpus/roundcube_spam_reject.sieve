require ["fileinto","imap4flags","reject"];
# rule:[Spam]
if anyof (header :contains "x-spam-flag" "YES", header :contains "x-spam-level" "*****")
{
	setflag "\\Seen";
	fileinto "Junk";
	stop;
}
# rule:[Coyote]
if address :domain :is "from" "desert.example.org"
{
	reject "Your messages are not welcome here.";
	stop;
}
# rule:[Not for me]
if not address :is ["to","cc"] "bob@example.com"
{
	fileinto "Not for me";
}
