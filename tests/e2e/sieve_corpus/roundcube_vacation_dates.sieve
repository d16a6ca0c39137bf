require ["date","relational","vacation"];
# rule:[Out of Office]
if allof (currentdate :value "ge" "date" "2020-06-01", currentdate :value "le" "date" "2020-06-14")
{
	vacation :days 1 :subject "On holiday" :from "bob@example.com" "I was away from 1 to 14 June 2020.";
}
