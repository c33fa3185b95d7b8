//! `cargo xtask bench apps`: starting an app, ours against `podman run`.
//!
//! Both sides run under QEMU (TCG, the same machine type, memory and
//! vCPUs) and pull the same image (busybox-static, pushed with skopeo)
//! from one Debian docker-registry on the host, forwarded to both guests
//! at 10.0.2.100:5000:
//!
//! - fluxnode: image/spec/apps-bench.toml; its driver
//!   (tests/src/bin/fluxnode-apps-probe.rs) times `fluxnode app deploy` to
//!   the first HTTP 200 from the app, cold (the image store emptied) and
//!   warm (image present, the app removed), then deploys 10 idle apps and
//!   reads the app daemon's and crun's resident memory;
//! - podman: a Debian 12 guest (mmdebstrap: podman with crun, netavark)
//!   whose boot script times `podman run -d -p 30080:8080` of the same
//!   image and command to the first HTTP 200, cold (`podman rmi -af`)
//!   and warm.
//!
//! The podman side polls its published port on 127.0.0.1 (podman's
//! rules make that work); ours polls the app's own address (the node's
//! table publishes ports to other machines, not to the node itself).

use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{bail, Context, Result};
use fluxnode_tests::fixture;
use fluxnode_tests::qemu::{Vm, VmConfig};

use crate::deps;

/// The image both sides start.
const IMAGE: &str = "fluxnode-bench/hello:1.0";
/// The app's command (as in image/services/bench/apps/hello.toml).
const CMD: &str =
    "mkdir -p /www && echo hello > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print only JSON on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Do not build or boot the podman guest.
    #[arg(long)]
    skip_podman: bool,
    /// Only build the podman guest's disk (downloads once), boot nothing.
    #[arg(long)]
    build_only: bool,
    /// Do not boot fluxnode (measure the podman side only).
    #[arg(long)]
    skip_fluxnode: bool,
    /// The same flags, after `--`.
    #[arg(last = true)]
    pub extra: Vec<String>,
}

fn values(log: &str, prefix: &str, key: &str) -> Vec<f64> {
    let needle = format!("{prefix}{key}=");
    log.lines()
        .filter_map(|l| l.split(&needle).nth(1))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn fluxnode_side(work: &Path, registry_port: u16) -> Result<String> {
    let mut opts = fixture::options("apps-bench", "apps-bench.toml");
    opts.out = work.join("image");
    let built = fluxnode_image::build(&opts, &mut |l| eprintln!("bench apps: image: {l}"))?;
    let dir = work.join("fluxnode-run");
    let _ = std::fs::remove_dir_all(&dir);
    let disk = fixture::copy_disk(&built.image, &dir).map_err(anyhow::Error::msg)?;
    fixture::grow_disk(&disk, 2 << 30).map_err(anyhow::Error::msg)?;
    let cfg = VmConfig {
        guestfwd: vec![("10.0.2.100:5000".into(), registry_port)],
        ..VmConfig::new(&disk, &dir)
    };
    eprintln!(
        "bench apps: booting fluxnode (serial log {})",
        dir.join("serial.log").display()
    );
    let mut vm = Vm::start(&cfg).map_err(anyhow::Error::msg)?;
    vm.wait_for("apps: done=", Duration::from_secs(1800))
        .map_err(|e| anyhow::anyhow!("fluxnode side: {e}\n{}", vm.tail(40)))?;
    let log = vm.log();
    let _ = vm.power_off(Duration::from_secs(120));
    Ok(log)
}

/// The guest's boot script. An app spec's `command` replaces the image's
/// entrypoint (as Kubernetes' `command` does), so podman is given the same
/// program with `--entrypoint` and the rest as its arguments.
const PODMAN_SCRIPT: &str = r#"#!/bin/sh
# Written by `cargo xtask bench apps` (xtask/src/bench_apps.rs).
exec > /dev/ttyS0 2>&1
IMG=10.0.2.100:5000/@IMAGE@
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
until curl -sf -o /dev/null http://10.0.2.100:5000/v2/; do sleep 1; done
podman --version
run() {
  t0=$(now)
  echo "bench: podman run at $(since "$t0")"
  timeout 300 podman run -d --name hello -p 30080:8080 --entrypoint /bin/busybox "$IMG" sh -c '@CMD@' > /dev/null
  echo "bench: podman run returned at $(since "$t0")"
  until curl -sf -m 2 -o /dev/null http://127.0.0.1:30080/; do
    if [ "$(since "$t0" | cut -d. -f1)" -gt 120 ]; then
      echo "bench: podman_error=no answer on 127.0.0.1:30080 within 120 s"
      podman ps -a; podman logs hello; podman inspect -f '{{.NetworkSettings.IPAddress}}' hello
      iptables-save | head -60
      break
    fi
    sleep 0.04
  done
  echo "bench: podman_$1_s=$(since "$t0")"
  podman rm -f hello > /dev/null
}
echo "bench: clearing images"
for i in 1 2 3; do timeout 300 podman rmi -af > /dev/null 2>&1; echo "bench: rmi exit $?"; run cold; done
for i in 1 2 3 4 5; do run warm; done
echo "bench: done"
"#;

/// A Debian 12 disk with podman, crun and a boot script that measures.
fn podman_disk(work: &Path) -> Result<PathBuf> {
    let script = PODMAN_SCRIPT
        .replace("@IMAGE@", IMAGE)
        .replace("@CMD@", CMD);
    let script_path = work.join("bench-podman.sh");
    std::fs::create_dir_all(work)?;
    std::fs::write(&script_path, &script)?;
    // The guest has no D-Bus (minbase): podman's systemd cgroup manager
    // and journald events are not for it.
    let engine = "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n";
    let engine_path = work.join("bench-containers.conf");
    std::fs::write(&engine_path, engine)?;
    // A rootfs built earlier (mmdebstrap runs once) takes changed files as
    // its hooks would have, and the disk is made again from it.
    for (text, rel) in [
        (script.as_str(), "usr/local/bin/bench-podman.sh"),
        (engine, "etc/containers/containers.conf"),
    ] {
        let in_root = work.join("rootfs").join(rel);
        if work.join("rootfs/sbin/init").exists()
            && std::fs::read_to_string(&in_root).ok().as_deref() != Some(text)
        {
            std::fs::write(&in_root, text)?;
            let _ = std::fs::remove_file(work.join("debian.img"));
        }
    }
    // systemd starts a getty on the serial console, and agetty's vhangup()
    // cuts every other writer off ttyS0: the script ran on, but its lines
    // after "clearing images" were lost (that was the "hang" of earlier
    // runs). The guest gets no getty.
    let getty = work.join("rootfs/etc/systemd/system/serial-getty@ttyS0.service");
    if work.join("rootfs/sbin/init").exists() && std::fs::read_link(&getty).is_err() {
        std::os::unix::fs::symlink("/dev/null", &getty)?;
        let _ = std::fs::remove_file(work.join("debian.img"));
    }
    let unit = "[Unit]\nDescription=bench apps\nWants=network-online.target\nAfter=network-online.target\n[Service]\nType=oneshot\nExecStart=/usr/local/bin/bench-podman.sh\n[Install]\nWantedBy=multi-user.target\n";
    let unit_path = work.join("bench-podman.service");
    std::fs::write(&unit_path, unit)?;
    let reg = "[[registry]]\nlocation = \"10.0.2.100:5000\"\ninsecure = true\n";
    let reg_path = work.join("bench-registry.conf");
    std::fs::write(&reg_path, reg)?;
    let hooks = vec![
        format!(
            "--customize-hook=install -m 755 {} \"$1/usr/local/bin/bench-podman.sh\"",
            script_path.display()
        ),
        format!(
            "--customize-hook=install -m 644 {} \"$1/etc/systemd/system/bench-podman.service\"",
            unit_path.display()
        ),
        "--customize-hook=mkdir -p \"$1/etc/containers/registries.conf.d\"".to_string(),
        format!(
            "--customize-hook=install -m 644 {} \"$1/etc/containers/registries.conf.d/bench.conf\"",
            reg_path.display()
        ),
        format!(
            "--customize-hook=install -m 644 {} \"$1/etc/containers/containers.conf\"",
            engine_path.display()
        ),
        "--customize-hook=chroot \"$1\" systemctl enable bench-podman.service systemd-networkd-wait-online.service".to_string(),
        "--customize-hook=chroot \"$1\" systemctl mask serial-getty@ttyS0.service".to_string(),
    ];
    crate::bench_boot::debian_disk_with(
        work,
        Path::new(fluxnode_image::uki::STUB),
        Path::new(fluxnode_image::esp::SYSTEMD_BOOT),
        "podman,crun,conmon,netavark,aardvark-dns,golang-github-containers-common,iptables,curl,ca-certificates",
        &hooks,
    )
}

fn podman_side(work: &Path, registry_port: u16) -> Result<String> {
    let dd = podman_disk(&work.join("debian-podman"))?;
    let dir = work.join("podman-run");
    let _ = std::fs::remove_dir_all(&dir);
    let disk = fixture::copy_disk(&dd, &dir).map_err(anyhow::Error::msg)?;
    let cfg = VmConfig {
        guestfwd: vec![("10.0.2.100:5000".into(), registry_port)],
        tpm: false,
        ..VmConfig::new(&disk, &dir)
    };
    eprintln!(
        "bench apps: booting Debian 12 with podman (serial log {})",
        dir.join("serial.log").display()
    );
    let mut vm = Vm::start(&cfg).map_err(anyhow::Error::msg)?;
    vm.wait_for("bench: done", Duration::from_secs(2400))
        .map_err(|e| anyhow::anyhow!("podman side: {e}\n{}", vm.tail(40)))?;
    let log = vm.log();
    if vm.power_off(Duration::from_secs(60)).is_err() {
        vm.kill();
    }
    Ok(log)
}

pub fn run(args: Args) -> Result<()> {
    deps::ensure(deps::PACKAGES)?;
    if !args.skip_podman {
        deps::ensure(&["mmdebstrap"])?;
    }
    let work = fixture::target_dir().join("fluxnode-bench-apps");
    std::fs::create_dir_all(&work)?;
    if args.build_only {
        let disk = podman_disk(&work.join("debian-podman"))?;
        eprintln!("bench apps: {}", disk.display());
        return Ok(());
    }
    fixture::binaries().map_err(anyhow::Error::msg)?;
    let reg = fluxnode_testkit::oci_registry::OciRegistry::start()
        .context("docker-registry is not installed")?;
    let oci = work.join("oci");
    let _ = std::fs::remove_dir_all(&oci);
    std::fs::create_dir_all(&oci)?;
    fluxnode_testkit::oci_registry::push_busybox(&reg, IMAGE, &["/bin/busybox", "sh"], &oci)
        .map_err(|e| anyhow::anyhow!("pushing {IMAGE}: {e}"))?;

    let ours = if args.skip_fluxnode {
        String::new()
    } else {
        fluxnode_side(&work, reg.port())?
    };
    let errors: Vec<&str> = ours
        .lines()
        .filter(|l| l.contains("apps: bench_error="))
        .collect();
    if !errors.is_empty() {
        bail!("fluxnode side: {}", errors.join("\n"));
    }
    let p = "apps: ";
    let cold = values(&ours, p, "bench_cold_s");
    let warm = values(&ours, p, "bench_warm_s");
    let rss0 = median(values(&ours, p, "bench_appd_rss_kib_0"));
    let rss10 = median(values(&ours, p, "bench_appd_rss_kib_10"));
    let crun10 = median(values(&ours, p, "bench_crun_rss_kib_10"));
    let (pcold, pwarm) = if args.skip_podman {
        (Vec::new(), Vec::new())
    } else {
        let log = podman_side(&work, reg.port())?;
        (
            values(&log, "bench: ", "podman_cold_s"),
            values(&log, "bench: ", "podman_warm_s"),
        )
    };
    let (c, w, pc, pw) = (
        median(cold.clone()),
        median(warm.clone()),
        median(pcold.clone()),
        median(pwarm.clone()),
    );
    let report = serde_json::json!({
        "fluxnode_cold_s": cold, "fluxnode_warm_s": warm,
        "podman_cold_s": pcold, "podman_warm_s": pwarm,
        "cold_median_ratio": c / pc, "warm_median_ratio": w / pw,
        "appd_rss_kib_0_apps": rss0, "appd_rss_kib_10_apps": rss10,
        "crun_rss_kib_10_apps": crun10,
        "per_app_overhead_kib": (rss10 - rss0 + crun10) / 10.0,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("start to first HTTP 200 (s, median; QEMU TCG, same registry and image):");
    println!("  cold (image not on the node): fluxnode {c:.2}  podman {pc:.2}  ratio {:.2} (goal <= 0.5)", c / pc);
    println!(
        "  warm (image present):         fluxnode {w:.2}  podman {pw:.2}  ratio {:.2}",
        w / pw
    );
    println!("  runs: fluxnode cold {cold:?} warm {warm:?}; podman cold {pcold:?} warm {pwarm:?}");
    println!(
        "app daemon RSS: {rss0:.0} KiB with 0 apps, {rss10:.0} KiB with 10; crun (one per running app) {crun10:.0} KiB for 10; per app {:.0} KiB beyond the app's own processes",
        (rss10 - rss0 + crun10) / 10.0
    );
    Ok(())
}
