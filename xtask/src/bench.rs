//! `cargo xtask bench WHAT`: the figures of docs/BENCHMARKS.md.
//!
//! Each benchmark prints its figures and the ratio against the peer it names.
//! Each is a clap subcommand, so `cargo xtask bench boot --help` explains
//! it instead of starting it. Flags after `--` are still accepted (the
//! form docs/BENCHMARKS.md records: `bench boot -- --runs 8`).

use anyhow::Result;

use crate::{bench_apps, bench_ota, bench_registry};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// PID 1 vs systemd, each as PID 1 of a PID namespace: resident memory,
    /// restart latency, 200 services. Needs root.
    Init {
        /// Flags after `--`, for the benchmark itself.
        #[arg(last = true)]
        extra: Vec<String>,
    },
    /// The appliance's boot timeline under QEMU (TCG) vs a minimal Debian 12
    /// with systemd on the same QEMU, kernel and disk size. Needs root.
    Boot(BootArgs),
    /// Our CPU, memory and disk figures vs sysbench, dd and fio on this machine.
    Hal(HalArgs),
    /// The registry (issue 12): evidence checks per second per core, and
    /// 1,000 simulated nodes against a real registry on redb and PostgreSQL.
    Registry(bench_registry::Args),
    /// Updates (issue 13): install time into a slot vs dd and RAUC, bytes
    /// downloaded for a one-binary change vs casync. Needs root.
    #[command(long_about = bench_ota::LONG_ABOUT)]
    Ota(bench_ota::Args),
    /// Apps (issue 14): from deploy to the app's first HTTP 200, cold and
    /// warm, ours vs `podman run` in a Debian 12 guest (both under QEMU,
    /// one registry on the host); the app daemon's memory with 0 and 10
    /// apps. Needs root.
    Apps(bench_apps::Args),
}

#[derive(clap::Args, Debug)]
struct BootArgs {
    /// Boots per side (first boot and a later boot each).
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Print only JSON on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Do not build or boot the Debian peer.
    #[arg(long)]
    skip_debian: bool,
    /// Do not boot fluxnode (measure the Debian peer only).
    #[arg(long)]
    skip_fluxnode: bool,
    /// The image spec (under image/specs/).
    #[arg(long, default_value = "default.toml")]
    spec: String,
    /// The same flags, after `--`.
    #[arg(last = true)]
    extra: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct HalArgs {
    /// Shorter runs (3 s pairs instead of 10 s): rougher figures, quicker.
    #[arg(long)]
    quick: bool,
    /// Where the disk benchmarks write their files (default target/bench-hal).
    #[arg(long)]
    dir: Option<String>,
    /// The same flags, after `--`.
    #[arg(last = true)]
    extra: Vec<String>,
}

/// `--help` after `--` (`bench boot -- --help`) still means help: print the
/// subcommand's and say so, instead of starting a long benchmark.
fn help_after_dashes(name: &str, extra: &[String]) -> Option<Result<()>> {
    if !extra.iter().any(|a| a == "--help" || a == "-h") {
        return None;
    }
    let mut cmd = <Args as clap::Args>::augment_args(clap::Command::new("xtask bench"));
    Some(match cmd.find_subcommand_mut(name) {
        Some(sub) => sub
            .clone()
            .bin_name(format!("cargo xtask bench {name}"))
            .print_long_help()
            .map_err(|e| anyhow::anyhow!("printing help: {e}")),
        None => Ok(()),
    })
}

pub fn run(args: Args) -> Result<()> {
    let (name, extra) = match &args.what {
        What::Init { extra } => ("init", extra),
        What::Boot(b) => ("boot", &b.extra),
        What::Hal(h) => ("hal", &h.extra),
        What::Registry(r) => ("registry", &r.extra),
        What::Ota(o) => ("ota", &o.extra),
        What::Apps(a) => ("apps", &a.extra),
    };
    if let Some(done) = help_after_dashes(name, extra) {
        return done;
    }
    match args.what {
        What::Init { extra } => crate::bench_init::run(&extra),
        What::Boot(b) => {
            let mut rest = vec!["--runs".to_string(), b.runs.to_string()];
            rest.extend(["--spec".to_string(), b.spec]);
            for (on, flag) in [
                (b.json, "--json"),
                (b.skip_debian, "--skip-debian"),
                (b.skip_fluxnode, "--skip-fluxnode"),
            ] {
                if on {
                    rest.push(flag.to_string());
                }
            }
            // Later flags win in bench_boot's scan: `-- --runs 8` overrides.
            rest.extend(b.extra);
            crate::bench_boot::run(&rest)
        }
        What::Hal(h) => {
            let mut rest = Vec::new();
            if h.quick {
                rest.push("--quick".to_string());
            }
            if let Some(d) = h.dir {
                rest.extend(["--dir".to_string(), d]);
            }
            rest.extend(h.extra);
            crate::bench_hal::run(&rest)
        }
        What::Registry(r) => bench_registry::run(r),
        What::Ota(o) => bench_ota::run(o),
        What::Apps(a) => bench_apps::run(a),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// `bench boot -- --help` prints help instead of starting the benchmark.
    #[test]
    fn help_after_dashes_is_help() {
        for name in ["init", "boot", "hal", "registry", "ota", "apps"] {
            let done = help_after_dashes(name, &["--runs".into(), "--help".into()]);
            assert!(matches!(done, Some(Ok(()))), "{name}");
            assert!(help_after_dashes(name, &["--runs".into(), "3".into()]).is_none());
        }
    }
}
