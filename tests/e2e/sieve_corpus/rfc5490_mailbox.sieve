# RFC 5490 section 3 (mailbox): :create and mailboxexists
require ["fileinto", "mailbox"];

if mailboxexists "Work" {
    fileinto :create "Work/Archive";
}
if mailboxexists ["Lists", "NoSuchBox"] {
    fileinto "all-exist";
}
if not mailboxexists "NoSuchBox" {
    fileinto :create "Created";
}
