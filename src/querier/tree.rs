//! The merged flame tree of a query, and its encodings: Pyroscope's FlameGraph levels (with
//! `max_nodes` truncation into "other" nodes), the diff of two trees, and TREE bytes.
use kiln_proto::querier::v1::{FlameGraph, FlameGraphDiff, Level};
use kiln_shards::model::childindex::ChildIndex;
use kiln_shards::query::FlameTree;
use rustc_hash::FxHashMap;

pub const OTHER: &str = "other";

#[derive(Debug, Clone)]
struct Node {
    parent: u32,
    name: u32,
    self_: i64,
    total: i64,
}

/// A tree over function names. Node 0 is the root; a child's id is always greater than its
/// parent's. After `finish`, children are listed per node (sorted by name bytes).
#[derive(Debug, Clone)]
pub struct Tree {
    names: Vec<String>,
    name_ids: FxHashMap<String, u32>,
    nodes: Vec<Node>,
    /// Child lookup while merging; built lazily, dropped by `finish`.
    index: Option<ChildIndex>,
    /// Children of node i: `child_list[child_start[i]..child_start[i + 1]]` (after `finish`).
    child_start: Vec<u32>,
    child_list: Vec<u32>,
    /// Rank of each name in byte order (after `finish`).
    rank: Vec<u32>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            names: vec![String::new()],
            name_ids: FxHashMap::default(),
            nodes: vec![Node { parent: 0, name: 0, self_: 0, total: 0 }],
            index: None,
            child_start: Vec::new(),
            child_list: Vec::new(),
            rank: Vec::new(),
        }
    }
}

impl Tree {
    fn name_id(&mut self, name: &str) -> u32 {
        if let Some(i) = self.name_ids.get(name) {
            return *i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.to_string());
        self.name_ids.insert(name.to_string(), i);
        i
    }

    fn child(&mut self, parent: u32, name: u32) -> u32 {
        let nodes = &self.nodes;
        let index = self.index.get_or_insert_with(|| {
            // Replays the nodes in id order: the index hands out the same ids.
            let mut idx = ChildIndex::with_capacity(nodes.len());
            for n in &nodes[1..] {
                idx.child(n.parent, n.name);
            }
            idx
        });
        let (id, created) = index.child(parent, name);
        if created {
            self.nodes.push(Node { parent, name, self_: 0, total: 0 });
        }
        id
    }

    fn children(&self, i: u32) -> &[u32] {
        let i = i as usize;
        &self.child_list[self.child_start[i] as usize..self.child_start[i + 1] as usize]
    }

    /// The children of `i` sorted by name bytes, into `buf`.
    fn sorted_children<'b>(&self, i: u32, buf: &'b mut Vec<u32>) -> &'b [u32] {
        buf.clear();
        buf.extend_from_slice(self.children(i));
        buf.sort_unstable_by_key(|c| self.rank[self.nodes[*c as usize].name as usize]);
        buf
    }

    /// Adds a core's partial tree. The first non-empty partial is adopted as it is (its
    /// children are already unique); the child index is built only when a second one must
    /// be merged into it.
    pub fn merge(&mut self, part: &FlameTree) {
        let names: Vec<u32> = part.names.iter().map(|n| self.name_id(n)).collect();
        if let Some(root) = part.nodes.first() {
            self.nodes[0].self_ += root.2;
        }
        if self.nodes.len() == 1 && self.index.is_none() {
            self.nodes.reserve(part.nodes.len());
            for &(parent, name, value) in part.nodes.iter().skip(1) {
                self.nodes.push(Node { parent, name: names[name as usize], self_: value, total: 0 });
            }
            return;
        }
        let mut map = vec![0u32; part.nodes.len()];
        for (i, &(parent, name, value)) in part.nodes.iter().enumerate().skip(1) {
            let id = self.child(map[parent as usize], names[name as usize]);
            map[i] = id;
            self.nodes[id as usize].self_ += value;
        }
    }

    /// Rebuilds a tree from flame graph levels (4-tuples, delta-encoded x): a node's parent
    /// is the node one level up whose span contains its x. Used to check encodings against
    /// golden flame graphs and to merge flame graphs received whole.
    pub fn from_flamegraph(names: &[String], levels: &[Vec<i64>]) -> Result<Tree, String> {
        let mut t = Tree::default();
        // (absolute x, total, tree node) of the previous level
        let mut prev: Vec<(i64, i64, u32)> = vec![(0, i64::MAX, 0)];
        for (d, level) in levels.iter().enumerate().skip(1) {
            if level.len() % 4 != 0 {
                return Err(format!("level {d} is not made of 4-tuples"));
            }
            let mut row = Vec::with_capacity(level.len() / 4);
            let mut end = 0i64;
            let mut p = 0usize;
            for c in level.chunks(4) {
                let x = end + c[0];
                end = x + c[1];
                while p < prev.len() && !(prev[p].0 <= x && x < prev[p].0.saturating_add(prev[p].1.max(1))) {
                    p += 1;
                }
                let Some(&(_, _, parent)) = prev.get(p) else {
                    return Err(format!("level {d}: node at x={x} has no parent"));
                };
                let name = names.get(c[3] as usize).ok_or_else(|| format!("name index {} out of range", c[3]))?;
                let nid = t.name_id(name);
                let id = t.child(parent, nid);
                t.nodes[id as usize].self_ += c[2];
                row.push((x, c[1], id));
            }
            prev = row;
        }
        if let Some(root) = levels.first().filter(|l| l.len() >= 4) {
            t.nodes[0].self_ += root[2];
        }
        t.finish();
        Ok(t)
    }

    /// Adds one root-first stack (used by tests and the diff goldens).
    pub fn insert_stack(&mut self, frames: &[&str], value: i64) {
        let mut n = 0;
        for f in frames {
            let name = self.name_id(f);
            n = self.child(n, name);
        }
        self.nodes[n as usize].self_ += value;
    }

    /// Keeps only the stacks that start (root first) with `call_site`, as Pyroscope's
    /// `StackTraceSelector.call_site` asks: the path itself without its self values, except
    /// the last frame's, and everything under it. Call before `finish`.
    pub fn restrict_to_call_site(&mut self, call_site: &[String]) {
        if call_site.is_empty() {
            return;
        }
        // Find the path: nodes are in parent-before-child order.
        let mut path = vec![0u32];
        for name in call_site {
            let parent = *path.last().unwrap();
            let Some(&nid) = self.name_ids.get(name.as_str()) else {
                self.clear();
                return;
            };
            match (1..self.nodes.len()).find(|&i| self.nodes[i].parent == parent && self.nodes[i].name == nid) {
                Some(i) => path.push(i as u32),
                None => {
                    self.clear();
                    return;
                }
            }
        }
        let last = *path.last().unwrap();
        let mut keep = vec![false; self.nodes.len()];
        for &p in &path {
            keep[p as usize] = true;
        }
        for i in (last as usize + 1)..self.nodes.len() {
            if keep[self.nodes[i].parent as usize] && !path.contains(&self.nodes[i].parent)
                || self.nodes[i].parent == last
            {
                keep[i] = true;
            }
        }
        let mut map = vec![0u32; self.nodes.len()];
        let mut nodes = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !keep[i] {
                continue;
            }
            map[i] = nodes.len() as u32;
            let self_ = if path.contains(&(i as u32)) && i as u32 != last { 0 } else { n.self_ };
            nodes.push(Node { parent: map[n.parent as usize], name: n.name, self_, total: 0 });
        }
        self.nodes = nodes;
        self.index = None;
    }

    fn clear(&mut self) {
        self.nodes.truncate(1);
        self.nodes[0].self_ = 0;
        self.index = None;
    }

    /// Computes totals and lists children sorted by name; call once after the last merge.
    pub fn finish(&mut self) {
        for n in &mut self.nodes {
            n.total = n.self_;
        }
        // Parents precede children, so every child's total is final when it is added up.
        for i in (1..self.nodes.len()).rev() {
            let (t, p) = (self.nodes[i].total, self.nodes[i].parent as usize);
            self.nodes[p].total += t;
        }
        // Children are sorted by name bytes only where a walk visits them, through each
        // name's rank (one string sort of the distinct names).
        let mut by_name: Vec<u32> = (0..self.names.len() as u32).collect();
        by_name.sort_unstable_by(|a, b| self.names[*a as usize].as_bytes().cmp(self.names[*b as usize].as_bytes()));
        self.rank = vec![0u32; self.names.len()];
        for (r, n) in by_name.into_iter().enumerate() {
            self.rank[n as usize] = r as u32;
        }
        let n = self.nodes.len();
        let mut start = vec![0u32; n + 1];
        for node in &self.nodes[1..] {
            start[node.parent as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut list = vec![0u32; n.saturating_sub(1)];
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            let p = node.parent as usize;
            list[fill[p] as usize] = i as u32;
            fill[p] += 1;
        }
        self.child_start = start;
        self.child_list = list;
        self.index = None;
    }

    pub fn total(&self) -> i64 {
        self.nodes[0].total
    }

    /// The smallest total a node may have and still be drawn with `max_nodes`.
    fn min_value(&self, max_nodes: i64) -> i64 {
        let count = self.nodes.len() as i64 - 1;
        if max_nodes < 1 || count <= max_nodes {
            return 0;
        }
        // The max_nodes-th largest total. A child's total never exceeds its parent's, so a
        // subtree whose root cannot enter the top max_nodes is skipped whole.
        let k = max_nodes as usize;
        let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<i64>> =
            std::collections::BinaryHeap::with_capacity(k + 1);
        let mut stack: Vec<u32> = self.children(0).to_vec();
        while let Some(n) = stack.pop() {
            let t = self.nodes[n as usize].total;
            if heap.len() >= k {
                if t <= heap.peek().map_or(i64::MIN, |r| r.0) {
                    continue;
                }
                heap.pop();
            }
            heap.push(std::cmp::Reverse(t));
            stack.extend_from_slice(self.children(n));
        }
        if heap.len() < k {
            return 0;
        }
        heap.peek().map_or(0, |r| r.0)
    }

    /// Walks the truncated tree depth first, popping the last child first (Pyroscope's order),
    /// calling `visit(level, x, name, self, total, children_kept)` where x is the node's
    /// absolute offset (a node's children are laid out after its self).
    fn walk(&self, max_nodes: i64, mut visit: impl FnMut(usize, i64, &str, i64, i64, usize)) {
        enum Item {
            Node(u32),
            Other(i64),
        }
        let min = self.min_value(max_nodes);
        let keep = |c: u32| {
            let cn = &self.nodes[c as usize];
            cn.total >= min && self.names[cn.name as usize] != OTHER
        };
        let mut stack = vec![(Item::Node(0), 0usize, 0i64)];
        let mut buf = Vec::new();
        while let Some((item, level, x)) = stack.pop() {
            match item {
                Item::Other(v) => visit(level, x, OTHER, v, v, 0),
                Item::Node(i) => {
                    let n = &self.nodes[i as usize];
                    let name = if i == 0 { "total" } else { self.names[n.name as usize].as_str() };
                    let kids = self.sorted_children(i, &mut buf);
                    let other: i64 = kids.iter().filter(|c| !keep(**c)).map(|c| self.nodes[*c as usize].total).sum();
                    let kept = kids.iter().filter(|c| keep(**c)).count();
                    visit(level, x, name, n.self_, n.total, kept + usize::from(other != 0));
                    let mut cx = x + n.self_;
                    for &c in kids {
                        if keep(c) {
                            stack.push((Item::Node(c), level + 1, cx));
                            cx += self.nodes[c as usize].total;
                        }
                    }
                    if other != 0 {
                        stack.push((Item::Other(other), level + 1, cx));
                    }
                }
            }
        }
    }

    pub fn flamegraph(&self, max_nodes: i64) -> FlameGraph {
        let mut names: Vec<String> = Vec::new();
        let mut name_idx: FxHashMap<String, i64> = FxHashMap::default();
        // Per level, in visit order (right to left): [x, total, self, name index].
        let mut levels: Vec<Vec<[i64; 4]>> = Vec::new();
        let mut max_self = 0i64;
        self.walk(max_nodes, |level, x, name, self_, total, _| {
            max_self = max_self.max(self_);
            let idx = *name_idx.entry(name.to_string()).or_insert_with(|| {
                names.push(name.to_string());
                names.len() as i64 - 1
            });
            if levels.len() <= level {
                levels.push(Vec::new());
            }
            levels[level].push([x, total, self_, idx]);
        });
        FlameGraph {
            names,
            levels: levels
                .into_iter()
                .map(|lv| {
                    let mut values = Vec::with_capacity(lv.len() * 4);
                    let mut prev_end = 0i64;
                    for [x, total, self_, idx] in lv.into_iter().rev() {
                        values.extend_from_slice(&[x - prev_end, total, self_, idx]);
                        prev_end = x + total;
                    }
                    Level { values }
                })
                .collect(),
            total: self.total(),
            max_self,
        }
    }

    /// Pyroscope's TREE encoding: pre-order, each node as uvarint(name length), name,
    /// uvarint(self), uvarint(children), children last-first; the root has an empty name.
    pub fn tree_bytes(&self, max_nodes: i64) -> Vec<u8> {
        let mut out = Vec::new();
        self.walk(max_nodes, |level, _x, name, self_, _total, kept| {
            let name = if level == 0 { "" } else { name };
            put_uvarint(&mut out, name.len() as u64);
            out.extend_from_slice(name.as_bytes());
            put_uvarint(&mut out, if level == 0 { 0 } else { self_.max(0) as u64 });
            put_uvarint(&mut out, kept as u64);
        });
        out
    }
}

pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct DiffNode {
    name: String,
    left: (i64, i64),
    right: (i64, i64),
    children: Vec<usize>,
}

/// The diff flame graph of two finished trees over their union: 7-tuples
/// `[xL, totalL, selfL, xR, totalR, selfR, name]` (x delta-encoded per side). A node is kept
/// when either side reaches the `max_nodes` threshold, computed over both sides.
pub fn diff(left: &Tree, right: &Tree, max_nodes: i64) -> Result<FlameGraphDiff, String> {
    if left.nodes.iter().chain(right.nodes.iter()).any(|n| n.self_ < 0) {
        return Err("diff of trees with negative values".into());
    }
    let mut nodes = vec![DiffNode { name: "total".into(), left: (0, 0), right: (0, 0), children: Vec::new() }];
    let mut stack: Vec<(Option<u32>, Option<u32>, usize)> = vec![(Some(0), Some(0), 0)];
    while let Some((l, r, d)) = stack.pop() {
        if let Some(l) = l {
            let n = &left.nodes[l as usize];
            nodes[d].left = (n.total, n.self_);
        }
        if let Some(r) = r {
            let n = &right.nodes[r as usize];
            nodes[d].right = (n.total, n.self_);
        }
        let (mut lb, mut rb) = (Vec::new(), Vec::new());
        let lc: &[u32] = l.map_or(&[], |l| left.sorted_children(l, &mut lb));
        let rc: &[u32] = r.map_or(&[], |r| right.sorted_children(r, &mut rb));
        let (mut i, mut j) = (0, 0);
        while i < lc.len() || j < rc.len() {
            let ln = lc.get(i).map(|c| left.names[left.nodes[*c as usize].name as usize].as_str());
            let rn = rc.get(j).map(|c| right.names[right.nodes[*c as usize].name as usize].as_str());
            let (a, b, name) = match (ln, rn) {
                (Some(x), Some(y)) if x == y => {
                    i += 1;
                    j += 1;
                    (Some(lc[i - 1]), Some(rc[j - 1]), x)
                }
                (Some(x), Some(y)) if x.as_bytes() < y.as_bytes() => {
                    i += 1;
                    (Some(lc[i - 1]), None, x)
                }
                (Some(x), None) => {
                    i += 1;
                    (Some(lc[i - 1]), None, x)
                }
                (_, Some(y)) => {
                    j += 1;
                    (None, Some(rc[j - 1]), y)
                }
                (None, None) => unreachable!(),
            };
            let id = nodes.len();
            nodes.push(DiffNode { name: name.to_string(), left: (0, 0), right: (0, 0), children: Vec::new() });
            nodes[d].children.push(id);
            stack.push((a, b, id));
        }
    }
    let min = if max_nodes < 1 || (nodes.len() as i64 - 1) <= max_nodes {
        0
    } else {
        let mut totals: Vec<i64> = nodes[1..].iter().map(|n| n.left.0.max(n.right.0)).collect();
        let k = max_nodes as usize - 1;
        totals.select_nth_unstable_by(k, |a, b| b.cmp(a));
        totals[k]
    };
    let mut names: Vec<String> = Vec::new();
    let mut name_idx: FxHashMap<String, i64> = FxHashMap::default();
    let mut levels: Vec<Vec<[i64; 7]>> = Vec::new();
    let mut max_self = 0i64;
    // (node or synthetic other, level, xl, xr)
    enum Item {
        Node(usize),
        Other((i64, i64)),
    }
    let mut st = vec![(Item::Node(0), 0usize, 0i64, 0i64)];
    while let Some((item, level, xl, xr)) = st.pop() {
        let (name, l, r, kids): (&str, (i64, i64), (i64, i64), &[usize]) = match &item {
            Item::Node(i) => (&nodes[*i].name, nodes[*i].left, nodes[*i].right, &nodes[*i].children),
            Item::Other((a, b)) => (OTHER, (*a, *a), (*b, *b), &[]),
        };
        max_self = max_self.max(l.1).max(r.1);
        let idx = *name_idx.entry(name.to_string()).or_insert_with(|| {
            names.push(name.to_string());
            names.len() as i64 - 1
        });
        if levels.len() <= level {
            levels.push(Vec::new());
        }
        levels[level].push([xl, l.0, l.1, xr, r.0, r.1, idx]);
        let (mut cl, mut cr) = (xl + l.1, xr + r.1);
        let mut other = (0i64, 0i64);
        let mut pushes = Vec::new();
        for &c in kids {
            let n = &nodes[c];
            if n.left.0.max(n.right.0) >= min && n.name != OTHER {
                pushes.push((Item::Node(c), level + 1, cl, cr));
                cl += n.left.0;
                cr += n.right.0;
            } else {
                other.0 += n.left.0;
                other.1 += n.right.0;
            }
        }
        st.extend(pushes);
        if other != (0, 0) {
            st.push((Item::Other(other), level + 1, cl, cr));
        }
    }
    let (lt, rt) = (nodes[0].left.0, nodes[0].right.0);
    Ok(FlameGraphDiff {
        names,
        levels: levels
            .into_iter()
            .map(|lv| {
                let mut values = Vec::with_capacity(lv.len() * 7);
                let (mut pl, mut pr) = (0i64, 0i64);
                for [xl, tl, sl, xr, tr, sr, idx] in lv.into_iter().rev() {
                    values.extend_from_slice(&[xl - pl, tl, sl, xr - pr, tr, sr, idx]);
                    pl = xl + tl;
                    pr = xr + tr;
                }
                Level { values }
            })
            .collect(),
        total: lt + rt,
        max_self,
        left_ticks: lt,
        right_ticks: rt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(stacks: &[(&str, i64)]) -> Tree {
        let mut t = Tree::default();
        for (s, v) in stacks {
            t.insert_stack(&s.split(';').collect::<Vec<_>>(), *v);
        }
        t.finish();
        t
    }

    fn levels(l: &[Level]) -> Vec<Vec<i64>> {
        l.iter().map(|l| l.values.clone()).collect()
    }

    #[test]
    fn pyroscope_flamegraph_golden() {
        let t = tree(&[("a;b;e", 1), ("a;c", 2), ("a;c;d", 1)]);
        let fg = t.flamegraph(0);
        assert_eq!(fg.names, vec!["total", "a", "c", "d", "b", "e"]);
        assert_eq!(
            levels(&fg.levels),
            vec![vec![0, 4, 0, 0], vec![0, 4, 0, 1], vec![0, 1, 0, 4, 0, 3, 2, 2], vec![0, 1, 1, 5, 2, 1, 1, 3]]
        );
        assert_eq!((fg.total, fg.max_self), (4, 2));
    }

    #[test]
    fn truncation_folds_small_nodes_into_other() {
        let t = tree(&[("a;b", 10), ("a;c", 1), ("a;d", 1), ("x", 1)]);
        // nodes: a(12) b(10) c(1) d(1) x(1): the 2nd largest total is 10.
        let fg = t.flamegraph(2);
        assert!(fg.names.contains(&"other".to_string()));
        assert!(!fg.names.contains(&"c".to_string()));
        assert_eq!(fg.total, 13);
        // Totals at each level still add up to the root's.
        for l in &fg.levels[..2] {
            let sum: i64 = l.values.chunks(4).map(|c| c[1]).sum();
            assert_eq!(sum, 13);
        }
        assert_eq!(t.flamegraph(100).names.len(), 6);
    }

    fn fixture(rel: &str) -> serde_json::Value {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/");
        serde_json::from_slice(&std::fs::read(format!("{p}{rel}")).unwrap()).unwrap()
    }

    fn num(v: &serde_json::Value) -> i64 {
        v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap()
    }

    /// Pyroscope's own flame graph (the UI's Connect fixture, 1071 names) re-encoded by kiln
    /// comes out byte for byte the same: names order, levels, totals.
    #[test]
    fn reencodes_the_connect_fixture_identically() {
        let j = fixture("connect-json/flamegraph.json");
        let fg = &j["flamegraph"];
        let names: Vec<String> = serde_json::from_value(fg["names"].clone()).unwrap();
        let levels: Vec<Vec<i64>> = fg["levels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["values"].as_array().unwrap().iter().map(num).collect())
            .collect();
        let t = Tree::from_flamegraph(&names, &levels).unwrap();
        let out = t.flamegraph(0);
        assert_eq!(out.total, num(&fg["total"]));
        assert_eq!(out.max_self, num(&fg["maxSelf"]));
        assert_eq!(out.names, names);
        assert_eq!(super::tests::levels(&out.levels), levels);
    }

    #[test]
    fn flamebearer_fixture_round_trips_and_truncates() {
        let j = fixture("flamebearer/pyroscope/profile.json");
        let fb = &j["flamebearer"];
        let names: Vec<String> = serde_json::from_value(fb["names"].clone()).unwrap();
        let levels: Vec<Vec<i64>> = serde_json::from_value(fb["levels"].clone()).unwrap();
        let t = Tree::from_flamegraph(&names, &levels).unwrap();
        assert_eq!(t.total(), 953);
        let full = t.flamegraph(0);
        assert_eq!((full.levels.len(), full.max_self), (17, 732));
        let cut = t.flamegraph(4);
        assert!(cut.names.contains(&OTHER.to_string()));
        // Whatever is cut is folded into "other": every level still sums to the total at
        // most, and the first level exactly.
        let sums: Vec<i64> = cut.levels.iter().map(|l| l.values.chunks(4).map(|c| c[1]).sum()).collect();
        assert_eq!(sums[0], 953);
        assert_eq!(sums[1], 953);
        assert!(sums.iter().all(|s| *s <= 953));
    }

    #[test]
    fn pyroscope_diff_golden() {
        let l = tree(&[("a;b", 1), ("a;c", 2)]);
        let r = tree(&[("a;b", 4), ("a;c", 8)]);
        let d = diff(&l, &r, 1024).unwrap();
        assert_eq!(d.names, vec!["total", "a", "c", "b"]);
        assert_eq!(
            levels(&d.levels),
            vec![
                vec![0, 3, 0, 0, 12, 0, 0],
                vec![0, 3, 0, 0, 12, 0, 1],
                vec![0, 1, 1, 0, 4, 4, 3, 0, 2, 2, 0, 8, 8, 2]
            ]
        );
        assert_eq!((d.total, d.max_self, d.left_ticks, d.right_ticks), (15, 8, 3, 12));
    }

    #[test]
    fn call_site_keeps_the_stacks_under_it() {
        let mut t = Tree::default();
        for (s, v) in [("a;b;c", 1), ("a;b", 2), ("a;b;d", 4), ("a", 8), ("x;b;c", 16)] {
            t.insert_stack(&s.split(';').collect::<Vec<_>>(), v);
        }
        t.restrict_to_call_site(&["a".into(), "b".into()]);
        t.finish();
        assert_eq!(t.total(), 7);
        let mut none = t.clone();
        none.restrict_to_call_site(&["nope".into()]);
        none.finish();
        assert_eq!(none.total(), 0);
    }

    #[test]
    fn tree_bytes_encoding() {
        let t = tree(&[("a;b", 2), ("a", 1)]);
        let b = t.tree_bytes(0);
        // root: "", 0, 1 child; a: "a", 1, 1 child; b: "b", 2, 0 children
        assert_eq!(b, vec![0, 0, 1, 1, b'a', 1, 1, 1, b'b', 2, 0]);
    }

    #[test]
    fn merges_partials() {
        let part = FlameTree {
            names: vec![String::new(), "a".into(), "b".into()],
            nodes: vec![(0, 0, 0), (0, 1, 1), (1, 2, 2)],
        };
        let mut t = Tree::default();
        t.merge(&part);
        t.merge(&part);
        t.finish();
        assert_eq!(t.total(), 6);
        assert_eq!(t.flamegraph(0).levels.len(), 3);
    }
}
