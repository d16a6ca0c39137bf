# error-line: 3
keep;
if header :contains "subject" 42 { discard; }
