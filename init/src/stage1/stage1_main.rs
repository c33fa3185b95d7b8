//! `fluxnode-stage1`: the initramfs's `/init`. See `stage1/mod.rs`.
//!
//! A binary of its own, not a mode of `fluxnode-init`: stage 1's code
//! (module loading, the GPT and filesystem-signature probes, dm-verity
//! setup, the /var child) runs once per boot, before the root exists, and
//! none of it belongs in the PID 1 that then runs for months. Linked
//! separately, each binary holds only what it calls, and stage 2's resident
//! memory, which tracks the pages of its binary, stays within its goal.

fn main() {
    fluxnode_init::stage1_entry()
}
