require ["vacation"];
# rule:[Out of office]
if true
{
	vacation :days 7 :addresses ["bob@example.com","robert@example.com"] :subject "Out of office" "I am away until Monday, April 7. For urgent matters contact carol@example.net.";
}
