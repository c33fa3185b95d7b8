//! fluxnode-init: a thin adapter onto the library. See `lib.rs`.

fn main() {
    fluxnode_init::main_entry()
}
