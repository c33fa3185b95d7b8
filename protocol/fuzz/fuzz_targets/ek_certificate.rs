#![no_main]
use libfuzzer_sys::fuzz_target;

use fluxnode_protocol::ekcert::{verify_ek_certificate, TrustStore};
use fluxnode_protocol::tpm::makecredential::{check_ek, ek_public_from_bytes, make_credential};
use rand_core::{CryptoRng, RngCore};

/// A deterministic stand-in for OsRng: the fuzzer needs reproducible runs,
/// and OAEP's randomness does not change what the parsers see.
struct CountingRng(u64);

impl RngCore for CountingRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.next_u64() as u8;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for CountingRng {}

// What a node sends at registration: its EK certificate (DER) and its EK
// public area, with arbitrary trust anchors. Input: u16be(n) ‖ n bytes of
// certificate ‖ the rest as the EK public area (and as a candidate root).
// None of it may panic.
fuzz_target!(|data: &[u8]| {
    let (cert, ek) = match data {
        [hi, lo, rest @ ..] => {
            let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
            rest.split_at(n)
        }
        _ => (data, &[][..]),
    };
    let now = 1_767_225_600;
    let _ = verify_ek_certificate(cert, ek, &TrustStore::new(), now);
    let _ = verify_ek_certificate(data, data, &TrustStore::new(), now);
    // The second part as a root (and as a PEM bundle, if it is text).
    let mut trust = TrustStore::new();
    if trust.add_root(ek).is_ok() {
        let _ = verify_ek_certificate(cert, ek, &trust, now);
    }
    let _ = trust.add_intermediate(cert);

    if let Ok(public) = ek_public_from_bytes(ek) {
        let _ = check_ek(&public);
    }
    let name = cert.get(..34).unwrap_or(cert);
    let secret = cert.get(..32).unwrap_or(cert);
    let _ = make_credential(ek, name, secret, &[7; 32], &mut CountingRng(0));
});
