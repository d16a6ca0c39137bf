/* Tests of RFC 5228 section 5, one rule each; every rule files into a mailbox
   named after it so that the actions show which tests were true. */
require ["fileinto", "envelope"];

if anyof (not exists ["From","Date"],
          header :contains "from" "fool@example.com") {
    fileinto "5.5-exists";
}
if size :over 10K { fileinto "5.9-over-10K"; }
if size :under 1k { fileinto "5.9-under-1k"; }
if address :is :all "from" "alice@example.org" { fileinto "5.1-address-all"; }
if address :localpart :is "to" "bob" { fileinto "5.1-localpart"; }
if envelope :all :is "from" "alice@example.org" { fileinto "5.4-envelope"; }
if envelope :domain :is "to" "example.com" { fileinto "5.4-envelope-domain"; }
if header :is ["X-Caffeine"] [""] { fileinto "5.7-empty-header-absent"; }
if header :contains ["from", "cc"] ["coyote", "boss"] { fileinto "5.7-header-list"; }
if header :matches "Subject" "*?" { fileinto "5.7-matches-nonempty"; }
if header :comparator "i;octet" :contains "Subject" "MAKE" { fileinto "2.7.3-octet"; }
if allof (true, not false) { fileinto "5.2-allof-true"; }
if header :matches "subject" "\\*\\?*" { fileinto "2.7.1-escaped-wildcards"; }
