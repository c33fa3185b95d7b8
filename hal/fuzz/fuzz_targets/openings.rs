#![no_main]
use libfuzzer_sys::fuzz_target;

// Chunk openings sent by a node, and their check. Recomputing is bounded by
// the library's limits; the fuzzer keeps to cheap workloads to stay fast.
fuzz_target!(|data: &[u8]| {
    if let Ok(o) = fluxnode_hal::proof::Openings::from_json(data) {
        let cheap = match o.commitment.workload {
            fluxnode_hal::proof::Workload::Cpu { max_prime } => max_prime <= 10_000,
            fluxnode_hal::proof::Workload::Gpu { n, rows } => n.saturating_mul(rows) <= 4096,
            _ => true,
        };
        if cheap && o.openings.len() <= 4 {
            let _ = fluxnode_hal::proof::check(&o, None, None);
        }
    }
});
