require ["copy","date","relational","vacation"];
# rule:[Out of Office]
if allof (currentdate :value "ge" "date" "2000-01-01", currentdate :value "le" "date" "2099-12-31")
{
	vacation :days 3 :addresses "bob@example.com" :subject "Away" "I am away.";
	redirect :copy "bob.personal@example.net";
}
