# error-line: 4
require "fileinto";

if sizeof :over 10 {
    fileinto "x";
}
