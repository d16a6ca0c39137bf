# error-line: 3
keep;
header :is "x" "y";
