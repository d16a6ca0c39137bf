# error-line: 4
require "fileinto";

fileinto :flags "\\Seen" "x";
