//! The README's commands, run as written (issue 10 §4).
//!
//! - The `### Flash` block, with `/dev/sdX` replaced by a loop device, run
//!   by bash in a pseudo-terminal (`script`) where `yes` is typed at its
//!   confirmation prompt, exactly as an operator would: afterwards the
//!   loop device holds the demo image byte for byte.
//! - The `### Boot it in QEMU by hand` blocks, with `/tmp/` replaced by a
//!   private directory (parallel runs must not share sockets): the first
//!   boots the demo image until init says all services are ready, the
//!   second (socat) presses the power button, and the machine powers off
//!   in order and QEMU exits 0.
//! - The set-up block and `## Other commands`: each answers `--help`, so
//!   every flag they show exists.
//!
//! The image is the demo's, built by the one function `cargo xtask demo`
//! uses ([`fixture::demo_image`]), into the same place, so the README's
//! paths are the demo's paths.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fluxnode_image::Built;
use fluxnode_tests::{fixture, qemu};

/// The spec `cargo xtask demo` builds by default.
const DEMO_SPEC: &str = "demo.toml";

fn readme() -> String {
    let p = fixture::workspace().join("README.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The text of the section that starts with the heading line `heading`
/// (`"### Flash"`), up to the next heading of any level.
fn section(text: &str, heading: &str) -> String {
    let mut lines = text.lines().skip_while(|l| l.trim_end() != heading);
    assert!(
        lines.next().is_some(),
        "README.md has no heading {heading:?}"
    );
    let mut out = String::new();
    let mut in_code = false;
    for l in lines {
        if l.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && l.starts_with('#') {
            break;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// The bodies of the ```` ```sh ```` blocks of `text`, in order.
fn sh_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for l in text.lines() {
        match (&mut cur, l.trim_end()) {
            (None, "```sh") => cur = Some(String::new()),
            (Some(_), "```") => blocks.extend(cur.take()),
            (Some(b), _) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(cur.is_none(), "an unterminated ```sh block");
    blocks
}

fn is_root() -> bool {
    // SAFETY: no arguments, no side effects.
    unsafe { libc::geteuid() == 0 }
}

fn have(tool: &str) -> bool {
    fluxnode_image::tools::find(tool).is_ok()
}

/// The README's paths are under `target/`: another CARGO_TARGET_DIR moves
/// the demo image elsewhere.
fn readme_paths_differ() -> Option<String> {
    let want = fixture::workspace().join("target/fluxnode-demo/image");
    (fixture::demo_dir() != want).then(|| {
        format!(
            "CARGO_TARGET_DIR moves the demo image to {}, not the README's target/",
            fixture::demo_dir().display()
        )
    })
}

/// The demo image, built once per test process.
fn demo() -> Built {
    static IMG: OnceLock<Result<Built, String>> = OnceLock::new();
    IMG.get_or_init(|| fixture::demo_image(DEMO_SPEC))
        .clone()
        .unwrap_or_else(|e| panic!("building the demo image: {e}"))
}

/// A fresh private directory under target/fluxnode-tests/runs.
fn run_dir(name: &str) -> PathBuf {
    let d = fixture::run_dir(&format!("readme-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits for `child` up to `timeout`; kills it (its whole process group,
/// when it leads one) past that and returns None.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if t0.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A loop device on a file, detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn attach(backing: &Path) -> Result<Loop, String> {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing)
            .output()
            .map_err(|e| format!("running losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup --find --show failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Loop { dev: dev.into() })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Byte-for-byte comparison of `a`'s first `len` bytes with `b`'s, in
/// 4 MiB chunks; the offset of the first difference.
fn first_difference(a: &Path, b: &Path, len: u64) -> Option<u64> {
    let mut fa = std::fs::File::open(a).unwrap();
    let mut fb = std::fs::File::open(b).unwrap();
    let mut ba = vec![0u8; 4 << 20];
    let mut bb = vec![0u8; 4 << 20];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(ba.len() as u64) as usize;
        fa.read_exact(&mut ba[..n])
            .unwrap_or_else(|e| panic!("reading {} at {off}: {e}", a.display()));
        fb.read_exact(&mut bb[..n])
            .unwrap_or_else(|e| panic!("reading {} at {off}: {e}", b.display()));
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Some(off + i as u64);
        }
        off += n as u64;
    }
    None
}

#[test]
fn readme_flash_writes_the_demo_image_to_a_loop_device() {
    let start = Instant::now();
    if !is_root() {
        fluxnode_testkit::skip("needs root for losetup");
        return;
    }
    for (tool, pkg) in [("losetup", "mount"), ("script", "bsdutils")] {
        if !have(tool) {
            fluxnode_testkit::skip(format!("{tool} is missing (Debian package {pkg})"));
            return;
        }
    }
    let blocks = sh_blocks(&section(&readme(), "### Flash"));
    assert_eq!(
        blocks.len(),
        1,
        "### Flash should hold one sh block: {blocks:?}"
    );
    let block = &blocks[0];
    assert_eq!(
        block.matches("/dev/sdX").count(),
        1,
        "the flash command names /dev/sdX once: {block}"
    );

    if let Some(why) = readme_paths_differ() {
        fluxnode_testkit::skip(why);
        return;
    }
    let built = demo();
    let size = built.manifest.image.payload.size;
    assert_eq!(std::fs::metadata(&built.image).unwrap().len(), size);

    let dir = run_dir("flash");
    // A sparse backing file one MiB larger than the image, its last MiB
    // marked: the flash must not write past the image.
    let backing = dir.join("disk.backing");
    let room = size.div_ceil(1 << 20) * (1 << 20) + (1 << 20);
    {
        let mut f = std::fs::File::create(&backing).unwrap();
        f.set_len(room).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(room - (1 << 20))).unwrap();
        f.write_all(&vec![0xa5u8; 1 << 20]).unwrap();
    }
    let lo = match Loop::attach(&backing) {
        Ok(l) => l,
        Err(e) => {
            fluxnode_testkit::skip(e);
            return;
        }
    };
    let cmd = block.replace("/dev/sdX", &lo.dev.to_string_lossy());
    let script = dir.join("flash.sh");
    std::fs::write(&script, format!("set -e\n{cmd}")).unwrap();

    // In a pseudo-terminal, as typed by hand: the command asks for
    // confirmation, and gets `yes`.
    let t0 = Instant::now();
    let log = dir.join("flash.log");
    let mut child = Command::new("script")
        .args(["--quiet", "--return", "--command"])
        .arg(format!("bash {}", script.display()))
        .arg("/dev/null")
        .current_dir(fixture::workspace())
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"yes\n").unwrap();
    // The first run builds fluxnode-image in release (LTO): minutes on 2 cores.
    let st = wait_timeout(&mut child, Duration::from_secs(1200));
    if st.is_none() {
        // SAFETY: signals our own process group (script and its children).
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
    }
    let out = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
    let st = st.unwrap_or_else(|| panic!("the flash command ran over 20 min:\n{}", tail(&out, 30)));
    eprintln!(
        "readme: flash command done in {:.1} s ({st})",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        st.success(),
        "the README's flash command failed ({st}):\n{}",
        tail(&out, 30)
    );
    assert!(
        out.contains("Type yes to go on"),
        "no confirmation prompt:\n{}",
        tail(&out, 30)
    );
    assert!(
        out.contains(&format!("wrote and verified {size} bytes")),
        "no final report of {size} bytes:\n{}",
        tail(&out, 30)
    );
    assert_eq!(
        first_difference(&built.image, &lo.dev, size),
        None,
        "the loop device differs from the demo image"
    );
    // Past the image: untouched.
    let mut f = std::fs::File::open(&lo.dev).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(room - (1 << 20))).unwrap();
    let mut last = vec![0u8; 1 << 20];
    f.read_exact(&mut last).unwrap();
    assert!(
        last.iter().all(|&b| b == 0xa5),
        "the flash wrote past the image"
    );
    drop(lo);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "readme: flash test done in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// The processes whose command line mentions `dir` (what the README's
/// block started there: swtpm daemonizes out of our process group).
fn pids_mentioning(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// The README's QEMU block running in the background; on drop, its process
/// group (bash, QEMU) and anything else it started in its directory
/// (swtpm) are killed.
struct Background {
    child: Child,
    dir: PathBuf,
}

impl Drop for Background {
    fn drop(&mut self) {
        // SAFETY: signals the process group this test created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        for pid in pids_mentioning(&self.dir) {
            // SAFETY: a process this test started (its argv names our directory).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn readme_qemu_by_hand_boots_the_demo_image_and_powers_off() {
    let start = Instant::now();
    if let Some(why) = qemu::missing_prerequisite() {
        fluxnode_testkit::skip(why);
        return;
    }
    if !have("socat") {
        fluxnode_testkit::skip(
            "socat is missing (Debian package socat; `cargo xtask deps` installs it)",
        );
        return;
    }
    let sect = section(&readme(), "### Boot it in QEMU by hand");
    let blocks = sh_blocks(&sect);
    assert_eq!(
        blocks.len(),
        2,
        "the by-hand section should hold the boot block and the power-button block: {blocks:?}"
    );
    assert!(blocks[0].contains("-accel tcg"), "{}", blocks[0]);
    assert!(blocks[1].contains("system_powerdown"), "{}", blocks[1]);

    if let Some(why) = readme_paths_differ() {
        fluxnode_testkit::skip(why);
        return;
    }
    let built = demo();
    assert!(built
        .image
        .ends_with("target/fluxnode-demo/image/fluxnode.img"));
    let dir = run_dir("qemu");
    let private = |b: &str| {
        assert!(b.contains("/tmp/"), "no /tmp/ path to make private: {b}");
        let mine = format!("{}/", dir.display());
        let s = b.replace("/tmp/", &mine);
        // The private folder may itself be under /tmp (a clone in /tmp).
        assert!(
            !s.replace(&mine, "").contains("/tmp/"),
            "a /tmp path left: {s}"
        );
        s
    };
    let boot = private(&blocks[0]);
    let button = private(&blocks[1]);
    // The block copies the demo's image: make sure it is that one.
    assert!(
        boot.contains("target/fluxnode-demo/image/fluxnode.img"),
        "the block does not boot the demo image: {boot}"
    );

    let script = dir.join("boot.sh");
    std::fs::write(&script, format!("set -e\n{boot}")).unwrap();
    let console = dir.join("console.log");
    let errlog = dir.join("stderr.log");
    let t0 = Instant::now();
    let mut bg = Background {
        child: Command::new("bash")
            .arg(&script)
            .current_dir(fixture::workspace())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(std::fs::File::create(&errlog).unwrap())
            .process_group(0)
            .spawn()
            .unwrap(),
        dir: dir.clone(),
    };
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let report = |what: &str| {
        panic!(
            "{what}; console tail:\n{}\nstderr:\n{}",
            tail(&read(&console), 40),
            tail(&read(&errlog), 20)
        )
    };

    // What the README says to wait for before pressing the button; all
    // services are ready before it.
    const READY: &str = "fluxnode-init: all services ready";
    const COMPLETE: &str = "fluxnode-init: boot complete";
    assert!(
        sect.contains(&format!("`{COMPLETE}`")),
        "the README no longer says to wait for {COMPLETE:?}; update this test"
    );
    // Generous: TCG on 2 shared cores.
    loop {
        let log = read(&console);
        if log.contains(READY) && log.contains(COMPLETE) {
            break;
        }
        if let Some(st) = bg.child.try_wait().unwrap() {
            report(&format!("the block exited ({st}) before {COMPLETE:?}"));
        }
        if t0.elapsed() > Duration::from_secs(600) {
            report(&format!("no {COMPLETE:?} within 600 s"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "readme: boot complete after {:.1} s (host wall time)",
        t0.elapsed().as_secs_f64()
    );

    // The power button, as the README presses it, again while init has
    // not seen it (a press before the guest's button driver is up is lost,
    // as the README says).
    const PRESSED: &str = "fluxnode-init: power button pressed";
    let pressed = Instant::now();
    let mut presses = 0;
    let st = loop {
        if !read(&console).contains(PRESSED) {
            let out = Command::new("bash")
                .arg("-c")
                .arg(&button)
                .current_dir(fixture::workspace())
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "the power-button command failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            presses += 1;
        }
        if let Some(st) = wait_timeout(&mut bg.child, Duration::from_secs(5)) {
            break st;
        }
        if pressed.elapsed() > Duration::from_secs(180) {
            report(&format!(
                "QEMU did not exit within 180 s of the first of {presses} presses of the power button"
            ));
        }
    };
    let off = pressed.elapsed();
    eprintln!(
        "readme: QEMU exited {:.1} s after the first press, {presses} press(es) ({st}); {:.1} s in all",
        off.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let log = read(&console);
    assert!(st.success(), "QEMU exited with {st}:\n{}", tail(&log, 30));
    let after_ready = &log[log.find(READY).unwrap()..];
    assert!(
        after_ready.contains(PRESSED),
        "init never saw the power button:\n{}",
        tail(&log, 30)
    );
    assert!(
        after_ready.contains("fluxnode-init: powering off"),
        "QEMU exited, but init never said it was powering off:\n{}",
        tail(&log, 30)
    );
    // The README says swtpm exits with QEMU.
    let t1 = Instant::now();
    while !pids_mentioning(&dir).is_empty() && t1.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        pids_mentioning(&dir),
        Vec::<i32>::new(),
        "swtpm (or something else the block started) outlived QEMU"
    );
    drop(bg);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "readme: QEMU test done in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// The commands of a block, one per line, without their comments.
fn commands(block: &str) -> Vec<String> {
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn readme_setup_and_other_commands_answer_help() {
    let start = Instant::now();
    let text = readme();
    let setup = sh_blocks(&text).into_iter().next().unwrap();
    let setup = commands(&setup);
    assert_eq!(setup, ["cargo xtask demo", "cargo xtask test"]);
    let other = sh_blocks(&section(&text, "## Other commands"));
    assert_eq!(other.len(), 1, "{other:?}");
    let other = commands(&other[0]);
    assert!(other.len() >= 5, "{other:?}");
    for cmd in setup.iter().chain(&other) {
        assert!(
            cmd.starts_with("cargo xtask "),
            "not an xtask command: {cmd}"
        );
        // `--help` last: clap rejects any unknown flag before it.
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{cmd} --help"))
            .current_dir(fixture::workspace())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("Usage:"),
            "`{cmd} --help` failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!(
        "readme: {} commands answered --help in {:.1} s",
        setup.len() + other.len(),
        start.elapsed().as_secs_f64()
    );
}
