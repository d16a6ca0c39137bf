# error-line: 3
keep;
elsif true { stop; }
