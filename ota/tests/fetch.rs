//! The range fetcher against servers that misbehave (the fault-injecting
//! server from testkit) and against a real nginx.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use fluxnode_ota::fetch::{Fetch, FetchError, FetchPolicy, Fetcher};
use fluxnode_testkit::faulty_http::{Fault, FaultRule, FaultyHttp};
use url::Url;

fn data() -> Vec<u8> {
    (0..1_000_000u32).map(|i| (i % 251) as u8).collect()
}

fn quick() -> FetchPolicy {
    FetchPolicy {
        tries: 3,
        backoff: Duration::from_millis(20),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(2),
    }
}

fn serve(rules: Vec<FaultRule>) -> (tempfile::TempDir, FaultyHttp, Url) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.img"), data()).unwrap();
    let srv = FaultyHttp::start_with(dir.path(), rules).unwrap();
    let url = Url::parse(&srv.url("root.img")).unwrap();
    (dir, srv, url)
}

#[test]
fn a_range_is_exactly_the_bytes_asked() {
    let (_d, srv, url) = serve(vec![]);
    let mut f = Fetcher::new(quick());
    let mut buf = vec![0u8; 70_000];
    f.range(&url, 123_456, &mut buf).unwrap();
    assert_eq!(buf, data()[123_456..193_456]);
    assert_eq!(f.received(), 70_000);
    assert_eq!(srv.stats("/root.img").body_bytes, 70_000);
}

#[test]
fn a_server_that_ignores_ranges_is_refused_without_reading_the_file() {
    let (_d, srv, url) = serve(vec![FaultRule::new("root.img", Fault::IgnoreRange)]);
    let mut f = Fetcher::new(quick());
    let mut buf = vec![0u8; 1000];
    let e = f.range(&url, 5000, &mut buf).unwrap_err();
    assert!(matches!(e, FetchError::RangeIgnored { .. }), "{e}");
    assert!(
        e.to_string().contains("HTTP 206"),
        "the error says what is needed: {e}"
    );
    assert_eq!(
        srv.stats("/root.img").requests,
        1,
        "no retry: retrying cannot help"
    );
    assert_eq!(f.received(), 0, "nothing of the 200 body was taken");
}

#[test]
fn a_connection_dropped_mid_chunk_resumes_from_the_byte_it_stopped_at() {
    let (_d, srv, url) = serve(vec![FaultRule::new(
        "root.img",
        Fault::DropOnce { after: 30_000 },
    )]);
    let mut f = Fetcher::new(quick());
    let mut buf = vec![0u8; 200_000];
    f.range(&url, 10_000, &mut buf).unwrap();
    assert_eq!(buf, data()[10_000..210_000]);
    let served = srv.served();
    assert_eq!(served.len(), 2, "{served:?}");
    assert_eq!(
        served[1].range.as_deref(),
        Some("bytes=40000-209999"),
        "{served:?}"
    );
    assert_eq!(f.received(), 200_000, "nothing fetched twice");
}

#[test]
fn a_server_that_always_truncates_is_given_up_on_with_the_reason() {
    let (_d, srv, url) = serve(vec![FaultRule::new(
        "root.img",
        Fault::Truncate { after: 1000 },
    )]);
    let mut f = Fetcher::new(quick());
    let mut buf = vec![0u8; 100_000];
    let e = f.range(&url, 0, &mut buf).unwrap_err();
    let FetchError::Unreachable { tries, why, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(*tries, 3);
    assert!(why.contains("bytes"), "{why}");
    assert_eq!(srv.stats("/root.img").requests, 3);
    // Each try resumed: 1000 bytes each time, never the same ones twice.
    assert_eq!(f.received(), 3000);
    assert_eq!(buf[..3000], data()[..3000]);
}

#[test]
fn a_silent_server_times_out() {
    let (_d, _srv, url) = serve(vec![FaultRule::new("root.img", Fault::Stall)]);
    let mut f = Fetcher::new(FetchPolicy {
        tries: 2,
        read_timeout: Duration::from_millis(500),
        ..quick()
    });
    let t = Instant::now();
    let mut buf = vec![0u8; 10];
    let e = f.range(&url, 0, &mut buf).unwrap_err();
    assert!(matches!(e, FetchError::Unreachable { tries: 2, .. }), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "bounded by the timeouts"
    );
}

#[test]
fn server_errors_are_retried_and_missing_files_are_not() {
    let (_d, srv, url) = serve(vec![FaultRule::new("root.img", Fault::Status(503))]);
    let mut f = Fetcher::new(quick());
    let mut buf = vec![0u8; 10];
    assert!(matches!(
        f.range(&url, 0, &mut buf),
        Err(FetchError::Unreachable { tries: 3, .. })
    ));
    assert_eq!(srv.stats("/root.img").requests, 3);
    srv.faults().clear();
    let missing = Url::parse(&srv.url("nope.img")).unwrap();
    let e = f.range(&missing, 0, &mut buf).unwrap_err();
    assert!(matches!(e, FetchError::NotFound { status: 404, .. }), "{e}");
    assert_eq!(srv.stats("/nope.img").requests, 1);
}

#[test]
fn a_range_past_the_end_says_the_file_is_truncated() {
    let (_d, _srv, url) = serve(vec![]);
    let mut f = Fetcher::new(quick());
    let mut buf = vec![0u8; 10];
    let e = f.range(&url, 2_000_000, &mut buf).unwrap_err();
    assert!(matches!(e, FetchError::Short { .. }), "{e}");
}

#[test]
fn whole_files_are_bounded() {
    let (_d, _srv, url) = serve(vec![]);
    let mut f = Fetcher::new(quick());
    assert_eq!(f.whole(&url, 1_000_000).unwrap(), data());
    assert!(f.whole(&url, 999_999).is_err());
}

#[test]
fn nginx_serves_ranges_the_fetcher_takes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.img"), data()).unwrap();
    let Some(nginx) = fluxnode_testkit::nginx::Nginx::start(dir.path()) else {
        return;
    };
    let url = Url::parse(&format!("{}/root.img", nginx.base_url())).unwrap();
    let mut f = Fetcher::new(quick());
    let mut buf = vec![0u8; 300_000];
    f.range(&url, 600_000, &mut buf).unwrap();
    assert_eq!(buf, data()[600_000..900_000]);
    assert!(
        nginx.access_log().contains(" 206 "),
        "{}",
        nginx.access_log()
    );
}
