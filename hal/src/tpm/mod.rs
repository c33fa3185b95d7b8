//! The TPM.
pub mod info;
pub use info::TpmInfo;
