//! speedscope's JSON file format on `/ingest` (`format=speedscope`, shared/api.md §2.2):
//! `evented` and `sampled` profiles over the file's shared frames. Profiles with the same
//! (name, type, unit, startValue) are merged; each merged profile becomes (stack, value)
//! pairs that `/ingest` builds as it builds folded text, under its own name and unit.
//!
//! Memory: the body is parsed into typed structs (no `serde_json::Value`), at most some ten
//! times its size; stacks are kept as nodes of a call tree (a frame of a sample or an
//! event costs one lookup, never a copy of its path), and the paths written out at the end
//! are bounded by `max_key_bytes`, as a trie's keys are.
use rustc_hash::FxHashMap;
use serde::Deserialize;

pub const SCHEMA: &str = "https://www.speedscope.app/file-format-schema.json";

#[derive(Deserialize)]
struct File {
    #[serde(rename = "$schema")]
    schema: Option<String>,
    #[serde(default)]
    profiles: Vec<RawProfile>,
    shared: Option<Shared>,
}

#[derive(Deserialize)]
struct Shared {
    #[serde(default)]
    frames: Vec<Frame>,
}

#[derive(Deserialize)]
struct Frame {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProfile {
    r#type: Kind,
    #[serde(default)]
    name: String,
    unit: String,
    #[serde(default)]
    start_value: f64,
    #[serde(default)]
    events: Vec<Event>,
    #[serde(default)]
    samples: Vec<Vec<u32>>,
    #[serde(default)]
    weights: Vec<f64>,
}

/// A profile's type; another is refused as the JSON not fitting the format.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Evented,
    Sampled,
}

#[derive(Deserialize)]
struct Event {
    r#type: EventKind,
    at: f64,
    frame: u32,
}

/// An event opens or closes a frame. An enum, not a string: an event costs no allocation.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    O,
    C,
}

/// One merged profile: its name and unit, and each stack's value (scaled as /ingest
/// stores it: ×100 for time units and `none`, as sent for bytes).
#[derive(Debug, PartialEq)]
pub struct Parsed {
    pub name: String,
    pub unit: String,
    pub stacks: Vec<(String, i64)>,
}

/// Distinct profiles a file may hold: each becomes a profile of its own, so a file of
/// thousands of empty ones would cost far more than its size downstream. Real files hold
/// one per thread or process.
pub const MAX_PROFILES: usize = 1024;

/// The units speedscope defines.
const UNITS: &[&str] = &["none", "nanoseconds", "microseconds", "milliseconds", "seconds", "bytes"];

/// The sample rate a profile of `unit` is taken at when the request left the default (100):
/// values are scaled ×100 (`scale`), so a nanosecond is 1e11 of them per second.
pub fn unit_sample_rate(unit: &str) -> i64 {
    match unit {
        "nanoseconds" => 100_000_000_000,
        "microseconds" => 100_000_000,
        "milliseconds" => 100_000,
        "seconds" => 100,
        "bytes" => 0,
        _ => 10_000,
    }
}

/// What each value of `unit` is multiplied by before it is stored.
fn scale(unit: &str) -> f64 {
    if unit == "bytes" {
        1.0
    } else {
        100.0
    }
}

/// A call tree: node 0 is the root; each node is a frame under its parent.
#[derive(Default)]
struct CallTree {
    /// (parent, frame) of each node; the root's is unused.
    nodes: Vec<(u32, u32)>,
    weights: Vec<f64>,
    children: FxHashMap<(u32, u32), u32>,
}

impl CallTree {
    fn new() -> Self {
        CallTree { nodes: vec![(0, 0)], weights: vec![0.0], children: FxHashMap::default() }
    }

    fn child(&mut self, parent: u32, frame: u32) -> u32 {
        let next = self.nodes.len() as u32;
        let id = *self.children.entry((parent, frame)).or_insert(next);
        if id == next {
            self.nodes.push((parent, frame));
            self.weights.push(0.0);
        }
        id
    }

    /// Each weighed node's path, `;`-joined, and its value; refused when the paths'
    /// total would pass `max_key_bytes` (0: no bound).
    fn stacks(&self, frames: &[Frame], unit: &str, max_key_bytes: usize) -> Result<Vec<(String, i64)>, String> {
        // Path lengths first (a parent's id is below its child's), so that the bound is
        // checked before any path is built.
        let mut len = vec![0usize; self.nodes.len()];
        let mut total = 0usize;
        for (i, &(parent, frame)) in self.nodes.iter().enumerate().skip(1) {
            let sep = usize::from(parent != 0);
            len[i] = len[parent as usize] + sep + frames[frame as usize].name.len();
            if self.weights[i] != 0.0 {
                total = total.saturating_add(len[i]);
            }
        }
        if max_key_bytes > 0 && total > max_key_bytes {
            return Err(format!(
                "the speedscope profile expands to {total} bytes of stacks, more than {max_key_bytes} \
                 (max_profile_size_bytes): its stacks are too deep for its size"
            ));
        }
        let mut out = Vec::new();
        let mut path: Vec<u32> = Vec::new();
        for (i, &w) in self.weights.iter().enumerate().skip(1) {
            let value = (w * scale(unit)).round();
            if value < 1.0 {
                continue;
            }
            path.clear();
            let mut n = i as u32;
            while n != 0 {
                let (parent, frame) = self.nodes[n as usize];
                path.push(frame);
                n = parent;
            }
            let mut key = String::with_capacity(len[i]);
            for (k, f) in path.iter().rev().enumerate() {
                if k > 0 {
                    key.push(';');
                }
                key.push_str(&frames[*f as usize].name);
            }
            // A weight past i64 saturates, as a folded count would fail to parse.
            out.push((key, value.min(i64::MAX as f64) as i64));
        }
        Ok(out)
    }
}

fn check_frame(frame: u32, frames: &[Frame]) -> Result<(), String> {
    if frame as usize >= frames.len() {
        return Err(format!("frame {frame} is out of range: the file has {} shared frames", frames.len()));
    }
    Ok(())
}

fn add_sampled(p: &RawProfile, frames: &[Frame], tree: &mut CallTree) -> Result<(), String> {
    if p.weights.len() != p.samples.len() {
        return Err(format!("profile {:?} has {} samples but {} weights", p.name, p.samples.len(), p.weights.len()));
    }
    for (stack, &w) in p.samples.iter().zip(&p.weights) {
        if !w.is_finite() || w < 0.0 {
            return Err(format!("profile {:?} has a negative weight {w}", p.name));
        }
        let mut node = 0;
        for &f in stack {
            check_frame(f, frames)?;
            node = tree.child(node, f);
        }
        if node != 0 {
            tree.weights[node as usize] += w;
        }
    }
    Ok(())
}

/// An evented profile: the time between two events counts for the stack open between
/// them. Every open must be closed, last opened first.
fn add_evented(p: &RawProfile, frames: &[Frame], tree: &mut CallTree) -> Result<(), String> {
    let unbalanced = |what: String| format!("evented profile {:?} is unbalanced: {what}", p.name);
    // The open frames (innermost last) and their call tree nodes.
    let mut open: Vec<(u32, u32)> = Vec::new();
    let mut last_at = p.events.first().map_or(0.0, |e| e.at);
    for (i, e) in p.events.iter().enumerate() {
        check_frame(e.frame, frames)?;
        if e.at < last_at {
            return Err(format!("evented profile {:?}: event {i} at {} is before the one before it", p.name, e.at));
        }
        if let Some(&(_, node)) = open.last() {
            tree.weights[node as usize] += e.at - last_at;
        }
        last_at = e.at;
        match e.r#type {
            EventKind::O => {
                let parent = open.last().map_or(0, |&(_, n)| n);
                open.push((e.frame, tree.child(parent, e.frame)));
            }
            EventKind::C => match open.pop() {
                Some((f, _)) if f == e.frame => {}
                Some((f, _)) => {
                    return Err(unbalanced(format!("event {i} closes frame {} while {f} is open", e.frame)))
                }
                None => return Err(unbalanced(format!("event {i} closes frame {} that is not open", e.frame))),
            },
        }
    }
    if !open.is_empty() {
        return Err(unbalanced(format!("{} frames are never closed", open.len())));
    }
    Ok(())
}

/// Parses a speedscope file into its merged profiles, in the order each first appears.
pub fn parse(body: &[u8], max_key_bytes: usize) -> Result<Vec<Parsed>, String> {
    let file: File = serde_json::from_slice(body).map_err(|e| format!("invalid speedscope JSON: {e}"))?;
    match file.schema.as_deref() {
        Some(SCHEMA) => {}
        other => return Err(format!("not a speedscope file: \"$schema\" is {other:?}, not {SCHEMA:?}")),
    }
    let frames = file.shared.map(|s| s.frames).unwrap_or_default();
    // Merge key: (name, type, unit, startValue's bits), and where its profile is.
    type Key = (String, Kind, String, u64);
    let mut merged: Vec<(Key, CallTree)> = Vec::new();
    let mut index: FxHashMap<Key, usize> = FxHashMap::default();
    for p in &file.profiles {
        if !UNITS.contains(&p.unit.as_str()) {
            return Err(format!("profile {:?} has unknown unit {:?}; speedscope's are {UNITS:?}", p.name, p.unit));
        }
        let key = (p.name.clone(), p.r#type, p.unit.clone(), p.start_value.to_bits());
        let i = match index.get(&key) {
            Some(&i) => i,
            None if merged.len() == MAX_PROFILES => {
                return Err(format!(
                    "the file holds more than {MAX_PROFILES} distinct profiles; kiln takes at most that many"
                ))
            }
            None => {
                index.insert(key.clone(), merged.len());
                merged.push((key, CallTree::new()));
                merged.len() - 1
            }
        };
        let tree = &mut merged[i].1;
        match p.r#type {
            Kind::Sampled => add_sampled(p, &frames, tree)?,
            Kind::Evented => add_evented(p, &frames, tree)?,
        }
    }
    let mut out = Vec::with_capacity(merged.len());
    let mut budget = max_key_bytes;
    for ((name, _, unit, _), tree) in merged {
        let stacks = tree.stacks(&frames, &unit, budget)?;
        if max_key_bytes > 0 {
            budget = budget.saturating_sub(stacks.iter().map(|(s, _)| s.len()).sum()).max(1);
        }
        out.push(Parsed { name, unit, stacks });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/testdata/speedscope/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn sorted(p: &Parsed) -> Vec<(&str, i64)> {
        let mut v: Vec<(&str, i64)> = p.stacks.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        v.sort();
        v
    }

    const TREE: &[(&str, i64)] = &[("a;b", 500), ("a;b;c", 500), ("a;b;d", 400)];

    #[test]
    fn evented_fixture() {
        let got = parse(&fixture("simple.speedscope.json"), 0).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].name.as_str(), got[0].unit.as_str()), ("simple.txt", "none"));
        assert_eq!(sorted(&got[0]), TREE);
        assert_eq!(unit_sample_rate("none"), 10_000);
    }

    #[test]
    fn sampled_fixtures() {
        let got = parse(&fixture("two-sampled.speedscope.json"), 0).unwrap();
        assert_eq!(got.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["one", "two"]);
        for p in &got {
            assert_eq!(p.unit, "seconds");
            assert_eq!(sorted(p), TREE);
        }
        let bytes = parse(&fixture("two-sampled-bytes.speedscope.json"), 0).unwrap();
        assert_eq!(bytes.len(), 2);
        assert_eq!(sorted(&bytes[0]), [("a;b", 5), ("a;b;c", 5), ("a;b;d", 4)]);
    }

    #[test]
    fn equal_profiles_merge() {
        let got = parse(&fixture("duplicates.speedscope.json"), 0).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(sorted(&got[0]), [("a;b", 1500), ("a;b;c", 1500), ("a;b;d", 1200)]);
    }

    fn evented(events: &str) -> Vec<u8> {
        format!(
            r#"{{"$schema":"{SCHEMA}","shared":{{"frames":[{{"name":"a"}},{{"name":"b"}}]}},
            "profiles":[{{"type":"evented","name":"p","unit":"seconds","startValue":0,"endValue":9,"events":[{events}]}}]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn hostile_files_are_refused() {
        let e = parse(&evented(r#"{"type":"O","at":0,"frame":0}"#), 0).unwrap_err();
        assert!(e.contains("unbalanced"), "{e}");
        let e = parse(&evented(r#"{"type":"O","at":0,"frame":0},{"type":"C","at":1,"frame":1}"#), 0).unwrap_err();
        assert!(e.contains("unbalanced"), "{e}");
        let e = parse(&evented(r#"{"type":"C","at":1,"frame":0}"#), 0).unwrap_err();
        assert!(e.contains("unbalanced"), "{e}");
        let e = parse(&evented(r#"{"type":"O","at":0,"frame":7},{"type":"C","at":1,"frame":7}"#), 0).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = parse(&evented(r#"{"type":"O","at":5,"frame":0},{"type":"C","at":1,"frame":0}"#), 0).unwrap_err();
        assert!(e.contains("before"), "{e}");
        assert!(parse(br#"{"profiles":[]}"#, 0).unwrap_err().contains("$schema"));
        assert!(parse(b"[1,2", 0).unwrap_err().contains("invalid speedscope JSON"));
        let many: Vec<String> =
            (0..=MAX_PROFILES).map(|i| format!(r#"{{"type":"sampled","name":"{i}","unit":"none"}}"#)).collect();
        let body = format!(r#"{{"$schema":"{SCHEMA}","profiles":[{}]}}"#, many.join(","));
        assert!(parse(body.as_bytes(), 0).unwrap_err().contains("distinct profiles"));
        // A deep stack, weighed at every depth: its paths are quadratic in the file.
        let depth = 3000;
        let opens: Vec<String> = (0..depth).map(|i| format!(r#"{{"type":"O","at":{i},"frame":0}}"#)).collect();
        let closes: Vec<String> = (0..depth).map(|_| r#"{"type":"C","at":99999,"frame":0}"#.to_string()).collect();
        let body = evented(&[opens, closes].concat().join(","));
        let e = parse(&body, 1 << 20).unwrap_err();
        assert!(e.contains("max_profile_size_bytes"), "{e}");
    }
}
