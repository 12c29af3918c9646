//! What one engine's prefix cache holds, as its own KV events say (vLLM's `BlockStored`,
//! `BlockRemoved`, `AllBlocksCleared`), kept in the router's key space.
//!
//! The engine names blocks by its own hash (a function of vLLM's version, its hash algorithm and
//! `PYTHONHASHSEED`); the router never relies on it. Each stored block is rehashed from its token
//! ids along its parent chain with `request::token_block_key`, the key a token-exact request
//! computes for the same prefix, and the engine's hash only serves to find a block's entry again
//! (its parent, its removal).
//!
//! Invariant: the blocks a backend is confirmed to hold are prefix-closed, as the matcher of
//! `index::PrefixIndex` needs. A block is added only when its parent is known (or it is a root);
//! removing a block removes its descendants with it (the engine cannot hit them either: its prefix
//! lookup stops at the first missing block).
use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64;

use crate::fasthash::U64Map;
use crate::index::PrefixIndex;
use crate::request::{chain_root, token_block_key};

/// One KV event, as plain values. Engine block hashes are u64 (vLLM's int hashes; a bytes hash is
/// folded to u64 with `engine_hash_of_bytes`).
#[derive(Clone, Debug, PartialEq)]
pub enum KvEvent {
    Stored {
        hashes: Vec<u64>,
        parent: Option<u64>,
        /// `block_size` ids per block, in block order.
        tokens: Vec<u32>,
        block_size: u32,
        lora_name: Option<String>,
        /// On the GPU (vLLM's `medium` is None or "GPU"); CPU/disk tiers are not indexed.
        gpu: bool,
    },
    Removed {
        hashes: Vec<u64>,
        gpu: bool,
    },
    Cleared,
}

/// vLLM's `medium` of a stored or removed block: None (before tiers existed) or "GPU" is the
/// engine's own cache; "CPU", "DISK" and others are offload tiers.
pub fn is_gpu_medium(medium: Option<&str>) -> bool {
    medium.is_none_or(|m| m.eq_ignore_ascii_case("gpu"))
}

/// A sha256 block hash (vLLM with `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`) as a u64 identity.
pub fn engine_hash_of_bytes(b: &[u8]) -> u64 {
    xxh3_64(b)
}

#[derive(Clone, Copy, Debug)]
struct EngineBlock {
    key: u64,
    parent: Option<u64>,
    children: u32,
}

/// Counters for the admin view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    pub batches: u64,
    pub stored: u64,
    pub removed: u64,
    pub cleared: u64,
    pub resets: u64,
    /// Stored blocks whose parent the view does not know (events were lost before them): not
    /// indexed, since their key depends on the missing prefix.
    pub orphans: u64,
    /// Removals of blocks the view does not hold (descendants already dropped with their parent).
    pub unknown_removals: u64,
    /// Stored events whose block size is not the router's `block_tokens`: their keys could never
    /// match a request's, so they are dropped and counted.
    pub block_size_mismatch: u64,
    /// Stored blocks on a CPU or disk tier: counted, not credited.
    pub other_medium: u64,
}

/// One backend's view: the engine's blocks and the keys they map to.
#[derive(Debug, Default)]
pub struct KvView {
    blocks: U64Map<EngineBlock>,
    /// Our key -> how many engine blocks map to it (two engine hashes may name one token chain,
    /// e.g. after a hash-algorithm change): the key leaves the index with the last of them.
    keys: U64Map<u32>,
    /// Events have been applied since the last reset: the view describes the engine.
    pub confirmed: bool,
    pub stats: KvStats,
}

impl KvView {
    pub fn new() -> Self {
        Self::default()
    }

    /// Engine blocks in the view.
    pub fn blocks(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// Forget everything: the engine's cache is unknown (`confirmed` false) or empty (`Cleared`).
    pub fn clear(&mut self, slot: u32, index: &mut PrefixIndex) {
        self.blocks.clear();
        self.keys.clear();
        index.clear(slot);
    }

    pub fn reset(&mut self, slot: u32, index: &mut PrefixIndex) {
        self.clear(slot, index);
        self.confirmed = false;
        self.stats.resets += 1;
    }

    /// Apply one batch of events. `model` is the backend's base model: the root of chains stored
    /// without a LoRA adapter. `bound` caps the engine blocks kept: an engine that reports more
    /// than it can hold has lost us removals, and the view starts over rather than grow.
    pub fn apply(
        &mut self,
        slot: u32,
        index: &mut PrefixIndex,
        model: &str,
        block_tokens: u32,
        events: &[KvEvent],
        bound: u64,
    ) {
        self.stats.batches += 1;
        self.confirmed = true;
        let mut buf = Vec::new();
        for ev in events {
            match ev {
                KvEvent::Stored { hashes, parent, tokens, block_size, lora_name, gpu } => {
                    if !gpu {
                        self.stats.other_medium += hashes.len() as u64;
                        continue;
                    }
                    if *block_size != block_tokens || tokens.len() != hashes.len() * *block_size as usize {
                        self.stats.block_size_mismatch += 1;
                        continue;
                    }
                    let mut parent_key = match parent {
                        None => chain_root(lora_name.as_deref().unwrap_or(model)),
                        Some(p) => match self.blocks.get(p) {
                            Some(b) => b.key,
                            None => {
                                self.stats.orphans += hashes.len() as u64;
                                continue;
                            }
                        },
                    };
                    let mut parent_hash = *parent;
                    for (i, (h, ids)) in hashes.iter().zip(tokens.chunks_exact(*block_size as usize)).enumerate() {
                        let key = token_block_key(ids, parent_key, &mut buf);
                        match self.blocks.get(h) {
                            Some(old) if old.key == key => {} // stored again (a re-sent event): already held
                            Some(_) => {
                                // The engine hash now names other tokens (a collision, or a run that
                                // names its own ancestor): the old block and the descendants keyed
                                // under it go first. If the parent went with them (a cycle), the
                                // rest of the run has no known prefix.
                                self.drop_subtree(slot, index, *h);
                                if parent_hash.is_some_and(|p| !self.blocks.contains_key(&p)) {
                                    self.stats.orphans += (hashes.len() - i) as u64;
                                    break;
                                }
                                self.store(*h, key, parent_hash);
                            }
                            None => self.store(*h, key, parent_hash),
                        }
                        // Parent before child: the index stays prefix-closed at every step.
                        index.insert(slot, &[key]);
                        self.stats.stored += 1;
                        parent_key = key;
                        parent_hash = Some(*h);
                    }
                }
                KvEvent::Removed { hashes, gpu } => {
                    if !gpu {
                        continue;
                    }
                    for h in hashes {
                        self.remove(slot, index, *h);
                    }
                }
                KvEvent::Cleared => {
                    self.stats.cleared += 1;
                    self.clear(slot, index);
                }
            }
        }
        if self.blocks.len() as u64 > bound {
            self.reset(slot, index);
        }
    }

    /// A new block under a held parent (or a root); the caller dropped any block of that hash.
    fn store(&mut self, hash: u64, key: u64, parent: Option<u64>) {
        if let Some(p) = parent.and_then(|p| self.blocks.get_mut(&p)) {
            p.children += 1;
        }
        let old = self.blocks.insert(hash, EngineBlock { key, parent, children: 0 });
        debug_assert!(old.is_none());
        *self.keys.entry(key).or_default() += 1;
    }

    fn release_key(&mut self, key: u64) -> bool {
        match self.keys.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.keys.remove(&key);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, slot: u32, index: &mut PrefixIndex, hash: u64) {
        if self.blocks.contains_key(&hash) {
            self.stats.removed += 1;
            self.drop_subtree(slot, index, hash);
        } else {
            self.stats.unknown_removals += 1;
        }
    }

    /// Drop a held block and its descendants. Terminates: a block is stored only under a held
    /// parent and replaced only after its subtree went, so parent links never form a cycle.
    fn drop_subtree(&mut self, slot: u32, index: &mut PrefixIndex, hash: u64) {
        let Some(b) = self.blocks.get(&hash).copied() else { return };
        let mut doomed = vec![hash];
        if b.children > 0 {
            // Rare (engines evict leaves first): find the subtree with one pass over the view.
            let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
            for (&h, e) in &self.blocks {
                if let Some(p) = e.parent {
                    children.entry(p).or_default().push(h);
                }
            }
            let mut i = 0;
            while i < doomed.len() {
                if let Some(cs) = children.get(&doomed[i]) {
                    doomed.extend_from_slice(cs);
                }
                i += 1;
            }
        }
        // Leaves first, so the index stays prefix-closed at every step.
        for &h in doomed.iter().rev() {
            let Some(e) = self.blocks.remove(&h) else { continue };
            if let Some(p) = e.parent.and_then(|p| self.blocks.get_mut(&p)) {
                p.children -= 1;
            }
            if self.release_key(e.key) {
                index.remove(slot, e.key);
            }
        }
    }

    /// The engine's hashes of every block in the view, sorted (to check the view against an engine).
    pub fn engine_hashes(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.blocks.keys().copied().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::token_chain;

    const BS: u32 = 2;

    fn stored(hashes: &[u64], parent: Option<u64>, tokens: &[u32]) -> KvEvent {
        KvEvent::Stored {
            hashes: hashes.to_vec(),
            parent,
            tokens: tokens.to_vec(),
            block_size: BS,
            lora_name: None,
            gpu: true,
        }
    }

    fn held(ix: &mut PrefixIndex, chain: &[u64]) -> u32 {
        let mut out = Vec::new();
        ix.longest_prefix(chain, &mut out);
        out.first().map(|&(_, n)| n).unwrap_or(0)
    }

    fn setup() -> (KvView, PrefixIndex) {
        let mut ix = PrefixIndex::new();
        ix.add_backend(0, u64::MAX);
        (KvView::new(), ix)
    }

    #[test]
    fn stored_blocks_match_the_requests_token_chain() {
        let (mut v, mut ix) = setup();
        let ids = [5, 6, 7, 8, 9, 10, 11];
        v.apply(0, &mut ix, "m", BS, &[stored(&[100, 101], None, &ids[..4]), stored(&[102], Some(101), &ids[4..6])], 1000);
        let chain = token_chain(&ids, BS as usize, chain_root("m"));
        assert_eq!(held(&mut ix, &chain), 3);
        assert!(v.confirmed && v.blocks() == 3 && v.stats.stored == 3);
        // Another model's chain over the same ids is not the same blocks.
        assert_eq!(held(&mut ix, &token_chain(&ids, BS as usize, chain_root("other"))), 0);
    }

    #[test]
    fn removing_a_parent_removes_its_descendants() {
        let (mut v, mut ix) = setup();
        let ids = [1, 2, 3, 4, 5, 6];
        let branch = [1, 2, 9, 9];
        v.apply(0, &mut ix, "m", BS, &[stored(&[1, 2, 3], None, &ids), stored(&[7], Some(1), &branch[2..])], 1000);
        v.apply(0, &mut ix, "m", BS, &[KvEvent::Removed { hashes: vec![2], gpu: true }], 1000);
        let root = chain_root("m");
        assert_eq!(held(&mut ix, &token_chain(&ids, 2, root)), 1);
        assert_eq!(held(&mut ix, &token_chain(&branch, 2, root)), 2);
        assert_eq!(v.blocks(), 2);
        // Block 3 went with its parent: its own removal is a no-op.
        v.apply(0, &mut ix, "m", BS, &[KvEvent::Removed { hashes: vec![3], gpu: true }], 1000);
        assert_eq!(v.stats.unknown_removals, 1);
        // A block stored under a parent we never saw cannot be keyed.
        v.apply(0, &mut ix, "m", BS, &[stored(&[50], Some(49), &[1, 1])], 1000);
        assert_eq!(v.stats.orphans, 1);
        assert_eq!(ix.len(0), 2);
    }

    #[test]
    fn cleared_other_media_sizes_and_bound() {
        let (mut v, mut ix) = setup();
        v.apply(0, &mut ix, "m", BS, &[stored(&[1], None, &[1, 2])], 1000);
        let cpu = KvEvent::Stored { hashes: vec![9], parent: None, tokens: vec![3, 4], block_size: BS, lora_name: None, gpu: false };
        let wrong = KvEvent::Stored { hashes: vec![8], parent: None, tokens: vec![3, 4, 5], block_size: 3, lora_name: None, gpu: true };
        v.apply(0, &mut ix, "m", BS, &[cpu, wrong, KvEvent::Removed { hashes: vec![1], gpu: false }], 1000);
        assert_eq!((v.stats.other_medium, v.stats.block_size_mismatch, v.blocks()), (1, 1, 1));
        v.apply(0, &mut ix, "m", BS, &[KvEvent::Cleared], 1000);
        assert_eq!((v.blocks(), ix.len(0), v.stats.cleared), (0, 0, 1));
        v.apply(0, &mut ix, "m", BS, &[stored(&[1, 2, 3], None, &[1, 2, 3, 4, 5, 6])], 2);
        assert_eq!((v.blocks(), ix.len(0), v.stats.resets, v.confirmed), (0, 0, 1, false));
    }

    #[test]
    fn lora_blocks_root_at_the_adapter() {
        let (mut v, mut ix) = setup();
        let ev = KvEvent::Stored { hashes: vec![1], parent: None, tokens: vec![1, 2], block_size: BS, lora_name: Some("ad".into()), gpu: true };
        v.apply(0, &mut ix, "m", BS, &[ev], 1000);
        assert_eq!(held(&mut ix, &token_chain(&[1, 2], 2, chain_root("ad"))), 1);
        assert_eq!(held(&mut ix, &token_chain(&[1, 2], 2, chain_root("m"))), 0);
    }

    /// Engine model: a forest of blocks, each with its parent and token ids; the view must always
    /// hold exactly the engine's blocks, and match every chain to its held depth.
    #[derive(Clone, Debug)]
    enum Op {
        Store(usize),
        Remove(usize),
        Clear,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..40usize).prop_map(Op::Store),
            3 => (0..40usize).prop_map(Op::Remove),
            1 => Just(Op::Clear),
        ]
    }

    proptest::proptest! {
        #[test]
        fn view_is_the_engines_closed_block_set(ops in proptest::collection::vec(op(), 1..120)) {
            let (mut v, mut ix) = setup();
            // Block i's parent is a lower-numbered block (or none), fixed per i: a tree.
            let parent_of = |i: usize| if i % 5 == 0 { None } else { Some(i / 2) };
            let chain_of = |i: usize| {
                let mut path = vec![i];
                let mut j = i;
                while let Some(p) = parent_of(j) { path.push(p); j = p; }
                path.reverse();
                path
            };
            let ids = |i: usize| [i as u32, i as u32 * 7 + 1];
            let mut engine: std::collections::BTreeSet<usize> = Default::default();
            for op in ops {
                match op {
                    Op::Store(i) => {
                        // Like an engine: a block is stored only on top of its present parent.
                        if parent_of(i).is_some_and(|p| !engine.contains(&p)) || engine.contains(&i) { continue; }
                        engine.insert(i);
                        v.apply(0, &mut ix, "m", BS, &[stored(&[i as u64 + 1], parent_of(i).map(|p| p as u64 + 1), &ids(i))], 1 << 20);
                    }
                    Op::Remove(i) => {
                        // The engine can no longer hit i's descendants; it reports i alone (and
                        // the descendants later, when it evicts them: unknown removals then).
                        engine.retain(|&j| !chain_of(j).contains(&i));
                        v.apply(0, &mut ix, "m", BS, &[KvEvent::Removed { hashes: vec![i as u64 + 1], gpu: true }], 1 << 20);
                    }
                    Op::Clear => {
                        engine.clear();
                        v.apply(0, &mut ix, "m", BS, &[KvEvent::Cleared], 1 << 20);
                    }
                }
                // Reachable: present with every ancestor present.
                let reachable: Vec<usize> = engine.iter().copied().filter(|&i| chain_of(i).iter().all(|a| engine.contains(a))).collect();
                proptest::prop_assert_eq!(v.blocks() as usize, reachable.len());
                for i in 0..40usize {
                    let path = chain_of(i);
                    let toks: Vec<u32> = path.iter().flat_map(|&j| ids(j)).collect();
                    let chain = token_chain(&toks, 2, chain_root("m"));
                    let want = path.iter().take_while(|a| reachable.contains(a)).count() as u32;
                    proptest::prop_assert_eq!(held(&mut ix, &chain), want);
                }
            }
        }
    }
}
