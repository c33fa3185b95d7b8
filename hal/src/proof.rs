//! Commitments to benchmark chunk outputs, and the spot-check protocol.
//!
//! A seeded benchmark splits its work into chunks (a CPU event, a MiB of
//! memory, a 64 KiB disk block, a band of a GPU matrix product). Each chunk's
//! output is a leaf of a Merkle tree whose root goes into the result. A
//! verifier then asks for `k` chunks (indices drawn from its own nonce by
//! [`challenge`]); the node answers with [`Openings`] (outputs plus Merkle
//! paths, made by [`ChunkSet::open`]); the verifier recomputes those chunks
//! from the seed alone and checks them against the root ([`check`]). Lying
//! about a fraction `f` of the chunks survives `k` checks with probability
//! `(1-f)^k`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::merkle::{self, Hash, Tree};
use crate::seed::Seed;

/// Largest `max_prime` a verifier recomputes (one event at 10^6 is ~0.3 s).
pub const MAX_PRIME_LIMIT: u64 = 1_000_000;
/// Largest GPU matrix order a verifier recomputes a band of.
pub const GPU_N_LIMIT: u64 = 16_384;
/// Most rows per GPU chunk a verifier recomputes.
pub const GPU_ROWS_LIMIT: u64 = 256;

/// Which work a commitment covers, with the parameters needed to redo a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "workload", rename_all = "lowercase")]
pub enum Workload {
    /// sysbench-style prime events; chunk = one event.
    Cpu {
        /// `--cpu-max-prime`.
        max_prime: u64,
    },
    /// Memory bandwidth buffer; chunk = `chunk_bytes` of the buffer.
    Memory {
        /// Bytes per chunk.
        chunk_bytes: u64,
    },
    /// dd-style sequential write; chunk = one block as read back from the file.
    Disk {
        /// Bytes per block (dd's `bs`).
        block_bytes: u64,
        /// What the blocks hold.
        #[serde(default)]
        data: crate::bench::disk::DiskData,
    },
    /// GPU matrix product C = A·B (n×n); chunk = `rows` rows of C.
    Gpu {
        /// Matrix order.
        n: u64,
        /// Rows of C per chunk.
        rows: u64,
    },
}

impl Workload {
    /// The label used to derive chunk keys from the seed.
    pub fn label(&self) -> &'static str {
        match self {
            Workload::Cpu { .. } => "cpu",
            Workload::Memory { .. } => "memory",
            Workload::Disk { .. } => "disk",
            Workload::Gpu { .. } => "gpu",
        }
    }

    /// Recomputes the output of chunk `index` from the seed alone.
    ///
    /// The parameters come from the node: they are bounded here so that a
    /// hostile opening cannot make the verifier work for hours.
    pub fn recompute(&self, seed: &Seed, index: u64) -> Result<Vec<u8>> {
        match *self {
            Workload::Cpu { max_prime } if !(4..=MAX_PRIME_LIMIT).contains(&max_prime) => {
                Err(Error::Rejected(format!("cpu max_prime {max_prime} outside 4..={MAX_PRIME_LIMIT}")))
            }
            Workload::Gpu { n, rows } if n > GPU_N_LIMIT || rows > GPU_ROWS_LIMIT => {
                Err(Error::Rejected(format!("gpu chunk of {rows} rows of order {n} is over the limits ({GPU_ROWS_LIMIT}, {GPU_N_LIMIT})")))
            }
            Workload::Cpu { max_prime } => {
                Ok(crate::bench::cpu::chunk_output(seed, max_prime, index))
            }
            Workload::Memory { chunk_bytes } => {
                crate::bench::mem::chunk_output(seed, chunk_bytes, index)
            }
            Workload::Disk { block_bytes, data } => {
                crate::bench::disk::chunk_output(seed, data, block_bytes, index)
            }
            Workload::Gpu { n, rows } => crate::bench::gpu::chunk_output(seed, n, rows, index),
        }
    }
}

/// What a benchmark result carries: the root over its chunk outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitment {
    /// The work and its parameters.
    #[serde(flatten)]
    pub workload: Workload,
    /// The seed all data derived from.
    pub seed: Seed,
    /// Number of chunks (leaves).
    pub chunks: u64,
    /// Merkle root, hex.
    #[serde(with = "hex::serde")]
    pub root: Hash,
}

/// The leaf data of chunk `index`: label, index and output, so an output
/// cannot be moved to another index or workload.
pub fn leaf(workload: &Workload, index: u64, output: &[u8]) -> Hash {
    let mut data = Vec::with_capacity(16 + output.len());
    data.extend_from_slice(workload.label().as_bytes());
    data.push(0);
    data.extend_from_slice(&index.to_le_bytes());
    data.extend_from_slice(output);
    merkle::leaf_hash(&data)
}

/// The prover's side: every chunk output, kept until the verifier has asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSet {
    /// The commitment these outputs make.
    pub commitment: Commitment,
    /// Outputs by chunk index, hex.
    pub outputs: Vec<HexBytes>,
}

/// Bytes that travel as hex in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HexBytes(#[serde(with = "hex::serde")] pub Vec<u8>);

impl ChunkSet {
    /// Commits to `outputs` (index = position).
    pub fn new(workload: Workload, seed: Seed, outputs: Vec<Vec<u8>>) -> Self {
        let tree = Self::tree_of(&workload, &outputs);
        let commitment = Commitment {
            workload,
            seed,
            chunks: outputs.len() as u64,
            root: tree.root(),
        };
        ChunkSet {
            commitment,
            outputs: outputs.into_iter().map(HexBytes).collect(),
        }
    }

    fn tree_of(workload: &Workload, outputs: &[Vec<u8>]) -> Tree {
        Tree::from_leaf_hashes(
            outputs
                .iter()
                .enumerate()
                .map(|(i, o)| leaf(workload, i as u64, o))
                .collect(),
        )
    }

    /// Opens the chunks at `indices`.
    pub fn open(&self, indices: &[u64]) -> Result<Openings> {
        let outputs: Vec<Vec<u8>> = self.outputs.iter().map(|h| h.0.clone()).collect();
        let tree = Self::tree_of(&self.commitment.workload, &outputs);
        if tree.root() != self.commitment.root {
            return Err(Error::Rejected(
                "stored chunk outputs do not match their own commitment".into(),
            ));
        }
        let mut openings = Vec::new();
        for &index in indices {
            let path = tree.path(index).ok_or_else(|| {
                Error::Invalid(format!(
                    "chunk {index} out of range (0..{})",
                    self.commitment.chunks
                ))
            })?;
            let output = outputs.get(index as usize).cloned().unwrap_or_default();
            openings.push(Opening {
                index,
                output: HexBytes(output),
                path: path.into_iter().map(|h| HexBytes(h.to_vec())).collect(),
            });
        }
        Ok(Openings {
            commitment: self.commitment.clone(),
            openings,
        })
    }
}

/// One opened chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opening {
    /// Chunk index.
    pub index: u64,
    /// The output the node committed to.
    pub output: HexBytes,
    /// Merkle siblings, bottom up.
    pub path: Vec<HexBytes>,
}

/// The node's answer to a challenge (`fluxnode-hal open`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Openings {
    /// The commitment being opened.
    pub commitment: Commitment,
    /// The opened chunks.
    pub openings: Vec<Opening>,
}

impl Openings {
    /// Parses the JSON a node sent. Outside input: any bytes give a value or an error.
    pub fn from_json(text: &[u8]) -> Result<Self> {
        serde_json::from_slice(text).map_err(|e| Error::parse("chunk openings", e.to_string()))
    }
}

/// `k` chunk indices drawn from the verifier's `nonce` and the commitment.
pub fn challenge(nonce: &[u8], commitment: &Commitment, k: usize) -> Vec<u64> {
    if commitment.chunks == 0 {
        return Vec::new();
    }
    (0..k as u64)
        .map(|j| {
            let mut h = Sha256::new();
            h.update(b"fluxnode-hal/challenge\0");
            h.update(nonce);
            h.update(commitment.root);
            h.update(j.to_le_bytes());
            let d: [u8; 32] = h.finalize().into();
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[..8]);
            u64::from_le_bytes(b) % commitment.chunks
        })
        .collect()
}

/// Checks openings against `expected` (the commitment from the result the
/// verifier holds) and, if given, the indices it asked for: each chunk is
/// recomputed from the seed and its leaf must sit under the root.
pub fn check(
    openings: &Openings,
    expected: Option<&Commitment>,
    asked: Option<&[u64]>,
) -> Result<()> {
    let c = &openings.commitment;
    if let Some(e) = expected {
        if e != c {
            return Err(Error::Rejected(
                "openings are for a different commitment than the result's".into(),
            ));
        }
    }
    if let Some(asked) = asked {
        let got: Vec<u64> = openings.openings.iter().map(|o| o.index).collect();
        if got != asked {
            return Err(Error::Rejected(format!(
                "asked for chunks {asked:?}, got {got:?}"
            )));
        }
    }
    for o in &openings.openings {
        let want = c.workload.recompute(&c.seed, o.index)?;
        if want != o.output.0 {
            return Err(Error::Rejected(format!(
                "chunk {}: output does not match recomputation from the seed",
                o.index
            )));
        }
        let mut path = Vec::with_capacity(o.path.len());
        for p in &o.path {
            let h: Hash = p.0.as_slice().try_into().map_err(|_| {
                Error::Rejected(format!("chunk {}: path element is not 32 bytes", o.index))
            })?;
            path.push(h);
        }
        if !merkle::verify(
            &c.root,
            c.chunks,
            o.index,
            &leaf(&c.workload, o.index, &o.output.0),
            &path,
        ) {
            return Err(Error::Rejected(format!(
                "chunk {}: merkle path does not lead to the committed root",
                o.index
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nasty_openings_are_errors_not_panics() {
        let seed = "00".repeat(32);
        let root = "11".repeat(32);
        for t in [
            String::new(),
            "{}".into(),
            "[]".into(),
            format!(
                r#"{{"commitment":{{"workload":"cpu","max_prime":99999999999,"seed":"{seed}","chunks":1,"root":"{root}"}},"openings":[{{"index":0,"output":"","path":[]}}]}}"#
            ),
            format!(
                r#"{{"commitment":{{"workload":"gpu","n":1000000,"rows":1000000,"seed":"{seed}","chunks":1,"root":"{root}"}},"openings":[{{"index":0,"output":"","path":[]}}]}}"#
            ),
            format!(
                r#"{{"commitment":{{"workload":"memory","chunk_bytes":18446744073709551615,"seed":"{seed}","chunks":1,"root":"{root}"}},"openings":[{{"index":0,"output":"","path":[]}}]}}"#
            ),
            format!(
                r#"{{"commitment":{{"workload":"disk","block_bytes":0,"seed":"{seed}","chunks":0,"root":"{root}"}},"openings":[{{"index":5,"output":"zz","path":["00"]}}]}}"#
            ),
            format!(
                r#"{{"commitment":{{"workload":"cpu","max_prime":100,"seed":"{seed}","chunks":1,"root":"{root}"}},"openings":[{{"index":0,"output":"00","path":["00"]}}]}}"#
            ),
        ] {
            if let Ok(o) = Openings::from_json(t.as_bytes()) {
                assert!(check(&o, None, None).is_err(), "{t} accepted");
            }
        }
    }
}
