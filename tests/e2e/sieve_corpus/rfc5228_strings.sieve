# RFC 5228 section 2.4.2: quoted-string escapes, multi-line strings with dot-stuffing,
# comments in odd places, case-insensitive identifiers and tags.
require "fileinto";
REQUIRE ["envelope"];
If HEADER :CONTAINS "Subject" "\l\u\n\c\h" {   # "\l" is "l" and so on
    FILEINTO "quoted \"escapes\" \\ work";
}
if /* a bracket comment */ header :is "X-Multi" text: # comment after text:
..leading dot
.
{
    fileinto "multiline";
}
if header :is "subject" ["", "Lunch on Friday?"] { fileinto "exact-lunch"; }
if address :all :is "from" "ALICE@EXAMPLE.ORG" { fileinto "address-case"; }
