require ["vacation"];
# rule:[Vacation]
if true
{
	vacation :days 1 :addresses ["bob@example.com"] :subject "Mailbox closed" "This mailbox is no longer read; your message was discarded.";
	discard;
}
