# error-line: 3
keep;
require "fileinto";
fileinto "x";
