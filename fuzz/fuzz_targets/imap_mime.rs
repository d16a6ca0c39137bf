//! Any bytes as a stored message: BODYSTRUCTURE, ENVELOPE, every section and BINARY of the
//! first parts are computed without panicking.
#![no_main]
use corvus::imap::mime::{binary, body_structure, envelope, parse_message, section_bytes};
use corvus::imap::types::SectionKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|msg: &[u8]| {
    let root = parse_message(msg);
    let mut out = Vec::new();
    body_structure(msg, &root, true, &mut out);
    body_structure(msg, &root, false, &mut out);
    envelope(msg, &root, &mut out);
    let kinds = [
        SectionKind::Full,
        SectionKind::Header,
        SectionKind::Text,
        SectionKind::Mime,
        SectionKind::HeaderFields(vec!["From".into(), "Subject".into()]),
        SectionKind::HeaderFieldsNot(vec!["Received".into()]),
    ];
    for path in [
        vec![],
        vec![1],
        vec![2],
        vec![1, 1],
        vec![1, 2],
        vec![2, 1, 1],
    ] {
        for k in &kinds {
            let _ = section_bytes(msg, &root, &path, k);
        }
        let _ = binary(msg, &root, &path);
    }
});
