# error-line: 4
require "fileinto";
if true {
    fileinto :bogus "x";
}
