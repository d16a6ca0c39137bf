require ["fileinto", "reject", "relational", "comparator-i;ascii-numeric", "subaddress", "envelope"];

# Written with the Sieve add-on for Thunderbird

if header :contains "List-Id" "<dev.lists.example.org>"
{
  fileinto "Lists.dev";
  stop;
}
elsif address :is ["from", "sender"] ["boss@example.com", "ceo@example.com"]
{
  fileinto "Work";
}
elsif header :matches "Subject" ["*[SPAM]*", "*make money*"]
{
  fileinto "Junk";
}
elsif envelope :detail "to" "mta-filters"
{
  fileinto "Subaddress";
}
else
{
  keep;
}

if size :over 100K
{
  fileinto "Large";
}
