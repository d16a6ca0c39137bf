# error-line: 3
keep;
frobnicate "x";
