# error-line: 2
require ["fileinto", "x-no-such-extension"];
keep;
