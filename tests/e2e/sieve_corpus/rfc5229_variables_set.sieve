# RFC 5229 sections 4 and 5: set with modifiers, the string test
require ["variables", "fileinto", "relational", "comparator-i;ascii-numeric"];

set "honorific"  "Mr";
set "first_name" "Wile";
set "last_name"  "Coyote";
set "vacation" text:
Dear ${HONORIFIC} ${last_name},
I'm out, please leave a message after the meep.
.
;
set :length "len" "${vacation}";
set "a" "juMBlEd lETteRS";
set :upper "b" "${a}";
set :lower "c" "${a}";
set :upperfirst "d" "${c}";
set :lowerfirst :upper "e" "${a}";
set :quotewildcard "f" "a*b?c\\d";
set "dollar" "$";
set "text" "regarding ${dollar}{beep}";

fileinto "len-${len}";
fileinto "${b}";
fileinto "${c}";
fileinto "${d}";
fileinto "${e}";
fileinto "${f}";
fileinto "${text}";
if string :is "${unknown}" "" { fileinto "unknown-is-empty"; }
if string :matches "${first_name}" "W*e" { fileinto "string-${1}"; }
if string :count "eq" :comparator "i;ascii-numeric" ["${a}", "${b}", ""] "2" {
    fileinto "two-non-empty";
}
