//! `fluxnode-hal tpm ...`: the TPM commands, each a few lines over `fluxnode_hal::tpm`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use fluxnode_hal::tpm::credential::CredentialBlob;
use fluxnode_hal::tpm::pcr::PcrSelection;
use fluxnode_hal::tpm::{self, eventlog, rollback, AkBlob, Tpm};

/// Where the AK blob lives on the appliance.
const DEFAULT_AK_BLOB: &str = "/var/lib/fluxnode/ak.json";

#[derive(Args, Debug)]
pub struct TpmArgs {
    /// TCTI, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321
    /// (default: $FLUXNODE_TCTI, else device:/dev/tpmrm0).
    #[arg(long, global = true)]
    tcti: Option<String>,
    #[command(subcommand)]
    cmd: TpmCmd,
}

#[derive(Subcommand, Debug)]
enum TpmCmd {
    /// Manufacturer, vendor string and firmware version (JSON).
    Info,
    /// Read the EK certificate from NV (RSA 0x01c00002, else ECC 0x01c0000a)
    /// and write it as DER; prints subject, issuer and validity.
    EkCert {
        /// Output file (DER).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the EK public key: TPM2B_PUBLIC (for `tpm2_makecredential -u`) and PEM.
    EkPublic {
        /// TPM2B_PUBLIC output file.
        #[arg(long)]
        out: PathBuf,
        /// PEM output file.
        #[arg(long)]
        pem: Option<PathBuf>,
    },
    /// Create a restricted signing AK under the EK and save its blob.
    /// Prints the AK's name, PEM and attributes (JSON).
    CreateAk {
        /// Where to keep the blob.
        #[arg(long, default_value = DEFAULT_AK_BLOB)]
        blob: PathBuf,
    },
    /// Load the AK from its blob and print name, PEM and attributes (JSON).
    AkInfo {
        /// The blob.
        #[arg(long, default_value = DEFAULT_AK_BLOB)]
        blob: PathBuf,
        /// Also write the AK public key as PEM here (`tpm2_checkquote -u`).
        #[arg(long)]
        pem: Option<PathBuf>,
    },
    /// Quote PCRs with the AK. Prints the quote as JSON; with --out DIR also
    /// writes quote.msg (TPMS_ATTEST), quote.sig (TPMT_SIGNATURE) and
    /// quote.pcrs (values) for `tpm2_checkquote -m -s -f -l -q`.
    Quote {
        /// The AK blob.
        #[arg(long, default_value = DEFAULT_AK_BLOB)]
        blob: PathBuf,
        /// PCR selection, tpm2-tools syntax.
        #[arg(long, default_value = "sha256:0,1,2,3,4,5,6,7")]
        pcrs: PcrSelection,
        /// Qualifying data (the verifier's nonce), hex, at most 64 bytes.
        #[arg(long)]
        nonce: String,
        /// Directory for the raw files.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Copy the firmware event log (raw TCG format) to a file.
    Eventlog {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// The log to read.
        #[arg(long, default_value = eventlog::DEFAULT_PATH)]
        path: PathBuf,
    },
    /// ActivateCredential: recover the secret of a `tpm2_makecredential -o`
    /// file made for this TPM's EK and the AK's name. Prints it as hex.
    Activate {
        /// The AK blob.
        #[arg(long, default_value = DEFAULT_AK_BLOB)]
        blob: PathBuf,
        /// The credential file.
        #[arg(long)]
        credential: PathBuf,
    },
    /// The anti-rollback minimum security version (NV index 0x0100F1A0, a
    /// bit field that can only grow). With --raise N, raise it to N first:
    /// never lowers it, defines the index (owner's empty password) when
    /// missing. Run --raise only once version N is blessed.
    Secver {
        /// Raise the minimum to this security version (0..=64).
        #[arg(long, value_name = "N")]
        raise: Option<u64>,
        /// Print JSON (index, defined, bits, min_security_version, and
        /// previous with --raise).
        #[arg(long)]
        json: bool,
    },
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn load_blob(path: &Path) -> Result<AkBlob> {
    AkBlob::load(path).with_context(|| {
        format!(
            "no usable AK blob at {}; create one with `fluxnode-hal tpm create-ak --blob {}`",
            path.display(),
            path.display()
        )
    })
}

fn json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn run(a: TpmArgs) -> Result<ExitCode> {
    let tcti = tpm::tcti_from(a.tcti.as_deref());
    if let TpmCmd::Eventlog { out, path } = &a.cmd {
        write(out, &eventlog::read(path)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Tpm::open(&tcti)?;
    match a.cmd {
        TpmCmd::Info => {
            let (manufacturer, vendor, firmware) = tpm::info::properties(&mut t)?;
            json(
                &serde_json::json!({ "tcti": tcti, "manufacturer": manufacturer, "vendor": vendor, "firmware": firmware }),
            )?;
        }
        TpmCmd::EkCert { out } => {
            let Some(der) = t.ek_certificate()? else {
                eprintln!("this TPM has no EK certificate in NV (0x01c00002 / 0x01c0000a)");
                return Ok(ExitCode::FAILURE);
            };
            write(&out, &der)?;
            json(&fluxnode_hal::tpm::keys::describe_certificate(&der)?)?;
        }
        TpmCmd::EkPublic { out, pem } => {
            let (p, tpm2b) = t.ek_public()?;
            write(&out, &tpm2b)?;
            if let Some(pem) = pem {
                write(&pem, p.as_bytes())?;
            }
        }
        TpmCmd::CreateAk { blob } => {
            let ak = t.create_ak()?;
            if let Some(dir) = blob.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            ak.save(&blob)?;
            json(&t.ak_info(&ak)?)?;
        }
        TpmCmd::AkInfo { blob, pem } => {
            let info = t.ak_info(&load_blob(&blob)?)?;
            if let Some(p) = pem {
                write(&p, info.pem.as_bytes())?;
            }
            json(&info)?;
        }
        TpmCmd::Quote {
            blob,
            pcrs,
            nonce,
            out,
        } => {
            let nonce = hex::decode(nonce.trim()).context("--nonce must be hex")?;
            let q = t.quote(&load_blob(&blob)?, &pcrs, &nonce)?;
            if let Some(dir) = out {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                write(&dir.join("quote.msg"), &q.attest)?;
                write(&dir.join("quote.sig"), &q.signature)?;
                write(&dir.join("quote.pcrs"), &q.pcr_values)?;
            }
            json(&q)?;
        }
        TpmCmd::Activate { blob, credential } => {
            let bytes = std::fs::read(&credential)
                .with_context(|| format!("reading {}", credential.display()))?;
            let cred = CredentialBlob::from_tpm2_tools(&bytes)?;
            println!(
                "{}",
                hex::encode(t.activate_credential(&load_blob(&blob)?, &cred)?)
            );
        }
        TpmCmd::Secver {
            raise,
            json: as_json,
        } => {
            let previous = match raise {
                Some(n) => {
                    let before = t.min_security_version()?;
                    t.raise_security_version(n)?;
                    Some(before)
                }
                None => None,
            };
            let st = t.security_version_state()?;
            let index = format!("{:#010x}", rollback::INDEX);
            if as_json {
                let mut v = serde_json::json!({
                    "tcti": tcti,
                    "index": index,
                    "defined": st.defined,
                    "bits": format!("{:#018x}", st.bits),
                    "min_security_version": st.min_security_version,
                });
                if let (Some(p), Some(o)) = (previous, v.as_object_mut()) {
                    o.insert("previous".into(), p.into());
                }
                json(&v)?;
            } else {
                if let Some(p) = previous {
                    println!("raised: {p} -> {}", st.min_security_version);
                }
                if st.defined {
                    println!(
                        "min security version: {} (NV index {index}, bits {:#x})",
                        st.min_security_version, st.bits
                    );
                } else {
                    println!(
                        "min security version: 0 (NV index {index} not defined: nothing enforced)"
                    );
                }
            }
        }
        TpmCmd::Eventlog { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}
