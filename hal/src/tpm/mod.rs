//! The TPM 2.0, through `tss-esapi` 7.7 (tpm2-tss 3.2 on bookworm).
//!
//! What a node needs from its TPM to prove what it is:
//!
//! - the EK certificate from NV ([`Tpm::ek_certificate`]), which chains to
//!   the manufacturer's CA;
//! - the EK itself (re-created from the standard template on every use: it
//!   is deterministic) and a restricted signing AK under it, created once
//!   and kept on /var as a blob ([`AkBlob`]) that only this TPM can load;
//! - quotes over a PCR selection with the verifier's qualifying data
//!   ([`Tpm::quote`]): raw TPMS_ATTEST, TPMT_SIGNATURE and PCR values,
//!   exactly what `tpm2_checkquote` and a registry verify;
//! - the firmware event log, raw ([`eventlog`]);
//! - ActivateCredential, to prove the AK and EK live in the same TPM
//!   ([`Tpm::activate_credential`]).
//!
//! Every transient object and session is flushed before a call returns:
//! swtpm (and some real TPMs behind no resource manager) has three object
//! slots. Every error names the TPM command that failed.
//!
//! The TCTI comes from the caller, `$FLUXNODE_TCTI`, or `device:/dev/tpmrm0`.

pub mod credential;
pub mod eventlog;
pub mod info;
pub mod keys;
pub mod pcr;
pub mod quote;
pub mod rollback;

use std::str::FromStr;

use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

pub use info::TpmInfo;
pub use keys::{AkBlob, AkInfo};
pub use quote::Quote;

use crate::error::{Error, Result};

/// The TCTI used when none is given: the kernel's resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// The TCTI to use: `explicit`, else `$FLUXNODE_TCTI`, else [`DEFAULT_TCTI`].
pub fn tcti_from(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_string)
        .or_else(|| {
            std::env::var("FLUXNODE_TCTI")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_TCTI.to_string())
}

/// An open TPM (Debug shows the TCTI: tss_esapi::Context has no Debug).
pub struct Tpm {
    ctx: Context,
    tcti: String,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm").field("tcti", &self.tcti).finish()
    }
}

impl Tpm {
    /// Opens the TPM behind `tcti` (e.g. `device:/dev/tpmrm0`,
    /// `swtpm:host=127.0.0.1,port=2321`).
    pub fn open(tcti: &str) -> Result<Self> {
        let conf = TctiNameConf::from_str(tcti)
            .map_err(|e| Error::tpm("open (TCTI)", format!("{tcti}: {e}")))?;
        let ctx = Context::new(conf).map_err(|e| {
            Error::tpm(
                "open",
                format!("{tcti}: {e}; is the TPM there and are we allowed to use it?"),
            )
        })?;
        Ok(Tpm {
            ctx,
            tcti: tcti.to_string(),
        })
    }

    /// The TCTI this TPM was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Runs `f` with `handle` loaded, flushing it afterwards whatever `f` returned.
    fn with_flushed<T>(
        &mut self,
        handle: KeyHandle,
        f: impl FnOnce(&mut Self, KeyHandle) -> Result<T>,
    ) -> Result<T> {
        let out = f(self, handle);
        let flushed = self.ctx.flush_context(ObjectHandle::from(handle));
        match (out, flushed) {
            (Ok(v), Ok(())) => Ok(v),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(Error::tpm("FlushContext", e)),
        }
    }
}
