//! Finding a tree node's child by name, for trees built one node at a time (flame trees).
//!
//! Most nodes have a handful of children, so siblings are kept as a linked list and scanned;
//! a node whose list grows past `WIDE` children moves to a hash map. This keeps the common
//! case in a few cache lines instead of one probe into a map of millions of entries.
use rustc_hash::FxHashMap;

const NONE: u32 = u32::MAX;
/// Siblings scanned before a parent's children move to the map.
const WIDE: u32 = 16;

#[derive(Debug, Clone)]
pub struct ChildIndex {
    name: Vec<u32>,
    first: Vec<u32>,
    next: Vec<u32>,
    /// Children count while the parent is narrow; `u32::MAX` once it is wide.
    fanout: Vec<u32>,
    wide: FxHashMap<(u32, u32), u32>,
}

impl Default for ChildIndex {
    fn default() -> Self {
        Self::with_capacity(1)
    }
}

impl ChildIndex {
    /// An index holding just the root, node 0.
    pub fn with_capacity(n: usize) -> Self {
        let mut c = ChildIndex {
            name: Vec::with_capacity(n),
            first: Vec::with_capacity(n),
            next: Vec::with_capacity(n),
            fanout: Vec::with_capacity(n),
            wide: FxHashMap::default(),
        };
        c.push(0);
        c
    }

    fn push(&mut self, name: u32) -> u32 {
        let id = self.name.len() as u32;
        self.name.push(name);
        self.first.push(NONE);
        self.next.push(NONE);
        self.fanout.push(0);
        id
    }

    pub fn len(&self) -> usize {
        self.name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.name.is_empty()
    }

    /// The child of `parent` named `name`; the bool says whether it was just created (its id
    /// is then `len() - 1`).
    pub fn child(&mut self, parent: u32, name: u32) -> (u32, bool) {
        let p = parent as usize;
        if self.fanout[p] == NONE {
            if let Some(&c) = self.wide.get(&(parent, name)) {
                return (c, false);
            }
            let c = self.push(name);
            self.wide.insert((parent, name), c);
            return (c, true);
        }
        let mut c = self.first[p];
        while c != NONE {
            if self.name[c as usize] == name {
                return (c, false);
            }
            c = self.next[c as usize];
        }
        let c = self.push(name);
        self.next[c as usize] = self.first[p];
        self.first[p] = c;
        self.fanout[p] += 1;
        if self.fanout[p] > WIDE {
            let mut s = self.first[p];
            while s != NONE {
                self.wide.insert((parent, self.name[s as usize]), s);
                s = self.next[s as usize];
            }
            self.fanout[p] = NONE;
        }
        (c, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The same (parent, name) always finds the same node, narrow or wide.
        #[test]
        fn agrees_with_a_map(ops in proptest::collection::vec((0u32..40, 0u32..60), 1..2000)) {
            let mut idx = ChildIndex::default();
            let mut reference: std::collections::HashMap<(u32, u32), u32> = Default::default();
            for (p, name) in ops {
                let parent = p % idx.len() as u32;
                let (c, created) = idx.child(parent, name);
                match reference.get(&(parent, name)) {
                    Some(&r) => { prop_assert_eq!(r, c); prop_assert!(!created); }
                    None => { prop_assert!(created); prop_assert_eq!(c as usize, idx.len() - 1); reference.insert((parent, name), c); }
                }
            }
        }
    }
}
