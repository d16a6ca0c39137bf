# RFC 5429 section 2.2: reject is incompatible with fileinto (not :copy); a script
# that does both on the coyote's message fails at runtime and the implicit keep remains.
require ["reject", "fileinto"];
if address :domain "from" "desert.example.org" {
    fileinto "Coyote";
    reject "no birdseed";
}
