# RFC 5232 section 7 (examples), with the internal variable and a named one
require ["imap4flags", "fileinto", "variables", "relational", "comparator-i;ascii-numeric"];

if size :over 500K {
    setflag "\\Deleted";
}
if header :contains "from" "boss@example.com" {
    setflag "flagvar" "\\Flagged";
    fileinto :flags "${flagvar}" "From Boss";
}
if header :contains "Subject" ["urgent", "lunch"] {
    addflag ["\\Flagged", "$Important"];
    addflag "\\Seen \\Answered";
    removeflag "\\Answered";
}
if hasflag :contains "\\Seen" {
    fileinto "seen";
}
if hasflag :count "ge" :comparator "i;ascii-numeric" "2" {
    fileinto :flags "$Work" "Work";
}
