//! Getting payload bytes: byte ranges of a repository's target files over
//! HTTP(S) (range requests) or from a local directory, with bounded
//! retries that resume where a dropped connection stopped.
//!
//! Nothing here trusts the bytes: the installer hashes every chunk against
//! the signed manifest before it writes it. What this layer refuses is a
//! server that does not do what was asked: a `200` to a range request (it
//! would send the whole file where one chunk was wanted), a
//! `Content-Range` other than the one requested, a body shorter than
//! announced.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

/// Why bytes could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server answered a range request with the whole file.
    #[error("{url}: the server answered the range request bytes={start}-{end} with HTTP 200 and the whole file; it must support range requests (HTTP 206)")]
    RangeIgnored {
        /// The URL.
        url: String,
        /// First byte asked.
        start: u64,
        /// Last byte asked.
        end: u64,
    },
    /// The server's answer is not what was asked.
    #[error("{url}: {why}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        why: String,
    },
    /// The file is shorter than the signed metadata says.
    #[error("{url}: the file ends before byte {end} (HTTP 416 or end of file): the repository's copy is truncated")]
    Short {
        /// The URL.
        url: String,
        /// The last byte asked.
        end: u64,
    },
    /// No usable answer after all retries.
    #[error("{url}: {why} (gave up after {tries} tries)")]
    Unreachable {
        /// The URL.
        url: String,
        /// The last failure.
        why: String,
        /// How many tries were made.
        tries: u32,
    },
    /// Not found.
    #[error("{url}: not found (HTTP {status})")]
    NotFound {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
}

/// Where payload bytes come from. `url` is a target file's full URL.
pub trait Fetch: Send {
    /// Fills `buf` with the bytes of `url` from `offset`.
    fn range(&mut self, url: &Url, offset: u64, buf: &mut [u8]) -> Result<(), FetchError>;
    /// The whole file, at most `max` bytes.
    fn whole(&mut self, url: &Url, max: u64) -> Result<Vec<u8>, FetchError>;
    /// Body bytes received so far (over the network or read from files).
    fn received(&self) -> u64;
    /// The whole file's length as the last range answer gave it
    /// (`Content-Range: bytes a-b/LEN`, or the file's size), if known.
    fn remote_len(&self) -> Option<u64> {
        None
    }
}

/// Retry and timeout settings.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Tries per range (the first included).
    pub tries: u32,
    /// Wait before the second try; doubles after each failure, capped at 30 s.
    pub backoff: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest silence while reading an answer.
    pub read_timeout: Duration,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        FetchPolicy {
            tries: 6,
            backoff: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// HTTP(S) and `file://` fetcher.
#[derive(Debug)]
pub struct Fetcher {
    agent: ureq::Agent,
    policy: FetchPolicy,
    received: u64,
    requests: u64,
    last_total: Option<u64>,
}

impl Fetcher {
    /// A fetcher with this policy. `extra_roots`: CA certificates (PEM
    /// bytes) to trust for HTTPS besides none: the node trusts only what
    /// its image names (TUF protects the content either way).
    pub fn new(policy: FetchPolicy) -> Fetcher {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(policy.connect_timeout)
            .timeout_read(policy.read_timeout)
            .timeout_write(policy.read_timeout)
            .redirects(0)
            .build();
        Fetcher {
            agent,
            policy,
            received: 0,
            requests: 0,
            last_total: None,
        }
    }

    /// HTTP requests made so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    fn sleep_before(&self, attempt: u32) {
        if attempt == 0 {
            return;
        }
        let ms = self.policy.backoff.as_millis() as u64;
        let wait = ms.saturating_mul(1 << (attempt - 1).min(6)).min(30_000);
        std::thread::sleep(Duration::from_millis(wait));
    }

    /// One try at bytes `offset..offset+buf.len()`, filling `buf[*done..]`.
    /// `done` advances as bytes arrive, so a retry asks only for the rest.
    fn try_range(
        &mut self,
        url: &Url,
        offset: u64,
        buf: &mut [u8],
        done: &mut usize,
    ) -> Result<(), Attempt> {
        let start = offset + *done as u64;
        let end = offset + buf.len() as u64 - 1;
        self.requests += 1;
        let resp = match self
            .agent
            .request_url("GET", url)
            .set("Range", &format!("bytes={start}-{end}"))
            .call()
        {
            Ok(r) => r,
            Err(ureq::Error::Status(416, _)) => {
                return Err(Attempt::Fatal(FetchError::Short {
                    url: url.to_string(),
                    end,
                }))
            }
            Err(ureq::Error::Status(s @ (404 | 410), _)) => {
                return Err(Attempt::Fatal(FetchError::NotFound {
                    url: url.to_string(),
                    status: s,
                }))
            }
            Err(ureq::Error::Status(s, _)) if (400..500).contains(&s) && s != 408 && s != 429 => {
                return Err(Attempt::Fatal(FetchError::Protocol {
                    url: url.to_string(),
                    why: format!("HTTP {s} to a range request"),
                }))
            }
            Err(ureq::Error::Status(s, _)) => return Err(Attempt::Retry(format!("HTTP {s}"))),
            Err(ureq::Error::Transport(t)) => return Err(Attempt::Retry(t.to_string())),
        };
        if resp.status() == 200 {
            return Err(Attempt::Fatal(FetchError::RangeIgnored {
                url: url.to_string(),
                start,
                end,
            }));
        }
        if resp.status() != 206 {
            return Err(Attempt::Fatal(FetchError::Protocol {
                url: url.to_string(),
                why: format!("HTTP {} to a range request (206 expected)", resp.status()),
            }));
        }
        // `bytes S-E/TOTAL`: exactly the range asked, or a file that ends
        // before it (a truncated copy: a server clamps the range to it).
        let cr = resp.header("Content-Range").unwrap_or("(none)").to_string();
        let parsed = cr
            .strip_prefix("bytes ")
            .and_then(|r| r.split_once('/'))
            .and_then(|(span, total)| {
                let (s, e) = span.split_once('-')?;
                Some((
                    s.parse::<u64>().ok()?,
                    e.parse::<u64>().ok()?,
                    total.parse::<u64>().ok(),
                ))
            });
        match parsed {
            Some((s, e, total)) if s == start && e == end => self.last_total = total,
            Some((s, _, Some(total))) if s == start && total <= end => {
                self.last_total = Some(total);
                return Err(Attempt::Fatal(FetchError::Short {
                    url: url.to_string(),
                    end,
                }));
            }
            _ => {
                return Err(Attempt::Fatal(FetchError::Protocol {
                    url: url.to_string(),
                    why: format!("Content-Range {cr:?} does not answer bytes={start}-{end}"),
                }))
            }
        }
        // Never read more than was asked, whatever Content-Length says.
        let want = (end + 1 - start) as usize;
        let mut body = resp.into_reader().take(want as u64);
        let target = &mut buf[*done..];
        let mut got = 0usize;
        while got < want {
            match body.read(&mut target[got..]) {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    *done += n;
                    self.received += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Attempt::Retry(format!(
                        "connection lost after {got} of {want} bytes: {e}"
                    )))
                }
            }
        }
        if got < want {
            return Err(Attempt::Retry(format!(
                "answer ended after {got} of {want} bytes (truncated)"
            )));
        }
        Ok(())
    }
}

enum Attempt {
    Retry(String),
    Fatal(FetchError),
}

fn file_path(url: &Url) -> Result<PathBuf, FetchError> {
    url.to_file_path().map_err(|()| FetchError::Protocol {
        url: url.to_string(),
        why: "not a local file path".into(),
    })
}

impl Fetch for Fetcher {
    fn range(&mut self, url: &Url, offset: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        if buf.is_empty() {
            return Ok(());
        }
        if url.scheme() == "file" {
            let path = file_path(url)?;
            let f = std::fs::File::open(&path).map_err(|e| FetchError::Protocol {
                url: url.to_string(),
                why: e.to_string(),
            })?;
            self.last_total = f.metadata().ok().map(|m| m.len());
            use std::os::unix::fs::FileExt;
            f.read_exact_at(buf, offset).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => FetchError::Short {
                    url: url.to_string(),
                    end: offset + buf.len() as u64 - 1,
                },
                _ => FetchError::Protocol {
                    url: url.to_string(),
                    why: e.to_string(),
                },
            })?;
            self.received += buf.len() as u64;
            return Ok(());
        }
        let mut done = 0usize;
        let mut last = String::new();
        for attempt in 0..self.policy.tries.max(1) {
            self.sleep_before(attempt);
            match self.try_range(url, offset, buf, &mut done) {
                Ok(()) => return Ok(()),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why)) => {
                    tracing::warn!(%url, attempt, "range request failed, retrying: {why}");
                    last = why;
                }
            }
        }
        Err(FetchError::Unreachable {
            url: url.to_string(),
            why: last,
            tries: self.policy.tries.max(1),
        })
    }

    fn whole(&mut self, url: &Url, max: u64) -> Result<Vec<u8>, FetchError> {
        if url.scheme() == "file" {
            let path = file_path(url)?;
            let f = std::fs::File::open(&path).map_err(|e| FetchError::Protocol {
                url: url.to_string(),
                why: e.to_string(),
            })?;
            let mut out = Vec::new();
            f.take(max + 1)
                .read_to_end(&mut out)
                .map_err(|e| FetchError::Protocol {
                    url: url.to_string(),
                    why: e.to_string(),
                })?;
            if out.len() as u64 > max {
                return Err(FetchError::Protocol {
                    url: url.to_string(),
                    why: format!("larger than the {max} bytes allowed"),
                });
            }
            self.received += out.len() as u64;
            return Ok(out);
        }
        let mut last = String::new();
        for attempt in 0..self.policy.tries.max(1) {
            self.sleep_before(attempt);
            self.requests += 1;
            let resp = match self.agent.request_url("GET", url).call() {
                Ok(r) => r,
                Err(ureq::Error::Status(s @ (404 | 410), _)) => {
                    return Err(FetchError::NotFound {
                        url: url.to_string(),
                        status: s,
                    })
                }
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let mut out = Vec::new();
            match resp.into_reader().take(max + 1).read_to_end(&mut out) {
                Ok(_) if out.len() as u64 > max => {
                    return Err(FetchError::Protocol {
                        url: url.to_string(),
                        why: format!("larger than the {max} bytes allowed"),
                    })
                }
                Ok(_) => {
                    self.received += out.len() as u64;
                    return Ok(out);
                }
                Err(e) => {
                    self.received += out.len() as u64;
                    last = format!("connection lost after {} bytes: {e}", out.len());
                }
            }
        }
        Err(FetchError::Unreachable {
            url: url.to_string(),
            why: last,
            tries: self.policy.tries.max(1),
        })
    }

    fn received(&self) -> u64 {
        self.received
    }

    fn remote_len(&self) -> Option<u64> {
        self.last_total
    }
}
