# error-line: 2
if true keep;
