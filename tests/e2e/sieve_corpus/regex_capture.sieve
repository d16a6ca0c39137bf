# The regex draft (draft-ietf-sieve-regex) with variables: captured groups
require ["regex", "variables", "fileinto"];
if header :regex "subject" "^\\[([a-z-]+)\\] (.*)$" {
    fileinto "list-${1}";
}
if address :regex :domain "from" "^([a-z]+)\\.example\\.(org|com)$" {
    fileinto "org-${1}-${2}";
}
if header :regex "x-priority" "^[0-9]$" {
    fileinto "priority-digit";
}
