# error-line: 3
keep;
if header :comparator "i;no-such" :is "subject" "x" { discard; }
