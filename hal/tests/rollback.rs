//! Anti-rollback against a real swtpm: the minimum security version in
//! NV index 0x0100F1A0, raised through the hal (tss-esapi, NV_SetBits on a
//! raw connection) and read back both through tss-esapi and through
//! `fluxnode_lowlevel::tpmnv`, the raw client init's stage 1 uses, over
//! swtpm's server port.
#![cfg(feature = "tpm")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use fluxnode_hal::tpm::rollback::INDEX;
use fluxnode_hal::tpm::Tpm;
use fluxnode_lowlevel::tpmnv::{self, NvError};
use fluxnode_testkit::swtpm::Swtpm;

fn tpm(sw: &Swtpm) -> Tpm {
    Tpm::open(&sw.tcti()).unwrap()
}

/// The raw client on swtpm's server port (one client at a time: call it
/// with no other connection open).
fn raw(sw: &Swtpm) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", sw.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn raw_min(sw: &Swtpm) -> Option<u64> {
    tpmnv::read_min_security_version(&mut raw(sw)).unwrap()
}

fn tpm2_tools(sw: &Swtpm, args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .arg("-T")
        .arg(format!("swtpm:port={}", sw.port()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn minimum_only_rises_and_the_raw_client_reads_what_the_hal_wrote() {
    let Some(mut sw) = Swtpm::start() else { return };
    let mut t = tpm(&sw);
    let st = t.security_version_state().unwrap();
    assert!(!st.defined, "{st:?}");
    assert_eq!(t.min_security_version().unwrap(), 0);
    assert_eq!(t.raise_security_version(2).unwrap(), 2);
    assert_eq!(t.min_security_version().unwrap(), 2);
    // Never lowers.
    assert_eq!(t.raise_security_version(1).unwrap(), 2);
    assert_eq!(t.raise_security_version(0).unwrap(), 2);
    assert_eq!(t.min_security_version().unwrap(), 2);
    assert_eq!(t.raise_security_version(5).unwrap(), 5);
    // Raising to the same version is a no-op.
    assert_eq!(t.raise_security_version(5).unwrap(), 5);
    let st = t.security_version_state().unwrap();
    assert!(st.defined);
    assert_eq!(st.bits, 0b1_1111);
    // Out of range: refused, nothing changes.
    assert!(t.raise_security_version(65).is_err());
    assert_eq!(t.min_security_version().unwrap(), 5);
    drop(t);

    // The raw client (stage 1's) reads the same index, and sees it as ours.
    assert_eq!(raw_min(&sw), Some(5));
    let public = tpmnv::nv_read_public(&mut raw(&sw), INDEX)
        .unwrap()
        .unwrap();
    public.check_ours().unwrap();
    assert!(public.written());
    assert_eq!(
        tpmnv::read_security_version_bits(&mut raw(&sw)).unwrap(),
        Some(0b1_1111)
    );

    // A power cycle keeps it (the index is not ORDERLY).
    sw.restart().unwrap();
    assert_eq!(raw_min(&sw), Some(5));
    assert_eq!(tpm(&sw).min_security_version().unwrap(), 5);

    // All 64 bits: the top of the thermometer.
    assert_eq!(tpm(&sw).raise_security_version(64).unwrap(), 64);
    assert_eq!(raw_min(&sw), Some(64));
}

#[test]
fn a_missing_index_reads_as_nothing_enforced_and_a_fresh_raise_to_zero_defines_it() {
    let Some(sw) = Swtpm::start() else { return };
    assert_eq!(raw_min(&sw), None);
    assert_eq!(tpmnv::nv_read_public(&mut raw(&sw), INDEX).unwrap(), None);
    let mut t = tpm(&sw);
    assert_eq!(t.min_security_version().unwrap(), 0);
    assert!(!t.security_version_state().unwrap().defined);
    // Raising to 0 defines the index and marks it written (value 0).
    assert_eq!(t.raise_security_version(0).unwrap(), 0);
    let st = t.security_version_state().unwrap();
    assert!(st.defined && st.bits == 0, "{st:?}");
    drop(t);
    assert_eq!(raw_min(&sw), Some(0));
    let public = tpmnv::nv_read_public(&mut raw(&sw), INDEX)
        .unwrap()
        .unwrap();
    assert!(public.written());
}

#[test]
fn an_index_defined_but_never_written_reads_zero_through_both() {
    let Some(sw) = Swtpm::start() else { return };
    if !common::ensure_tool("tpm2_nvdefine", "tpm2-tools") {
        return;
    }
    tpm2_tools(
        &sw,
        &[
            "tpm2_nvdefine",
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            "authwrite|authread|no_da|nt=bits",
            "0x0100F1A0",
        ],
    );
    assert_eq!(raw_min(&sw), Some(0));
    let mut t = tpm(&sw);
    let st = t.security_version_state().unwrap();
    assert!(st.defined && st.bits == 0, "{st:?}");
    assert_eq!(t.raise_security_version(3).unwrap(), 3);
    drop(t);
    assert_eq!(raw_min(&sw), Some(3));
}

#[test]
fn a_foreign_index_is_refused_and_left_alone_and_undefine_is_the_known_reset() {
    let Some(sw) = Swtpm::start() else { return };
    if !common::ensure_tool("tpm2_nvdefine", "tpm2-tools") {
        return;
    }
    // An ordinary 8-byte index at our handle: anyone with the owner's
    // password could write any value into it.
    tpm2_tools(
        &sw,
        &[
            "tpm2_nvdefine",
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            "ownerread|ownerwrite|authread|authwrite",
            "0x0100F1A0",
        ],
    );
    match tpmnv::read_min_security_version(&mut raw(&sw)) {
        Err(NvError::Foreign { index, .. }) => assert_eq!(index, INDEX),
        other => panic!("a foreign index read as {other:?}"),
    }
    let mut t = tpm(&sw);
    assert!(t.min_security_version().is_err());
    assert!(t.raise_security_version(1).is_err());
    drop(t);
    // Still the foreign index: not redefined, not written.
    let public = tpmnv::nv_read_public(&mut raw(&sw), INDEX)
        .unwrap()
        .unwrap();
    assert!(public.check_ours().is_err());
    assert!(!public.written());

    // The known limit: with an empty owner password, undefining the index
    // resets the minimum.
    tpm2_tools(&sw, &["tpm2_nvundefine", "-C", "o", "0x0100F1A0"]);
    assert_eq!(tpm(&sw).raise_security_version(4).unwrap(), 4);
    tpm2_tools(&sw, &["tpm2_nvundefine", "-C", "o", "0x0100F1A0"]);
    assert_eq!(raw_min(&sw), None);
    assert_eq!(tpm(&sw).min_security_version().unwrap(), 0);
}

#[test]
fn cli_secver_prints_and_raises() {
    let Some(sw) = Swtpm::start() else { return };
    let run = |args: &[&str]| {
        let out = Command::new(common::hal_bin())
            .args(["tpm", "secver", "--tcti", &sw.tcti()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["defined"], false);
    assert_eq!(v["min_security_version"], 0);
    assert_eq!(v["index"], "0x0100f1a0");

    let (ok, out, err) = run(&["--raise", "3", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["defined"], true);
    assert_eq!(v["previous"], 0);
    assert_eq!(v["min_security_version"], 3);
    assert_eq!(v["bits"], "0x0000000000000007");

    let (ok, out, err) = run(&["--raise", "1"]);
    assert!(ok, "{err}");
    assert!(out.contains("raised: 3 -> 3"), "{out}");
    assert!(out.contains("min security version: 3"), "{out}");

    let (ok, _, err) = run(&["--raise", "65"]);
    assert!(!ok);
    assert!(err.contains("out of range"), "{err}");
    assert_eq!(raw_min(&sw), Some(3));
}
