# More redirects than the default limit (4) when the subject says so: a runtime
# error, so only the implicit keep remains (RFC 5228 section 2.10.6).
if header :contains "subject" "lunch" {
    redirect "r1@example.net";
    redirect "r2@example.net";
    redirect "r3@example.net";
    redirect "r4@example.net";
    redirect "r5@example.net";
}
