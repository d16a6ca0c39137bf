# error-line: 3
keep;
redirect "bob@example.com;