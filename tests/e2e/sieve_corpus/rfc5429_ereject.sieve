# RFC 5429 section 2.1.1
require ["ereject"];

if address :domain :is "from" "desert.example.org" {
    ereject "I no longer accept mail from this address";
}
