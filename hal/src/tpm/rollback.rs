//! Anti-rollback: the minimum security version, kept in a TPM NV index.
//!
//! A release carries a security version. Once a version is blessed (it
//! booted and passed its health checks), the node raises the minimum to
//! it ([`Tpm::raise_security_version`]); init's stage 1 reads the minimum
//! (`fluxnode_lowlevel::tpmnv`, no TPM software stack in the initramfs)
//! and refuses a slot whose security version is below it.
//!
//! The index, its encoding and its known limits are described in
//! [`fluxnode_lowlevel::tpmnv`]: a `TPM_NT_BITS` index at
//! [`INDEX`] (`0x0100F1A0`) with attributes `NT=BITS | AUTHWRITE |
//! AUTHREAD | NO_DA` and an empty auth value; version `s` is the low `s`
//! bits set, and `TPM2_NV_SetBits` can only add bits, so the minimum
//! never goes down while the index exists. Both sides use that module's
//! definition of the index ([`tpmnv::NvPublic::check_ours`]), so the
//! writer and the reader cannot disagree on what the index is.
//!
//! Known limits, in short (the full text is in `tpmnv`): 64 security
//! bumps ever; with an empty owner authorization (the default) root can
//! undefine the index, which resets the minimum to 0; anyone who may open
//! the TPM can raise it (to 64: nothing boots any more).
//!
//! # How `TPM2_NV_SetBits` is sent
//!
//! tss-esapi 7.7 has no `NV_SetBits` ("Missing function: NV_SetBits" in
//! its source) and does not expose its ESYS context, so the command is
//! sent by `fluxnode_lowlevel::tpmnv` on a second, raw connection to the
//! same TPM, named by the same TCTI: `device:PATH` opens `PATH` again
//! (fine for `/dev/tpmrm0`, which has many openers; `/dev/tpm0` has one
//! and answers `EBUSY` while this [`Tpm`] holds it), `swtpm:host=H,port=P`
//! connects to swtpm's server port (tpm2-tss's swtpm TCTI connects for
//! each command, so the port is free between two of them). Other TCTIs
//! (mssim, tabrmd) cannot raise the minimum. Everything else (reading,
//! defining) goes through tss-esapi, independently of `tpmnv`'s parser.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use fluxnode_lowlevel::tpmnv;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, NvPublic};
use tss_esapi::tss2_esys::TPM2B_NV_PUBLIC;

use super::Tpm;
use crate::error::{Error, Result};

pub use fluxnode_lowlevel::tpmnv::{
    bits_for, min_security_version_of, MAX_SECURITY_VERSION, MIN_SECURITY_VERSION_INDEX as INDEX,
};

/// How long the raw connection to swtpm may wait for an answer.
const RAW_TIMEOUT: Duration = Duration::from_secs(30);

/// What the index holds, as read through tss-esapi.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecurityVersionState {
    /// Whether the index is defined (if not, nothing is enforced).
    pub defined: bool,
    /// The bit field (0 when not defined or never written).
    pub bits: u64,
    /// The minimum security version the bits encode.
    pub min_security_version: u64,
}

impl SecurityVersionState {
    fn from_bits(bits: Option<u64>) -> Self {
        let b = bits.unwrap_or(0);
        SecurityVersionState {
            defined: bits.is_some(),
            bits: b,
            min_security_version: min_security_version_of(b),
        }
    }
}

/// `tss_esapi`'s public area as `tpmnv`'s, so that one check decides
/// whether an index is ours.
fn to_tpmnv(public: NvPublic) -> Result<tpmnv::NvPublic> {
    let p = TPM2B_NV_PUBLIC::try_from(public)
        .map_err(|e| Error::tpm("NV_ReadPublic (convert)", e))?
        .nvPublic;
    let policy = p
        .authPolicy
        .buffer
        .get(..usize::from(p.authPolicy.size))
        .ok_or_else(|| Error::tpm("NV_ReadPublic", "authPolicy size beyond its buffer"))?;
    Ok(tpmnv::NvPublic {
        index: p.nvIndex,
        name_alg: p.nameAlg,
        attributes: p.attributes,
        auth_policy: policy.to_vec(),
        data_size: p.dataSize,
    })
}

fn is_handle_error(e: &tss_esapi::Error) -> bool {
    matches!(e, tss_esapi::Error::Tss2Error(rc) if rc.kind() == Some(Tss2ResponseCodeKind::Handle))
}

/// A raw connection to the TPM behind a TCTI string.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Opens a raw command/response connection to the TPM that `tcti` names
/// (see the module documentation for which TCTIs can).
fn open_raw(tcti: &str) -> Result<Box<dyn Stream>> {
    let (kind, conf) = tcti.split_once(':').unwrap_or((tcti, ""));
    match kind {
        "device" => {
            // tpm2-tss's default device is /dev/tpm0.
            let path = if conf.is_empty() { "/dev/tpm0" } else { conf };
            let f = tpmnv::open_device(path).map_err(|e| {
                Error::tpm(
                    "NV_SetBits (raw connection)",
                    format!("{e}; tss-esapi 7.7 cannot send NV_SetBits, so it goes on a second connection, which needs /dev/tpmrm0"),
                )
            })?;
            Ok(Box::new(f))
        }
        "swtpm" => {
            let mut host = "localhost".to_string();
            let mut port: u16 = 2321;
            for kv in conf.split(',').filter(|s| !s.is_empty()) {
                match kv.split_once('=') {
                    Some(("host", h)) => host = h.to_string(),
                    Some(("port", p)) => {
                        port = p.parse().map_err(|_| {
                            Error::Invalid(format!("TCTI {tcti}: port {p:?} is not a port"))
                        })?
                    }
                    _ => return Err(Error::Invalid(format!("TCTI {tcti}: unknown option {kv:?}"))),
                }
            }
            let s = TcpStream::connect((host.as_str(), port)).map_err(|e| {
                Error::tpm(
                    "NV_SetBits (raw connection)",
                    format!("connecting to {host}:{port}: {e}"),
                )
            })?;
            for r in [
                s.set_read_timeout(Some(RAW_TIMEOUT)),
                s.set_write_timeout(Some(RAW_TIMEOUT)),
            ] {
                r.map_err(|e| Error::tpm("NV_SetBits (raw connection)", e))?;
            }
            Ok(Box::new(s))
        }
        _ => Err(Error::Invalid(format!(
            "TCTI {tcti}: raising the security version needs a device: or swtpm: TCTI (tss-esapi 7.7 cannot send NV_SetBits)"
        ))),
    }
}

impl Tpm {
    /// Runs `f` with an ESYS handle for the index, closed afterwards;
    /// `None` when the index is not defined.
    fn with_index<T>(
        &mut self,
        f: impl FnOnce(&mut Self, NvIndexHandle) -> Result<T>,
    ) -> Result<Option<T>> {
        let tpm_handle = NvIndexTpmHandle::new(INDEX).map_err(|e| Error::tpm("NV index", e))?;
        // Ask whether it exists first: ESYS logs a failed ReadPublic as an
        // error on stderr, which would be noise for a normal state.
        let (handles, _) = self
            .ctx
            .execute_without_session(|ctx| ctx.get_capability(CapabilityType::Handles, INDEX, 1))
            .map_err(|e| Error::tpm("GetCapability (NV indices)", e))?;
        let exists = matches!(&handles, CapabilityData::Handles(list)
            if list.as_ref().first() == Some(&TpmHandle::NvIndex(tpm_handle)));
        if !exists {
            return Ok(None);
        }
        let mut object = match self
            .ctx
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle)))
        {
            Ok(o) => o,
            Err(e) if is_handle_error(&e) => return Ok(None),
            Err(e) => return Err(Error::tpm("NV_ReadPublic", e)),
        };
        let out = f(self, NvIndexHandle::from(object));
        let closed = self.ctx.tr_close(&mut object);
        match (out, closed) {
            (Ok(v), Ok(())) => Ok(Some(v)),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(Error::tpm("TR_Close (NV index)", e)),
        }
    }

    /// The index as tss-esapi reads it: `None` when not defined, else
    /// whether it was ever written and its bits (0 when never written).
    /// An index at [`INDEX`] that is not exactly ours is an error.
    fn read_index(&mut self) -> Result<Option<(bool, u64)>> {
        self.with_index(|t, nv| {
            let (public, _name) = t
                .ctx
                .execute_without_session(|ctx| ctx.nv_read_public(nv))
                .map_err(|e| Error::tpm("NV_ReadPublic", e))?;
            let public = to_tpmnv(public)?;
            public
                .check_ours()
                .map_err(|e| Error::tpm("NV_ReadPublic", e))?;
            if !public.written() {
                return Ok((false, 0));
            }
            let data = t
                .ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.nv_read(NvAuth::NvIndex(nv), nv, 8, 0)
                })
                .map_err(|e| Error::tpm("NV_Read", e))?;
            let be = <[u8; 8]>::try_from(data.value())
                .map_err(|_| Error::tpm("NV_Read", "the index did not return 8 bytes"))?;
            Ok((true, u64::from_be_bytes(be)))
        })
    }

    /// What the index holds: not defined, defined and never written (0),
    /// or its bits. An index at [`INDEX`] that is not exactly ours is an
    /// error, never a minimum.
    pub fn security_version_state(&mut self) -> Result<SecurityVersionState> {
        Ok(SecurityVersionState::from_bits(
            self.read_index()?.map(|(_, bits)| bits),
        ))
    }

    /// The minimum security version: 0 when the index is not defined
    /// (nothing enforced yet).
    pub fn min_security_version(&mut self) -> Result<u64> {
        Ok(self.security_version_state()?.min_security_version)
    }

    /// Raises the minimum security version to `s` (defining the index with
    /// owner authorization, an empty password, if it is missing) and
    /// returns the new minimum, read back from the TPM. Never lowers it:
    /// `s` below the minimum leaves it as it is. `s` above
    /// [`MAX_SECURITY_VERSION`] is an error, and so is an index at
    /// [`INDEX`] that is not exactly ours (it is left alone).
    pub fn raise_security_version(&mut self, s: u64) -> Result<u64> {
        let bits = bits_for(s).map_err(|e| Error::Invalid(e.to_string()))?;
        let current = match self.read_index()? {
            Some(c) => Some(c),
            None => {
                self.define_security_version_index()?;
                self.read_index()?
            }
        };
        let (written, have) =
            current.ok_or_else(|| Error::tpm("NV_DefineSpace", "the index is still missing"))?;
        // SetBits of 0 bits is still needed on a fresh index: it marks it
        // written (a read of an unwritten index fails).
        if !written || have | bits != have {
            let mut raw = open_raw(&self.tcti)?;
            tpmnv::nv_set_bits(&mut raw, INDEX, bits).map_err(|e| Error::tpm("NV_SetBits", e))?;
        }
        let want = have | bits;
        match self.read_index()? {
            Some((true, now)) if now & want == want => Ok(min_security_version_of(now)),
            now => Err(Error::tpm(
                "NV_SetBits",
                format!("the index reads {now:?} after setting {bits:#x} over {have:#x}"),
            )),
        }
    }

    /// `TPM2_NV_DefineSpace` of the index, authorized by the owner
    /// hierarchy's (empty) password.
    fn define_security_version_index(&mut self) -> Result<()> {
        let attributes =
            tss_esapi::attributes::NvIndexAttributes::try_from(tpmnv::INDEX_ATTRIBUTES)
                .map_err(|e| Error::tpm("NV_DefineSpace (attributes)", e))?;
        let public = NvPublic::builder()
            .with_nv_index(NvIndexTpmHandle::new(INDEX).map_err(|e| Error::tpm("NV index", e))?)
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attributes)
            .with_data_area_size(8)
            .build()
            .map_err(|e| Error::tpm("NV_DefineSpace (public area)", e))?;
        let nv = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.nv_define_space(Provision::Owner, None, public)
            })
            .map_err(|e| {
                Error::tpm(
                    "NV_DefineSpace",
                    format!("{e} (owner authorization is tried with an empty password)"),
                )
            })?;
        let mut object = ObjectHandle::from(nv);
        self.ctx
            .tr_close(&mut object)
            .map_err(|e| Error::tpm("TR_Close (NV index)", e))
    }
}
