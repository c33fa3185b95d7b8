#![no_main]
use libfuzzer_sys::fuzz_target;

use fluxnode_apps::capacity::{fit, Capacity};
use fluxnode_apps::reference::{Digest, Reference};
use fluxnode_apps::spec::AppSpec;

// What a publisher (or anyone who reaches the node's API) sends: app specs
// in TOML or JSON, image references and digests. Bad input is an error,
// never a panic; what is accepted is valid and round-trips.
fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(spec) = AppSpec::parse(s) {
        assert!(spec.validate().is_ok());
        let json = serde_json::to_string(&spec).unwrap_or_default();
        assert_eq!(AppSpec::parse(&json).ok().as_ref(), Some(&spec));
        let cap = Capacity::for_machine(4, 8192, 100_000);
        let _ = fit(&cap, &[&spec], &spec);
    }
    if let Ok(r) = Reference::parse(s) {
        assert_eq!(Reference::parse(&r.to_string()).ok(), Some(r));
    }
    if let Ok(d) = Digest::parse(s) {
        assert_eq!(d.to_string(), s);
    }
});
