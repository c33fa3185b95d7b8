//! `cargo xtask demo`: build the appliance image and boot it under QEMU
//! (TCG, q35, OVMF, swtpm as the TPM, user networking), with the serial
//! console on this terminal; wait for "all services ready", then press the
//! ACPI power button (`system_powerdown` on the monitor) and wait for the
//! ordered poweroff. `--interactive` leaves the machine running instead.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use fluxnode_tests::fixture;
use fluxnode_tests::qemu::{Vm, VmConfig};

use crate::deps;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Leave the machine running (power it off with `system_powerdown` on
    /// the monitor socket printed at start, or Ctrl-C).
    #[arg(long)]
    interactive: bool,
    /// Instead of the image, run init as PID 1 of a fresh namespace with sample services.
    #[arg(long)]
    namespace: bool,
    /// The image spec to build.
    #[arg(long, default_value = "default.toml")]
    spec: String,
}

pub fn run(args: Args) -> Result<()> {
    if args.namespace {
        return crate::demo_ns::run();
    }
    deps::ensure(deps::PACKAGES)?;
    if let Some(why) = fluxnode_tests::qemu::missing_prerequisite() {
        bail!("cannot boot the demo: {why}");
    }
    eprintln!(
        "demo: building the static appliance binaries and the image (into {})",
        fixture::demo_dir().display()
    );
    // The same function the README's test builds it with.
    let built = fixture::demo_image(&args.spec)
        .map_err(anyhow::Error::msg)
        .context("building the image")?;
    eprintln!(
        "demo: image {} ({:.0} MiB, sha256 {}) built in {:.1} s",
        built.image.display(),
        built.manifest.image.payload.size as f64 / 1048576.0,
        &built.manifest.image.payload.sha256[..16],
        built.seconds
    );
    let dir = fixture::run_dir("demo");
    let disk = fixture::copy_disk(&built.image, &dir).map_err(anyhow::Error::msg)?;
    let cfg = VmConfig {
        serial_stdio: true,
        ..VmConfig::new(&disk, &dir)
    };
    eprintln!("demo: booting under QEMU (TCG; 30-90 s); serial console follows\n");
    let mut vm = Vm::start(&cfg).map_err(anyhow::Error::msg)?;
    vm.wait_for(
        "fluxnode-init: all services ready",
        Duration::from_secs(600),
    )
    .map_err(anyhow::Error::msg)?;
    let ready = vm.elapsed();
    if args.interactive {
        eprintln!(
            "\ndemo: all services ready after {ready:.1} s. The machine keeps running.\n\
             demo: power it off with: echo system_powerdown | socat - UNIX-CONNECT:{}\n\
             demo: (or press Ctrl-C to kill QEMU)",
            dir.join("monitor.sock").display()
        );
        let st = vm
            .wait_exit(Duration::from_secs(365 * 24 * 3600))
            .map_err(anyhow::Error::msg)?;
        eprintln!("demo: QEMU exited ({st})");
        return Ok(());
    }
    // Let the boot-complete grace period pass so the blessing shows too.
    let _ = vm.wait_for("fluxnode-init: boot complete", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("\ndemo: all services ready after {ready:.1} s (host wall time); pressing the power button (system_powerdown)");
    let st = vm
        .power_off(Duration::from_secs(120))
        .map_err(anyhow::Error::msg)?;
    let log = vm.log();
    if !st.success() {
        bail!("QEMU exited with {st}");
    }
    if !log.contains("fluxnode-init: powering off") {
        bail!("QEMU exited, but init never said it was powering off");
    }
    eprintln!(
        "demo: clean poweroff after {:.1} s; QEMU exited 0",
        vm.elapsed()
    );
    Ok(())
}
