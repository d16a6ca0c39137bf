# error-line: 4
require "vacation";

vacation :days "7" "I am away";
