//! Finding a tree node's child by name, for trees built one node at a time (flame trees).
//!
//! Most nodes have a handful of children, so siblings are kept as a linked list and scanned;
//! a node whose list grows past `WIDE` children moves to a hash map. This keeps the common
//! case in a few cache lines instead of one probe into a map of millions of entries.
use rustc_hash::FxHashMap;

const NONE: u32 = u32::MAX;
/// Siblings scanned before a parent's children move to the map.
const WIDE: u32 = 16;

/// A node's entries are packed in pairs read together, so scanning a list costs one cache
/// line per sibling (its name and the next sibling) and one for the parent (its first child
/// and count): in trees of millions of nodes, siblings made at different times lie far apart.
#[derive(Debug, Clone)]
pub struct ChildIndex {
    /// Per node: (name, next sibling).
    link: Vec<(u32, u32)>,
    /// Per node: (first child, children count while the parent is narrow; `u32::MAX` once
    /// it is wide).
    head: Vec<(u32, u32)>,
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
        let mut c = ChildIndex { link: Vec::with_capacity(n), head: Vec::with_capacity(n), wide: FxHashMap::default() };
        c.push(0, NONE);
        c
    }

    fn push(&mut self, name: u32, next: u32) -> u32 {
        let id = self.link.len() as u32;
        self.link.push((name, next));
        self.head.push((NONE, 0));
        id
    }

    pub fn len(&self) -> usize {
        self.link.len()
    }

    pub fn is_empty(&self) -> bool {
        self.link.is_empty()
    }

    /// The child of `parent` named `name`; the bool says whether it was just created (its id
    /// is then `len() - 1`).
    pub fn child(&mut self, parent: u32, name: u32) -> (u32, bool) {
        let p = parent as usize;
        let (first, fanout) = self.head[p];
        if fanout == NONE {
            if let Some(&c) = self.wide.get(&(parent, name)) {
                return (c, false);
            }
            let c = self.push(name, NONE);
            self.wide.insert((parent, name), c);
            return (c, true);
        }
        let mut c = first;
        while c != NONE {
            let (n, next) = self.link[c as usize];
            if n == name {
                return (c, false);
            }
            c = next;
        }
        let c = self.push(name, first);
        self.head[p] = (c, fanout + 1);
        if fanout + 1 > WIDE {
            self.widen(parent);
        }
        (c, true)
    }

    /// Moves `parent`'s children from its list to the map.
    fn widen(&mut self, parent: u32) {
        let mut s = self.head[parent as usize].0;
        while s != NONE {
            let (name, next) = self.link[s as usize];
            self.wide.insert((parent, name), s);
            s = next;
        }
        self.head[parent as usize].1 = NONE;
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
