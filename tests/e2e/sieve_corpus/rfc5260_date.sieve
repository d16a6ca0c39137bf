# RFC 5260 section 4.3 and 5.3
require ["date", "relational", "fileinto", "variables"];

if allof(header :is "from" "boss@example.com",
         date :value "ge" :originalzone "date" "hour" "09",
         date :value "lt" :originalzone "date" "hour" "17")
{ fileinto "urgent"; }

if date :is :originalzone "date" "weekday" "2" { fileinto "sent-on-tuesday"; }
if date :zone "+0900" :is "date" "date" "2025-04-01" { fileinto "tokyo-date"; }
if date :zone "-0800" :value "lt" "date" "hour" "09" { fileinto "early-pacific"; }
if date :matches :originalzone "date" "zone" "*" { fileinto "zone-${1}"; }
if date :matches :zone "+0000" "date" "iso8601" "*" { fileinto "iso-${1}"; }
if date :value "ge" :zone "+0000" "date" "date" "2000-01-01" { fileinto "after-2000"; }
if currentdate :value "gt" "year" "2000" { fileinto "now-after-2000"; }
if not exists "date" { fileinto "no-date"; }
