require ["fileinto","envelope","copy"];
if anyof (address :contains "from" "alice@example.org", envelope :is "to" "bob+mta-filters@example.com") {
    redirect :copy "assistant@example.com";
    keep;
}
