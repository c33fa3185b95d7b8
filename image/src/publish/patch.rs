//! zstd patches: the new payload compressed with the old payload as a
//! reference prefix (`zstd --patch-from`), long-distance matching on, so
//! the unchanged parts of a root or a UKI cost a few bytes each. A patch is
//! decoded back and compared with the new payload before it is published.

use std::io::{Read, Write};

/// The smallest window a patch is made with (`--long=27`, 128 MiB).
pub const WINDOW_LOG_MIN: u32 = 27;

/// The default compression level (zstd's `-19`).
pub const DEFAULT_LEVEL: i32 = 19;

/// The window a patch of `new` over `reference` needs: the reference sits
/// before the new bytes in zstd's window, so a match of new byte `i` with
/// reference byte `i` lies `reference.len()` back. At least
/// [`WINDOW_LOG_MIN`], at most the node's limit
/// ([`fluxnode_protocol::update::MAX_WINDOW_LOG`]); beyond it matches are
/// only lost, the patch stays correct.
pub fn window_log_for(reference: usize, new: usize) -> u32 {
    let total = (reference as u64).saturating_add(new as u64).max(1);
    let log = 64 - (total - 1).leading_zeros();
    log.clamp(WINDOW_LOG_MIN, fluxnode_protocol::update::MAX_WINDOW_LOG)
}

/// Makes a patch that turns `reference` into `new`.
pub fn make(reference: &[u8], new: &[u8], level: i32, window_log: u32) -> std::io::Result<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, reference)?;
    enc.long_distance_matching(true)?;
    enc.window_log(window_log)?;
    enc.include_checksum(true)?;
    enc.set_pledged_src_size(Some(new.len() as u64))?;
    enc.write_all(new)?;
    enc.finish()
}

/// Applies a patch: the bytes it encodes over `reference`, refusing a
/// window above `window_log_max` and output beyond `limit` bytes.
pub fn apply(
    reference: &[u8],
    patch: &[u8],
    window_log_max: u32,
    limit: u64,
) -> std::io::Result<Vec<u8>> {
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(patch, reference)?;
    dec.window_log_max(window_log_max)?;
    let mut out = Vec::new();
    dec.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "the patch decodes to more than {limit} bytes"
        )));
    }
    Ok(out)
}

/// Makes a patch and proves it: decoded over `reference` with the window
/// it declares, it must give exactly `new`. Returns the patch and its
/// window log.
pub fn make_verified(reference: &[u8], new: &[u8], level: i32) -> Result<(Vec<u8>, u32), String> {
    let wl = window_log_for(reference.len(), new.len());
    let patch = make(reference, new, level, wl).map_err(|e| format!("zstd: {e}"))?;
    let back = apply(reference, &patch, wl, new.len() as u64)
        .map_err(|e| format!("the patch does not decode: {e}"))?;
    if back != new {
        return Err(format!(
            "the patch decodes to {} bytes that differ from the {} bytes of the payload",
            back.len(),
            new.len()
        ));
    }
    Ok((patch, wl))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn patches_are_small_and_exact() {
        let old = noise(1 << 20, 7);
        let mut new = old.clone();
        new[1000..1100].copy_from_slice(&noise(100, 9));
        new.extend_from_slice(b"appended");
        let (p, wl) = make_verified(&old, &new, 3).unwrap();
        assert_eq!(wl, WINDOW_LOG_MIN);
        assert!(
            p.len() < 4096,
            "1 MiB of noise, 108 bytes changed: {} byte patch",
            p.len()
        );
        assert_eq!(apply(&old, &p, wl, new.len() as u64).unwrap(), new);
        // Another reference gives other bytes or an error (the checksum).
        let other = noise(1 << 20, 8);
        assert!(apply(&other, &p, wl, new.len() as u64).map_or(true, |b| b != new));
        // A decoder limited below the declared window refuses.
        let big = make(&old, &new, 3, 27).unwrap();
        assert!(apply(&old, &big, 20, new.len() as u64).is_err());
        // Output beyond the limit is refused.
        assert!(apply(&old, &p, wl, 10).is_err());
    }

    #[test]
    fn window_covers_reference_and_payload() {
        assert_eq!(window_log_for(1, 1), 27);
        assert_eq!(window_log_for(100 << 20, 100 << 20), 28);
        assert_eq!(window_log_for(usize::MAX, 1), 28);
    }
}
