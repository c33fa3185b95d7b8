//! `fluxnode-ota`: a thin command line over the library.
fn main() {}
