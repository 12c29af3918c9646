//! Which prefix blocks each backend is believed to hold.
//!
//! Layout (memory per indexed (backend, block) pair is what matters at 100k+ blocks per backend):
//! - one global map `block hash -> holders`: a block held by one backend stores that holder inline
//!   (the common case: 24 bytes per map slot); a block held by several points into an overflow
//!   vector of holders sorted by slot;
//! - per backend an intrusive LRU list of 16-byte nodes in a slab (no per-node allocation).
//!
//! Longest-prefix match walks the request's chain from the root and stops at the first block no
//! backend holds, so its cost is O(prompt blocks), whatever the fleet size. Insertion touches the
//! chain from leaf to root, so an ancestor is always more recent than its descendants and LRU
//! eviction removes leaves first: each backend's set stays prefix-closed (if it holds block i it
//! holds 0..i). The matcher relies on that to advance in O(1) per block while the set of holders
//! does not shrink.
use crate::fasthash::U64Map;

const NIL: u32 = u32::MAX;

/// Used when the engine has not told us its KV size yet (no metrics): about a million tokens at
/// 16-token blocks, enough not to forget useful prefixes and small enough to bound memory.
pub const DEFAULT_CAPACITY_BLOCKS: u64 = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Holder {
    slot: u32,
    node: u32,
}

#[derive(Clone, Copy, Debug)]
enum Holders {
    One(Holder),
    Many(u32),
}

#[derive(Clone, Copy, Debug)]
struct Node {
    hash: u64,
    prev: u32,
    next: u32,
}

#[derive(Debug, Default)]
struct Lru {
    nodes: Vec<Node>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    len: u64,
    capacity: u64,
    /// Bumped by every change of order or contents (insert, clear, capacity): equal versions mean
    /// an identical list, which lets a refresh that would change nothing be skipped.
    version: u64,
}

impl Lru {
    fn new(capacity: u64) -> Self {
        Lru { nodes: Vec::new(), free: Vec::new(), head: NIL, tail: NIL, len: 0, capacity, version: 0 }
    }

    fn unlink(&mut self, n: u32) {
        let Node { prev, next, .. } = self.nodes[n as usize];
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
    }

    fn push_front(&mut self, n: u32) {
        self.nodes[n as usize].prev = NIL;
        self.nodes[n as usize].next = self.head;
        if self.head != NIL {
            self.nodes[self.head as usize].prev = n;
        } else {
            self.tail = n;
        }
        self.head = n;
    }

    fn alloc(&mut self, hash: u64) -> u32 {
        let node = Node { hash, prev: NIL, next: NIL };
        let n = match self.free.pop() {
            Some(n) => {
                self.nodes[n as usize] = node;
                n
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.push_front(n);
        self.len += 1;
        n
    }

    fn touch(&mut self, n: u32) {
        if self.head != n {
            self.unlink(n);
            self.push_front(n);
        }
    }

    fn pop_back(&mut self) -> Option<u64> {
        if self.tail == NIL {
            return None;
        }
        let n = self.tail;
        self.unlink(n);
        self.free.push(n);
        self.len -= 1;
        Some(self.nodes[n as usize].hash)
    }

    fn bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>() + self.free.capacity() * 4
    }
}

#[derive(Debug, Default)]
pub struct PrefixIndex {
    map: U64Map<Holders>,
    overflow: Vec<Vec<Holder>>,
    free_overflow: Vec<u32>,
    lrus: Vec<Option<Lru>>,
    // Scratch for `longest_prefix`, kept to avoid an allocation per request.
    stamp: Vec<u32>,
    epoch: u32,
    alive: Vec<(u32, u32)>,
}

impl PrefixIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start tracking `slot` (or forget everything it held, if it was tracked).
    pub fn add_backend(&mut self, slot: u32, capacity_blocks: u64) {
        if (slot as usize) < self.lrus.len() && self.lrus[slot as usize].is_some() {
            self.clear(slot);
        }
        if self.lrus.len() <= slot as usize {
            self.lrus.resize_with(slot as usize + 1, || None);
            self.stamp.resize(slot as usize + 1, 0);
        }
        self.lrus[slot as usize] = Some(Lru::new(capacity_blocks));
    }

    pub fn remove_backend(&mut self, slot: u32) {
        self.clear(slot);
        if let Some(l) = self.lrus.get_mut(slot as usize) {
            *l = None;
        }
    }

    /// Forget everything `slot` held (its engine restarted: its KV cache is empty).
    pub fn clear(&mut self, slot: u32) {
        let Some(Some(lru)) = self.lrus.get_mut(slot as usize) else { return };
        let mut hashes = Vec::with_capacity(lru.len as usize);
        while let Some(h) = lru.pop_back() {
            hashes.push(h);
        }
        let (cap, version) = (lru.capacity, lru.version);
        *lru = Lru::new(cap); // release the slab's memory too
        lru.version = version + 1;
        for h in hashes {
            self.drop_holder(h, slot);
        }
    }

    pub fn set_capacity(&mut self, slot: u32, capacity_blocks: u64) {
        if let Some(Some(lru)) = self.lrus.get_mut(slot as usize) {
            lru.capacity = capacity_blocks;
            lru.version += 1;
        }
        self.evict(slot);
    }

    pub fn len(&self, slot: u32) -> u64 {
        match self.lrus.get(slot as usize) {
            Some(Some(l)) => l.len,
            _ => 0,
        }
    }

    pub fn capacity(&self, slot: u32) -> u64 {
        match self.lrus.get(slot as usize) {
            Some(Some(l)) => l.capacity,
            _ => 0,
        }
    }

    /// Total (backend, block) pairs indexed.
    pub fn pairs(&self) -> u64 {
        self.lrus.iter().flatten().map(|l| l.len).sum()
    }

    /// Approximate heap bytes of the whole index (map slots + control bytes, overflow, LRU slabs).
    pub fn bytes(&self) -> usize {
        let map = self.map.capacity() * (std::mem::size_of::<(u64, Holders)>() + 1);
        let overflow: usize = self
            .overflow
            .iter()
            .map(|v| std::mem::size_of::<Vec<Holder>>() + v.capacity() * std::mem::size_of::<Holder>())
            .sum();
        let lrus: usize = self.lrus.iter().flatten().map(Lru::bytes).sum();
        map + overflow + lrus
    }

    fn holders_of<'a>(&'a self, h: &'a Holders) -> &'a [Holder] {
        match h {
            Holders::One(x) => std::slice::from_ref(x),
            Holders::Many(i) => &self.overflow[*i as usize],
        }
    }

    /// For each backend holding a prefix of `blocks`, how many leading blocks it holds. `out` gets
    /// (slot, blocks) pairs for backends with at least one block; others are absent.
    pub fn longest_prefix(&mut self, blocks: &[u64], out: &mut Vec<(u32, u32)>) {
        out.clear();
        let Some(first) = blocks.first().and_then(|b| self.map.get(b)) else { return };
        let mut alive = std::mem::take(&mut self.alive);
        alive.clear();
        alive.extend(self.holders_of(first).iter().map(|h| (h.slot, 0u32)));
        let mut depth = 1u32;
        for b in blocks.iter().skip(1) {
            let Some(hs) = self.map.get(b) else { break };
            let hs = match hs {
                Holders::One(x) => std::slice::from_ref(x),
                Holders::Many(j) => &self.overflow[*j as usize][..],
            };
            // Prefix-closed sets can only shrink along a chain: an unchanged count means an
            // unchanged set, so the common case costs one lookup and one comparison.
            if hs.len() != alive.len() {
                // A fresh epoch per shrink step: stamps left by earlier steps or queries never match.
                self.epoch = self.epoch.wrapping_add(1);
                if self.epoch == 0 {
                    self.stamp.fill(0);
                    self.epoch = 1;
                }
                let epoch = self.epoch;
                for h in hs {
                    self.stamp[h.slot as usize] = epoch;
                }
                let stamp = &self.stamp;
                alive.retain(|&(slot, _)| {
                    if stamp[slot as usize] == epoch {
                        true
                    } else {
                        out.push((slot, depth));
                        false
                    }
                });
                if alive.is_empty() {
                    break;
                }
            }
            depth += 1;
        }
        out.extend(alive.iter().map(|&(slot, _)| (slot, depth)));
        self.alive = alive;
    }

    /// Record that `slot` now holds the whole chain `blocks` (most recent use), evicting its least
    /// recently used blocks beyond capacity. Returns the backend's list version afterwards.
    pub fn insert(&mut self, slot: u32, blocks: &[u64]) -> u64 {
        if !matches!(self.lrus.get(slot as usize), Some(Some(_))) {
            return 0;
        }
        // Leaf first, root last: ancestors end up more recent than descendants (see module doc).
        for &h in blocks.iter().rev() {
            self.touch(slot, h);
        }
        self.evict(slot);
        let lru = self.lrus[slot as usize].as_mut().expect("checked above");
        lru.version += 1;
        lru.version
    }

    /// Forget that `slot` holds `hash` (the engine evicted it, or no request claims it any more).
    /// The caller keeps the set prefix-closed: it removes descendants before or with their parent.
    pub fn remove(&mut self, slot: u32, hash: u64) {
        let node = match self.map.get(&hash) {
            Some(Holders::One(h)) if h.slot == slot => h.node,
            Some(Holders::Many(i)) => match self.overflow[*i as usize].binary_search_by_key(&slot, |h| h.slot) {
                Ok(pos) => self.overflow[*i as usize][pos].node,
                Err(_) => return,
            },
            _ => return,
        };
        let Some(Some(lru)) = self.lrus.get_mut(slot as usize) else { return };
        lru.unlink(node);
        lru.free.push(node);
        lru.len -= 1;
        lru.version += 1;
        self.drop_holder(hash, slot);
    }

    /// Whether `slot` holds `hash` (the model-based test checks removals with it).
    #[cfg(test)]
    pub fn holds(&self, slot: u32, hash: u64) -> bool {
        match self.map.get(&hash) {
            Some(h) => self.holders_of(h).iter().any(|h| h.slot == slot),
            None => false,
        }
    }

    /// The version `insert` returned, if nothing changed `slot`'s list since.
    pub fn version(&self, slot: u32) -> u64 {
        match self.lrus.get(slot as usize) {
            Some(Some(l)) => l.version,
            _ => u64::MAX,
        }
    }

    fn touch(&mut self, slot: u32, hash: u64) {
        let lru = self.lrus[slot as usize].as_mut().expect("checked by caller");
        match self.map.get_mut(&hash) {
            None => {
                let node = lru.alloc(hash);
                self.map.insert(hash, Holders::One(Holder { slot, node }));
            }
            Some(Holders::One(h)) if h.slot == slot => lru.touch(h.node),
            Some(entry @ Holders::One(_)) => {
                let Holders::One(other) = *entry else { unreachable!() };
                let node = lru.alloc(hash);
                let mut v = vec![other, Holder { slot, node }];
                v.sort_unstable_by_key(|h| h.slot);
                let i = match self.free_overflow.pop() {
                    Some(i) => {
                        self.overflow[i as usize] = v;
                        i
                    }
                    None => {
                        self.overflow.push(v);
                        (self.overflow.len() - 1) as u32
                    }
                };
                *entry = Holders::Many(i);
            }
            Some(Holders::Many(i)) => {
                let v = &mut self.overflow[*i as usize];
                match v.binary_search_by_key(&slot, |h| h.slot) {
                    Ok(pos) => lru.touch(v[pos].node),
                    Err(pos) => {
                        let node = lru.alloc(hash);
                        v.insert(pos, Holder { slot, node });
                    }
                }
            }
        }
    }

    fn evict(&mut self, slot: u32) {
        loop {
            let Some(Some(lru)) = self.lrus.get_mut(slot as usize) else { return };
            if lru.len <= lru.capacity {
                return;
            }
            let Some(h) = lru.pop_back() else { return };
            self.drop_holder(h, slot);
        }
    }

    fn drop_holder(&mut self, hash: u64, slot: u32) {
        let Some(entry) = self.map.get_mut(&hash) else { return };
        match *entry {
            Holders::One(h) => {
                if h.slot == slot {
                    self.map.remove(&hash);
                }
            }
            Holders::Many(i) => {
                let v = &mut self.overflow[i as usize];
                if let Ok(pos) = v.binary_search_by_key(&slot, |h| h.slot) {
                    v.remove(pos);
                }
                if v.len() == 1 {
                    *entry = Holders::One(v[0]);
                    self.overflow[i as usize] = Vec::new();
                    self.free_overflow.push(i);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(ix: &mut PrefixIndex, blocks: &[u64]) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        ix.longest_prefix(blocks, &mut out);
        out.sort();
        out
    }

    #[test]
    fn longest_prefix_per_backend() {
        let mut ix = PrefixIndex::new();
        for s in 0..3 {
            ix.add_backend(s, 100);
        }
        ix.insert(0, &[1, 2, 3, 4]);
        ix.insert(1, &[1, 2]);
        ix.insert(2, &[9, 10]);
        assert_eq!(matches(&mut ix, &[1, 2, 3, 4, 5]), vec![(0, 4), (1, 2)]);
        assert_eq!(matches(&mut ix, &[1, 2, 7]), vec![(0, 2), (1, 2)]);
        assert_eq!(matches(&mut ix, &[9]), vec![(2, 1)]);
        assert_eq!(matches(&mut ix, &[5, 1]), vec![]);
        assert_eq!(matches(&mut ix, &[]), vec![]);
    }

    #[test]
    fn lru_evicts_leaves_first_within_capacity() {
        let mut ix = PrefixIndex::new();
        ix.add_backend(0, 4);
        ix.insert(0, &[1, 2, 3]);
        ix.insert(0, &[1, 5, 6]); // 1 is shared; 5 blocks total > 4: the oldest leaf (3) goes
        assert_eq!(ix.len(0), 4);
        assert_eq!(matches(&mut ix, &[1, 2, 3]), vec![(0, 2)]);
        assert_eq!(matches(&mut ix, &[1, 5, 6]), vec![(0, 3)]);
        // A chain longer than capacity keeps its root end.
        ix.insert(0, &[10, 11, 12, 13, 14, 15]);
        assert_eq!(ix.len(0), 4);
        assert_eq!(matches(&mut ix, &[10, 11, 12, 13, 14, 15]), vec![(0, 4)]);
    }

    #[test]
    fn clear_and_capacity_shrink() {
        let mut ix = PrefixIndex::new();
        ix.add_backend(0, 10);
        ix.add_backend(1, 10);
        ix.insert(0, &[1, 2, 3]);
        ix.insert(1, &[1, 2, 3]);
        ix.clear(0);
        assert_eq!(ix.len(0), 0);
        assert_eq!(matches(&mut ix, &[1, 2, 3]), vec![(1, 3)]);
        ix.set_capacity(1, 1);
        assert_eq!(matches(&mut ix, &[1, 2, 3]), vec![(1, 1)]);
        ix.remove_backend(1);
        assert_eq!(matches(&mut ix, &[1, 2, 3]), vec![]);
        assert_eq!(ix.map.len(), 0);
        assert_eq!(ix.pairs(), 0);
    }

    #[test]
    fn many_holders_drop_out_at_different_depths() {
        let mut ix = PrefixIndex::new();
        for s in 0..5u32 {
            ix.add_backend(s, 1000);
            let chain: Vec<u64> = (1..=(s as u64 + 1) * 2).collect();
            ix.insert(s, &chain);
        }
        let q: Vec<u64> = (1..=20).collect();
        assert_eq!(matches(&mut ix, &q), vec![(0, 2), (1, 4), (2, 6), (3, 8), (4, 10)]);
    }

    #[test]
    fn bytes_per_pair_is_small() {
        let mut ix = PrefixIndex::new();
        ix.add_backend(0, 200_000);
        let chain: Vec<u64> = (0..100_000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        for c in chain.chunks(128) {
            ix.insert(0, c);
        }
        let per = ix.bytes() as f64 / ix.pairs() as f64;
        assert!(per <= 64.0, "{per} bytes per indexed block");
    }

    /// Obviously-correct model: per backend an LRU-ordered Vec (front = most recent).
    #[derive(Default)]
    struct Model {
        lists: Vec<Vec<u64>>,
        caps: Vec<u64>,
    }

    impl Model {
        fn insert(&mut self, slot: usize, blocks: &[u64]) {
            let l = &mut self.lists[slot];
            for &h in blocks.iter().rev() {
                l.retain(|&x| x != h);
                l.insert(0, h);
            }
            l.truncate(self.caps[slot] as usize);
        }
        fn longest(&self, blocks: &[u64]) -> Vec<(u32, u32)> {
            let mut out = Vec::new();
            for (s, l) in self.lists.iter().enumerate() {
                let n = blocks.iter().take_while(|b| l.contains(b)).count();
                if n > 0 {
                    out.push((s as u32, n as u32));
                }
            }
            out
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(usize, usize, usize),
        Query(usize, usize),
        Clear(usize),
        Capacity(usize, u64),
        /// Remove block n of chain c and its descendants from backend s (as a caller keeping it closed).
        RemoveTail(usize, usize, usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..4usize, 0..6usize, 0..40usize).prop_map(|(s, c, n)| Op::Insert(s, c, n)),
            3 => (0..6usize, 0..40usize).prop_map(|(c, n)| Op::Query(c, n)),
            1 => (0..4usize).prop_map(Op::Clear),
            1 => (0..4usize, 0..30u64).prop_map(|(s, c)| Op::Capacity(s, c)),
            2 => (0..4usize, 0..6usize, 0..40usize).prop_map(|(s, c, n)| Op::RemoveTail(s, c, n)),
        ]
    }

    proptest::proptest! {
        /// The index answers exactly like the naive model for any interleaving of inserts, clears
        /// and capacity changes over chains that share prefixes (as conversations do).
        #[test]
        fn index_matches_naive_model(ops in proptest::collection::vec(op(), 1..80)) {
            // Six conversations sharing prefixes at various depths.
            let base: Vec<u8> = (0..160u32).map(|i| (i * 31 % 251) as u8).collect();
            let texts: Vec<Vec<u8>> = (0..6usize)
                .map(|k| {
                    let mut t = base[..k * 24].to_vec();
                    t.extend((0..160usize).map(|i| (i as u8).wrapping_mul(k as u8 + 3)));
                    t
                })
                .collect();
            let chains: Vec<Vec<u64>> = texts.iter().map(|t| crate::request::chain_hashes(t, 4, 9)).collect();
            let mut ix = PrefixIndex::new();
            let mut model = Model { lists: vec![Vec::new(); 4], caps: vec![20; 4] };
            for s in 0..4 {
                ix.add_backend(s, 20);
            }
            for op in ops {
                match op {
                    Op::Insert(s, c, n) => {
                        let n = n.min(chains[c].len());
                        ix.insert(s as u32, &chains[c][..n]);
                        model.insert(s, &chains[c][..n]);
                    }
                    Op::Query(c, n) => {
                        let n = n.min(chains[c].len());
                        proptest::prop_assert_eq!(matches(&mut ix, &chains[c][..n]), model.longest(&chains[c][..n]));
                    }
                    Op::Clear(s) => {
                        ix.clear(s as u32);
                        model.lists[s].clear();
                    }
                    Op::Capacity(s, c) => {
                        ix.set_capacity(s as u32, c);
                        model.caps[s] = c;
                        model.lists[s].truncate(c as usize);
                    }
                    Op::RemoveTail(s, c, n) => {
                        // Block n of chain c and all its descendants: block n.. of every chain
                        // through it (equal hashes at one position mean equal prefixes).
                        let Some(&at) = chains[c].get(n) else { continue };
                        for chain in chains.iter().filter(|ch| ch.get(n) == Some(&at)) {
                            for &h in chain[n..].iter().rev() {
                                proptest::prop_assert_eq!(ix.holds(s as u32, h), model.lists[s].contains(&h));
                                ix.remove(s as u32, h);
                                model.lists[s].retain(|&x| x != h);
                            }
                        }
                    }
                }
                for s in 0..4 {
                    proptest::prop_assert_eq!(ix.len(s as u32), model.lists[s].len() as u64);
                }
            }
        }
    }
}
