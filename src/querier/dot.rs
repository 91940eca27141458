//! A merged flame tree as a Graphviz DOT call graph, as pprof's `-dot` and Pyroscope's
//! `/pyroscope/render?format=dot` (and `PROFILE_FORMAT_DOT`) draw it.
//!
//! 1. One node per function: its *flat* value (samples whose leaf it is) and its *cum*
//!    value (samples with it anywhere on the stack, counted once per stack however often it
//!    recurses); one edge per caller → callee pair, weighed by the samples through it (once
//!    per stack too). All of it from one walk of the tree, with the names and pairs on the
//!    current path counted (`Tree::walk_paths`).
//! 2. pprof's trimming: nodes whose cum is below 0.5% of the total are dropped
//!    (`NODE_FRACTION`), then the `max_nodes` hottest are kept — by flat, then cum, then
//!    name (pprof's flat order; its visual "entropy" order is not reproduced) — and edges
//!    below 0.1% (`EDGE_FRACTION`) are dropped. A stack through dropped nodes joins its
//!    nearest kept frames with a dotted *residual* edge, as pprof does.
//! 3. pprof's text: a legend, nodes `N1`… in the kept order (N1 is the hottest) labelled
//!    `name\nflat (x%)\nof cum (y%)`, colours and font sizes by pprof's formulas, edges by
//!    weight. Values are scaled as pprof does for time and byte units.
use super::tree::Tree;
use rustc_hash::FxHashMap;
use std::fmt::Write;

/// pprof's defaults (`report.Options`): a node below this share of the total is dropped…
const NODE_FRACTION: f64 = 0.005;
/// …and so is an edge below this one.
const EDGE_FRACTION: f64 = 0.001;
/// Nodes drawn when the request names no count (Pyroscope's render default).
pub const DEFAULT_MAX_NODES: i64 = 100;

/// One function of the graph.
#[derive(Debug, Clone, Copy, Default)]
struct Func {
    flat: i64,
    cum: i64,
}

/// The call graph of a tree over its name ids, before trimming.
struct Graph {
    funcs: FxHashMap<u32, Func>,
}

/// The per-path counts of a walk: how many times each key is on the current path.
struct OnPath<K>(FxHashMap<K, u32>);

impl<K: std::hash::Hash + Eq> OnPath<K> {
    /// Enters `k`; whether it was not on the path yet (its value counts).
    fn enter(&mut self, k: K) -> bool {
        let c = self.0.entry(k).or_insert(0);
        *c += 1;
        *c == 1
    }
    fn leave(&mut self, k: &K) {
        if let Some(c) = self.0.get_mut(k) {
            *c -= 1;
        }
    }
}

fn graph(t: &Tree) -> Graph {
    let mut funcs: FxHashMap<u32, Func> = FxHashMap::default();
    let mut names = OnPath(FxHashMap::default());
    t.walk_paths(|n, entering| {
        let (_, name, self_, total) = t.node(n);
        if !entering {
            names.leave(&name);
            return;
        }
        let f = funcs.entry(name).or_default();
        f.flat += self_;
        if names.enter(name) {
            f.cum += total;
        }
    });
    Graph { funcs }
}

/// An edge between kept functions: its weight, and whether it stands for a path through
/// dropped ones.
#[derive(Debug, Clone, Copy, Default)]
struct Edge {
    weight: i64,
    residual: bool,
}

/// The edges between kept functions (`kept`: name id → node number): each stack's nearest
/// kept frames joined, counted once per stack.
fn edges(t: &Tree, kept: &FxHashMap<u32, usize>) -> FxHashMap<(u32, u32), Edge> {
    let mut out: FxHashMap<(u32, u32), Edge> = FxHashMap::default();
    let mut pairs = OnPath(FxHashMap::default());
    // Per tree node on the path: its nearest kept frame at or above it (name id, tree node).
    let mut nearest: Vec<Option<(u32, u32)>> = Vec::new();
    let mut entered_pair: Vec<Option<(u32, u32)>> = Vec::new();
    t.walk_paths(|n, entering| {
        let (parent, name, _, total) = t.node(n);
        if !entering {
            nearest.pop();
            if let Some(p) = entered_pair.pop().flatten() {
                pairs.leave(&p);
            }
            return;
        }
        let above = nearest.last().copied().flatten();
        if !kept.contains_key(&name) {
            nearest.push(above);
            entered_pair.push(None);
            return;
        }
        let mut pair = None;
        if let Some((src, src_node)) = above {
            let key = (src, name);
            if pairs.enter(key) {
                let e = out.entry(key).or_default();
                e.weight += total;
                // Residual when any of this pair's stacks skips a dropped frame.
                e.residual |= src_node != parent;
            }
            pair = Some(key);
        }
        nearest.push(Some((name, n)));
        entered_pair.push(pair);
    });
    out
}

/// The DOT text of a finished tree: `sample_type` and `unit` name what its values count;
/// `max_nodes` (≥ 1) bounds the nodes drawn. An empty tree draws nothing (an empty string,
/// as Pyroscope answers a query with no samples).
pub fn dot(t: &Tree, sample_type: &str, unit: &str, max_nodes: i64) -> String {
    let total = t.total();
    if total == 0 {
        return String::new();
    }
    let g = graph(t);
    let node_cutoff = (total.unsigned_abs() as f64 * NODE_FRACTION) as i64;
    let edge_cutoff = (total.unsigned_abs() as f64 * EDGE_FRACTION) as i64;
    let mut nodes: Vec<(u32, Func)> = g.funcs.iter().map(|(n, f)| (*n, *f)).collect();
    let all = nodes.len();
    nodes.retain(|(_, f)| f.cum.abs() >= node_cutoff);
    let dropped_nodes = all - nodes.len();
    nodes.sort_by(|a, b| {
        (b.1.flat.abs(), b.1.cum.abs()).cmp(&(a.1.flat.abs(), a.1.cum.abs())).then_with(|| t.name(a.0).cmp(t.name(b.0)))
    });
    let candidates = nodes.len();
    nodes.truncate(max_nodes.max(1) as usize);
    let kept: FxHashMap<u32, usize> = nodes.iter().enumerate().map(|(i, (n, _))| (*n, i + 1)).collect();
    let mut edges: Vec<((u32, u32), Edge)> = edges(t, &kept).into_iter().collect();
    let all_edges = edges.len();
    edges.retain(|(_, e)| e.weight.abs() >= edge_cutoff);
    let dropped_edges = all_edges - edges.len();
    edges.sort_by(|a, b| {
        b.1.weight
            .abs()
            .cmp(&a.1.weight.abs())
            .then_with(|| (t.name(a.0 .0), t.name(a.0 .1)).cmp(&(t.name(b.0 .0), t.name(b.0 .1))))
    });

    let fmt = |v: i64| scaled(v, unit);
    let shown: i64 = nodes.iter().map(|(_, f)| f.flat).sum();
    let mut legend = vec![format!("Type: {sample_type}")];
    legend.push(format!(
        "Showing nodes accounting for {}, {} of {} total",
        fmt(shown),
        percentage(shown, total),
        fmt(total)
    ));
    if dropped_nodes > 0 {
        legend.push(format!("Dropped {dropped_nodes} nodes (cum <= {})", fmt(node_cutoff)));
    }
    if dropped_edges > 0 {
        legend.push(format!("Dropped {dropped_edges} edges (freq <= {})", fmt(edge_cutoff)));
    }
    if candidates > nodes.len() {
        legend.push(format!("Showing top {} nodes out of {candidates}", nodes.len()));
    }

    let mut out = String::with_capacity(256 * (nodes.len() + edges.len() + 1));
    out.push_str("digraph \"unnamed\" {\nnode [style=filled fillcolor=\"#f8f8f8\"]\n");
    let legend: Vec<String> = legend.iter().map(|l| escape(l)).collect();
    let _ = writeln!(
        out,
        "subgraph cluster_L {{ \"{}\" [shape=box fontsize=16 label=\"{}\\l\"] }}",
        legend[0],
        legend.join("\\l")
    );
    let max_flat = nodes.iter().map(|(_, f)| f.flat.abs()).max().unwrap_or(0).max(1) as f64;
    for (i, (n, f)) in nodes.iter().enumerate() {
        let name = escape(t.name(*n));
        let mut label = format!("{name}\\n");
        if f.flat != 0 {
            let _ = write!(label, "{} ({})", fmt(f.flat), percentage(f.flat, total));
        } else {
            label.push('0');
        }
        if f.cum != f.flat {
            label.push_str(if f.flat != 0 { "\\n" } else { " " });
            let _ = write!(label, "of {} ({})", fmt(f.cum), percentage(f.cum, total));
        }
        let font = 8 + (16.0 * (f.flat.abs() as f64 / max_flat).sqrt()).ceil() as i64 * i64::from(f.flat != 0);
        let score = f.cum as f64 / total.abs() as f64;
        let _ = writeln!(
            out,
            "N{id} [label=\"{label}\" id=\"node{id}\" fontsize={font} shape=box tooltip=\"{name} ({cum})\" color=\"{fg}\" fillcolor=\"{bg}\"]",
            id = i + 1,
            cum = fmt(f.cum),
            fg = color(score, false),
            bg = color(score, true),
        );
    }
    for ((src, dst), e) in &edges {
        let w = e.weight;
        let mut attr = format!("label=\" {}\"", fmt(w));
        let weight = 1 + (w.abs().saturating_mul(100) / total.abs()).min(100);
        if weight > 1 {
            let _ = write!(attr, " weight={weight}");
        }
        let width = 1 + (w.abs().saturating_mul(5) / total.abs()).min(5);
        if width > 1 {
            let _ = write!(attr, " penwidth={width}");
        }
        let _ = write!(attr, " color=\"{}\"", color(w as f64 / total.abs() as f64, false));
        let arrow = if e.residual { "..." } else { "->" };
        let tip = format!("\"{} {arrow} {} ({})\"", escape(t.name(*src)), escape(t.name(*dst)), fmt(w));
        let _ = write!(attr, " tooltip={tip} labeltooltip={tip}");
        if e.residual {
            attr.push_str(" style=\"dotted\"");
        }
        let _ = writeln!(out, "N{} -> N{} [{attr}]", kept[src], kept[dst]);
    }
    out.push_str("}\n");
    out
}

/// Escapes a string for a DOT double-quoted string (`"` and `\`; newlines as `\n`).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// pprof's `measurement.Percentage`, trimmed: `100%`, two decimals from 1%, two significant
/// digits below.
fn percentage(value: i64, total: i64) -> String {
    let ratio = if total == 0 { 0.0 } else { (value as f64 / total as f64).abs() * 100.0 };
    if (99.95..=100.05).contains(&ratio) {
        return "100%".into();
    }
    if ratio >= 1.0 {
        return format!("{ratio:.2}%");
    }
    if ratio == 0.0 {
        return "0%".into();
    }
    // Two significant digits, as Go's %.2g for values below 1.
    let digits = (1 - ratio.log10().floor() as i32).max(0) as usize;
    let s = format!("{ratio:.digits$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    format!("{s}%")
}

/// pprof's `measurement.ScaledLabel` to the most readable unit: time units to the largest
/// of ns, us, ms, s, mins, hrs, days under the value, bytes to B, kB, MB, … (1024s), any other
/// unit as the plain number; two decimals, `.00` trimmed.
fn scaled(value: i64, unit: &str) -> String {
    const TIME: &[(&str, f64)] =
        &[("ns", 1.0), ("us", 1e3), ("ms", 1e6), ("s", 1e9), ("mins", 60e9), ("hrs", 3600e9), ("days", 86400e9)];
    const BYTES: &[(&str, f64)] = &[
        ("B", 1.0),
        ("kB", 1024.0),
        ("MB", 1024.0 * 1024.0),
        ("GB", 1024.0 * 1024.0 * 1024.0),
        ("TB", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("PB", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ];
    let (base, table) = match unit {
        "nanoseconds" | "nanosecond" | "ns" => (1.0, TIME),
        "microseconds" | "microsecond" | "us" => (1e3, TIME),
        "milliseconds" | "millisecond" | "ms" => (1e6, TIME),
        "seconds" | "second" | "s" => (1e9, TIME),
        "bytes" | "byte" | "B" => (1.0, BYTES),
        _ => return value.to_string(),
    };
    let v = value as f64 * base;
    let (name, div) = table.iter().rev().find(|(_, d)| v.abs() >= *d).copied().unwrap_or(table[0]);
    let s = format!("{:.2}", v / div);
    let s = s.strip_suffix(".00").unwrap_or(&s).to_string();
    if s == "0" || s == "-0" {
        return "0".into();
    }
    format!("{s}{name}")
}

/// pprof's `dotColor`: red for a large share, grey for none; the background paler.
fn color(score: f64, background: bool) -> String {
    const SHIFT: f64 = 0.7;
    let (mut saturation, value) = if background { (0.1, 0.93) } else { (1.0, 0.7) };
    let mut score = score.clamp(-1.0, 1.0);
    if score.abs() < 0.2 {
        saturation *= score.abs() / 0.2;
    }
    score = score.signum() * score.abs().powf(1.0 - SHIFT);
    let (r, g) = if score < 0.0 {
        (value * (1.0 + saturation * score), value)
    } else {
        (value, value * (1.0 - saturation * score))
    };
    let b = value * (1.0 - saturation);
    let byte = |x: f64| (x * 255.0) as u8;
    format!("#{:02x}{:02x}{:02x}", byte(r), byte(g), byte(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(stacks: &[(&str, i64)]) -> Tree {
        Tree::of_stacks(stacks)
    }

    /// An edge as drawn: (from, to, weight label, residual).
    type DrawnEdge = (String, String, String, bool);

    /// Each node's label, and the edges.
    fn parse(dot: &str) -> (Vec<String>, Vec<DrawnEdge>) {
        let mut nodes = Vec::new();
        let mut edges = Vec::new();
        for line in dot.lines() {
            if let Some((head, rest)) = line.split_once(" [label=\"") {
                if let Some((from, to)) = head.split_once(" -> ") {
                    let w = rest.split('"').next().unwrap().trim().to_string();
                    edges.push((from.into(), to.into(), w, rest.contains("dotted")));
                } else if head.starts_with('N') {
                    nodes.push(rest.split('"').next().unwrap().to_string());
                }
            }
        }
        (nodes, edges)
    }

    #[test]
    fn flat_cum_and_edges_count_recursion_once() {
        // main -> a -> a (recursion) -> b
        let t = tree(&[("main;a;a;b", 10), ("main;a", 5), ("main;c", 5)]);
        let d = dot(&t, "cpu", "nanoseconds", 100);
        let (nodes, edges) = parse(&d);
        assert!(d.starts_with("digraph \"unnamed\" {\n") && d.ends_with("}\n"), "{d}");
        // The hottest by flat first: b (10), then a (5, cum 15), then c (5, cum 5), main (0).
        assert_eq!(nodes[0], "b\\n10ns (50.00%)");
        assert_eq!(nodes[1], "a\\n5ns (25.00%)\\nof 15ns (75.00%)");
        assert_eq!(nodes[2], "c\\n5ns (25.00%)");
        assert_eq!(nodes[3], "main\\n0 of 20ns (100%)");
        let e: Vec<_> = edges.iter().map(|(f, t, w, r)| format!("{f}>{t}:{w}:{r}")).collect();
        assert_eq!(e, vec!["N4>N2:15ns:false", "N2>N2:10ns:false", "N2>N1:10ns:false", "N4>N3:5ns:false"]);
    }

    #[test]
    fn max_nodes_keeps_the_hottest_and_joins_the_rest_with_residual_edges() {
        let t = tree(&[("main;mid;leaf", 90), ("main;other", 10)]);
        let d = dot(&t, "samples", "count", 2);
        let (nodes, edges) = parse(&d);
        assert_eq!(nodes, vec!["leaf\\n90 (90.00%)", "other\\n10 (10.00%)"]);
        assert!(edges.is_empty(), "no kept caller: {edges:?}");
        let d = dot(&t, "samples", "count", 3);
        let (nodes, edges) = parse(&d);
        assert_eq!(nodes[2], "main\\n0 of 100 (100%)");
        // main -> leaf skips the dropped `mid`: dotted.
        assert!(edges.contains(&("N3".into(), "N1".into(), "90".into(), true)), "{edges:?}");
        assert!(d.contains("Showing top 3 nodes out of 4"), "{d}");
    }

    #[test]
    fn tiny_nodes_are_dropped_and_names_escaped() {
        let t = tree(&[("main;\"quoted\\\"", 1000), ("main;tiny", 1)]);
        let d = dot(&t, "cpu", "nanoseconds", 100);
        assert!(!d.contains("tiny"), "{d}");
        assert!(d.contains("Dropped 1 nodes (cum <= 5ns)"), "{d}");
        assert!(d.contains("\\\"quoted\\\\\\\""), "{d}");
        assert_eq!(dot(&tree(&[]), "cpu", "nanoseconds", 100), "");
    }

    #[test]
    fn pprof_formats() {
        assert_eq!(scaled(1_500_000_000, "nanoseconds"), "1.50s");
        assert_eq!(scaled(10_000_000, "nanoseconds"), "10ms");
        assert_eq!(scaled(2048, "bytes"), "2kB");
        assert_eq!(scaled(0, "bytes"), "0");
        assert_eq!(scaled(42, "count"), "42");
        assert_eq!(percentage(1, 3), "33.33%");
        assert_eq!(percentage(1, 1000), "0.1%");
        assert_eq!(percentage(123, 100_000), "0.12%");
        assert_eq!(color(0.0, false), "#b2b2b2");
        assert_eq!(color(1.0, false), "#b20000");
    }
}
