//! modules.dep / closure resolution over arbitrary text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let db = fluxnode_image::modules::ModDb::parse_dep(s);
        let names: Vec<String> = s.split_whitespace().take(8).map(String::from).collect();
        if let Ok(order) = db.closure(&names) {
            let _ = db.dep_lines(&order);
        }
    }
});
