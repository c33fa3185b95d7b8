//! `fluxnode-modload [LIST]`: loads the kernel modules named in LIST
//! (default /etc/fluxnode/modules.late) with their dependencies. The image
//! runs it as the `modules` oneshot service right after switch_root.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/etc/fluxnode/modules.late".into());
    if arg == "--help" || arg == "-h" {
        println!("usage: fluxnode-modload [LIST]\nloads the modules named in LIST (one per line; default /etc/fluxnode/modules.late)\nand their dependencies from /lib/modules/$(uname -r)/modules.dep");
        return ExitCode::SUCCESS;
    }
    match fluxnode_init::stage1::modules::load_list(Path::new("/"), Path::new(&arg)) {
        Ok(r) => {
            let slowest = r
                .loaded
                .iter()
                .max_by_key(|(_, d)| *d)
                .map(|(n, d)| format!("{n} {:.0} ms", d.as_secs_f64() * 1e3));
            println!(
                "loaded {} modules in {:.2} s (slowest: {})",
                r.loaded.len(),
                r.total.as_secs_f64(),
                slowest.unwrap_or_else(|| "-".into())
            );
            for (m, why) in &r.failed {
                println!("failed: {m}: {why}");
            }
            if r.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("fluxnode-modload: error: {e}");
            ExitCode::FAILURE
        }
    }
}
