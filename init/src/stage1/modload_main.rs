//! `fluxnode-modload [LIST]`: loads the kernel modules named in LIST
//! (default /etc/fluxnode/modules.late) with their dependencies. The image
//! runs it as the `modules` oneshot service right after switch_root.

use std::path::Path;
use std::process::ExitCode;

use fluxnode_init::stage1::{modalias, modules};

fn load(list: &Path, matching: bool) -> Result<modules::LoadReport, modules::ModuleError> {
    let mut loader = modules::Loader::new(Path::new("/"))?;
    let mut names = modules::read_list(list)?;
    if matching {
        let aliases = modalias::parse_alias(
            &std::fs::read_to_string(loader.dir().join("modules.alias")).unwrap_or_default(),
        );
        names = modalias::needed(
            &names,
            &aliases,
            &modalias::device_modaliases(Path::new("/sys")),
        );
    }
    loader.load(&names)
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "usage: fluxnode-modload [--match] [LIST]\n\
             loads the modules named in LIST (one per line; default /etc/fluxnode/modules.late)\n\
             and their dependencies from /lib/modules/$(uname -r)/modules.dep.\n\
             --match: skip a module whose modules.alias patterns match no present device\n\
             (modules without aliases, like vfat, always load)"
        );
        return ExitCode::SUCCESS;
    }
    let matching = args.first().is_some_and(|a| a == "--match");
    if matching {
        args.remove(0);
    }
    let list = args
        .first()
        .cloned()
        .unwrap_or_else(|| "/etc/fluxnode/modules.late".into());
    match load(Path::new(&list), matching) {
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
