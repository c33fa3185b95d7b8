//! The anti-rollback minimum from the TPM, without a TPM software stack.
//!
//! init's stage 1 is a static binary in the initramfs, without libtss2:
//! this module is the few TPM 2.0 commands it needs, marshalled by hand,
//! over any byte stream that carries raw TPM command and response buffers
//! (write one command, read one response):
//!
//! - the character device `/dev/tpmrm0` (the kernel's resource manager)
//!   or `/dev/tpm0`, opened read-write ([`open_device`]);
//! - swtpm's TCP server port when swtpm runs with
//!   `--flags not-need-init,startup-clear` (tests).
//!
//! # The index
//!
//! The minimum security version lives in the NV index
//! [`MIN_SECURITY_VERSION_INDEX`] (`0x0100F1A0`, the owner range), a
//! `TPM_NT_BITS` index: 64 bits that `TPM2_NV_SetBits` can only OR bits
//! into, so its value can never go down while the index exists. Its
//! attributes are exactly [`INDEX_ATTRIBUTES`]: `NT=BITS | AUTHWRITE |
//! AUTHREAD | NO_DA`, an empty auth value, no policy. Reading and raising
//! take only the index's own (empty) auth value in a password session;
//! defining it takes owner authorization (fluxnode-hal does that).
//!
//! The encoding is a thermometer: security version `s` (0..=64) is the low
//! `s` bits set, and the minimum is the number of the highest set bit plus
//! one ([`min_security_version_of`]). An index that does not exist means
//! minimum 0: nothing enforced yet.
//!
//! # Known limits
//!
//! - **64 security bumps**, ever, per TPM: a version above 64 cannot be
//!   stored (the index would have to be replaced, which is the next
//!   limit).
//! - **The owner can reset it.** With an empty owner authorization (the
//!   default on swtpm and on most machines), anyone who can send TPM
//!   commands as root can `TPM2_NV_UndefineSpace` the index, which resets
//!   the minimum to 0 (and then define a fresh one). So can a TPM clear
//!   from the firmware setup. Only `TPMA_NV_POLICY_DELETE` prevents the
//!   former, and it needs platform authorization, which the firmware
//!   withholds from the OS. The index stops a rollback done by writing an
//!   old image to a slot and rebooting; it does not stop a root who can
//!   run code on the node.
//! - **Anyone who may open the TPM device can raise it** (the auth value
//!   is empty), up to 64, which makes every image refuse to boot: a denial
//!   of service open to root and to the `tss` group, never a rollback.
//! - An index at this handle that is not exactly ours (another type,
//!   size, attributes, name algorithm or a policy) is reported as
//!   [`NvError::Foreign`], never read as a minimum.
//!
//! Every length is checked, responses are bounded by [`MAX_RESPONSE`], and
//! the parsers take `&[u8]` and return a `Result` for any input.

use std::io::{Read, Write};

/// The NV index holding the minimum security version (owner range).
pub const MIN_SECURITY_VERSION_INDEX: u32 = 0x0100_F1A0;

/// The highest security version the index can hold (one bit per version).
pub const MAX_SECURITY_VERSION: u64 = 64;

/// The largest response accepted (the TPM's own `MAX_RESPONSE_SIZE` on
/// every TPM we know of; larger is a malformed response).
pub const MAX_RESPONSE: usize = 4096;

/// The devices to try, in order: the resource manager first (it cleans up
/// after its clients and may be opened by several at once), then the raw
/// device (one opener at a time).
pub const DEVICES: [&str; 2] = ["/dev/tpmrm0", "/dev/tpm0"];

/// `TPMA_NV_AUTHWRITE`: written with the index's own auth value.
pub const TPMA_NV_AUTHWRITE: u32 = 1 << 2;
/// `TPMA_NV_AUTHREAD`: read with the index's own auth value.
pub const TPMA_NV_AUTHREAD: u32 = 1 << 18;
/// `TPMA_NV_NO_DA`: a wrong auth value for the index does not count
/// towards the TPM's dictionary-attack lockout (the value is empty and
/// public: lockout would only let anyone lock the TPM).
pub const TPMA_NV_NO_DA: u32 = 1 << 25;
/// `TPMA_NV_WRITTEN`: set by the TPM at the first write (for a bit field,
/// the first `TPM2_NV_SetBits`); until then a read fails.
pub const TPMA_NV_WRITTEN: u32 = 1 << 29;
/// The `TPM_NT` field of the attributes (bits 7:4).
pub const TPMA_NV_TPM_NT_MASK: u32 = 0xF0;
/// `TPM_NT_BITS` in the `TPM_NT` field.
pub const TPM_NT_BITS: u32 = 0x2 << 4;

/// The attributes of the index as defined: `NT=BITS | AUTHWRITE | AUTHREAD
/// | NO_DA` (`0x02040024`). Not `ORDERLY` (a raise could be lost in a
/// power cut), not `CLEAR_STCLEAR`, no owner or platform read/write (they
/// would need the hierarchy's authorization), no policy.
pub const INDEX_ATTRIBUTES: u32 =
    TPM_NT_BITS | TPMA_NV_AUTHWRITE | TPMA_NV_AUTHREAD | TPMA_NV_NO_DA;

/// `TPM_ALG_SHA256`: the index's name algorithm.
pub const TPM_ALG_SHA256: u16 = 0x000B;

const TPM_ST_NO_SESSIONS: u16 = 0x8001;
const TPM_ST_SESSIONS: u16 = 0x8002;
const TPM_RS_PW: u32 = 0x4000_0009;
const TPM_CC_NV_READ_PUBLIC: u32 = 0x0000_0169;
const TPM_CC_NV_READ: u32 = 0x0000_014E;
const TPM_CC_NV_SET_BITS: u32 = 0x0000_0135;
const HEADER: usize = 10;
/// The largest digest a name or policy can carry (SHA-512).
const MAX_DIGEST: usize = 64;

/// `TPM_RC_HANDLE + TPM_RC_1`: the command's first handle does not exist
/// (for `TPM2_NV_ReadPublic`: the index is not defined).
pub const TPM_RC_HANDLE_1: u32 = 0x18B;
/// `TPM_RC_NV_UNINITIALIZED`: the index was never written.
pub const TPM_RC_NV_UNINITIALIZED: u32 = 0x14A;

/// What went wrong talking to the TPM or reading the index.
#[derive(Debug, thiserror::Error)]
pub enum NvError {
    /// The transport failed (open, write, read).
    #[error("{what}: {source}")]
    Io {
        /// The step: "opening /dev/tpmrm0", "sending TPM2_NV_Read", ...
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TPM answered with a response code other than success.
    #[error("TPM2_{command} failed: TPM response code {rc:#05x}")]
    Tpm {
        /// The command.
        command: &'static str,
        /// The TPM's response code.
        rc: u32,
    },
    /// The response could not be parsed.
    #[error("TPM2_{command}: malformed response: {reason}")]
    Malformed {
        /// The command.
        command: &'static str,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// An index exists at the handle but is not the anti-rollback index
    /// (another type, size, attributes, name algorithm or a policy): it is
    /// not read as a minimum.
    #[error("NV index {index:#010x} is not the anti-rollback index: {reason}")]
    Foreign {
        /// The index.
        index: u32,
        /// What differs.
        reason: String,
    },
    /// A security version above [`MAX_SECURITY_VERSION`].
    #[error("security version {0} is out of range (0..={MAX_SECURITY_VERSION})")]
    OutOfRange(u64),
}

impl NvError {
    /// The TPM's response code, when the TPM refused the command.
    pub fn response_code(&self) -> Option<u32> {
        match self {
            NvError::Tpm { rc, .. } => Some(*rc),
            _ => None,
        }
    }
}

/// The public area of an NV index (`TPMS_NV_PUBLIC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvPublic {
    /// The index's handle.
    pub index: u32,
    /// The name algorithm (`TPM_ALG_ID`).
    pub name_alg: u16,
    /// `TPMA_NV`.
    pub attributes: u32,
    /// The authorization policy (empty: none).
    pub auth_policy: Vec<u8>,
    /// The size of the data area in bytes.
    pub data_size: u16,
}

impl NvPublic {
    /// True when the index has been written (for a bit field: set at the
    /// first `TPM2_NV_SetBits`, even of no bits).
    pub fn written(&self) -> bool {
        self.attributes & TPMA_NV_WRITTEN != 0
    }

    /// Checks that this is the anti-rollback index exactly as fluxnode
    /// defines it: handle [`MIN_SECURITY_VERSION_INDEX`], `TPM_NT_BITS`,
    /// 8 bytes, attributes [`INDEX_ATTRIBUTES`] (plus `TPMA_NV_WRITTEN`),
    /// SHA-256 names, no policy.
    pub fn check_ours(&self) -> Result<(), NvError> {
        let foreign = |reason: String| NvError::Foreign {
            index: self.index,
            reason,
        };
        if self.index != MIN_SECURITY_VERSION_INDEX {
            return Err(foreign(format!(
                "the TPM answered for index {:#010x}",
                self.index
            )));
        }
        if self.attributes & TPMA_NV_TPM_NT_MASK != TPM_NT_BITS {
            return Err(foreign(format!(
                "type {:#x}, not TPM_NT_BITS",
                (self.attributes & TPMA_NV_TPM_NT_MASK) >> 4
            )));
        }
        if self.data_size != 8 {
            return Err(foreign(format!("{} bytes, not 8", self.data_size)));
        }
        let attributes = self.attributes & !TPMA_NV_WRITTEN;
        if attributes != INDEX_ATTRIBUTES {
            return Err(foreign(format!(
                "attributes {attributes:#010x}, not {INDEX_ATTRIBUTES:#010x}"
            )));
        }
        if self.name_alg != TPM_ALG_SHA256 {
            return Err(foreign(format!(
                "name algorithm {:#06x}, not SHA-256",
                self.name_alg
            )));
        }
        if !self.auth_policy.is_empty() {
            return Err(foreign("it has an authorization policy".to_string()));
        }
        Ok(())
    }
}

/// The minimum security version a bit field holds: the number of its
/// highest set bit plus one (0 for no bits).
pub fn min_security_version_of(bits: u64) -> u64 {
    u64::from(64 - bits.leading_zeros())
}

/// The bits that record security version `s`: the low `s` bits.
pub fn bits_for(s: u64) -> Result<u64, NvError> {
    match s {
        0 => Ok(0),
        1..=63 => Ok((1u64 << s) - 1),
        64 => Ok(u64::MAX),
        _ => Err(NvError::OutOfRange(s)),
    }
}

// ---------------------------------------------------------------------------
// Commands.

fn command(tag: u16, cc: u32, body: &[u8]) -> Vec<u8> {
    let size = HEADER + body.len();
    let mut c = Vec::with_capacity(size);
    c.extend_from_slice(&tag.to_be_bytes());
    // Our commands are a few dozen bytes: the cast cannot truncate.
    c.extend_from_slice(&(size as u32).to_be_bytes());
    c.extend_from_slice(&cc.to_be_bytes());
    c.extend_from_slice(body);
    c
}

/// A command authorized by `index` itself with one password session
/// (`TPM_RS_PW`, empty password), handles `index, index`, then `params`.
fn nv_auth_command(cc: u32, index: u32, params: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + 4 + 9 + params.len());
    body.extend_from_slice(&index.to_be_bytes()); // authHandle
    body.extend_from_slice(&index.to_be_bytes()); // nvIndex
    body.extend_from_slice(&9u32.to_be_bytes()); // authorizationSize
    body.extend_from_slice(&TPM_RS_PW.to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes()); // nonceCaller: empty
    body.push(0x01); // sessionAttributes: continueSession
    body.extend_from_slice(&0u16.to_be_bytes()); // hmac: the empty password
    body.extend_from_slice(params);
    command(TPM_ST_SESSIONS, cc, &body)
}

/// `TPM2_NV_ReadPublic(index)`.
pub fn nv_read_public_command(index: u32) -> Vec<u8> {
    command(
        TPM_ST_NO_SESSIONS,
        TPM_CC_NV_READ_PUBLIC,
        &index.to_be_bytes(),
    )
}

/// `TPM2_NV_Read(authHandle = index, index, size, offset)` with the
/// index's empty password.
pub fn nv_read_command(index: u32, size: u16, offset: u16) -> Vec<u8> {
    let mut params = [0u8; 4];
    params[..2].copy_from_slice(&size.to_be_bytes());
    params[2..].copy_from_slice(&offset.to_be_bytes());
    nv_auth_command(TPM_CC_NV_READ, index, &params)
}

/// `TPM2_NV_SetBits(authHandle = index, index, bits)` with the index's
/// empty password.
pub fn nv_set_bits_command(index: u32, bits: u64) -> Vec<u8> {
    nv_auth_command(TPM_CC_NV_SET_BITS, index, &bits.to_be_bytes())
}

// ---------------------------------------------------------------------------
// Responses.

/// A bounds-checked reader over a response.
struct Cursor<'a> {
    buf: &'a [u8],
    command: &'static str,
}

impl<'a> Cursor<'a> {
    fn malformed(&self, reason: &'static str) -> NvError {
        NvError::Malformed {
            command: self.command,
            reason,
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], NvError> {
        match (self.buf.get(..n), self.buf.get(n..)) {
            (Some(head), Some(rest)) => {
                self.buf = rest;
                Ok(head)
            }
            _ => Err(self.malformed(what)),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], NvError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, NvError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, NvError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, NvError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// A TPM2B: a 16-bit size, then that many bytes (at most `max`).
    fn tpm2b(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], NvError> {
        let n = usize::from(self.u16(what)?);
        if n > max {
            return Err(self.malformed(what));
        }
        self.take(n, what)
    }

    fn end(&self, what: &'static str) -> Result<(), NvError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed(what))
        }
    }
}

/// Checks the header of `resp` and returns a cursor after it (at the
/// response's handles or parameters). A response code other than success
/// is [`NvError::Tpm`].
fn response<'a>(
    resp: &'a [u8],
    command: &'static str,
    success_tag: u16,
) -> Result<Cursor<'a>, NvError> {
    let mut c = Cursor { buf: resp, command };
    if resp.len() > MAX_RESPONSE {
        return Err(c.malformed("longer than 4096 bytes"));
    }
    let tag = c.u16("shorter than a response header")?;
    let size = c.u32("shorter than a response header")?;
    let rc = c.u32("shorter than a response header")?;
    if usize::try_from(size).ok() != Some(resp.len()) {
        return Err(c.malformed("the size in the header is not the response's length"));
    }
    if rc != 0 {
        return Err(NvError::Tpm { command, rc });
    }
    if tag != success_tag {
        return Err(c.malformed("unexpected tag (not a TPM 2.0 response to this command?)"));
    }
    Ok(c)
}

/// Skips the response authorization area of a command with one password
/// session (`nonceTPM`, `sessionAttributes`, `hmac`) and checks that the
/// response ends there.
fn password_session_response(c: &mut Cursor<'_>) -> Result<(), NvError> {
    c.tpm2b(MAX_DIGEST, "the session's nonce")?;
    c.u8("the session's attributes")?;
    c.tpm2b(MAX_DIGEST, "the session's hmac")?;
    c.end("bytes after the session")
}

/// Parses a `TPM2_NV_ReadPublic` response.
pub fn parse_nv_read_public_response(resp: &[u8]) -> Result<NvPublic, NvError> {
    let mut c = response(resp, "NV_ReadPublic", TPM_ST_NO_SESSIONS)?;
    let public = c.tpm2b(MAX_RESPONSE, "nvPublic")?;
    let mut p = Cursor {
        buf: public,
        command: c.command,
    };
    let index = p.u32("nvPublic.nvIndex")?;
    let name_alg = p.u16("nvPublic.nameAlg")?;
    let attributes = p.u32("nvPublic.attributes")?;
    let auth_policy = p.tpm2b(MAX_DIGEST, "nvPublic.authPolicy")?.to_vec();
    let data_size = p.u16("nvPublic.dataSize")?;
    p.end("bytes after nvPublic.dataSize")?;
    // The name: nameAlg and a digest of the public area.
    c.tpm2b(2 + MAX_DIGEST, "nvName")?;
    c.end("bytes after nvName")?;
    Ok(NvPublic {
        index,
        name_alg,
        attributes,
        auth_policy,
        data_size,
    })
}

/// Parses a `TPM2_NV_Read` response (one password session) and returns
/// the data read.
pub fn parse_nv_read_response(resp: &[u8]) -> Result<Vec<u8>, NvError> {
    let mut c = response(resp, "NV_Read", TPM_ST_SESSIONS)?;
    let param_size = usize::try_from(c.u32("parameterSize")?).unwrap_or(usize::MAX);
    let params = c.take(param_size, "parameterSize beyond the response")?;
    let mut p = Cursor {
        buf: params,
        command: c.command,
    };
    let data = p.tpm2b(MAX_RESPONSE, "data")?.to_vec();
    p.end("bytes after the data, within parameterSize")?;
    password_session_response(&mut c)?;
    Ok(data)
}

/// Parses a `TPM2_NV_SetBits` response (one password session).
pub fn parse_nv_set_bits_response(resp: &[u8]) -> Result<(), NvError> {
    let mut c = response(resp, "NV_SetBits", TPM_ST_SESSIONS)?;
    if c.u32("parameterSize")? != 0 {
        return Err(c.malformed("NV_SetBits returns no parameters"));
    }
    password_session_response(&mut c)
}

// ---------------------------------------------------------------------------
// Talking to a TPM.

/// Opens a TPM character device read-write (close-on-exec).
pub fn open_device(path: &str) -> Result<std::fs::File, NvError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| NvError::Io {
            what: format!("opening {path}"),
            source,
        })
}

/// Sends one command and reads one response (at most [`MAX_RESPONSE`]
/// bytes). The command goes in one `write` (a TPM device takes a command
/// whole) and the response is read into one buffer until its header's
/// size has arrived: one `read` on a device, maybe several on a socket.
pub fn transact<S: Read + Write>(
    tpm: &mut S,
    command: &'static str,
    cmd: &[u8],
) -> Result<Vec<u8>, NvError> {
    let io = |step: &str| {
        let what = format!("{step} TPM2_{command}");
        move |source| NvError::Io { what, source }
    };
    tpm.write_all(cmd).map_err(io("sending"))?;
    tpm.flush().map_err(io("sending"))?;
    let mut buf = vec![0u8; MAX_RESPONSE];
    let mut got = 0usize;
    while let Some(free) = buf.get_mut(got..) {
        let n = match tpm.read(free) {
            Ok(0) => {
                return Err(NvError::Io {
                    what: format!("reading the response to TPM2_{command}"),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("reading the response to")(e)),
        };
        got = got.saturating_add(n).min(MAX_RESPONSE);
        if got < HEADER {
            continue;
        }
        let size = buf
            .get(2..6)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .and_then(|s| usize::try_from(s).ok())
            .unwrap_or(usize::MAX);
        if !(HEADER..=MAX_RESPONSE).contains(&size) {
            return Err(NvError::Malformed {
                command,
                reason: "response size out of bounds (10..=4096)",
            });
        }
        if got >= size {
            // More than the header says is left for the parser to refuse.
            break;
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// `TPM2_NV_ReadPublic`: the index's public area, `None` when the index
/// is not defined (`TPM_RC_HANDLE` on its handle, exactly; any other
/// refusal is an error).
pub fn nv_read_public<S: Read + Write>(
    tpm: &mut S,
    index: u32,
) -> Result<Option<NvPublic>, NvError> {
    let resp = transact(tpm, "NV_ReadPublic", &nv_read_public_command(index))?;
    match parse_nv_read_public_response(&resp) {
        Ok(p) => Ok(Some(p)),
        Err(NvError::Tpm { rc, .. }) if rc == TPM_RC_HANDLE_1 => Ok(None),
        Err(e) => Err(e),
    }
}

/// `TPM2_NV_Read` of `size` bytes at offset 0, authorized by the index's
/// empty password.
pub fn nv_read<S: Read + Write>(tpm: &mut S, index: u32, size: u16) -> Result<Vec<u8>, NvError> {
    let resp = transact(tpm, "NV_Read", &nv_read_command(index, size, 0))?;
    let data = parse_nv_read_response(&resp)?;
    if data.len() != usize::from(size) {
        return Err(NvError::Malformed {
            command: "NV_Read",
            reason: "the TPM returned another number of bytes than asked",
        });
    }
    Ok(data)
}

/// `TPM2_NV_SetBits`, authorized by the index's empty password.
pub fn nv_set_bits<S: Read + Write>(tpm: &mut S, index: u32, bits: u64) -> Result<(), NvError> {
    let resp = transact(tpm, "NV_SetBits", &nv_set_bits_command(index, bits))?;
    parse_nv_set_bits_response(&resp)
}

/// The bit field of the anti-rollback index: `None` when the index is not
/// defined, `Some(0)` when it is defined but was never written, and
/// [`NvError::Foreign`] when the index at the handle is not ours.
pub fn read_security_version_bits<S: Read + Write>(tpm: &mut S) -> Result<Option<u64>, NvError> {
    let Some(public) = nv_read_public(tpm, MIN_SECURITY_VERSION_INDEX)? else {
        return Ok(None);
    };
    public.check_ours()?;
    if !public.written() {
        return Ok(Some(0));
    }
    let data = nv_read(tpm, MIN_SECURITY_VERSION_INDEX, 8)?;
    let be = <[u8; 8]>::try_from(data.as_slice()).map_err(|_| NvError::Malformed {
        command: "NV_Read",
        reason: "not 8 bytes",
    })?;
    Ok(Some(u64::from_be_bytes(be)))
}

/// The minimum security version: `None` when the index is not defined
/// (nothing enforced yet: treat as 0), else the thermometer's height.
pub fn read_min_security_version<S: Read + Write>(tpm: &mut S) -> Result<Option<u64>, NvError> {
    Ok(read_security_version_bits(tpm)?.map(min_security_version_of))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Recorded from swtpm 0.7.1 (libtpms), raw on its server port, index
    // defined with `tpm2_nvdefine -s 8 -a "authwrite|authread|no_da|nt=bits"`.
    const READ_PUBLIC_CMD: &str = "80010000000e000001690100f1a0";
    const RC_HANDLE_RSP: &str = "80010000000a0000018b";
    const READ_PUBLIC_UNWRITTEN_RSP: &str = "80010000003e00000000000e0100f1a0000b02040024000000080022000b2fc5d3e53572e20eee695f88584aa86398c00f63a18fc5ec87e365466b684973";
    const READ_PUBLIC_WRITTEN_RSP: &str = "80010000003e00000000000e0100f1a0000b22040024000000080022000b0557099e41833b8a3e5a9201239cff754b8ee6a2630fab0269be7b0ec9542dac";
    // An ordinary index (ownerwrite|ownerread|authread|authwrite) at 0x0100f1a1.
    const READ_PUBLIC_ORDINARY_RSP: &str = "80010000003e00000000000e0100f1a1000b00060006000000080022000bec9ba8572e1b92895bcc78b8ce77275241d5f05a76d11a90431ecd7b35e12a08";
    const NV_READ_CMD: &str =
        "8002000000230000014e0100f1a00100f1a00000000940000009000001000000080000";
    const NV_READ_UNINITIALIZED_RSP: &str = "80010000000a0000014a";
    const NV_READ_0_RSP: &str = "80020000001d000000000000000a000800000000000000000000010000";
    const NV_READ_1F_RSP: &str = "80020000001d000000000000000a0008000000000000001f0000010000";
    const SET_BITS_1F_CMD: &str =
        "800200000027000001350100f1a00100f1a000000009400000090000010000000000000000001f";
    const SET_BITS_RSP: &str = "80020000001300000000000000000000010000";

    #[test]
    fn commands_match_the_recorded_ones() {
        assert_eq!(
            nv_read_public_command(MIN_SECURITY_VERSION_INDEX),
            hex(READ_PUBLIC_CMD)
        );
        assert_eq!(
            nv_read_command(MIN_SECURITY_VERSION_INDEX, 8, 0),
            hex(NV_READ_CMD)
        );
        assert_eq!(
            nv_set_bits_command(MIN_SECURITY_VERSION_INDEX, 0x1f),
            hex(SET_BITS_1F_CMD)
        );
    }

    #[test]
    fn read_public_parses_and_is_ours() {
        let p = parse_nv_read_public_response(&hex(READ_PUBLIC_UNWRITTEN_RSP)).unwrap();
        assert_eq!(
            p,
            NvPublic {
                index: MIN_SECURITY_VERSION_INDEX,
                name_alg: TPM_ALG_SHA256,
                attributes: INDEX_ATTRIBUTES,
                auth_policy: vec![],
                data_size: 8,
            }
        );
        assert!(!p.written());
        p.check_ours().unwrap();
        let w = parse_nv_read_public_response(&hex(READ_PUBLIC_WRITTEN_RSP)).unwrap();
        assert!(w.written());
        w.check_ours().unwrap();
    }

    #[test]
    fn foreign_indices_are_refused() {
        let o = parse_nv_read_public_response(&hex(READ_PUBLIC_ORDINARY_RSP)).unwrap();
        assert!(matches!(o.check_ours(), Err(NvError::Foreign { .. })));
        let ours = parse_nv_read_public_response(&hex(READ_PUBLIC_WRITTEN_RSP)).unwrap();
        let variants = [
            NvPublic {
                index: MIN_SECURITY_VERSION_INDEX + 1,
                ..ours.clone()
            },
            NvPublic {
                attributes: ours.attributes & !TPM_NT_BITS, // ordinary
                ..ours.clone()
            },
            NvPublic {
                attributes: ours.attributes | (1 << 26), // orderly
                ..ours.clone()
            },
            NvPublic {
                attributes: ours.attributes | 1, // ppwrite
                ..ours.clone()
            },
            NvPublic {
                data_size: 4,
                ..ours.clone()
            },
            NvPublic {
                name_alg: 0x0004,
                ..ours.clone()
            },
            NvPublic {
                auth_policy: vec![0; 32],
                ..ours.clone()
            },
        ];
        for v in variants {
            assert!(
                matches!(v.check_ours(), Err(NvError::Foreign { .. })),
                "{v:?} passed as ours"
            );
        }
    }

    #[test]
    fn error_responses_carry_the_response_code() {
        let e = parse_nv_read_public_response(&hex(RC_HANDLE_RSP)).unwrap_err();
        assert_eq!(e.response_code(), Some(TPM_RC_HANDLE_1));
        let e = parse_nv_read_response(&hex(NV_READ_UNINITIALIZED_RSP)).unwrap_err();
        assert_eq!(e.response_code(), Some(TPM_RC_NV_UNINITIALIZED));
    }

    #[test]
    fn nv_read_and_set_bits_parse() {
        assert_eq!(parse_nv_read_response(&hex(NV_READ_0_RSP)).unwrap(), [0; 8]);
        assert_eq!(
            parse_nv_read_response(&hex(NV_READ_1F_RSP)).unwrap(),
            [0, 0, 0, 0, 0, 0, 0, 0x1f]
        );
        parse_nv_set_bits_response(&hex(SET_BITS_RSP)).unwrap();
        // A read response is not a SetBits response (it has parameters).
        assert!(parse_nv_set_bits_response(&hex(NV_READ_1F_RSP)).is_err());
    }

    #[test]
    fn thermometer() {
        assert_eq!(min_security_version_of(0), 0);
        assert_eq!(min_security_version_of(1), 1);
        assert_eq!(min_security_version_of(0b11), 2);
        assert_eq!(min_security_version_of(0b1_0000), 5);
        assert_eq!(min_security_version_of(u64::MAX), 64);
        for s in 0..=MAX_SECURITY_VERSION {
            let b = bits_for(s).unwrap();
            assert_eq!(min_security_version_of(b), s);
            assert_eq!(b.count_ones() as u64, s);
            // OR-ing a lower version in never lowers the minimum.
            for t in 0..=s {
                assert_eq!(min_security_version_of(b | bits_for(t).unwrap()), s);
            }
        }
        assert!(matches!(bits_for(65), Err(NvError::OutOfRange(65))));
        assert!(bits_for(u64::MAX).is_err());
    }

    /// A fake TPM: answers each command with the next recorded response,
    /// delivered in chunks of `chunk` bytes (a socket may split them).
    struct Fake {
        responses: VecDeque<Vec<u8>>,
        current: Vec<u8>,
        chunk: usize,
        commands: Vec<Vec<u8>>,
    }

    impl Fake {
        fn new(responses: &[&str], chunk: usize) -> Self {
            Fake {
                responses: responses.iter().map(|r| hex(r)).collect(),
                current: vec![],
                chunk,
                commands: vec![],
            }
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.commands.push(buf.to_vec());
            self.current = self.responses.pop_front().unwrap_or_default();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.current.len());
            buf[..n].copy_from_slice(&self.current[..n]);
            self.current.drain(..n);
            Ok(n)
        }
    }

    #[test]
    fn read_min_security_version_over_a_stream() {
        for chunk in [1, 3, 4096] {
            let mut t = Fake::new(&[READ_PUBLIC_WRITTEN_RSP, NV_READ_1F_RSP], chunk);
            assert_eq!(read_min_security_version(&mut t).unwrap(), Some(5));
            assert_eq!(t.commands, [hex(READ_PUBLIC_CMD), hex(NV_READ_CMD)]);
        }
        let mut t = Fake::new(&[RC_HANDLE_RSP], 4096);
        assert_eq!(read_min_security_version(&mut t).unwrap(), None);
        // Defined, never written: 0, without reading it.
        let mut t = Fake::new(&[READ_PUBLIC_UNWRITTEN_RSP], 7);
        assert_eq!(read_min_security_version(&mut t).unwrap(), Some(0));
        assert_eq!(t.commands.len(), 1);
        let mut t = Fake::new(&[READ_PUBLIC_ORDINARY_RSP], 4096);
        assert!(matches!(
            read_min_security_version(&mut t),
            Err(NvError::Foreign { .. })
        ));
        // The stream closes mid-response.
        let mut t = Fake::new(&[&NV_READ_1F_RSP[..20]], 4096);
        assert!(matches!(
            nv_read(&mut t, MIN_SECURITY_VERSION_INDEX, 8),
            Err(NvError::Io { .. })
        ));
        // A header claiming more than 4096 bytes.
        let mut t = Fake::new(&["80020000100100000000"], 4096);
        assert!(matches!(
            nv_read(&mut t, MIN_SECURITY_VERSION_INDEX, 8),
            Err(NvError::Malformed { .. })
        ));
        let mut t = Fake::new(&[SET_BITS_RSP], 2);
        nv_set_bits(&mut t, MIN_SECURITY_VERSION_INDEX, 0x1f).unwrap();
        assert_eq!(t.commands, [hex(SET_BITS_1F_CMD)]);
    }

    fn parse_all(resp: &[u8]) {
        let _ = parse_nv_read_public_response(resp);
        let _ = parse_nv_read_response(resp);
        let _ = parse_nv_set_bits_response(resp);
    }

    #[test]
    fn parsers_refuse_truncated_and_extended_responses() {
        for r in [
            READ_PUBLIC_WRITTEN_RSP,
            NV_READ_1F_RSP,
            SET_BITS_RSP,
            RC_HANDLE_RSP,
        ] {
            let r = hex(r);
            for n in 0..r.len() {
                parse_all(&r[..n]);
                // A cut response, its header size fixed up: still refused.
                let mut cut = r[..n].to_vec();
                if n >= 6 {
                    cut[2..6].copy_from_slice(&(n as u32).to_be_bytes());
                    if r[6..10] == [0; 4] {
                        assert!(
                            parse_nv_read_public_response(&cut).is_err()
                                && parse_nv_read_response(&cut).is_err()
                                && parse_nv_set_bits_response(&cut).is_err(),
                            "{n}-byte prefix accepted"
                        );
                    }
                }
            }
            let mut long = r.clone();
            long.push(0);
            let n = long.len() as u32;
            long[2..6].copy_from_slice(&n.to_be_bytes());
            assert!(parse_nv_read_public_response(&long).is_err());
            assert!(parse_nv_read_response(&long).is_err());
            assert!(parse_nv_set_bits_response(&long).is_err());
        }
        assert!(parse_nv_read_response(&vec![0; MAX_RESPONSE + 1]).is_err());
    }

    #[test]
    fn parsers_survive_random_mutations() {
        // xorshift: deterministic, no dependency.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds: Vec<Vec<u8>> = [
            READ_PUBLIC_WRITTEN_RSP,
            NV_READ_1F_RSP,
            SET_BITS_RSP,
            RC_HANDLE_RSP,
        ]
        .iter()
        .map(|r| hex(r))
        .collect();
        for i in 0..20_000 {
            let mut r = seeds[i % seeds.len()].clone();
            for _ in 0..(1 + next() % 4) {
                let pos = (next() as usize) % r.len();
                r[pos] = next() as u8;
            }
            if next() % 2 == 0 {
                let n = r.len() as u32;
                r[2..6].copy_from_slice(&n.to_be_bytes());
            }
            parse_all(&r);
        }
        for len in 0..64 {
            let r: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            parse_all(&r);
        }
    }
}
