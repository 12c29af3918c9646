//! The prefix index under arbitrary sequences of backend and chain operations, checked after every
//! step against a model simple enough to be right by reading it: per backend a list of blocks,
//! most recently used first, cut at the capacity.
//!
//! Chains are real chains (`chain_hashes` over conversations that share leading bytes), because
//! the index's matcher relies on what real chains guarantee: a block's hash names its whole prefix.
#![no_main]
use arbitrary::Arbitrary;
use kvroute_core::index::PrefixIndex;
use kvroute_core::request::chain_hashes;
use libfuzzer_sys::fuzz_target;

const SLOTS: u8 = 6;
const BLOCK_BYTES: usize = 2;

#[derive(Arbitrary, Debug)]
enum Op {
    AddBackend { slot: u8, capacity: u8 },
    RemoveBackend { slot: u8 },
    Clear { slot: u8 },
    SetCapacity { slot: u8, capacity: u8 },
    Insert { slot: u8, chain: u8, blocks: u8 },
    Query { chain: u8, blocks: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Conversations: each one shares `shared` leading bytes with the one before it.
    texts: Vec<(u8, Vec<u8>)>,
    ops: Vec<Op>,
}

#[derive(Default)]
struct Model {
    /// None: the slot is not tracked.
    lists: Vec<Option<(Vec<u64>, u64)>>,
}

impl Model {
    fn add(&mut self, slot: usize, capacity: u64) {
        self.lists[slot] = Some((Vec::new(), capacity));
    }
    fn insert(&mut self, slot: usize, chain: &[u64]) {
        let Some((list, capacity)) = &mut self.lists[slot] else { return };
        for &h in chain.iter().rev() {
            list.retain(|&x| x != h);
            list.insert(0, h);
        }
        list.truncate(*capacity as usize);
    }
    fn set_capacity(&mut self, slot: usize, capacity: u64) {
        if let Some((list, cap)) = &mut self.lists[slot] {
            *cap = capacity;
            list.truncate(capacity as usize);
        }
    }
    fn longest(&self, chain: &[u64]) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for (slot, entry) in self.lists.iter().enumerate() {
            if let Some((list, _)) = entry {
                let n = chain.iter().take_while(|b| list.contains(b)).count();
                if n > 0 {
                    out.push((slot as u32, n as u32));
                }
            }
        }
        out
    }
}

fn chains(texts: &[(u8, Vec<u8>)]) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    let mut previous: Vec<u8> = Vec::new();
    for (shared, tail) in texts.iter().take(8) {
        let mut text = previous[..(*shared as usize).min(previous.len())].to_vec();
        text.extend_from_slice(&tail[..tail.len().min(96)]);
        out.push(chain_hashes(&text, BLOCK_BYTES, 7));
        previous = text;
    }
    out
}

fuzz_target!(|input: Input| {
    let chains = chains(&input.texts);
    if chains.is_empty() {
        return;
    }
    let mut ix = PrefixIndex::new();
    let mut model = Model { lists: vec![None; SLOTS as usize] };
    let mut got = Vec::new();
    for op in input.ops.iter().take(200) {
        match *op {
            Op::AddBackend { slot, capacity } => {
                let (slot, capacity) = (slot % SLOTS, capacity as u64 % 40);
                ix.add_backend(slot as u32, capacity);
                model.add(slot as usize, capacity);
            }
            Op::RemoveBackend { slot } => {
                ix.remove_backend((slot % SLOTS) as u32);
                model.lists[(slot % SLOTS) as usize] = None;
            }
            Op::Clear { slot } => {
                ix.clear((slot % SLOTS) as u32);
                if let Some((list, _)) = &mut model.lists[(slot % SLOTS) as usize] {
                    list.clear();
                }
            }
            Op::SetCapacity { slot, capacity } => {
                ix.set_capacity((slot % SLOTS) as u32, capacity as u64 % 40);
                model.set_capacity((slot % SLOTS) as usize, capacity as u64 % 40);
            }
            Op::Insert { slot, chain, blocks } => {
                let c = &chains[chain as usize % chains.len()];
                let c = &c[..(blocks as usize).min(c.len())];
                let before = ix.version((slot % SLOTS) as u32);
                let after = ix.insert((slot % SLOTS) as u32, c);
                if model.lists[(slot % SLOTS) as usize].is_some() {
                    assert!(after > before, "insert did not bump the version ({before} -> {after})");
                    assert_eq!(ix.version((slot % SLOTS) as u32), after);
                }
                model.insert((slot % SLOTS) as usize, c);
            }
            Op::Query { chain, blocks } => {
                let c = &chains[chain as usize % chains.len()];
                let c = &c[..(blocks as usize).min(c.len())];
                ix.longest_prefix(c, &mut got);
                got.sort_unstable();
                assert_eq!(got, model.longest(c), "longest_prefix disagrees with the model");
            }
        }
        let mut pairs = 0;
        for slot in 0..SLOTS {
            let (len, capacity) = match &model.lists[slot as usize] {
                Some((list, capacity)) => (list.len() as u64, *capacity),
                None => (0, 0),
            };
            assert_eq!(ix.len(slot as u32), len, "slot {slot} holds a different number of blocks");
            assert_eq!(ix.capacity(slot as u32), capacity);
            pairs += len;
        }
        assert_eq!(ix.pairs(), pairs);
    }
});
