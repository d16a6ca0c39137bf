# RFC 5230 section 4.1 and 4.7: :subject with a match variable, :addresses, :handle
require ["vacation", "variables"];
if header :matches "subject" "*" {
    vacation :days 3 :addresses ["bob@example.com", "robert@example.com"]
             :handle "subject-away"
             :subject "Automatic response to: ${1}"
             "I'm away until next week.";
}
