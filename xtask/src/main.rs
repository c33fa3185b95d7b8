//! `cargo xtask`: the project's front door.
//!
//! - `cargo xtask demo`  builds and runs the demo appliance;
//! - `cargo xtask test`  runs every test (what CI runs);
//! - `cargo xtask bench` measures the figures in docs/BENCHMARKS.md;
//! - `cargo xtask fuzz`  runs each fuzz target for a while;
//! - `cargo xtask torture ota --cuts N` cuts the power during updates;
//! - `cargo xtask yocto-crates` regenerates the Yocto layer's crates include.
//!
//! Each first installs the Debian packages it needs (see `deps.rs`).

mod bench;
mod bench_apps;
mod bench_boot;
mod bench_hal;
mod bench_init;
mod bench_ota;
mod bench_registry;
mod demo;
mod demo_ns;
mod deps;
mod fuzz;
mod nsrun;
mod prepare;
mod test;
mod torture;
mod util;
mod yocto;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "Build, demo, test and benchmark fluxnode", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Install the Debian packages the project needs (only those missing).
    Deps,
    /// Run the whole test suite: unit, namespace, hal and QEMU boot tests.
    Test(test::Args),
    /// Build the appliance and show it running.
    Demo(demo::Args),
    /// Measure the figures recorded in docs/BENCHMARKS.md.
    Bench(bench::Args),
    /// Run every fuzz target for a while (needs cargo-fuzz and a nightly toolchain; falls back to the corpus replay).
    Fuzz(fuzz::Args),
    /// Abuse the appliance on purpose: `torture ota --cuts N` cuts the power during updates.
    Torture(torture::Args),
    /// Regenerate the Yocto layer's crates include from Cargo.lock (`--check`: only check).
    YoctoCrates(yocto::Args),
}

fn main() -> std::process::ExitCode {
    // The benchmark's crash probe: first thing, before any parsing.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "__crash-probe") {
        if let Some(f) = args.get(2) {
            bench_init::crash_probe(std::path::Path::new(f));
        }
    }
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Deps => deps::ensure(deps::PACKAGES),
        Cmd::Test(a) => test::run(a),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Fuzz(a) => fuzz::run(a),
        Cmd::Torture(a) => torture::run(a),
        Cmd::YoctoCrates(a) => yocto::run(a),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use clap::CommandFactory;

    /// Every command and subcommand answers `--help` with help, not work.
    #[test]
    fn every_subcommand_answers_help() {
        Cli::command().debug_assert();
        let paths: &[&[&str]] = &[
            &[],
            &["deps"],
            &["test"],
            &["demo"],
            &["fuzz"],
            &["bench"],
            &["bench", "init"],
            &["bench", "boot"],
            &["bench", "hal"],
            &["torture"],
            &["torture", "ota"],
            &["yocto-crates"],
        ];
        for path in paths {
            let mut argv = vec!["xtask"];
            argv.extend_from_slice(path);
            argv.push("--help");
            let err = Cli::try_parse_from(&argv).expect_err("--help must not run anything");
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::DisplayHelp,
                "{argv:?}: {err}"
            );
        }
    }
}
