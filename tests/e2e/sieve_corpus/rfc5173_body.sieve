# RFC 5173 section 7
require ["body", "fileinto"];

if body :raw :contains "MAKE MONEY FAST" {
    discard;
}

if body :content "text" :contains ["missile", "coordinates"] {
    fileinto "secrets";
}

if body :content "audio/mp3" :contains "" {
    fileinto "jukebox";
}

if body :text :contains "project schedule" {
    fileinto "project/schedule";
}

if body :content "text/html" :contains "agenda" {
    fileinto "html-agenda";
}

if body :content "application/pdf" :contains "" {
    fileinto "has-pdf";
}
