//! One app's supervisor: a thread that walks the app through
//! pull → start → run (with health checks) → exit → wait → start again,
//! until the app should stop.
//!
//! The states are [`Phase`]s, set where each step begins; every wait is a
//! [`App::sleep`], which a stop interrupts. Restarts back off from 1 s,
//! doubling to 60 s; a run that lasted 30 s resets the backoff.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluxnode_apps::pull::{Image, Progress, Puller};
use fluxnode_apps::reference::Digest;
use fluxnode_apps::spec::{Probe, RestartPolicy};

use super::manager::{App, Desired, HealthState, Manager, Phase};

/// The first wait before a restart.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The longest.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run this long resets the backoff.
pub const STABLE: Duration = Duration::from_secs(30);
/// How long an app has to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Restart backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }
}

impl Backoff {
    /// The wait before the next try, after a run of `ran`.
    pub fn after(&mut self, ran: Duration) -> Duration {
        if ran >= STABLE {
            self.next = BACKOFF_INITIAL;
        }
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }
}

/// Should an exit with `code` be restarted under `policy`?
pub fn restarts(policy: RestartPolicy, code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => code != 0,
        RestartPolicy::Never => false,
    }
}

fn wait_then(app: &App, backoff: &mut Backoff, ran: Duration, reason: String) -> bool {
    let d = backoff.after(ran);
    app.log.push(&format!(
        "[fluxnode] {reason}; next try in {} s",
        d.as_secs()
    ));
    app.set_phase(Phase::Waiting {
        retry_in_s: d.as_secs_f64(),
        reason,
    });
    app.sleep(d)
}

/// Runs `app` until it should stop.
pub fn run(mgr: &Arc<Manager>, app: &Arc<App>) {
    let mut backoff = Backoff::default();
    let mut first = true;
    loop {
        // Stopped, or replaced or removed while this thread was busy: do
        // nothing more (another supervisor, or none, owns the name now).
        if app.desired() == Desired::Stopped || !mgr.is_current(app) {
            break;
        }
        if !first {
            app.state().status.restarts += 1;
        }
        first = false;
        // Shared: garbage collection waits until the image is pinned and
        // its layers unpacked.
        let store_guard = mgr.store_lock.read().unwrap_or_else(|p| p.into_inner());
        let image = match image(mgr, app) {
            Ok(i) => i,
            Err(e) => {
                drop(store_guard);
                if wait_then(app, &mut backoff, Duration::ZERO, e) {
                    continue;
                }
                break;
            }
        };
        if !mgr.is_current(app) || app.desired() == Desired::Stopped {
            break;
        }
        app.set_phase(Phase::Starting);
        let prepared = super::prepare::prepare(mgr, app, &image);
        drop(store_guard);
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                if mgr.is_current(app) {
                    super::prepare::cleanup(mgr, app);
                }
                if wait_then(
                    app,
                    &mut backoff,
                    Duration::ZERO,
                    format!("cannot start: {e}"),
                ) {
                    continue;
                }
                break;
            }
        };
        let t0 = Instant::now();
        let outcome = run_once(mgr, app, &prepared);
        let ran = t0.elapsed();
        if !mgr.is_current(app) {
            // Replaced or removed meanwhile: the name's runtime state and
            // network belong to whoever holds it now.
            break;
        }
        super::prepare::cleanup(mgr, app);
        let (code, why) = match outcome {
            Ok(c) => c,
            Err(e) => (-1, format!("the runtime failed: {e}")),
        };
        app.state().status.last_exit = Some(why.clone());
        app.log.push(&format!("[fluxnode] {why}"));
        if app.desired() == Desired::Stopped {
            break;
        }
        if !restarts(app.spec.restart, code) {
            app.set_phase(Phase::Exited { code });
            // Leave it so: stopped until the operator starts it again.
            let mut s = app.state();
            s.record.desired = Desired::Stopped;
            drop(s);
            let _ = app.save();
            return;
        }
        if !wait_then(app, &mut backoff, ran, why) {
            break;
        }
    }
    app.set_phase(Phase::Stopped);
}

/// The app's image: from the store when it was pulled before, else pulled.
fn image(mgr: &Manager, app: &App) -> Result<Image, String> {
    let store = &mgr.store;
    let complete = |d: &Digest| {
        Image::load(store, d).ok().filter(|img| {
            img.layers
                .iter()
                .all(|l| store.has(l) || store.layer_path(l).is_dir())
        })
    };
    let pinned = app.state().record.manifest.clone();
    if let Some(img) = pinned
        .as_deref()
        .and_then(|d| Digest::parse(d).ok())
        .and_then(|d| complete(&d))
    {
        return Ok(img);
    }
    let r = app
        .spec
        .reference()
        .map_err(|e| format!("image {}: {e}", app.spec.image))?;
    // Already here for another app under the same reference (or pinned by
    // a digest the store holds): used as is, as `docker run` uses a local
    // image, without asking the registry. A redeploy of the app itself
    // pulls again (its own pin was dropped).
    let local = r.digest.and_then(|d| complete(&d)).or_else(|| {
        mgr.all()
            .iter()
            .filter(|o| o.spec.name != app.spec.name && o.spec.image == app.spec.image)
            .filter_map(|o| o.state().record.manifest.clone())
            .filter_map(|m| Digest::parse(&m).ok())
            .find_map(|d| complete(&d))
    });
    if let Some(img) = local {
        app.log
            .push(&format!("[fluxnode] {r}: {} already here", img.manifest));
        app.state().record.manifest = Some(img.manifest.to_string());
        let _ = app.save();
        return Ok(img);
    }
    app.set_phase(Phase::Pulling { done: 0, total: 0 });
    app.log.push(&format!("[fluxnode] pulling {r}"));
    // At most what /var can spare beyond the node's reserve: an image is
    // outside input, and the store belongs to no app's quota.
    let budget = super::prepare::spare_bytes(&mgr.cfg.state_dir);
    let mut puller = Puller::new(store, mgr.cfg.settings.insecure_registries.clone(), None)
        .with_max_total(budget);
    let mut total = 0u64;
    let mut base = 0u64;
    let img = puller
        .pull(&r, &mut |p| match p {
            Progress::Blob { size, from, .. } => {
                base = total;
                total += size;
                app.set_phase(Phase::Pulling {
                    done: base + from,
                    total,
                });
            }
            Progress::Bytes { done, .. } => app.set_phase(Phase::Pulling {
                done: base + done,
                total,
            }),
            Progress::Resume { digest, at, why } => app.log.push(&format!(
                "[fluxnode] {digest}: connection lost at {at} ({why}); resuming"
            )),
            Progress::Present { .. } => {}
        })
        .map_err(|e| format!("pulling {r}: {e}"))?;
    app.log.push(&format!(
        "[fluxnode] pulled {r} as {} ({} layers)",
        img.manifest,
        img.layers.len()
    ));
    app.state().record.manifest = Some(img.manifest.to_string());
    let _ = app.save();
    Ok(img)
}

fn pipe_to_log(app: &Arc<App>, r: impl std::io::Read + Send + 'static) {
    let app = Arc::clone(app);
    let _ = std::thread::Builder::new()
        .name(format!("log-{}", app.spec.name))
        .spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                // Bounded: a line without a newline is cut at the log's
                // limit (the rest comes as the next line).
                match (&mut r)
                    .take(super::logs::MAX_LINE as u64)
                    .read_until(b'\n', &mut buf)
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let l = String::from_utf8_lossy(&buf);
                        app.log.push(l.trim_end_matches('\n'));
                    }
                }
            }
        });
}

fn crun(mgr: &Manager) -> Command {
    let mut c = Command::new(&mgr.cfg.crun);
    c.arg("--root").arg(mgr.cfg.run_dir.join("crun"));
    c
}

/// Sends `signal` to the app's container.
pub fn kill(mgr: &Manager, name: &str, signal: &str) {
    let _ = crun(mgr)
        .args(["kill", "--all", name, signal])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes what the runtime keeps of a container (after a crash of the
/// daemon, or a kill).
pub fn delete(mgr: &Manager, name: &str) {
    let _ = crun(mgr)
        .args(["delete", "--force", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn run_once(
    mgr: &Manager,
    app: &Arc<App>,
    p: &super::prepare::Prepared,
) -> std::io::Result<(i32, String)> {
    let name = &app.spec.name;
    let mut child: Child = crun(mgr)
        .arg("run")
        .arg("--bundle")
        .arg(&p.bundle)
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(o) = child.stdout.take() {
        pipe_to_log(app, o);
    }
    if let Some(e) = child.stderr.take() {
        pipe_to_log(app, e);
    }
    app.set_running(child.id());
    let health = app.spec.health.clone();
    let probe = health.as_ref().and_then(|h| h.probe());
    let interval = Duration::from_secs(health.as_ref().map_or(10, |h| h.interval_s.max(1)).into());
    let mut next_check = Instant::now() + interval;
    let mut stopping: Option<Instant> = None;
    let mut unhealthy = false;
    loop {
        if let Some(st) = child.try_wait()? {
            let code = st.code().unwrap_or(-1);
            let mut why = if unhealthy {
                "restarted: unhealthy".to_string()
            } else if code >= 128 {
                format!("killed by signal {}", code - 128)
            } else {
                format!("exited with status {code}")
            };
            // What it said last, for `ls`/`inspect` and the node's log:
            // usually the reason (or the runtime's error).
            std::thread::sleep(Duration::from_millis(50));
            let (last, _) = app.log.tail(3);
            let last: Vec<&String> = last
                .iter()
                .filter(|l| !l.starts_with("[fluxnode]"))
                .collect();
            if let Some(l) = last.last() {
                let mut l = l.to_string();
                l.truncate(300);
                why.push_str(&format!("; last output: {l}"));
            }
            return Ok((code, why));
        }
        if app.desired() == Desired::Stopped && mgr.is_current(app) {
            match stopping {
                None => {
                    app.set_phase(Phase::Stopping);
                    kill(mgr, name, "TERM");
                    stopping = Some(Instant::now());
                }
                Some(t) if t.elapsed() > STOP_GRACE => {
                    kill(mgr, name, "KILL");
                    stopping = Some(Instant::now());
                }
                Some(_) => {}
            }
        }
        if let (Some(pr), Some(h)) = (&probe, &health) {
            if stopping.is_none() && Instant::now() >= next_check {
                next_check = Instant::now() + interval;
                let timeout = Duration::from_secs(h.timeout_s.max(1).into());
                let (ok, what) = check(p.address, pr, timeout);
                let mut s = app.state();
                let hs = s.status.health.get_or_insert_with(HealthState::default);
                hs.ok = ok;
                hs.last = what.clone();
                hs.failures = if ok { 0 } else { hs.failures + 1 };
                let failures = hs.failures;
                drop(s);
                if !ok {
                    app.log.push(&format!(
                        "[fluxnode] health check failed ({failures}/{}): {what}",
                        h.retries
                    ));
                }
                if failures >= h.retries.max(1) && !unhealthy {
                    unhealthy = true;
                    kill(mgr, name, "KILL");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One health check against the app's address.
pub fn check(addr: std::net::Ipv4Addr, probe: &Probe, timeout: Duration) -> (bool, String) {
    let port = match probe {
        Probe::Http { port, .. } | Probe::Tcp(port) => *port,
    };
    let sa = SocketAddr::from((addr, port));
    let mut s = match TcpStream::connect_timeout(&sa, timeout) {
        Ok(s) => s,
        Err(e) => return (false, format!("connecting to {sa}: {e}")),
    };
    let Probe::Http { path, .. } = probe else {
        return (true, format!("{sa} accepts connections"));
    };
    // One deadline for the whole check: an app that drips a byte just
    // inside each read timeout must not hold its supervisor for longer.
    let deadline = Instant::now() + timeout;
    let _ = s.set_write_timeout(Some(timeout));
    // One write: a request in pieces may meet a server that answers
    // the first piece and closes, resetting the connection.
    let req = format!("GET {path} HTTP/1.0\r\nHost: {sa}\r\nUser-Agent: fluxnode-health\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()) {
        return (false, format!("GET {path}: {e}"));
    }
    // The status line only, bounded.
    let mut line = Vec::new();
    let mut buf = [0u8; 64];
    while line.len() < 256 && !line.contains(&b'\n') {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
        }
    }
    let end = line.iter().position(|b| *b == b'\n').unwrap_or(line.len());
    let line = String::from_utf8_lossy(&line[..end]).trim().to_string();
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    ((200..400).contains(&code), format!("GET {path}: {line:?}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_stable_run() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(1);
        let waits: Vec<u64> = (0..8).map(|_| b.after(short).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.after(STABLE).as_secs(), 1);
    }

    #[test]
    fn restart_policies() {
        assert!(restarts(RestartPolicy::Always, 0));
        assert!(restarts(RestartPolicy::OnFailure, 137));
        assert!(!restarts(RestartPolicy::OnFailure, 0));
        assert!(!restarts(RestartPolicy::Never, 1));
    }

    #[test]
    fn health_checks_see_status_codes_and_silence() {
        use std::net::TcpListener;
        let serve = |reply: &'static str| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            std::thread::spawn(move || {
                if let Ok((mut s, _)) = l.accept() {
                    // The whole request, then the reply (closing with
                    // unread bytes would reset the connection).
                    let mut got = Vec::new();
                    let mut b = [0u8; 512];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut b) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&b[..n]),
                        }
                    }
                    let _ = s.write_all(reply.as_bytes());
                }
            });
            port
        };
        let lo = std::net::Ipv4Addr::LOCALHOST;
        let t = Duration::from_secs(2);
        let port = serve("HTTP/1.0 200 OK\r\n\r\nhi");
        let (ok, _) = check(
            lo,
            &Probe::Http {
                port,
                path: "/".into(),
            },
            t,
        );
        assert!(ok);
        let port = serve("HTTP/1.0 503 Busy\r\n\r\n");
        let (ok, what) = check(
            lo,
            &Probe::Http {
                port,
                path: "/".into(),
            },
            t,
        );
        assert!(!ok && what.contains("503"), "{what}");
        // A server that accepts and never answers: the timeout, not a hang.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t0 = Instant::now();
        let (ok, _) = check(
            lo,
            &Probe::Http {
                port,
                path: "/".into(),
            },
            Duration::from_millis(300),
        );
        assert!(!ok);
        assert!(t0.elapsed() < Duration::from_secs(2));
        drop(l);
        let (ok, _) = check(lo, &Probe::Tcp(port), t);
        assert!(!ok, "nothing listens any more");
    }
}
