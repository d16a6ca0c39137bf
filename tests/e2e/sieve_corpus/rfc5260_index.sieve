# RFC 5260 section 6 (index), with date's :index
require ["index", "date", "relational", "fileinto", "variables"];

if header :index 1 :contains "received" "mx1.example.com" {
    fileinto "first-hop-mx1";
}
if header :index 1 :last :contains "received" "origin.example.org" {
    fileinto "last-hop-origin";
}
if header :index 2 :matches "received" "from *" {
    fileinto "second-from-${1}";
}
if date :index 1 :last :zone "+0000" :value "le" "received" "hour" "09" {
    fileinto "left-early";
}
if address :index 2 :is "to" "carol@example.net" {
    fileinto "second-to-carol";
}
