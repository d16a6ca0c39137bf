# error-line: 3
if header :contains "subject" "x" {
    fileinto "X";
}
