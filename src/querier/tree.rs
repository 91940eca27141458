//! The merged flame tree of a query, and its encodings: Pyroscope's FlameGraph levels (with
//! `max_nodes` truncation into "other" nodes), the diff of two trees, and TREE bytes.
//!
//! All three are drawn by one walk (`walk`) with one truncation threshold (`min_value`) and
//! one level encoding (`draw`), over what a node carries: one span (total, self) for a flame
//! graph or TREE bytes, one per side for a diff (drawn over the union of the two trees).
use kiln_io::codec::Writer;
use kiln_proto::querier::v1::{FlameGraph, FlameGraphDiff, Level};
use kiln_shards::model::childindex::ChildIndex;
use kiln_shards::model::profile::Profile;
use kiln_shards::query::FlameTree;
use rustc_hash::FxHashMap;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

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

    /// The tree as one partial (`merge` of it rebuilds the tree): what the query-frontend
    /// caches for a run of merged parts. Before `finish`, or after it: only names, parents
    /// and self values are taken.
    pub fn to_flame_tree(&self) -> FlameTree {
        FlameTree { names: self.names.clone(), nodes: self.nodes.iter().map(|n| (n.parent, n.name, n.self_)).collect() }
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

    /// A finished tree of `;`-joined root-first stacks and their values (tests).
    #[cfg(test)]
    pub fn of_stacks(stacks: &[(&str, i64)]) -> Tree {
        let mut t = Tree::default();
        for (s, v) in stacks {
            t.insert_stack(&s.split(';').collect::<Vec<_>>(), *v);
        }
        t.finish();
        t
    }

    /// Adds one sample type (`value_index`) of a normalised profile: each sample's stack
    /// root first, a location's frames its functions' names (outermost caller first) or,
    /// without symbols, its address (`0x…`, as the query path names it). Samples of value 0 in
    /// that type are left out.
    pub fn add_profile(&mut self, p: &Profile, value_index: usize) {
        // Each location's frames as name ids, found once.
        let frames: Vec<Vec<u32>> = p
            .locations
            .iter()
            .map(|l| {
                if l.lines.is_empty() {
                    return vec![self.name_id(&format!("0x{:x}", l.address))];
                }
                l.lines
                    .iter()
                    .rev()
                    .map(|line| {
                        let f = p.functions.get(line.function as usize).map_or(0, |f| f.name);
                        self.name_id(p.string(f))
                    })
                    .collect()
            })
            .collect();
        for sample in &p.samples {
            // A stack without value in this type draws nothing: no zero-wide nodes.
            let Some(&value) = sample.values.get(value_index).filter(|v| **v != 0) else { continue };
            let mut node = 0;
            for &loc in sample.locations.iter().rev() {
                for &name in frames.get(loc as usize).map_or(&[][..], Vec::as_slice) {
                    node = self.child(node, name);
                }
            }
            let n = &mut self.nodes[node as usize];
            n.self_ = n.self_.saturating_add(value);
        }
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
        let counts = self.add_up_totals();
        // Children are sorted by name bytes only where a walk visits them, through each
        // name's rank (one string sort of the distinct names).
        let mut by_name: Vec<u32> = (0..self.names.len() as u32).collect();
        by_name.sort_unstable_by(|a, b| self.names[*a as usize].as_bytes().cmp(self.names[*b as usize].as_bytes()));
        self.rank = vec![0u32; self.names.len()];
        for (r, n) in by_name.into_iter().enumerate() {
            self.rank[n as usize] = r as u32;
        }
        (self.child_start, self.child_list) = self.child_lists(counts);
        self.index = None;
    }

    /// Sets each node's total (its self plus its children's totals) and returns how many
    /// children each node has, at `[parent]` of a slice one longer than the nodes: one pass
    /// over the parents for both, as each reaches a parent that may lie anywhere in memory.
    fn add_up_totals(&mut self) -> Vec<u32> {
        for n in &mut self.nodes {
            n.total = n.self_;
        }
        let mut counts = vec![0u32; self.nodes.len() + 1];
        // Parents precede children, so every child's total is final when it is added up.
        for i in (1..self.nodes.len()).rev() {
            let (t, p) = (self.nodes[i].total, self.nodes[i].parent as usize);
            self.nodes[p].total += t;
            counts[p] += 1;
        }
        counts
    }

    /// Children per node in CSR form (starts, list) from their `counts` (`add_up_totals`),
    /// each node's in id order. `start[p]` is first p's end, then moved back one slot per
    /// child as the children are placed last to first, which leaves it at p's start: no
    /// second array of write positions for millions of nodes.
    fn child_lists(&self, counts: Vec<u32>) -> (Vec<u32>, Vec<u32>) {
        let n = self.nodes.len();
        let mut start = counts;
        for i in 1..=n {
            start[i] += start[i - 1];
        }
        let mut list = vec![0u32; n.saturating_sub(1)];
        for (i, node) in self.nodes.iter().enumerate().skip(1).rev() {
            let end = &mut start[node.parent as usize];
            *end -= 1;
            list[*end as usize] = i as u32;
        }
        (start, list)
    }

    pub fn total(&self) -> i64 {
        self.nodes[0].total
    }

    /// Node `n`'s parent, name id, self and total value (totals after `finish`).
    pub fn node(&self, n: u32) -> (u32, u32, i64, i64) {
        let node = &self.nodes[n as usize];
        (node.parent, node.name, node.self_, node.total)
    }

    /// The name of a name id.
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    /// Walks a finished tree depth first: `visit(n, true)` for each node below the root
    /// before its children, `visit(n, false)` after them. What a walk that keeps state per
    /// path needs (the DOT graph's sums, which count a function once per stack).
    pub fn walk_paths(&self, mut visit: impl FnMut(u32, bool)) {
        let mut stack: Vec<(u32, bool)> = self.children(0).iter().rev().map(|&c| (c, true)).collect();
        while let Some((n, entering)) = stack.pop() {
            visit(n, entering);
            if entering {
                stack.push((n, false));
                stack.extend(self.children(n).iter().rev().map(|&c| (c, true)));
            }
        }
    }

    pub fn flamegraph(&self, max_nodes: i64) -> FlameGraph {
        let drawn = draw(self, max_nodes);
        FlameGraph { names: drawn.names, levels: drawn.levels, total: self.total(), max_self: drawn.max_self }
    }

    /// Pyroscope's TREE encoding: pre-order, each node as uvarint(name length), name,
    /// uvarint(self), uvarint(children), children last-first; the root has an empty name.
    pub fn tree_bytes(&self, max_nodes: i64) -> Vec<u8> {
        let mut out = Writer::default();
        walk(self, max_nodes, |node: Drawn<'_, 1>| {
            let root = node.level == 0;
            out.str(if root { "" } else { node.name });
            out.u(if root { 0 } else { node.spans[0].self_.max(0) as u64 });
            out.u(node.children as u64);
        });
        out.0
    }
}

/// One side of a drawn node: its total and its self value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    total: i64,
    self_: i64,
}

/// A tree the flame graph walk can draw: node 0 is the root, and each node carries `S` spans
/// (one for a flame graph; left and right for a diff). The threshold's pruning relies on a
/// child never weighing more than its parent, which holds for non-negative values (a diff
/// refuses negative ones).
trait Drawable<const S: usize> {
    /// Nodes, the root included.
    fn node_count(&self) -> usize;
    /// The name drawn for node `n` ("total" for the root).
    fn node_name(&self, n: u32) -> &str;
    fn spans(&self, n: u32) -> [Span; S];
    /// The children of `n` in any order.
    fn children_of(&self, n: u32) -> &[u32];
    /// The children of `n` sorted by name bytes (the order they are drawn in), sorted into
    /// `buf` where they are not kept in that order.
    fn children_by_name<'s>(&'s self, n: u32, buf: &'s mut Vec<u32>) -> &'s [u32];
}

impl Drawable<1> for Tree {
    fn node_count(&self) -> usize {
        self.nodes.len()
    }
    fn node_name(&self, n: u32) -> &str {
        if n == 0 {
            "total"
        } else {
            &self.names[self.nodes[n as usize].name as usize]
        }
    }
    fn spans(&self, n: u32) -> [Span; 1] {
        let n = &self.nodes[n as usize];
        [Span { total: n.total, self_: n.self_ }]
    }
    fn children_of(&self, n: u32) -> &[u32] {
        self.children(n)
    }
    fn children_by_name<'s>(&'s self, n: u32, buf: &'s mut Vec<u32>) -> &'s [u32] {
        self.sorted_children(n, buf)
    }
}

/// What decides whether a node is drawn or folded into "other": its largest total over the
/// sides, so that a diff keeps a node that is large on either side.
fn weight<const S: usize>(spans: &[Span; S]) -> i64 {
    spans.iter().map(|s| s.total).max().unwrap_or(0)
}

/// Pyroscope's `minValue`: the `max_nodes`-th largest weight among the nodes below the root,
/// or 0 when they all fit (or `max_nodes` < 1). Nodes weighing less are folded into "other";
/// every node tied with it is drawn, so ties never depend on the order nodes are met in.
fn min_value<const S: usize>(t: &impl Drawable<S>, max_nodes: i64) -> i64 {
    let count = t.node_count() as i64 - 1;
    if max_nodes < 1 || count <= max_nodes {
        return 0;
    }
    // The k largest weights seen so far. A child never weighs more than its parent, so a
    // subtree whose root cannot enter them is skipped whole: the k-th largest stays exact.
    let k = max_nodes as usize;
    let mut heap: BinaryHeap<Reverse<i64>> = BinaryHeap::with_capacity(k + 1);
    let mut stack: Vec<u32> = t.children_of(0).to_vec();
    while let Some(n) = stack.pop() {
        let w = weight(&t.spans(n));
        if heap.len() >= k {
            if w <= heap.peek().map_or(i64::MIN, |r| r.0) {
                continue;
            }
            heap.pop();
        }
        heap.push(Reverse(w));
        stack.extend_from_slice(t.children_of(n));
    }
    if heap.len() < k {
        return 0;
    }
    heap.peek().map_or(0, |r| r.0)
}

/// A node as the walk draws it: `x` is its absolute offset per side (a node's children are
/// laid out after its self), `children` how many of its children are drawn ("other"
/// included).
struct Drawn<'t, const S: usize> {
    level: usize,
    x: [i64; S],
    name: &'t str,
    spans: [Span; S],
    children: usize,
}

/// Walks the tree truncated at `max_nodes` depth first, popping the last child first
/// (Pyroscope's order), and hands each drawn node to `visit`. The children of a node that
/// are not drawn (below the threshold, or named "other") make one "other" child after the
/// drawn ones, whose total and self are their totals added up, per side.
fn walk<'t, const S: usize, T: Drawable<S>>(t: &'t T, max_nodes: i64, mut visit: impl FnMut(Drawn<'t, S>)) {
    enum Item<const S: usize> {
        Node(u32),
        Other([i64; S]),
    }
    let min = min_value(t, max_nodes);
    let mut stack = vec![(Item::Node(0), 0usize, [0i64; S])];
    let mut buf = Vec::new();
    while let Some((item, level, x)) = stack.pop() {
        let i = match item {
            Item::Node(i) => i,
            Item::Other(v) => {
                let spans = v.map(|v| Span { total: v, self_: v });
                visit(Drawn { level, x, name: OTHER, spans, children: 0 });
                continue;
            }
        };
        let spans = t.spans(i);
        let mut cx: [i64; S] = std::array::from_fn(|s| x[s] + spans[s].self_);
        let mut other = [0i64; S];
        let mut children = 0;
        for &c in t.children_by_name(i, &mut buf) {
            let cs = t.spans(c);
            if weight(&cs) >= min && t.node_name(c) != OTHER {
                stack.push((Item::Node(c), level + 1, cx));
                children += 1;
                add_totals(&mut cx, &cs);
            } else {
                add_totals(&mut other, &cs);
            }
        }
        if other.iter().any(|v| *v != 0) {
            stack.push((Item::Other(other), level + 1, cx));
            children += 1;
        }
        visit(Drawn { level, x, name: t.node_name(i), spans, children });
    }
}

fn add_totals<const S: usize>(sums: &mut [i64; S], spans: &[Span; S]) {
    for (sum, span) in sums.iter_mut().zip(spans) {
        *sum += span.total;
    }
}

/// The names and levels of a flame graph (S = 1) or a diff (S = 2).
struct Levels {
    names: Vec<String>,
    levels: Vec<Level>,
    max_self: i64,
}

/// Draws `t` truncated at `max_nodes` as Pyroscope's levels: each node as, per side,
/// `[x, total, self]` with x relative to the end of the previous node of its level on that
/// side, then its name's index (names in the order they are first drawn).
fn draw<const S: usize>(t: &impl Drawable<S>, max_nodes: i64) -> Levels {
    let mut names: Vec<String> = Vec::new();
    let mut name_idx: FxHashMap<&str, i64> = FxHashMap::default();
    // Per level, in visit order (right to left).
    let mut rows: Vec<Vec<Placed<S>>> = Vec::new();
    let mut max_self = 0i64;
    walk(t, max_nodes, |node| {
        max_self = node.spans.iter().fold(max_self, |m, s| m.max(s.self_));
        let idx = *name_idx.entry(node.name).or_insert_with(|| {
            names.push(node.name.to_string());
            names.len() as i64 - 1
        });
        if rows.len() <= node.level {
            rows.push(Vec::new());
        }
        rows[node.level].push((node.x, node.spans, idx));
    });
    Levels { names, levels: rows.into_iter().map(encode_level).collect(), max_self }
}

/// A drawn node on its level: absolute x per side, spans, name index.
type Placed<const S: usize> = ([i64; S], [Span; S], i64);

/// One level's nodes, given right to left, as delta-encoded tuples left to right.
fn encode_level<const S: usize>(row: Vec<Placed<S>>) -> Level {
    let mut values = Vec::with_capacity(row.len() * (3 * S + 1));
    let mut prev_end = [0i64; S];
    for (x, spans, idx) in row.into_iter().rev() {
        for s in 0..S {
            values.extend_from_slice(&[x[s] - prev_end[s], spans[s].total, spans[s].self_]);
            prev_end[s] = x[s] + spans[s].total;
        }
        values.push(idx);
    }
    Level { values }
}

/// The union of two finished trees, nodes matched by their path of names: what a diff
/// draws, with the left tree's spans first. Node 0 is the root; children are kept in name
/// byte order.
struct Union<'t> {
    names: Vec<&'t str>,
    spans: Vec<[Span; 2]>,
    children: Vec<Vec<u32>>,
}

impl Drawable<2> for Union<'_> {
    fn node_count(&self) -> usize {
        self.names.len()
    }
    fn node_name(&self, n: u32) -> &str {
        self.names[n as usize]
    }
    fn spans(&self, n: u32) -> [Span; 2] {
        self.spans[n as usize]
    }
    fn children_of(&self, n: u32) -> &[u32] {
        &self.children[n as usize]
    }
    fn children_by_name<'s>(&'s self, n: u32, _buf: &'s mut Vec<u32>) -> &'s [u32] {
        &self.children[n as usize]
    }
}

/// A node of the union: the node of each side it stands for, if that side has it.
type Pair = (Option<u32>, Option<u32>);

impl<'t> Union<'t> {
    fn of(left: &'t Tree, right: &'t Tree) -> Self {
        let mut u = Union { names: Vec::new(), spans: Vec::new(), children: Vec::new() };
        let root = (Some(0), Some(0));
        u.push("total", root, left, right);
        let mut stack: Vec<(Pair, u32)> = vec![(root, 0)];
        let mut pairs = Vec::new();
        while let Some(((l, r), id)) = stack.pop() {
            pair_children(left, l, right, r, &mut pairs);
            for &(pair, name) in &pairs {
                let child = u.push(name, pair, left, right);
                u.children[id as usize].push(child);
                stack.push((pair, child));
            }
        }
        u
    }

    /// Adds the node standing for `pair`, without children yet, and returns its id.
    fn push(&mut self, name: &'t str, (l, r): Pair, left: &Tree, right: &Tree) -> u32 {
        let side = |t: &Tree, n: Option<u32>| n.map_or(Span::default(), |n| t.spans(n)[0]);
        self.names.push(name);
        self.spans.push([side(left, l), side(right, r)]);
        self.children.push(Vec::new());
        self.names.len() as u32 - 1
    }
}

/// The children of `l` in `left` and of `r` in `right`, matched by name, into `out` in name
/// byte order (both lists are sorted that way, so one merge pass pairs them).
fn pair_children<'t>(left: &'t Tree, l: Option<u32>, right: &'t Tree, r: Option<u32>, out: &mut Vec<(Pair, &'t str)>) {
    out.clear();
    let (mut lb, mut rb) = (Vec::new(), Vec::new());
    let lc: &[u32] = l.map_or(&[], |l| left.sorted_children(l, &mut lb));
    let rc: &[u32] = r.map_or(&[], |r| right.sorted_children(r, &mut rb));
    let (mut i, mut j) = (0, 0);
    loop {
        let next = match (lc.get(i).copied(), rc.get(j).copied()) {
            (None, None) => return,
            (Some(a), None) => ((Some(a), None), left.node_name(a)),
            (None, Some(b)) => ((None, Some(b)), right.node_name(b)),
            (Some(a), Some(b)) => {
                let (x, y) = (left.node_name(a), right.node_name(b));
                match x.as_bytes().cmp(y.as_bytes()) {
                    Ordering::Less => ((Some(a), None), x),
                    Ordering::Equal => ((Some(a), Some(b)), x),
                    Ordering::Greater => ((None, Some(b)), y),
                }
            }
        };
        let ((a, b), _) = next;
        i += usize::from(a.is_some());
        j += usize::from(b.is_some());
        out.push(next);
    }
}

/// The diff flame graph of two finished trees over their union: 7-tuples
/// `[xL, totalL, selfL, xR, totalR, selfR, name]` (x delta-encoded per side). Truncation is
/// the flame graph's: a node is kept when either side reaches the `max_nodes` threshold,
/// computed over both sides.
pub fn diff(left: &Tree, right: &Tree, max_nodes: i64) -> Result<FlameGraphDiff, String> {
    if left.nodes.iter().chain(right.nodes.iter()).any(|n| n.self_ < 0) {
        return Err("diff of trees with negative values".into());
    }
    let drawn = draw(&Union::of(left, right), max_nodes);
    let (lt, rt) = (left.total(), right.total());
    Ok(FlameGraphDiff {
        names: drawn.names,
        levels: drawn.levels,
        total: lt + rt,
        max_self: drawn.max_self,
        left_ticks: lt,
        right_ticks: rt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(l: &[Level]) -> Vec<Vec<i64>> {
        l.iter().map(|l| l.values.clone()).collect()
    }

    #[test]
    fn pyroscope_flamegraph_golden() {
        let t = Tree::of_stacks(&[("a;b;e", 1), ("a;c", 2), ("a;c;d", 1)]);
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
        let t = Tree::of_stacks(&[("a;b", 10), ("a;c", 1), ("a;d", 1), ("x", 1)]);
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
        let l = Tree::of_stacks(&[("a;b", 1), ("a;c", 2)]);
        let r = Tree::of_stacks(&[("a;b", 4), ("a;c", 8)]);
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

    /// One side of a diff's levels as flame graph 4-tuples.
    fn side(l: &[Level], s: usize) -> Vec<Vec<i64>> {
        l.iter()
            .map(|l| l.values.chunks(7).flat_map(|c| [c[3 * s], c[3 * s + 1], c[3 * s + 2], c[6]]).collect())
            .collect()
    }

    /// Totals tied at the threshold (c, d and x weigh 2 when the 3rd largest is 2): a diff
    /// of a tree with itself, or with an empty tree, truncates exactly as its flame graph.
    #[test]
    fn diffs_and_flame_graphs_truncate_ties_alike() {
        let t = Tree::of_stacks(&[("a;b", 3), ("a;c", 2), ("a;d", 2), ("a;e", 1), ("x", 2), ("y;z", 1), ("y;w", 1)]);
        let empty = Tree::of_stacks(&[]);
        for max_nodes in 0..=10 {
            let fg = t.flamegraph(max_nodes);
            let want = levels(&fg.levels);
            for (l, r, s) in [(&t, &t, 0), (&t, &t, 1), (&t, &empty, 0), (&empty, &t, 1)] {
                let d = diff(l, r, max_nodes).unwrap();
                assert_eq!(d.names, fg.names, "max_nodes {max_nodes}");
                assert_eq!(side(&d.levels, s), want, "max_nodes {max_nodes}, side {s}");
            }
        }
        // The threshold is 2 at 3 nodes: all three nodes tied at 2 are drawn, e and the
        // children of y are folded.
        let names = t.flamegraph(3).names;
        for n in ["c", "d", "x", OTHER] {
            assert!(names.contains(&n.to_string()), "{n} in {names:?}");
        }
        assert!(!names.contains(&"e".to_string()) && !names.contains(&"z".to_string()));
    }

    proptest::proptest! {
        /// On any tree (tied totals are common with values this small) a diff draws each of
        /// its sides as the flame graph of that side would be drawn.
        #[test]
        fn diffs_of_a_tree_with_itself_draw_its_flame_graph(
            stacks in proptest::collection::vec(("[a-d](;[a-d]){0,3}", 0i64..4), 0..24),
            max_nodes in 0i64..24,
        ) {
            let stacks: Vec<(&str, i64)> = stacks.iter().map(|(s, v)| (s.as_str(), *v)).collect();
            let t = Tree::of_stacks(&stacks);
            let fg = t.flamegraph(max_nodes);
            let d = diff(&t, &t, max_nodes).unwrap();
            proptest::prop_assert_eq!(&d.names, &fg.names);
            proptest::prop_assert_eq!(side(&d.levels, 0), levels(&fg.levels));
            proptest::prop_assert_eq!(side(&d.levels, 1), levels(&fg.levels));
        }
    }

    /// TREE bytes read back (with the shared reader) into the flame graph's tree.
    #[test]
    fn tree_bytes_decode_to_the_flame_graph() {
        fn read(r: &mut kiln_io::codec::Reader<'_>, path: &mut Vec<String>, t: &mut Tree) {
            let name = r.str().unwrap().to_string();
            let self_ = r.u().unwrap() as i64;
            let children = r.u().unwrap();
            path.push(name);
            let frames: Vec<&str> = path[1..].iter().map(String::as_str).collect();
            t.insert_stack(&frames, self_);
            for _ in 0..children {
                read(r, path, t);
            }
            path.pop();
        }
        let t = Tree::of_stacks(&[("a;b;e", 1), ("a;c", 2), ("a;c;d", 1), ("a;f", 1), ("g", 3)]);
        for max_nodes in [0, 3, 5] {
            let bytes = t.tree_bytes(max_nodes);
            let mut r = kiln_io::codec::Reader::new(&bytes);
            let mut back = Tree::default();
            read(&mut r, &mut Vec::new(), &mut back);
            r.finish().unwrap();
            back.finish();
            assert_eq!(levels(&back.flamegraph(0).levels), levels(&t.flamegraph(max_nodes).levels), "{max_nodes}");
        }
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
        let t = Tree::of_stacks(&[("a;b", 2), ("a", 1)]);
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
