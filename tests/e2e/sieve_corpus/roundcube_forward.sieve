require ["copy"];
# rule:[Forward]
if true
{
	redirect :copy "bob.personal@example.net";
}
