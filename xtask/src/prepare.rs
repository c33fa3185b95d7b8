//! What the tests share, built once before `cargo test` runs (issue 3 owns it).

use anyhow::Result;

/// Builds shared artifacts; returns environment variables for the test run.
pub fn before_tests() -> Result<Vec<(String, String)>> {
    Ok(Vec::new())
}
