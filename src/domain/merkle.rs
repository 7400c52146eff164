//! The audit log as a Merkle tree in the manner of Certificate Transparency
//! (RFC 6962 / RFC 9162): leaf hash `SHA-256(0x00 || record)`, node hash
//! `SHA-256(0x01 || left || right)`, with inclusion and consistency proofs
//! and their verification. Pure functions over a [`TreeSource`].

use sha2::{Digest, Sha256};

use super::audit::AuditRecord;

pub type Hash = [u8; 32];

/// Leaves per tile: the store keeps the hash of every complete, aligned run
/// of this many leaves, so roots and proofs need O(n / TILE) stored hashes
/// plus at most two tiles of leaf hashes.
pub const TILE: u64 = 256;

pub fn node_hash(l: &Hash, r: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

pub fn leaf_hash_of_bytes(bytes: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(bytes);
    h.finalize().into()
}

/// The canonical encoding of the record at log position `index`: a version
/// byte, the position, then every field (see [`AuditRecord::encode_body`]),
/// so that changing any field changes the leaf hash. The position is part of
/// the leaf, so records cannot be swapped or shifted without their hashes
/// changing too.
pub fn canonical_bytes(index: u64, r: &AuditRecord) -> Vec<u8> {
    let mut o = Vec::with_capacity(256);
    o.extend(leaf_prefix(index));
    r.encode_body(&mut o);
    o
}

/// What precedes a record's body in its canonical encoding.
fn leaf_prefix(index: u64) -> [u8; 9] {
    let mut p = [0u8; 9];
    p[0] = 1; // encoding version
    p[1..].copy_from_slice(&index.to_be_bytes());
    p
}

/// The leaf hash of a record at `index` from its already encoded body, as
/// the audit journal holds it: no re-encoding on the indexing path.
pub fn leaf_hash_of_body(index: u64, body: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf_prefix(index));
    h.update(body);
    h.finalize().into()
}

pub fn leaf_hash(index: u64, r: &AuditRecord) -> Hash {
    leaf_hash_of_bytes(&canonical_bytes(index, r))
}

/// Where hashes come from. `tile` may return `None`, in which case the
/// tile is computed from its leaves.
pub trait TreeSource {
    fn leaf(&self, index: u64) -> Hash;
    fn tile(&self, _tile: u64) -> Option<Hash> {
        None
    }
}

impl TreeSource for [Hash] {
    fn leaf(&self, index: u64) -> Hash {
        self[index as usize]
    }
}

impl TreeSource for Vec<Hash> {
    fn leaf(&self, index: u64) -> Hash {
        self[index as usize]
    }
}

fn split(n: u64) -> u64 {
    // Largest power of two strictly less than n (n >= 2).
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[lo:hi]).
pub fn subtree<S: TreeSource + ?Sized>(s: &S, lo: u64, hi: u64) -> Hash {
    let n = hi - lo;
    debug_assert!(n >= 1);
    if n == 1 {
        return s.leaf(lo);
    }
    if n == TILE
        && lo.is_multiple_of(TILE)
        && let Some(t) = s.tile(lo / TILE)
    {
        return t;
    }
    let k = split(n);
    node_hash(&subtree(s, lo, lo + k), &subtree(s, lo + k, hi))
}

/// The root of the first `n` leaves; the hash of the empty string for n = 0.
pub fn root<S: TreeSource + ?Sized>(s: &S, n: u64) -> Hash {
    if n == 0 {
        return Sha256::digest([]).into();
    }
    subtree(s, 0, n)
}

/// Completes tiles from the leaves a writer appends, so that each tile can
/// be stored in the same transaction as its records and a checkpoint need
/// not read the leaves back.
///
/// It keeps the leaves of the one incomplete tile at the end of the run it
/// has seen (at most `TILE - 1` hashes). A run that does not continue where
/// the last stored one ended (another gateway took the positions between,
/// the process restarted) starts over at its first tile boundary; the tiles
/// it cannot complete are left for the checkpoint, which computes them from
/// the stored leaves.
#[derive(Debug, Clone, Default)]
pub struct TileBuilder {
    /// The position after the last leaf of the run seen.
    next: u64,
    /// The leaves of the tile being filled, from its first position to
    /// `next`; empty while no tile is being filled.
    partial: Vec<Hash>,
}

impl TileBuilder {
    /// The tiles that the leaves `hashes`, at positions `start..`, complete,
    /// as `(tile, hash)`, and the builder as it is once they are stored. The
    /// caller keeps its builder until the leaves are committed: otherwise
    /// the leaves of a failed transaction could end up in a tile, should
    /// another writer take their positions and the next run continue after
    /// them.
    pub fn extend(&self, start: u64, hashes: &[Hash]) -> (Vec<(u64, Hash)>, TileBuilder) {
        let mut partial = if start == self.next {
            self.partial.clone()
        } else {
            Vec::new()
        };
        // With no tile under way, leaves before the run's first boundary
        // belong to a tile whose first leaves this builder never saw.
        let skip = if partial.is_empty() {
            ((TILE - start % TILE) % TILE).min(hashes.len() as u64)
        } else {
            0
        };
        let mut tiles = Vec::new();
        let mut pos = start + skip;
        for h in &hashes[skip as usize..] {
            partial.push(*h);
            pos += 1;
            if partial.len() as u64 == TILE {
                tiles.push((pos / TILE - 1, subtree(&partial[..], 0, TILE)));
                partial.clear();
            }
        }
        let next = TileBuilder {
            next: start + hashes.len() as u64,
            partial,
        };
        (tiles, next)
    }
}

/// A log's complete tiles folded, as they come, into the perfect subtrees
/// its root is made of (at most one per power of two), so that a root over
/// any number of tiles needs O(log n) hashes and each tile is read once.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    tiles: u64,
    /// Perfect subtrees over whole tiles, largest first, as (tiles, hash).
    peaks: Vec<(u64, Hash)>,
}

impl Frontier {
    /// How many tiles are folded in: tiles `0..tiles()`.
    pub fn tiles(&self) -> u64 {
        self.tiles
    }

    /// Folds in the next tile's hash.
    pub fn push_tile(&mut self, hash: Hash) {
        self.tiles += 1;
        let mut node = (1, hash);
        while let Some(&(n, left)) = self.peaks.last() {
            if n != node.0 {
                break;
            }
            self.peaks.pop();
            node = (2 * n, node_hash(&left, &node.1));
        }
        self.peaks.push(node);
    }

    /// The root of the log made of the folded tiles and then `tail`, the
    /// leaves after them (fewer than a tile's). RFC 6962 splits a tree at
    /// the largest power of two below its size, so the root is its perfect
    /// subtrees, largest first, each joined to the root of what follows it.
    pub fn root(&self, tail: &[Hash]) -> Hash {
        let mut acc = (!tail.is_empty()).then(|| root(tail, tail.len() as u64));
        for (_, peak) in self.peaks.iter().rev() {
            acc = Some(acc.map_or(*peak, |r| node_hash(peak, &r)));
        }
        acc.unwrap_or_else(|| root::<[Hash]>(&[], 0))
    }
}

/// RFC 6962 PATH(m, D[lo:hi]).
fn path<S: TreeSource + ?Sized>(s: &S, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) {
    let n = hi - lo;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(s, m, lo, lo + k, out);
        out.push(subtree(s, lo + k, hi));
    } else {
        path(s, m - k, lo + k, hi, out);
        out.push(subtree(s, lo, lo + k));
    }
}

/// Audit path of leaf `m` in the tree of the first `n` leaves.
pub fn inclusion_proof<S: TreeSource + ?Sized>(s: &S, m: u64, n: u64) -> Vec<Hash> {
    let mut out = Vec::new();
    path(s, m, 0, n, &mut out);
    out
}

/// RFC 6962 SUBPROOF(m, D[lo:hi], b).
fn subproof<S: TreeSource + ?Sized>(s: &S, m: u64, lo: u64, hi: u64, b: bool, out: &mut Vec<Hash>) {
    let n = hi - lo;
    if m == n {
        if !b {
            out.push(subtree(s, lo, hi));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(s, m, lo, lo + k, b, out);
        out.push(subtree(s, lo + k, hi));
    } else {
        subproof(s, m - k, lo + k, hi, false, out);
        out.push(subtree(s, lo, lo + k));
    }
}

/// Proof that the tree of `m` leaves is a prefix of the tree of `n`.
pub fn consistency_proof<S: TreeSource + ?Sized>(s: &S, m: u64, n: u64) -> Vec<Hash> {
    let mut out = Vec::new();
    if m > 0 && m < n {
        subproof(s, m, 0, n, true, &mut out);
    }
    out
}

/// RFC 9162 §2.1.3.2.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && &r == root
}

/// RFC 9162 §2.1.4.2.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((head, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && &fr == first_root && &sr == second_root
}

/// The text a checkpoint signature covers.
pub fn checkpoint_message(size: u64, root: &Hash, timestamp_us: i64) -> String {
    format!(
        "simverify audit checkpoint v1\n{size}\n{}\n{timestamp_us}\n",
        hex::encode(root)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash_of_bytes(&i.to_be_bytes()))
            .collect()
    }

    /// Tiles served from precomputed hashes, to check they change nothing.
    struct Tiled(Vec<Hash>);
    impl TreeSource for Tiled {
        fn leaf(&self, i: u64) -> Hash {
            self.0[i as usize]
        }
        fn tile(&self, t: u64) -> Option<Hash> {
            ((t + 1) * TILE <= self.0.len() as u64)
                .then(|| subtree(&self.0, t * TILE, (t + 1) * TILE))
        }
    }

    #[test]
    fn known_small_trees() {
        let l = leaves(3);
        assert_eq!(root(&l, 1), l[0]);
        assert_eq!(root(&l, 2), node_hash(&l[0], &l[1]));
        assert_eq!(root(&l, 3), node_hash(&node_hash(&l[0], &l[1]), &l[2]));
        let empty: Vec<Hash> = Vec::new();
        assert_eq!(
            hex::encode(root(&empty, 0)),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn proofs_verify_for_every_position() {
        for n in 1..=40u64 {
            let l = leaves(n);
            let r = root(&l, n);
            for m in 0..n {
                let p = inclusion_proof(&l, m, n);
                assert!(
                    verify_inclusion(&l[m as usize], m, n, &p, &r),
                    "inclusion {m}/{n}"
                );
                let wrong = leaf_hash_of_bytes(b"forged");
                assert!(!verify_inclusion(&wrong, m, n, &p, &r));
            }
            for m in 1..=n {
                let p = consistency_proof(&l, m, n);
                assert!(
                    verify_consistency(m, n, &root(&l, m), &r, &p),
                    "consistency {m}/{n}"
                );
                if m < n {
                    let other = leaves(n + 1);
                    assert!(!verify_consistency(
                        m,
                        n,
                        &root(&other[1..].to_vec(), m),
                        &r,
                        &p
                    ));
                }
            }
        }
    }

    #[test]
    fn tiles_give_the_same_hashes() {
        let l = leaves(1000);
        let t = Tiled(l.clone());
        for n in [256, 257, 511, 512, 513, 768, 1000] {
            assert_eq!(root(&l, n), root(&t, n));
            assert_eq!(inclusion_proof(&l, 300, n), inclusion_proof(&t, 300, n));
            assert_eq!(consistency_proof(&l, 300, n), consistency_proof(&t, 300, n));
        }
    }

    #[test]
    fn a_tile_builder_completes_tiles_across_runs() {
        let l = leaves(1100);
        let tile = |t: u64| (t, subtree(&l, t * TILE, (t + 1) * TILE));
        let (t, b) = TileBuilder::default().extend(0, &l[..300]);
        assert_eq!(t, vec![tile(0)]);
        let (t, b) = b.extend(300, &l[300..700]);
        assert_eq!(t, vec![tile(1)]);
        // Continuing the run completes the tile begun in the last one.
        let (t, _) = b.extend(700, &l[700..1100]);
        assert_eq!(t, vec![tile(2), tile(3)]);
        // A run that does not continue where the last ended starts at its
        // first boundary: tile 2 (512..768) is left to the checkpoint.
        let (t, b) = b.extend(701, &l[701..1100]);
        assert_eq!(t, vec![tile(3)]);
        let (t, _) = b.extend(1100, &[]);
        assert!(t.is_empty());
        let (t, _) = TileBuilder::default().extend(700, &l[700..1000]);
        assert!(t.is_empty(), "768..1000 is not a whole tile");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        #[test]
        fn random_sizes(n in 1u64..1200, a in 0u64..1200, b in 0u64..1200) {
            let l = leaves(n);
            let t = Tiled(l.clone());
            let (m, k) = (a % n, (b % n) + 1);
            let r = root(&t, n);
            proptest::prop_assert!(verify_inclusion(&l[m as usize], m, n, &inclusion_proof(&t, m, n), &r));
            proptest::prop_assert!(verify_consistency(k, n, &root(&t, k), &r, &consistency_proof(&t, k, n)));
        }

        /// A frontier of a log's complete tiles, with the leaves after them,
        /// gives the log's root, whatever its size.
        #[test]
        fn a_frontier_gives_the_logs_root(n in 0u64..4000) {
            let l = leaves(n);
            let mut f = Frontier::default();
            for t in 0..n / TILE {
                f.push_tile(subtree(&l, t * TILE, (t + 1) * TILE));
            }
            proptest::prop_assert_eq!(f.tiles(), n / TILE);
            proptest::prop_assert_eq!(f.root(&l[(n / TILE * TILE) as usize..]), root(&l, n));
        }

        /// Runs appended by this writer (0), by another writer (1), or by
        /// this writer in a transaction that failed, whose positions another
        /// writer then took (2): every tile the builder completes is the
        /// log's, none twice, and a log written by this writer alone gets
        /// every complete tile.
        #[test]
        fn a_tile_builder_completes_only_the_logs_tiles(
            runs in proptest::collection::vec((1u64..700, 0u8..3), 1..12),
        ) {
            let total: u64 = runs.iter().map(|r| r.0).sum();
            let l = leaves(total);
            let mut b = TileBuilder::default();
            let mut pos = 0;
            let mut done = std::collections::BTreeSet::new();
            for &(len, who) in &runs {
                let run = pos as usize..(pos + len) as usize;
                match who {
                    0 => {
                        let (tiles, next) = b.extend(pos, &l[run]);
                        for (t, h) in tiles {
                            proptest::prop_assert_eq!(h, subtree(&l, t * TILE, (t + 1) * TILE));
                            proptest::prop_assert!(done.insert(t), "tile {} twice", t);
                        }
                        b = next;
                    }
                    1 => {}
                    _ => {
                        let never_stored: Vec<Hash> = l[run].iter().map(|h| node_hash(h, h)).collect();
                        let _ = b.extend(pos, &never_stored);
                    }
                }
                pos += len;
            }
            if runs.iter().all(|r| r.1 == 0) {
                proptest::prop_assert_eq!(done.len() as u64, total / TILE);
            }
        }
    }
}
