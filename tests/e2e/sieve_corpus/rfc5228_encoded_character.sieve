# RFC 5228 section 2.4.2.4: encoded characters in strings.
require ["encoded-character", "fileinto"];

if header :contains "Subject" "${hex:52 c3 a9}union" {
    fileinto "${hex:52}eunion";
}
if header :is "X-Test" "$${hex:24 24}" {
    fileinto "dollar";
}
if header :contains "Subject" "${unicode:72 e9}" {
    fileinto "unicode";
}
