# error-line: 4
require ["relational"];

if header :value "bigger" "x-priority" "3" { discard; }
