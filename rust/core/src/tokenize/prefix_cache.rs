//! Token ids of rendered conversation prefixes, so a conversation's next turn tokenizes only its
//! new messages. An entry is one segment: the ids of the rendered text between its parent's end
//! and its own end, plus the length and hash of the whole rendered prefix it ends, so a lookup
//! proves the new render starts with exactly that text before it trusts the ids.
//!
//! Bounded by the ids it holds, in two generations: lookups promote the whole chain they walk to
//! the current one; when the current one is full it becomes the old one and the old one is dropped.
//! A parent is always promoted with its child, so a chain is never missing a middle link
//! (a lookup still checks and treats a gap as a miss).
use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64;

struct Segment {
    parent: Option<u64>,
    text_len: usize,
    text_hash: u64,
    ids: Vec<u32>,
}

pub struct PrefixCache {
    cur: HashMap<u64, Segment>,
    old: HashMap<u64, Segment>,
    cur_ids: usize,
    /// ids per generation; the cache holds at most twice this many.
    generation_ids: usize,
}

/// A cached prefix: the key of its last segment, its rendered length and its ids.
pub struct Hit {
    pub key: u64,
    pub text_len: usize,
    pub ids: Vec<u32>,
}

impl PrefixCache {
    pub fn new(max_ids: usize) -> Self {
        PrefixCache { cur: HashMap::new(), old: HashMap::new(), cur_ids: 0, generation_ids: (max_ids / 2).max(1) }
    }

    pub fn held_ids(&self) -> usize {
        self.cur_ids + self.old.values().map(|s| s.ids.len()).sum::<usize>()
    }

    fn promote(&mut self, key: u64) -> Option<&Segment> {
        if !self.cur.contains_key(&key) {
            let s = self.old.remove(&key)?;
            self.cur_ids += s.ids.len();
            self.cur.insert(key, s);
        }
        self.cur.get(&key)
    }

    /// The longest cached prefix of `text` among `keys` (tried last first).
    pub fn longest(&mut self, keys: &[u64], text: &str) -> Option<Hit> {
        keys.iter().rev().find_map(|&k| self.get(k, text))
    }

    fn get(&mut self, key: u64, text: &str) -> Option<Hit> {
        let s = self.promote(key)?;
        let (text_len, text_hash) = (s.text_len, s.text_hash);
        if text.len() < text_len || !text.is_char_boundary(text_len) || xxh3_64(&text.as_bytes()[..text_len]) != text_hash {
            return None;
        }
        let mut chain = Vec::new();
        let mut next = Some(key);
        while let Some(k) = next {
            let s = self.promote(k)?;
            next = s.parent;
            chain.push(k);
        }
        let total = chain.iter().map(|k| self.cur[k].ids.len()).sum();
        let mut ids = Vec::with_capacity(total);
        for k in chain.iter().rev() {
            ids.extend_from_slice(&self.cur[k].ids);
        }
        Some(Hit { key, text_len, ids })
    }

    /// `text` is the whole rendered prefix this segment ends; `ids` are only its new part's.
    pub fn insert(&mut self, key: u64, parent: Option<u64>, text: &str, ids: Vec<u32>) {
        if self.cur_ids + ids.len() > self.generation_ids {
            self.old = std::mem::take(&mut self.cur);
            self.cur_ids = 0;
            // The parent must stay reachable from its new child.
            if let Some(p) = parent {
                let mut next = Some(p);
                while let Some(k) = next {
                    next = self.promote(k).and_then(|s| s.parent);
                }
            }
        }
        self.cur_ids += ids.len();
        let seg = Segment { parent, text_len: text.len(), text_hash: xxh3_64(text.as_bytes()), ids };
        if let Some(prev) = self.cur.insert(key, seg) {
            self.cur_ids -= prev.ids.len();
        }
        self.old.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_verify_text_and_stay_bounded() {
        let mut c = PrefixCache::new(8);
        c.insert(1, None, "ab", vec![1, 2]);
        c.insert(2, Some(1), "abcd", vec![3, 4]);
        let h = c.longest(&[1, 2, 3], "abcdef").unwrap();
        assert_eq!((h.key, h.text_len, h.ids), (2, 4, vec![1, 2, 3, 4]));
        // Same key, different rendered text (a template that renders the past differently): miss
        // on that entry, the shorter one still matches.
        let h = c.longest(&[1, 2], "abXd").unwrap();
        assert_eq!((h.key, h.ids), (1, vec![1, 2]));
        assert!(c.longest(&[1, 2], "zz").is_none());
        // Filling a generation rotates; the chain of a new child survives with it.
        c.insert(3, Some(2), "abcdefgh", vec![5, 6, 7]);
        assert_eq!(c.longest(&[3], "abcdefgh").unwrap().ids, vec![1, 2, 3, 4, 5, 6, 7]);
        for k in 10..20 {
            c.insert(k, None, "q", vec![0, 0, 0]);
        }
        assert!(c.held_ids() <= 8 + 3, "held {}", c.held_ids());
        assert!(c.longest(&[3], "abcdefgh").is_none());
    }
}
