//! `cargo xtask demo`: build the appliance image and boot it under QEMU
//! (TCG, q35, OVMF, swtpm as the TPM, user networking), with the serial
//! console on this terminal; wait for "all services ready", then for the
//! node agent to prove its tier to a registry this command runs on the
//! host (10.0.2.2:8443 from the guest), show the node as the registry sees
//! it and check its tier certificate offline; show the sample app's page
//! (the node deploys it on first boot from an OCI registry this command
//! runs on the host, 10.0.2.100:5000 from the guest, and publishes it on
//! port 30080, forwarded here); then publish the next
//! version (0.2.0) into the demo's TUF repository, served to the guest by
//! a private nginx at 10.0.2.100, and watch the node update itself and
//! bless it, and show the app's page again (back after the update, its
//! volume intact); then press the ACPI power button (`system_powerdown` on the
//! monitor) and wait for the ordered poweroff. `--interactive` leaves the
//! machine running instead.
//!
//! The registry is a child process (`fluxnode-registry serve`), built here
//! after the packages are installed: xtask itself links nothing that needs
//! libtss2, so it builds on a fresh machine before `apt-get` has run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fluxnode_tests::fixture;
use fluxnode_tests::qemu::{Vm, VmConfig};

use crate::{deps, util};

/// The registry the demo runs, killed on drop.
struct Registry {
    bin: PathBuf,
    dir: PathBuf,
    child: Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    fn cli(&self, args: &[&str]) -> Result<String> {
        cli(&self.bin, &self.dir, args)
    }
}

fn cli(bin: &Path, dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "fluxnode-registry {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes the demo registry (the demo's TLS identity, which demo.toml's
/// image pins; the TPM's EK CA; the image's slots as the policy) and
/// starts it on 127.0.0.1:8443.
fn start_registry(run: &Path, tpm: &Path, manifests: &[&Path]) -> Result<Registry> {
    eprintln!("demo: building fluxnode-registry");
    util::run(util::cargo().args(["build", "--release", "--quiet", "-p", "fluxnode-registry"]))?;
    let bin = util::target_dir().join("release/fluxnode-registry");
    let dir = run.join("registry");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let demo = util::root().join("image/services/demo");
    let tls = demo.join("registry-tls");
    let tiers = demo.join("tiers.toml");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    cli(
        &bin,
        &dir,
        &[
            "init",
            "--name",
            "10.0.2.2",
            "--name",
            "127.0.0.1",
            "--name",
            "localhost",
            "--listen",
            "127.0.0.1:8443",
            "--profile",
            "quick",
            "--tls-from",
            &s(&tls),
            "--tier-policy",
            &s(&tiers),
        ],
    )?;
    cli(
        &bin,
        &dir,
        &[
            "trust",
            "add",
            &s(&tpm.join("ca/swtpm-localca-rootca-cert.pem")),
        ],
    )?;
    cli(
        &bin,
        &dir,
        &[
            "trust",
            "add",
            "--intermediate",
            &s(&tpm.join("ca/issuercert.pem")),
        ],
    )?;
    for manifest in manifests {
        eprint!(
            "{}",
            cli(&bin, &dir, &["policy", "allow-image", &s(manifest)])?
        );
    }
    let log = std::fs::File::create(run.join("registry.log")).context("creating registry.log")?;
    let child = Command::new(&bin)
        .arg("--dir")
        .arg(&dir)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let r = Registry { bin, dir, child };
    for _ in 0..100 {
        if std::net::TcpStream::connect("127.0.0.1:8443").is_ok() {
            eprintln!("demo: registry listening on 127.0.0.1:8443 (10.0.2.2:8443 from the guest); log in {}", run.join("registry.log").display());
            return Ok(r);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "the registry did not listen on 127.0.0.1:8443 (port taken?); see {}",
        run.join("registry.log").display()
    )
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Leave the machine running (power it off with `system_powerdown` on
    /// the monitor socket printed at start, or Ctrl-C).
    #[arg(long)]
    interactive: bool,
    /// Instead of the image, run init as PID 1 of a fresh namespace with sample services.
    #[arg(long)]
    namespace: bool,
    /// The image spec to build (demo.toml: the shipped image, pinned to the
    /// demo registry this command runs on the host).
    #[arg(long, default_value = "demo.toml")]
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
    // Room for apps: the node keeps 1 GiB of /var for itself, and stage 1
    // grows /var to the end of the disk on the first boot.
    fixture::grow_disk(&disk, 2 << 30).map_err(anyhow::Error::msg)?;
    // The sample app's image, in an OCI registry on the host (Debian's
    // docker-registry), forwarded to the guest at 10.0.2.100:5000.
    let oci = fluxnode_testkit::oci_registry::OciRegistry::start()
        .context("docker-registry is not installed (Debian package docker-registry)")?;
    let oci_work = dir.join("oci");
    std::fs::create_dir_all(&oci_work)?;
    fluxnode_testkit::oci_registry::push_busybox(
        &oci,
        "fluxnode-demo/hello:1.0",
        &["/bin/busybox", "sh"],
        &oci_work,
    )
    .map_err(|e| anyhow::anyhow!("pushing the sample app's image: {e}"))?;
    let web = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // A TPM as a vendor ships one: an EK certificate from a (local) CA.
    let tpm = dir.join("tpm");
    fluxnode_testkit::swtpm::manufacture(&tpm)
        .map_err(|e| anyhow::anyhow!("manufacturing the TPM: {e}"))?;
    // The next version, built now so the registry's policy allows both
    // releases from the start (a network's verifier allows a release
    // before it is published); it is published after the node proved
    // its tier.
    let next = (!args.interactive)
        .then(|| {
            eprintln!("demo: building the next version, {NEXT_VERSION}, to publish later");
            fixture::demo_update_image(&args.spec, NEXT_VERSION).map_err(anyhow::Error::msg)
        })
        .transpose()
        .context("building the next version")?;
    let mut manifests = vec![built.dir.join("manifest.json")];
    manifests.extend(next.iter().map(|n| n.dir.join("manifest.json")));
    let registry = start_registry(
        &dir,
        &tpm,
        &manifests.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    )?;
    // The update repository, served to the guest at 10.0.2.100 (the
    // image's /etc/fluxnode/ota.toml names it): a copy of the demo's
    // repository with no version published yet.
    let tuf = fixture::demo_tuf().map_err(anyhow::Error::msg)?;
    let repo = dir.join("update-repo");
    util::run(
        Command::new("cp")
            .arg("-a")
            .arg(tuf.join("repo"))
            .arg(&repo),
    )?;
    let nginx = fluxnode_testkit::nginx::Nginx::try_start(&repo)
        .map_err(|e| anyhow::anyhow!("starting nginx for the update repository: {e}"))?
        .context("nginx is not installed (Debian package nginx)")?;
    let cfg = VmConfig {
        serial_stdio: true,
        tpm_state: Some(tpm.join("state")),
        guestfwd: vec![
            ("10.0.2.100:80".into(), nginx.port()),
            ("10.0.2.100:5000".into(), oci.port()),
        ],
        hostfwd: vec![(web, 30080)],
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
             demo: the sample app, once the node has pulled and started it: http://127.0.0.1:{web}/\n\
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
    // The agent proves the node's tier.
    let proved = vm.wait_for("session accepted", Duration::from_secs(600));
    eprintln!("\ndemo: the registry's view of the node (fluxnode-registry nodes):\n");
    eprint!(
        "{}",
        registry.cli(&["nodes", "--url", "https://127.0.0.1:8443"])?
    );
    let nodes: serde_json::Value = serde_json::from_str(&registry.cli(&[
        "nodes",
        "--json",
        "--url",
        "https://127.0.0.1:8443",
    ])?)
    .context("parsing `nodes --json`")?;
    let cert = dir.join("tier-certificate.json");
    std::fs::write(&cert, serde_json::to_vec_pretty(&nodes[0]["certificate"])?)
        .with_context(|| format!("writing {}", cert.display()))?;
    let key = registry.dir.join("signing.pub");
    let verified = registry.cli(&[
        "verify-cert",
        &cert.to_string_lossy(),
        "--key",
        &key.to_string_lossy(),
    ]);
    proved.map_err(|e| anyhow::anyhow!("the node did not prove its tier: {e}"))?;
    let verified = verified?;
    eprintln!(
        "\ndemo: tier certificate checked offline with the registry's key: {}",
        verified.trim()
    );
    app_step(&mut vm, web, "the sample app")?;
    if let Some(next) = &next {
        update_step(&mut vm, &tuf, &repo, &built, next)?;
        app_step(&mut vm, web, "the sample app after the update")?;
        eprintln!("\ndemo: the registry's view of the node after the update:\n");
        eprint!(
            "{}",
            registry.cli(&["nodes", "--url", "https://127.0.0.1:8443"])?
        );
    }
    eprintln!("demo: all services ready after {ready:.1} s (host wall time); pressing the power button (system_powerdown)");
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

/// Waits for the sample app (deployed by the node from the image's
/// /etc/fluxnode/apps.d on its first boot) and shows its page, fetched
/// from the node's published port 30080 through QEMU's forward.
fn app_step(vm: &mut Vm, port: u16, what: &str) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let _ = vm.wait_for("app=hello", Duration::from_secs(60));
    let t0 = std::time::Instant::now();
    let page = loop {
        let got = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: node\r\n\r\n")?;
            let mut b = Vec::new();
            s.take(64 * 1024).read_to_end(&mut b)?;
            Ok(String::from_utf8_lossy(&b).into_owned())
        })();
        match got {
            Ok(r) if r.starts_with("HTTP/1.") && r.contains(" 200 ") => {
                break r
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b.to_string())
                    .unwrap_or(r)
            }
            _ if t0.elapsed() > Duration::from_secs(600) => {
                bail!("{what} did not answer on the node's port 30080 (127.0.0.1:{port} here) within 600 s")
            }
            _ => std::thread::sleep(Duration::from_secs(2)),
        }
    };
    eprintln!(
        "\ndemo: {what}, through the node's published port 30080 (http://127.0.0.1:{port}/ here):\n{}",
        page.trim()
    );
    Ok(())
}

/// The version the demo publishes after the node proved its tier.
const NEXT_VERSION: &str = "0.2.0";

/// The demo's last step: publish the next version into the update
/// repository (`fluxnode-image publish`'s code, with a patch against the
/// running version), then watch the node take it: its update client finds
/// it within a minute, streams the changed chunks into the other slot,
/// reboots, passes its health checks (the agent reaches the registry
/// again) and init blesses the new version: the commit.
fn update_step(
    vm: &mut Vm,
    tuf: &Path,
    repo: &Path,
    v1: &fluxnode_image::Built,
    next: &fluxnode_image::Built,
) -> Result<()> {
    use fluxnode_image::publish::{keys::Keystore, release, roles};
    eprintln!(
        "\ndemo: publishing {NEXT_VERSION} into the update repository (TUF, {}), with a patch against {}",
        repo.display(),
        v1.manifest.version
    );
    let keys = Keystore::load(&[tuf.join("keys")]).context("loading the demo's publisher keys")?;
    let opts = release::PublishOptions {
        build: next.dir.clone(),
        from: vec![v1.dir.clone()],
        min_version: v1.manifest.version.clone(),
        security_version: None,
        raise_security_version: false,
        waves: Vec::new(),
        released_at: fixture::EPOCH,
        expiry: roles::Expiry::from_now(roles::now()),
        patch_level: fluxnode_image::publish::patch::DEFAULT_LEVEL,
    };
    let published = release::publish(&roles::Repo::new(repo), &keys, &opts, &mut |l| {
        eprintln!("demo: publish: {l}")
    })
    .with_context(|| format!("publishing {} into {}", next.dir.display(), repo.display()))?;
    eprintln!(
        "demo: published {} (targets v{}); the node checks every minute\n",
        published.manifest.version, published.targets_version
    );
    let t0 = vm.elapsed();
    let from = vm.log().len();
    let wait = |vm: &mut Vm, what: &str, from: usize| {
        vm.wait_for_from(what, from, Duration::from_secs(600))
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("waiting for {what:?}"))
    };
    let at = wait(vm, &format!("ota: INFO  installed {NEXT_VERSION}"), from)?;
    let log = vm.log();
    let start = log[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = log[at..].find('\n').map_or(log.len(), |i| at + i);
    let line = log[start..end].trim().to_string();
    // The demo's reboot policy waits for the agent's word (or ten minutes).
    let at = wait(vm, &format!("rebooting: to run {NEXT_VERSION}"), at)?;
    let log = vm.log();
    let reboot = log[at..]
        .split('\n')
        .next()
        .unwrap_or("")
        .trim_start_matches(':')
        .trim()
        .to_string();
    let at = wait(vm, "fluxnode-init: boot blessed", at)?;
    wait(vm, &format!("update to {NEXT_VERSION} succeeded"), at)?;
    eprintln!(
        "\ndemo: updated {} -> {NEXT_VERSION} in {:.0} s (TCG): {}",
        v1.manifest.version,
        vm.elapsed() - t0,
        line.split("ota: INFO  ").nth(1).unwrap_or(&line)
    );
    eprintln!("demo: it rebooted: {reboot}");
    eprintln!("demo: {NEXT_VERSION} passed its health checks and init blessed it (the commit); {} stays in the other slot as the fallback", v1.manifest.version);
    Ok(())
}
