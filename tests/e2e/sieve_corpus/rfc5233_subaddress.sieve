# RFC 5233 section 5
require ["envelope", "subaddress", "fileinto", "variables"];

if envelope :user "to" "postmaster" {
    fileinto "inbox.postmaster";
    stop;
}

if envelope :detail "to" "mta-filters" {
    fileinto "inbox.ietf-mta-filters";
    stop;
}

if envelope :detail :matches "to" "*" {
    fileinto "inbox.detail.${1}";
}

if address :user "to" "bob" {
    fileinto "to-bob";
}
if address :detail "to" "" {
    fileinto "empty-detail";
}
