# RFC 5228 sections 4.2 and 4.4
if header :contains "from" "coyote" {
    discard;
} elsif header :contains ["subject"] "lunch" {
    redirect "carol@example.net";
} elsif exists "x-spam-flag" {
    discard;
    stop;
}
