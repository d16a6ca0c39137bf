/*
BEGIN:FILTER:a8e5d3a2-4b1c-4c8e-9a47-2f0c1e9b7a11
BEGIN:HEADER
eyJJRCI6ImE4ZTVkM2EyIiwiRW5hYmxlZCI6dHJ1ZSwiTmFtZSI6Ik5ld3NsZXR0ZXJzIn0=
END:HEADER
*/
require ["fileinto","imap4flags","body"];

/*
BEGIN:FILTER:a8e5d3a2-4b1c-4c8e-9a47-2f0c1e9b7a11
BEGIN:HEADER
eyJJRCI6ImE4ZTVkM2EyIiwiRW5hYmxlZCI6dHJ1ZSwiTmFtZSI6Ik5ld3NsZXR0ZXJzIn0=
END:HEADER
*/
if anyof(
	header :contains ["List-Id"] "lists.example.org",
	header :contains ["Precedence"] "bulk"
)
{
	addflag "\\Seen";
	fileinto "Newsletters";
	stop;
}
/* END:FILTER */

/*
BEGIN:FILTER:0c0a1c8d-7f53-49e0-b4c4-0f1f1e3f9e02
BEGIN:HEADER
eyJJRCI6IjBjMGExYzhkIiwiRW5hYmxlZCI6dHJ1ZSwiTmFtZSI6IlBERnMifQ==
END:HEADER
*/
if allof(
	body :content "application/pdf" :contains "",
	header :contains ["Subject"] ["report", "agenda"]
)
{
	fileinto "Reports";
}
/* END:FILTER */
