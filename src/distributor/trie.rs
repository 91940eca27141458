//! The legacy binary stack formats of `/ingest`: `trie` and `tree` (shared/api.md §2.2).
//! Both are a pre-order walk of nodes `uvarint(len) name uvarint(value) uvarint(children)`
//! (uvarint: LEB128 as Go's `encoding/binary`); they differ in what a path means:
//!
//! * trie: a compressed prefix trie over whole folded keys; a node's key is the
//!   concatenation of the labels on its path (`;` separators are inside the labels);
//! * tree: a flame tree whose first node is a virtual root; a node's stack is the names on
//!   its path below the root, joined by `;`.
//!
//! Each node with a value emits (stack, value), which `/ingest` builds into a profile as it
//! does folded text. Neither decoder recurses: the walk keeps an explicit stack of the
//! open nodes, so a hostile depth costs a few bytes per node, never the thread's stack.
//! A path's key is a prefix of the next one, so a deep trie whose every node has a value
//! emits keys whose total is quadratic in the input: the total is bounded by `max_key_bytes`.
use kiln_io::codec::Reader;

/// Which of the two layouts a body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Trie,
    Tree,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Trie => "trie",
            Layout::Tree => "tree",
        }
    }
}

/// The smallest encoding of a node: three one-byte varints (an empty name).
const MIN_NODE_BYTES: usize = 3;

/// Decodes a trie or tree body into (stack, value) pairs, root first and `;`-joined as
/// folded lines are. `max_key_bytes` (0: none) bounds the total of the stacks' lengths.
pub fn parse(layout: Layout, body: &[u8], max_key_bytes: usize) -> Result<Vec<(String, i64)>, String> {
    let what = layout.name();
    let bad = |e: kiln_io::codec::CodecError| format!("malformed {what} body: {e}");
    let mut r = Reader::new(body);
    let mut out = Vec::new();
    if body.is_empty() {
        return Ok(out);
    }
    // The current node's path, and for each open node: the path's length before its name,
    // and how many of its children are still to be read.
    let mut key = String::new();
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut total = 0usize;
    let mut first = true;
    loop {
        let start = key.len();
        let name = r.str().map_err(bad)?;
        let value = r.u().map_err(bad)?;
        let children = r.count(MIN_NODE_BYTES).map_err(bad)?;
        let value = i64::try_from(value).map_err(|_| format!("malformed {what} body: value {value} overflows"))?;
        match layout {
            Layout::Trie => key.push_str(name),
            // The tree's root is virtual: the stacks start at its children.
            Layout::Tree if first => {}
            Layout::Tree => {
                if start > 0 {
                    key.push(';');
                }
                key.push_str(name);
            }
        }
        first = false;
        if value > 0 && !key.is_empty() {
            total = total.saturating_add(key.len());
            if max_key_bytes > 0 && total > max_key_bytes {
                return Err(format!(
                    "the {what} body expands to more than {max_key_bytes} bytes of stacks \
                     (max_profile_size_bytes): too deep for its size"
                ));
            }
            out.push((key.clone(), value));
        }
        if children > 0 {
            open.push((start, children));
        } else {
            key.truncate(start);
        }
        // Close every node whose children have all been read; the next node is a child of
        // the innermost node still open.
        loop {
            match open.last_mut() {
                None => {
                    r.finish().map_err(bad)?;
                    return Ok(out);
                }
                Some((_, 0)) => {
                    let (s, _) = open.pop().expect("just seen");
                    key.truncate(s);
                }
                Some((_, left)) => {
                    *left -= 1;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_io::codec::Writer;

    fn node(w: &mut Writer, name: &str, value: u64, children: u64) {
        w.str(name);
        w.u(value);
        w.u(children);
    }

    fn pairs(v: &[(String, i64)]) -> Vec<(&str, i64)> {
        v.iter().map(|(s, n)| (s.as_str(), *n)).collect()
    }

    #[test]
    fn trie_keys_concatenate_labels() {
        // "" -> "a;b" (1) -> [";c" (2), ";d" (3)]; "x" (4)
        let mut w = Writer::default();
        node(&mut w, "", 0, 2);
        node(&mut w, "a;b", 1, 2);
        node(&mut w, ";c", 2, 0);
        node(&mut w, ";d", 3, 0);
        node(&mut w, "x", 4, 0);
        let got = parse(Layout::Trie, &w.0, 0).unwrap();
        assert_eq!(pairs(&got), vec![("a;b", 1), ("a;b;c", 2), ("a;b;d", 3), ("x", 4)]);
    }

    #[test]
    fn tree_skips_the_virtual_root() {
        let mut w = Writer::default();
        node(&mut w, "", 0, 2);
        node(&mut w, "a", 1, 1);
        node(&mut w, "b", 2, 0);
        node(&mut w, "c", 3, 0);
        let got = parse(Layout::Tree, &w.0, 0).unwrap();
        assert_eq!(pairs(&got), vec![("a", 1), ("a;b", 2), ("c", 3)]);
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let mut w = Writer::default();
        node(&mut w, "", 0, 1);
        // The child is missing.
        assert!(parse(Layout::Tree, &w.0, 0).unwrap_err().contains("malformed tree body"));
        // More children than the bytes could hold.
        let mut w = Writer::default();
        node(&mut w, "", 0, 1000);
        assert!(parse(Layout::Trie, &w.0, 0).is_err());
        // Trailing bytes.
        let mut w = Writer::default();
        node(&mut w, "a", 1, 0);
        w.byte(7);
        assert!(parse(Layout::Trie, &w.0, 0).is_err());
        // Not UTF-8.
        assert!(parse(Layout::Trie, &[1, 0xff, 1, 0], 0).is_err());
        assert_eq!(parse(Layout::Trie, &[], 0).unwrap(), vec![]);
    }

    /// A chain of one-byte labels, each with a value: n nodes, n(n+1)/2 key bytes.
    fn deep_trie(n: usize) -> Vec<u8> {
        let mut w = Writer::default();
        for i in 0..n {
            node(&mut w, "a", 1, u64::from(i + 1 < n));
        }
        w.0
    }

    #[test]
    fn deep_tries_are_bounded_and_never_recurse() {
        let body = deep_trie(200_000);
        let e = parse(Layout::Trie, &body, 1 << 20).unwrap_err();
        assert!(e.contains("max_profile_size_bytes"), "{e}");
        // Within the bound the walk takes any depth without recursion.
        let got = parse(Layout::Trie, &deep_trie(1000), 1 << 20).unwrap();
        assert_eq!(got.len(), 1000);
        assert_eq!(got[999].0.len(), 1000);
    }

    proptest::proptest! {
        /// TREE bytes as the querier writes them read back into the stacks they were drawn from.
        #[test]
        fn tree_bytes_round_trip(
            stacks in proptest::collection::vec(("[a-d]{1,2}(;[a-d]{1,2}){0,5}", 1i64..1000), 0..40)
        ) {
            let input: Vec<(&str, i64)> = stacks.iter().map(|(s, v)| (s.as_str(), *v)).collect();
            let tree = crate::querier::tree::Tree::of_stacks(&input);
            let mut want: std::collections::BTreeMap<String, i64> = Default::default();
            for (s, v) in &input {
                *want.entry((*s).to_string()).or_default() += v;
            }
            let got = parse(Layout::Tree, &tree.tree_bytes(0), 0).unwrap();
            let mut back: std::collections::BTreeMap<String, i64> = Default::default();
            for (s, v) in got {
                proptest::prop_assert!(back.insert(s, v).is_none(), "a stack emitted twice");
            }
            proptest::prop_assert_eq!(back, want);
        }
    }
}
