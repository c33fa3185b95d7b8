//! A bounds-checked reader for TPM 2.0 marshalled structures (big-endian,
//! `TPM2B_*` = a u16 size then that many bytes). Every read checks the
//! remaining length; nothing here panics on any input.

use thiserror::Error;

/// Why bytes do not parse as the TPM structure they claim to be.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The input ended inside a field.
    #[error("truncated: {field} needs {need} bytes, {left} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Bytes left.
        left: usize,
    },
    /// A sized field is larger than the structure allows.
    #[error("{field} is {size} bytes, at most {max} allowed")]
    Oversized {
        /// The field.
        field: &'static str,
        /// Its declared size.
        size: usize,
        /// The largest size the TPM specification allows.
        max: usize,
    },
    /// Bytes follow the end of the structure.
    #[error("{count} trailing bytes after {structure}")]
    Trailing {
        /// The structure.
        structure: &'static str,
        /// How many bytes follow it.
        count: usize,
    },
    /// A field holds a value the structure does not allow.
    #[error("{field} has the invalid value {value:#x}")]
    BadValue {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
}

/// A cursor over marshalled bytes.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub(crate) fn bytes(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.data.len() {
            return Err(WireError::Truncated {
                field,
                need: n,
                left: self.data.len(),
            });
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(field, N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A `TPM2B_*`: u16 size (at most `max`), then the bytes.
    pub(crate) fn tpm2b(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], WireError> {
        let size = usize::from(self.u16(field)?);
        if size > max {
            return Err(WireError::Oversized { field, size, max });
        }
        self.bytes(field, size)
    }

    /// Bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.data
    }

    /// Fails when bytes are left over.
    pub(crate) fn finish(&self, structure: &'static str) -> Result<(), WireError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing {
                structure,
                count: self.data.len(),
            })
        }
    }
}

/// TPM_ALG_ID values this crate names.
pub mod alg {
    /// TPM_ALG_RSA.
    pub const RSA: u16 = 0x0001;
    /// TPM_ALG_SHA1.
    pub const SHA1: u16 = 0x0004;
    /// TPM_ALG_AES.
    pub const AES: u16 = 0x0006;
    /// TPM_ALG_SHA256.
    pub const SHA256: u16 = 0x000B;
    /// TPM_ALG_SHA384.
    pub const SHA384: u16 = 0x000C;
    /// TPM_ALG_SHA512.
    pub const SHA512: u16 = 0x000D;
    /// TPM_ALG_NULL.
    pub const NULL: u16 = 0x0010;
    /// TPM_ALG_RSASSA (PKCS#1 v1.5).
    pub const RSASSA: u16 = 0x0014;
    /// TPM_ALG_RSAPSS.
    pub const RSAPSS: u16 = 0x0016;
    /// TPM_ALG_ECDSA.
    pub const ECDSA: u16 = 0x0018;
    /// TPM_ALG_ECC.
    pub const ECC: u16 = 0x0023;
    /// TPM_ALG_CFB.
    pub const CFB: u16 = 0x0043;
    /// TPM_ECC_NIST_P256 (a TPM_ECC_CURVE, not an algorithm).
    pub const NIST_P256: u16 = 0x0003;
}

/// Largest digest (SHA-512), the bound of TPM2B_DIGEST and TPM2B_DATA.
pub(crate) const MAX_DIGEST: usize = 64;
/// TPM2B_NAME: a TPMT_HA (2 + 64) or a handle.
pub(crate) const MAX_NAME: usize = 2 + MAX_DIGEST;
/// TPM2B_PUBLIC_KEY_RSA (MAX_RSA_KEY_BYTES, 4096-bit).
pub(crate) const MAX_RSA_KEY_BYTES: usize = 512;
/// TPM2B_ECC_PARAMETER (MAX_ECC_KEY_BYTES).
pub(crate) const MAX_ECC_KEY_BYTES: usize = 128;
/// TPML_PCR_SELECTION: HASH_COUNT banks at most.
pub(crate) const MAX_PCR_BANKS: usize = 16;
/// TPMS_PCR_SELECTION: PCR_SELECT_MAX bytes (32 PCRs).
pub(crate) const PCR_SELECT_MAX: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded() {
        let mut r = Reader::new(&[0, 3, 1, 2]);
        assert_eq!(
            r.tpm2b("x", 2),
            Err(WireError::Oversized {
                field: "x",
                size: 3,
                max: 2
            })
        );
        let mut r = Reader::new(&[0, 3, 1, 2]);
        assert!(matches!(
            r.tpm2b("x", 8),
            Err(WireError::Truncated {
                need: 3,
                left: 2,
                ..
            })
        ));
        let mut r = Reader::new(&[1]);
        assert!(matches!(r.u64("x"), Err(WireError::Truncated { .. })));
        assert!(matches!(
            r.finish("s"),
            Err(WireError::Trailing { count: 1, .. })
        ));
    }
}
