# RFC 3894 section 3
require ["copy", "fileinto"];

redirect :copy "sent@example.com";
if header :contains "subject" "lunch" {
    fileinto :copy "Lunch";
}
