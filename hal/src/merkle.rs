//! A binary SHA-256 Merkle tree over benchmark chunk outputs.
//!
//! Leaves are `SHA-256(0x00 ‖ data)`, inner nodes `SHA-256(0x01 ‖ left ‖
//! right)` (the prefixes keep a leaf from passing for a node). A level with
//! an odd count promotes its last node unchanged. An opening of leaf `i` is
//! the list of siblings from the bottom up; its length is fixed by `i` and
//! the leaf count, so a verifier rejects paths that are too long or short.

use sha2::{Digest, Sha256};

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// The hash of a leaf's data.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

fn node_hash(l: &Hash, r: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// A tree, all levels kept so any leaf can be opened.
#[derive(Debug, Clone)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// Builds the tree over leaf hashes (see [`leaf_hash`]).
    pub fn from_leaf_hashes(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let prev = levels.last().map(Vec::as_slice).unwrap_or(&[]);
            let next: Vec<Hash> = prev
                .chunks(2)
                .map(|p| {
                    if let [l, r] = p {
                        node_hash(l, r)
                    } else {
                        p[0]
                    }
                })
                .collect();
            levels.push(next);
        }
        Tree { levels }
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// True for a tree over no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The root (all zeros for an empty tree).
    pub fn root(&self) -> Hash {
        self.levels
            .last()
            .and_then(|l| l.first().copied())
            .unwrap_or([0; 32])
    }

    /// The siblings of leaf `index`, bottom up; `None` if out of range.
    pub fn path(&self, index: u64) -> Option<Vec<Hash>> {
        if index >= self.len() {
            return None;
        }
        let mut i = usize::try_from(index).ok()?;
        let mut path = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            let sib = i ^ 1;
            if sib < level.len() {
                path.push(level[sib]);
            }
            i /= 2;
        }
        Some(path)
    }
}

/// Checks that `leaf` (a leaf hash) sits at `index` of a tree of `count`
/// leaves with root `root`, by `path`.
pub fn verify(root: &Hash, count: u64, index: u64, leaf: &Hash, path: &[Hash]) -> bool {
    if index >= count {
        return false;
    }
    let (mut i, mut n, mut acc) = (index, count, *leaf);
    let mut it = path.iter();
    while n > 1 {
        let sib = i ^ 1;
        if sib < n {
            let Some(s) = it.next() else { return false };
            acc = if i % 2 == 0 {
                node_hash(&acc, s)
            } else {
                node_hash(s, &acc)
            };
        }
        i /= 2;
        n = n.div_ceil(2);
    }
    it.next().is_none() && acc == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_of_every_small_tree_verifies_and_tampering_fails() {
        for n in 1..=17u64 {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect();
            let t = Tree::from_leaf_hashes(leaves.clone());
            let root = t.root();
            for i in 0..n {
                let p = t.path(i).unwrap_or_default();
                assert!(verify(&root, n, i, &leaves[i as usize], &p), "n={n} i={i}");
                assert!(!verify(&root, n, i, &leaf_hash(b"other"), &p));
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0] = leaf_hash(first);
                    assert!(!verify(&root, n, i, &leaves[i as usize], &bad));
                    assert!(!verify(&root, n, i, &leaves[i as usize], &p[1..]));
                }
                let mut long = p.clone();
                long.push([0; 32]);
                assert!(!verify(&root, n, i, &leaves[i as usize], &long));
            }
            assert!(t.path(n).is_none());
            assert!(!verify(&root, n, n, &leaves[0], &[]));
        }
    }
}
