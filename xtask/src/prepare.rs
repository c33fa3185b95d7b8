//! What the tests share, built once before `cargo test` runs (issue 3 owns it).
//!
//! The QEMU boot tests need the static appliance binaries (and hal); the
//! test fixture builds them itself when run by plain `cargo test`, but
//! building them here first keeps their compiler output out of the test
//! output and fails early with a clear message. The images are built by the
//! fixture (it knows the variants it boots).

use anyhow::Result;

/// Builds shared artifacts; returns environment variables for the test run.
pub fn before_tests() -> Result<Vec<(String, String)>> {
    eprintln!("xtask: building the static appliance binaries for the boot tests");
    fluxnode_tests::fixture::binaries().map_err(anyhow::Error::msg)?;
    Ok(vec![("FLUXNODE_TESTS_PREBUILT".into(), "1".into())])
}
