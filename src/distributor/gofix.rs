//! Repair of Go stack traces cut at the Go runtime's depth limit, as Pyroscope does it.
//!
//! Go's profilers keep only the leaf-most frames of a deep stack: CPU profiles stop at 64
//! frames, heap (memory) profiles before Go 1.23 at 32. A deep stack therefore loses its
//! root part, and a flame graph shows each such stack as a separate root (starting mid-way,
//! at whatever frame the cut happened to leave outermost) instead of under the tree it
//! belongs to. It also inflates stack cardinality.
//!
//! Pyroscope's distributor (`pprof.FixGoProfile`, run on Go profiles before normalisation)
//! guesses the missing part from the other stacks of the same profile. kiln does the same,
//! so that it stores the same stacks:
//!
//! * A profile is looked at only if it may be truncated: a Go heap profile (any of the
//!   `alloc_*`/`inuse_*` sample types) with a stack of at least 28 frames and none of 33
//!   or more (Go 1.23+ allows 128 frames, and then nothing is repaired), or a Go CPU
//!   profile (`cpu` sample type) with a stack of at least 60 frames. Some truncated stacks
//!   are a few frames shorter than the limit, hence the margin of 4.
//! * Stacks of at least 24 frames are sorted and grouped by their 24 root-most frames (the
//!   *suffix*). Every 16-frame window of a group's suffix that ends 1 to 8 frames above its
//!   root is a *token*; each token remembers the group where it sits furthest from the root
//!   (the first such group in sort order on ties).
//! * A group whose 16 root-most frames are a token of another group, `k` frames above that
//!   group's root, lacks (at least) those `k` frames. Such links chain (the other group may
//!   be truncated too): the offsets add up along the chain up to a group without a link,
//!   and that group's root-most `sum` frames (taken from its first stack in sort order) are
//!   appended to every stack of the group. A chain of 56 links (deep recursion, or a cycle
//!   of links) stops the repair there, leaving the groups not yet handled as they are.
//! * kiln alone: the repair also stops there once it would have appended more than twice
//!   the profile's own frames (plus 65536). Real profiles never come near (a truncated stack
//!   gains its missing root part, rarely longer than itself); a crafted one of many short
//!   stacks chained to a deep one would otherwise grow a hundred times its size.
//!
//! Repaired stacks may equal other stacks; they are not merged here (the head sums equal
//! stacks anyway).
//!
//! Which group wins a token on a tie, and which stack of a group lends frames beyond its
//! suffix, depend on the order in which Pyroscope sorts the samples: by their suffix as
//! the little-endian bytes of the pprof location ids, with Go's (unstable) pdqsort. kiln
//! works on the pprof as received ([`repair_pprof`]), with its own location ids and sample
//! order, and sorts the same keys with a stable sort: groups and token winners are the
//! same; within a group of equal suffixes, the stack that lends frames beyond the shared
//! suffix may differ from Pyroscope's choice when those stacks differ there.
//! Pyroscope's quirks are kept too (see `repair_stacks`). One difference remains: Pyroscope
//! cuts stacks to their 1000 root-most frames before the repair, kiln after it; the Go
//! runtime never records stacks that deep.
use kiln_proto::kiln::v1::ProfileInput;
use kiln_shards::model::profile::Profile;
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};
use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::hash::{Hash, Hasher};

/// Frames per token (a run of frames that must match).
const TOKEN_LEN: usize = 16;
/// How many tokens a suffix has besides the root-most one: a stack may lack up to this many
/// frames per link.
const TOKENS: usize = 8;
/// Stacks shorter than this are neither repaired nor used to repair others.
const SUFFIX_LEN: usize = TOKENS + TOKEN_LEN;
/// Frames the repair may append beyond twice those of the profile (see `repair_stacks`).
const MAX_APPENDED_SLACK: usize = 1 << 16;

const GO_HEAP_TYPES: &[&str] = &["alloc_objects", "alloc_space", "inuse_objects", "inuse_space"];
const GO_SHAPE: &str = "[go.shape.";

/// The knobs that changed between Pyroscope versions.
#[derive(Debug, Clone, Copy)]
struct Params {
    /// Groups smaller than this lend no tokens (Pyroscope: `minGroupSize - 1`).
    min_group: isize,
    /// Links followed from one group before the repair stops.
    max_chain: usize,
    /// How many times the repair runs (Pyroscope's test fixtures were written after two).
    passes: usize,
}

/// Pyroscope as of v1.6 (the CPU fix: `maxRecursiveDepth` 56) to this day.
const PYROSCOPE: Params = Params { min_group: 1, max_chain: 56, passes: 1 };

/// Whether a Go profile with these sample types and stack depths may have stacks truncated
/// at the runtime's depth limit (Pyroscope's `PotentialTruncatedGoStacktraces`).
pub(crate) fn may_be_truncated<'a>(
    types: impl Iterator<Item = &'a str> + Clone,
    depths: impl Iterator<Item = usize>,
) -> bool {
    let Some(mut truncation) = Truncation::of(types) else {
        return false;
    };
    for depth in depths {
        truncation.see(depth);
    }
    truncation.may_be()
}

/// [`may_be_truncated`] told one sample at a time: the rule its sample types choose, and
/// what the depths seen so far say.
#[derive(Clone, Copy)]
pub(crate) struct Truncation {
    min_depth: usize,
    max_depth: Option<usize>,
    deep_enough: bool,
    too_deep: bool,
}

impl Truncation {
    /// `None` if no stack of a profile with these sample types is repaired, however deep.
    pub(crate) fn of<'a>(mut types: impl Iterator<Item = &'a str> + Clone) -> Option<Truncation> {
        let (min_depth, max_depth) = if types.clone().any(|t| GO_HEAP_TYPES.contains(&t)) {
            // Go heap stacks stop at 32 frames; from Go 1.23 at 128, which needs no repair.
            (32 - 4, Some(33))
        } else if types.any(|t| t == "cpu") {
            (64 - 4, None)
        } else {
            return None;
        };
        Some(Truncation { min_depth, max_depth, deep_enough: false, too_deep: false })
    }

    /// The next sample's depth (as sent, all-zero samples included).
    #[inline]
    pub(crate) fn see(&mut self, depth: usize) {
        self.deep_enough |= depth >= self.min_depth;
        self.too_deep |= self.max_depth.is_some_and(|max| depth >= max);
    }

    /// Whether the profile may be truncated, given every sample's depth.
    pub(crate) fn may_be(&self) -> bool {
        self.deep_enough && !self.too_deep
    }
}

/// Repairs truncated stacks of a decoded Go pprof in place, before it is normalised, as
/// Pyroscope's distributor does. `strings` is its string table (moved out of `p`; more
/// strings may follow). Only `sample[..].location_id` change, by appending ids of existing
/// locations at the root end; samples keep their order.
pub fn repair_pprof(p: &mut ProfileInput, strings: &[String]) {
    let text = |i: i64| usize::try_from(i).ok().and_then(|i| strings.get(i)).map_or("", String::as_str);
    let types = p.sample_type.iter().map(|st| text(st.r#type));
    if !may_be_truncated(types, p.sample.iter().map(|s| s.location_id.len())) {
        return;
    }
    // Pyroscope validates before it repairs; leave an invalid profile for normalisation to
    // reject as it is.
    let ids: FxHashSet<u64> = p.location.iter().map(|l| l.id).collect();
    if p.sample.iter().flat_map(|s| &s.location_id).all(|id| ids.contains(id)) {
        let mut stacks = PyroscopeStacks::new(p, strings);
        stacks.repair();
        stacks.apply(p);
    }
}

/// Repairs truncated stacks of a normalised Go profile in place. Location `i` stands for
/// pprof location id `i + 1` (the Go runtime's own numbering) and the samples are taken in
/// their order, so this matches Pyroscope for a profile that came from such a pprof without
/// all-zero samples and without generic type parameters; the ingest path uses the exact
/// [`repair_pprof`]. Only `samples[..].locations` change, by appending location indices at
/// their root end, so sample indices stay valid.
pub fn repair_truncated_stacks(p: &mut Profile) {
    let types = p.sample_types.iter().map(|st| p.string(st.r#type));
    if !may_be_truncated(types, p.samples.iter().map(|s| s.locations.len())) {
        return;
    }
    let mut stacks: Vec<Vec<u32>> = p.samples.iter().map(|s| s.locations.clone()).collect();
    let lens: Vec<usize> = stacks.iter().map(Vec::len).collect();
    let frames = lens.iter().sum();
    repair_stacks(&mut stacks, |l| u64::from(l) + 1, PYROSCOPE, frames);
    for ((s, stack), len) in p.samples.iter_mut().zip(&stacks).zip(lens) {
        s.locations.extend_from_slice(&stack[len..]);
    }
}

/// [`repair_pprof`] on the stacks as the fast reader holds them: every sample of the pprof
/// as sent, in its order (all-zero ones included), as dense location indices, each stack
/// whole (not yet cut to its root-most frames); `ids[l]` is the pprof id of location `l`.
/// The same repair exactly, for a profile whose sample types and depths
/// [`may_be_truncated`] accepts, for which [`SelfMerge::new`] says no string is renamed,
/// and whose samples all refer to known locations: the suffixes are sorted by the same
/// pprof ids, and equal indices are equal ids (an id given twice names its later location
/// everywhere). A profile whose strings are renamed goes through [`SelfMerge`] instead.
pub(crate) fn repair_dense(stacks: &mut Vec<Vec<u32>>, ids: &[u64]) {
    let frames = stacks.iter().map(Vec::len).sum();
    repair_passes(stacks, |l| ids[l as usize], PYROSCOPE, frames);
}

/// The repair run `params.passes` times on `stacks` (in Pyroscope's sample order, which
/// they keep), `id` giving each frame's pprof location id; `frames`: the profile's, for the
/// budget (see `append_missing`).
fn repair_passes<T: Frame>(stacks: &mut Vec<Vec<T>>, id: impl Fn(T) -> u64 + Copy, params: Params, frames: usize) {
    // Pyroscope sorts its samples in place: a further pass starts from that order.
    let mut position: Vec<usize> = (0..stacks.len()).collect();
    for _ in 0..params.passes {
        let order = repair_stacks(stacks, id, params, frames);
        *stacks = order.iter().map(|&i| std::mem::take(&mut stacks[i])).collect();
        position = order.iter().map(|&i| position[i]).collect();
    }
    let mut restored = vec![Vec::new(); stacks.len()];
    for (stack, i) in std::mem::take(stacks).into_iter().zip(position) {
        restored[i] = stack;
    }
    *stacks = restored;
}

/// The stacks of a pprof as Pyroscope's repair sees them, and what it appends to each sample.
pub(crate) struct PyroscopeStacks {
    /// Location ids, leaf first, in Pyroscope's sample order.
    stacks: Vec<Vec<u64>>,
    /// Their lengths before the repair.
    lens: Vec<usize>,
    /// For each pprof sample, its stack (`None`: Pyroscope dropped the sample, or its stack
    /// is too short to be repaired or to repair others, and is left out).
    stack_of: Vec<Option<usize>>,
    /// The frames of the pprof's samples, for the repair's budget.
    frames: usize,
    /// If Pyroscope renumbered the locations: new id → a pprof id (by index).
    pprof_id: Option<Vec<u64>>,
}

impl PyroscopeStacks {
    fn new(p: &ProfileInput, strings: &[String]) -> Self {
        let Some((mut samples, new_id)) = merged_symbols(p, strings) else {
            let stacks: Vec<Vec<u64>> = p.sample.iter().map(|s| s.location_id.clone()).collect();
            let lens = stacks.iter().map(Vec::len).collect();
            let stack_of = (0..stacks.len()).map(Some).collect();
            let frames = p.sample.iter().map(|s| s.location_id.len()).sum();
            return PyroscopeStacks { stacks, lens, stack_of, pprof_id: None, frames };
        };
        for s in &p.sample {
            let stack = s.location_id.iter().map(|id| new_id.get(id).copied());
            samples.sample(stack, s.label.iter().map(|l| (l.key, l.str)));
        }
        samples.into_stacks()
    }

    /// Runs the repair (once: Pyroscope's parameters of today).
    pub(crate) fn repair(&mut self) {
        self.repair_with(PYROSCOPE);
    }

    fn repair_with(&mut self, params: Params) {
        repair_passes(&mut self.stacks, |id| id, params, self.frames);
    }

    /// The pprof location ids the repair appended to sample `sample` (in the pprof's
    /// order), root-most last.
    pub(crate) fn tail(&self, sample: usize) -> impl ExactSizeIterator<Item = u64> + '_ {
        let tail = match self.stack_of[sample] {
            Some(i) => &self.stacks[i][self.lens[i]..],
            None => &[],
        };
        tail.iter().map(|&id| self.pprof_id.as_ref().map_or(id, |pprof_id| pprof_id[id as usize]))
    }

    /// Appends the repaired part of each stack to the pprof's samples.
    fn apply(&self, p: &mut ProfileInput) {
        for (i, s) in p.sample.iter_mut().enumerate() {
            s.location_id.extend(self.tail(i));
        }
    }
}

/// [`SelfMerge`] fed the symbols of a prost-decoded pprof, if it merges at all, and the new
/// id of each pprof location id (an id given twice: its later kept location's).
fn merged_symbols(p: &ProfileInput, strings: &[String]) -> Option<(MergedSamples, FxHashMap<u64, u64>)> {
    let mut merge = SelfMerge::new(strings, (p.function.len(), p.mapping.len(), p.location.len()))?;
    // Each pprof id → its slot (table position; an id given twice: its later entry).
    let slots = |ids: &mut dyn Iterator<Item = u64>| -> FxHashMap<u64, u32> {
        ids.enumerate().map(|(slot, id)| (id, slot as u32)).collect()
    };
    let function_slot = slots(&mut p.function.iter().map(|f| f.id));
    let mapping_slot = slots(&mut p.mapping.iter().map(|m| m.id));
    for f in &p.function {
        merge.function(f.start_line, f.name, f.system_name, f.filename);
    }
    for m in &p.mapping {
        merge.mapping(m);
    }
    let mut new_id = FxHashMap::with_capacity_and_hasher(p.location.len(), Default::default());
    for l in &p.location {
        let lines = l.line.iter().map(|ln| (function_slot.get(&ln.function_id).copied(), ln.line));
        let mapping = mapping_slot.get(&l.mapping_id).copied();
        if let Some(new) = merge.location(l.id, l.address, l.mapping_id, mapping, lines) {
            new_id.insert(l.id, new);
        }
    }
    let words = p.sample.iter().map(|s| s.location_id.len() + s.label.len()).sum();
    Some((merge.samples(p.sample.len(), words, |id| new_id.get(&id).copied()), new_id))
}

/// A function as Pyroscope's merge compares them: start line, name, system name, file
/// name (strings as [`Classes`]).
type FunctionKey = (u32, u32, u32, u32);
/// A mapping as that merge compares them: size rounded up to 4 KiB, file offset, build id
/// (or file name without one).
type MappingKey = (u64, u64, u32);

/// Strings as Pyroscope's merge compares them ([`pyroscope_drop_type_params`]): each string
/// index stands for the first index whose string cleans to the same text (its *class*).
struct Classes {
    class: Vec<u32>,
    /// The class of "", which an index out of range reads as.
    empty: u32,
}

impl Classes {
    #[inline]
    fn of(&self, i: i64) -> u32 {
        usize::try_from(i).ok().and_then(|i| self.class.get(i)).copied().unwrap_or(self.empty)
    }
}

/// Pyroscope's self-merge, as far as the repair sees it. If dropping Go type parameters
/// ([`pyroscope_drop_type_params`]) renames any string, Pyroscope merges the profile with
/// itself before the repair: the locations are numbered anew, 1, 2, … in table order,
/// folding those that became equal (same address, mapping and lines) into the first of
/// them and dropping those without address and lines; samples with equal stacks and labels
/// (numeric values aside) fold into the first of them. The repair then runs on those.
///
/// Either reader feeds it a pprof's functions, mappings and locations (in table order),
/// then ([`SelfMerge::samples`]) its samples in order: `repair_pprof` from the prost
/// message, the fast reader from the bytes. A function or mapping is named by its *slot*,
/// its position in its table (the reader resolves pprof ids to slots; an id given twice
/// names its later entry). Strings are compared by [`Classes`], and a location's or
/// sample's key is a run of integers (each part preceded by what tells its length, so
/// equal keys are equal runs) kept once in a [`SliceSet`].
pub(crate) struct SelfMerge {
    classes: Classes,
    /// Each function's key, by slot.
    functions: Vec<FunctionKey>,
    /// Each mapping's key, by slot.
    mappings: Vec<MappingKey>,
    /// Each distinct location key; its index + 1 is its new id.
    first: SliceSet,
    /// The pprof ids of the locations kept, in table order.
    kept: Vec<u64>,
}

impl SelfMerge {
    /// `None` if no string of `strings` (the string table; strings appended after it are
    /// compared too, as `repair_pprof` sees them) is renamed: then nothing is merged and the
    /// repair runs on the pprof's own ids. `symbols`: how many functions, mappings and
    /// locations will be fed (tables are sized for them).
    pub(crate) fn new<S: AsRef<str>>(strings: &[S], symbols: (usize, usize, usize)) -> Option<SelfMerge> {
        // The renamed strings, each cleaned once; a profile without any costs one search
        // per string.
        let renamed: Vec<(usize, String)> = strings
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match pyroscope_drop_type_params(s.as_ref()) {
                Cow::Owned(c) if c != s.as_ref() => Some((i, c)),
                _ => None,
            })
            .collect();
        if renamed.is_empty() {
            return None;
        }
        let mut classes: FxHashMap<&str, u32> = FxHashMap::with_capacity_and_hasher(strings.len(), Default::default());
        let mut next_renamed = renamed.iter().peekable();
        let class: Vec<u32> = (0..strings.len())
            .map(|i| {
                let text = match next_renamed.next_if(|(r, _)| *r == i) {
                    Some((_, cleaned)) => cleaned.as_str(),
                    None => strings[i].as_ref(),
                };
                *classes.entry(text).or_insert(i as u32)
            })
            .collect();
        let empty = classes.get("").copied().unwrap_or(u32::MAX);
        let (functions, mappings, locations) = symbols;
        Some(SelfMerge {
            classes: Classes { class, empty },
            functions: Vec::with_capacity(functions),
            mappings: Vec::with_capacity(mappings),
            // A location's key: its address, mapping (4 words) and three words a line; Go's
            // test profiles have 1.0–1.22 lines a location (inlining), so 9 words a location
            // is seldom outgrown (a copy of the whole arena when it is).
            first: SliceSet::with_capacity(locations, 9 * locations),
            kept: Vec::with_capacity(locations),
        })
    }

    /// The next function of the table (its slot is its position).
    pub(crate) fn function(&mut self, start_line: i64, name: i64, system_name: i64, filename: i64) {
        let c = &self.classes;
        self.functions.push((start_line as u32, c.of(name), c.of(system_name), c.of(filename)));
    }

    /// The next mapping of the table (its slot is its position).
    pub(crate) fn mapping(&mut self, m: &kiln_proto::google::v1::Mapping) {
        // Sizes rounded up to 4 KiB, as pprof's merge does.
        let size = m.memory_limit.wrapping_sub(m.memory_start).wrapping_add(0xfff);
        let c = &self.classes;
        let name = if c.of(m.build_id) == c.empty { m.filename } else { m.build_id };
        self.mappings.push((size - size % 0x1000, m.file_offset, c.of(name)));
    }

    /// A location, after every function and mapping: `mapping` is the slot of mapping
    /// `mapping_id` (`None`: unknown), `lines` are (function slot, line). Returns its new id,
    /// or `None` if the merge drops it. The caller keeps the new id of each pprof id (an id
    /// given twice: that of its later location the merge kept).
    pub(crate) fn location(
        &mut self,
        id: u64,
        address: u64,
        mapping_id: u64,
        mapping: Option<u32>,
        lines: impl ExactSizeIterator<Item = (Option<u32>, i64)>,
    ) -> Option<u64> {
        if lines.len() == 0 && address == 0 {
            return None;
        }
        // Key: address; mapping (0 if unknown, else 1 and its three fields); each line
        // (0 and the line if its function is unknown, else the function's start line
        // tagged 1, then name and system name, then file name and line).
        let start = self.first.open();
        let key = &mut self.first.arena;
        key.push(address);
        let mapping = if mapping_id == 0 {
            Some((0, 0, self.classes.empty))
        } else {
            mapping.and_then(|slot| self.mappings.get(slot as usize)).copied()
        };
        match mapping {
            None => key.push(0),
            Some((size, offset, name)) => key.extend([1, size, offset, u64::from(name)]),
        }
        for (f, line) in lines {
            let line = u64::from(line as u32);
            match f.and_then(|slot| self.functions.get(slot as usize)) {
                None => key.extend([0, line]),
                Some(&(start, name, system, file)) => key.extend([
                    u64::from(start) << 1 | 1,
                    u64::from(name) << 32 | u64::from(system),
                    u64::from(file) << 32 | line,
                ]),
            }
        }
        let new = self.first.close(start) as u64 + 1;
        self.kept.push(id);
        Some(new)
    }

    /// Done with the symbols: `samples` samples follow, with at most `words` location ids
    /// and labels among them (room is made for their keys). `new_id`: the caller's new id
    /// of a pprof id (see [`SelfMerge::location`]).
    pub(crate) fn samples(self, samples: usize, words: usize, new_id: impl Fn(u64) -> Option<u64>) -> MergedSamples {
        // Each new id stands for the first location (in table order) whose pprof id has it
        // (0: none does, and no sample refers to it).
        let mut pprof_id = vec![0u64; self.first.len() + 1];
        let mut named = vec![false; self.first.len() + 1];
        for &id in &self.kept {
            if let Some(new) = new_id(id) {
                let new = new as usize;
                if !named[new] {
                    named[new] = true;
                    pprof_id[new] = id;
                }
            }
        }
        MergedSamples {
            classes: self.classes,
            pprof_id,
            seen: SliceSet::with_capacity(samples, samples + words),
            stack_of: Vec::with_capacity(samples),
            frames: 0,
        }
    }
}

/// [`SelfMerge`]'s second half: the samples, folded.
pub(crate) struct MergedSamples {
    classes: Classes,
    /// New id → a pprof id (index 0 unused).
    pprof_id: Vec<u64>,
    /// Each distinct sample's key (its stack's length, its stack in new ids, its labels'
    /// (key, string) classes sorted); its index is its stack's.
    seen: SliceSet,
    stack_of: Vec<Option<usize>>,
    /// The frames of the samples so far.
    frames: usize,
}

impl MergedSamples {
    /// The next sample of the pprof: its locations' new ids (`None`: one the merge dropped)
    /// and its labels as (key, string).
    pub(crate) fn sample(
        &mut self,
        stack: impl ExactSizeIterator<Item = Option<u64>>,
        labels: impl Iterator<Item = (i64, i64)>,
    ) {
        self.frames += stack.len();
        if stack.len() < SUFFIX_LEN {
            // The repair neither changes such a stack nor takes frames from it, and it sorts
            // before every other (in the order given, as does a stack folded into it): left
            // out, it costs no key (about half of a truncated heap profile's samples).
            self.stack_of.push(None);
            return;
        }
        let start = self.seen.open();
        let key = &mut self.seen.arena;
        key.push(stack.len() as u64);
        for new in stack {
            let Some(new) = new else {
                key.truncate(start);
                self.stack_of.push(None); // refers to a location the merge dropped
                return;
            };
            key.push(new);
        }
        let c = &self.classes;
        let sorted_from = key.len();
        key.extend(labels.map(|(k, s)| u64::from(c.of(k)) << 32 | u64::from(c.of(s))));
        key[sorted_from..].sort_unstable();
        self.stack_of.push(Some(self.seen.close(start)));
    }

    /// The stacks the repair works on, each once, in the order they first appear.
    pub(crate) fn into_stacks(self) -> PyroscopeStacks {
        let stacks: Vec<Vec<u64>> = (0..self.seen.len())
            .map(|i| {
                let key = self.seen.get(i);
                key[1..1 + key[0] as usize].to_vec()
            })
            .collect();
        let lens = stacks.iter().map(Vec::len).collect();
        PyroscopeStacks { stacks, lens, stack_of: self.stack_of, pprof_id: Some(self.pprof_id), frames: self.frames }
    }
}

/// Distinct runs of integers, each kept once in one arena and numbered in the order first
/// seen. A lookup hashes the run and walks the (short) chain of earlier runs with that
/// hash, so a key costs no allocation of its own.
struct SliceSet {
    arena: Vec<u64>,
    /// Where run `i` starts in `arena` (it ends where `i + 1` starts, the last at the end).
    starts: Vec<usize>,
    /// Hash → the latest run with it; `chain[i]`: the run before `i` with its hash.
    heads: FxHashMap<u64, u32>,
    chain: Vec<u32>,
}

/// The end of a [`SliceSet`] chain.
const NO_RUN: u32 = u32::MAX;

impl SliceSet {
    fn with_capacity(runs: usize, words: usize) -> Self {
        SliceSet {
            arena: Vec::with_capacity(words),
            starts: Vec::with_capacity(runs),
            heads: FxHashMap::with_capacity_and_hasher(runs, Default::default()),
            chain: Vec::with_capacity(runs),
        }
    }

    fn len(&self) -> usize {
        self.starts.len()
    }

    fn get(&self, i: usize) -> &[u64] {
        let end = self.starts.get(i + 1).copied().unwrap_or(self.arena.len());
        &self.arena[self.starts[i]..end]
    }

    /// Where the next run starts: its words are pushed onto `arena`, then [`Self::close`]d.
    fn open(&self) -> usize {
        self.arena.len()
    }

    /// The index of the run pushed onto `arena` since `start` ([`Self::open`]): kept and
    /// numbered if new, taken off again if an equal run was seen (a key is built once, in
    /// place, and copied nowhere).
    fn close(&mut self, start: usize) -> usize {
        let mut h = FxHasher::default();
        self.arena[start..].hash(&mut h);
        let new = self.starts.len() as u32;
        let head = match self.heads.entry(h.finish()) {
            Entry::Vacant(e) => {
                e.insert(new);
                NO_RUN
            }
            Entry::Occupied(mut e) => {
                let mut i = *e.get();
                while i != NO_RUN {
                    let from = self.starts[i as usize];
                    let to = self.starts.get(i as usize + 1).copied().unwrap_or(start);
                    if self.arena[from..to] == self.arena[start..] {
                        self.arena.truncate(start);
                        return i as usize;
                    }
                    i = self.chain[i as usize];
                }
                e.insert(new)
            }
        };
        self.starts.push(start);
        self.chain.push(head);
        new as usize
    }
}

/// Pyroscope's `dropGoTypeParameters`: removes each `[go.shape.…]` list (brackets nest).
/// Only used to tell which frames, strings and samples Pyroscope sees as equal; kiln's own
/// renaming is [`super::pprof::drop_go_type_parameters`].
fn pyroscope_drop_type_params(s: &str) -> Cow<'_, str> {
    let Some(first) = find_go_shape(s, 0) else {
        return Cow::Borrowed(s);
    };
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let (mut i, mut next) = (0, Some(first));
    while i < s.len() {
        let Some(start) = next.take().or_else(|| find_go_shape(s, i)) else {
            out.push_str(&s[i..]);
            break;
        };
        out.push_str(&s[i..start]);
        let mut depth = 0usize;
        let mut end = None;
        for (j, &c) in b.iter().enumerate().skip(start) {
            if c == b'[' {
                depth += 1;
            } else if c == b']' {
                depth -= 1;
                if depth == 0 {
                    end = Some(j + 1);
                    break;
                }
            }
        }
        match end {
            Some(e) => i = e,
            None => {
                // Unbalanced: Pyroscope appends the rest from the last resume point.
                out.push_str(&s[i..]);
                break;
            }
        }
    }
    Cow::Owned(out)
}

/// Where [`GO_SHAPE`] next occurs in `s` from byte `from`: each `[` (most strings have
/// none, and memchr finds that fast) is checked for the rest.
fn find_go_shape(s: &str, from: usize) -> Option<usize> {
    let b = s.as_bytes();
    memchr::memchr_iter(b'[', &b[from..]).map(|k| from + k).find(|&at| b[at..].starts_with(GO_SHAPE.as_bytes()))
}

/// A token's owner: the group (index + 1; 0 = none) and how far above its root it sits.
#[derive(Clone, Copy, Default)]
struct Link {
    group: u32,
    offset: u32,
}

/// A frame of a stack under repair: a pprof location id, or a dense location index.
trait Frame: Copy + Eq + Hash + Default {}

impl<T: Copy + Eq + Hash + Default> Frame for T {}

/// The repair proper, on stacks of frames (leaf first) in Pyroscope's sample order, `id`
/// giving a frame's pprof location id (the sort key). Appends the missing root frames to the stacks it repairs; returns the stacks' order
/// sorted by suffix.
///
/// Pyroscope's quirks are kept, as they decide which stacks change: the samples are sorted
/// with Go's unstable sort and an inconsistent comparison (every stack shorter than the
/// suffix is "less" than any other); and the end of the last group is taken to be the
/// number of groups rather than of stacks, which usually leaves the last group (in sort
/// order) with no stacks: it lends no tokens and is not repaired.
///
/// `frames`: the profile's, for the budget (see `append_missing`).
fn repair_stacks<T: Frame>(stacks: &mut [Vec<T>], id: impl Fn(T) -> u64, params: Params, frames: usize) -> Vec<usize> {
    // 1. The stacks sorted by suffix, the short ones first.
    let keys = suffix_keys(stacks, id);
    let (sorted, long) = sort_by_suffix(&keys);
    let order = &sorted[long..];
    // 2. The long stacks grouped by suffix.
    let groups = SuffixGroups::new(order, &keys);
    // 3. Which group each group's root-most frames continue in.
    let links = group_links(stacks, &groups, params);
    // 4. The frames each group lacks, appended.
    append_missing(stacks, &groups, &links, params, frames);
    sorted
}

type SuffixKey = [u64; SUFFIX_LEN];

/// Each stack's suffix as Pyroscope compares them (byte strings of little-endian ids), or
/// `None` for a stack shorter than the suffix.
fn suffix_keys<T: Frame>(stacks: &[Vec<T>], id: impl Fn(T) -> u64) -> Vec<Option<SuffixKey>> {
    stacks
        .iter()
        .map(|s| {
            let suffix = s.get(s.len().checked_sub(SUFFIX_LEN)?..)?;
            let mut key = [0u64; SUFFIX_LEN];
            for (k, &frame) in key.iter_mut().zip(suffix) {
                *k = u64::from_be_bytes(id(frame).to_le_bytes());
            }
            Some(key)
        })
        .collect()
}

/// The stacks' indices sorted by suffix, and where the long stacks start among them.
fn sort_by_suffix(keys: &[Option<SuffixKey>]) -> (Vec<usize>, usize) {
    // Short stacks first (in the profile's order), then the long ones by suffix; equal
    // suffixes keep the profile's sample order (a stable sort: Pyroscope's unstable one may
    // pick another stack of a group to lend frames beyond the shared suffix). Only the long
    // ones are sorted: a short stack compares less than any long one.
    let (mut order, mut long): (Vec<usize>, Vec<usize>) = (0..keys.len()).partition(|&i| keys[i].is_none());
    let short = order.len();
    long.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
    order.extend(long);
    (order, short)
}

/// Runs of `order` (stacks sorted by suffix, all long) that share one suffix.
struct SuffixGroups<'o> {
    order: &'o [usize],
    /// Start of each group (indices into `order`).
    starts: Vec<usize>,
}

impl<'o> SuffixGroups<'o> {
    fn new(order: &'o [usize], keys: &[Option<SuffixKey>]) -> Self {
        let starts = (0..order.len()).filter(|&i| i == 0 || keys[order[i]] != keys[order[i - 1]]).collect();
        SuffixGroups { order, starts }
    }

    fn len(&self) -> usize {
        self.starts.len()
    }

    /// Where group `g` ends in `order`: Pyroscope's quirk takes the end of the last group to
    /// be the number of groups.
    fn end_of(&self, g: usize) -> usize {
        self.starts.get(g + 1).copied().unwrap_or(self.starts.len())
    }

    /// The stacks of group `g` (none where the quirk ends it before its start).
    fn members(&self, g: usize) -> &'o [usize] {
        let start = self.starts[g];
        &self.order[start..self.end_of(g).max(start)]
    }

    /// The group's first stack, which speaks for it.
    fn first(&self, g: usize) -> usize {
        self.order[self.starts[g]]
    }
}

/// Each group's link: the group where its root-most token sits furthest from the root,
/// if another group.
fn group_links<T: Frame>(stacks: &[Vec<T>], groups: &SuffixGroups<'_>, params: Params) -> Vec<Link> {
    // Tokens are keyed by a hash of their frames (a small table, where 16 frames per key
    // would not stay in cache), each entry checked against the token it stands for; should
    // two tokens share a hash, by their frames.
    let hashed = |t: &[T]| {
        let mut h = FxHasher::default();
        t.hash(&mut h);
        h.finish()
    };
    let suffixes = group_suffixes(stacks, groups);
    links_by(&suffixes, groups, params, hashed)
        .or_else(|| links_by(&suffixes, groups, params, <[T]>::to_vec))
        .expect("tokens keyed by their frames never collide")
}

/// Each group's suffix (its first stack's root-most `SUFFIX_LEN` frames, where all of its
/// tokens lie), side by side: the tables below read the frames in group order from one
/// array, where every stack is a visit to memory of its own (that wait was most of the
/// repair's time on a profile of many groups).
fn group_suffixes<T: Frame>(stacks: &[Vec<T>], groups: &SuffixGroups<'_>) -> Vec<T> {
    let mut suffixes = Vec::with_capacity(groups.len() * SUFFIX_LEN);
    for g in 0..groups.len() {
        let s = &stacks[groups.first(g)];
        suffixes.extend_from_slice(&s[s.len() - SUFFIX_LEN..]);
    }
    suffixes
}

/// [`group_links`] with tokens keyed by `key`; `None` if a token shares its key with a
/// group's root-most token but not its frames.
fn links_by<T: Frame, K: Hash + Eq>(
    suffixes: &[T],
    groups: &SuffixGroups<'_>,
    params: Params,
    key: impl Fn(&[T]) -> K,
) -> Option<Vec<Link>> {
    // Group `g`'s token `off` frames above its root.
    let token = |g: usize, off: usize| {
        let end = (g + 1) * SUFFIX_LEN - off;
        &suffixes[end - TOKEN_LEN..end]
    };
    // Only the groups' root-most tokens are ever looked up, so the table holds those alone
    // (at most one entry a group, where every token would be eight: a table that stays in
    // cache, and most tokens cost a lookup that misses, not an insert). Each entry: a group
    // whose root-most token it is (to check a hit's frames against), and the group where
    // that token sits furthest from the root so far.
    let mut owners: FxHashMap<K, (u32, Link)> = FxHashMap::with_capacity_and_hasher(groups.len(), Default::default());
    for g in 0..groups.len() {
        let t = token(g, 0);
        match owners.entry(key(t)) {
            Entry::Occupied(e) if token(e.get().0 as usize, 0) != t => return None,
            Entry::Occupied(_) => {}
            Entry::Vacant(e) => {
                e.insert((g as u32, Link::default()));
            }
        }
    }
    for (g, &start) in groups.starts.iter().enumerate() {
        if (groups.end_of(g) as isize - start as isize) < params.min_group {
            continue;
        }
        for off in 1..=TOKENS {
            let t = token(g, off);
            let Some((root, owner)) = owners.get_mut(&key(t)) else {
                continue;
            };
            if token(*root as usize, 0) != t {
                return None;
            }
            if owner.group == 0 || off as u32 > owner.offset {
                *owner = Link { group: g as u32 + 1, offset: off as u32 };
            }
        }
    }
    let links = (0..groups.len()).map(|g| match owners[&key(token(g, 0))].1 {
        l if l.group as usize != g + 1 => l,
        _ => Link::default(),
    });
    Some(links.collect())
}

/// Appends to each group's stacks the frames its chain of links says they lack, taken from
/// the group the chain ends in. Stops (keeping what it appended) at a chain of
/// `params.max_chain` links (deep recursion, or a cycle) or past the budget below.
fn append_missing<T: Frame>(
    stacks: &mut [Vec<T>],
    groups: &SuffixGroups<'_>,
    links: &[Link],
    params: Params,
    frames: usize,
) {
    // What the repair may add: a stack gains up to 56 links of 8 frames, so a profile of
    // many short stacks chained to one deep one would grow a hundredfold. Real truncated
    // profiles gain less than their own frames; past twice that, the repair stops.
    let max_appended = 2 * frames + MAX_APPENDED_SLACK;
    let mut appended = 0usize;
    for (g, &first_link) in links.iter().enumerate() {
        let Some((missing, end)) = follow_chain(links, first_link, params) else {
            return;
        };
        if missing == 0 {
            continue;
        }
        let reference = &stacks[groups.first(end)];
        if missing >= reference.len() {
            continue;
        }
        let members = groups.members(g);
        appended += missing * members.len();
        if appended > max_appended {
            return;
        }
        let tail = reference[reference.len() - missing..].to_vec();
        for &i in members {
            stacks[i].extend_from_slice(&tail);
        }
    }
}

/// Follows a group's chain of links from `link`: the frames it lacks (the offsets added up)
/// and the group the chain ends in; `None` at `params.max_chain` links.
fn follow_chain(links: &[Link], mut link: Link, params: Params) -> Option<(usize, usize)> {
    let mut missing = 0usize;
    let mut hops = 0;
    while link.group > 0 {
        missing += link.offset as usize;
        let next = links[link.group as usize - 1];
        if next.group == 0 {
            break;
        }
        link = next;
        hops += 1;
        if hops == params.max_chain {
            return None;
        }
    }
    Some((missing, (link.group as usize).saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributor::pprof::{decode, drop_go_type_parameters, normalize, PprofLimits};
    use kiln_proto::google::v1 as pb;
    use std::collections::BTreeMap;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/pprof/pyroscope/pkg-pprof/");

    /// Pyroscope's `.fixed` files were written by older code than it runs today: groups of a
    /// single stack lent no tokens, chains stopped after 16 links, and the fixture writer ran
    /// the repair twice (in `FixGoProfile`, then once more).
    const FIXTURE_ERA: Params = Params { min_group: 2, max_chain: 16, passes: 2 };

    fn read(name: &str) -> ProfileInput {
        let raw = std::fs::read(format!("{DIR}{name}")).unwrap();
        let raw = if raw.starts_with(&[0x1f, 0x8b]) {
            kiln_io::compress::gunzip_bounded(&raw, 1 << 30).unwrap()
        } else {
            raw
        };
        decode(&raw).unwrap()
    }

    fn strings(p: &ProfileInput) -> Vec<String> {
        p.string_table.iter().map(|s| String::from_utf8(s.clone()).unwrap()).collect()
    }

    fn normalized(p: ProfileInput) -> Profile {
        normalize(p, PprofLimits { max_samples: 0 }).unwrap().profile
    }

    /// Root-first `;`-joined function names (renamed as kiln does) → values summed per stack.
    type Collapsed = BTreeMap<String, Vec<i64>>;

    fn add(out: &mut Collapsed, names: &[&str], values: &[i64]) {
        let e = out.entry(names.join(";")).or_insert_with(|| vec![0; values.len()]);
        for (a, b) in e.iter_mut().zip(values) {
            *a += b;
        }
    }

    /// Collapses a pprof as decoded, without kiln's normalisation (and so without repair).
    fn collapse_pprof(p: &ProfileInput) -> Collapsed {
        let strings = strings(p);
        let functions: FxHashMap<u64, String> = p
            .function
            .iter()
            .map(|f| {
                let name = &strings[f.name as usize];
                (f.id, drop_go_type_parameters(name).unwrap_or_else(|| name.clone()))
            })
            .collect();
        let locations: FxHashMap<u64, Vec<&str>> = p
            .location
            .iter()
            .map(|l| (l.id, l.line.iter().rev().map(|ln| functions[&ln.function_id].as_str()).collect()))
            .collect();
        let mut out = Collapsed::new();
        for s in &p.sample {
            let names: Vec<&str> = s.location_id.iter().rev().flat_map(|id| locations[id].iter().copied()).collect();
            add(&mut out, &names, &s.value);
        }
        out
    }

    fn collapse(p: &Profile) -> Collapsed {
        let mut out = Collapsed::new();
        for s in &p.samples {
            let names: Vec<&str> = s
                .locations
                .iter()
                .rev()
                .flat_map(|&l| p.locations[l as usize].lines.iter().rev())
                .map(|ln| p.string(p.functions[ln.function as usize].name))
                .collect();
            add(&mut out, &names, &s.values);
        }
        out
    }

    fn repair_as(p: &mut ProfileInput, params: Params) {
        let mut stacks = PyroscopeStacks::new(p, &strings(p));
        stacks.repair_with(params);
        stacks.apply(p);
    }

    /// 55 groups of 24-frame stacks, each lacking 8 frames of the one before it, down to a
    /// 480-frame stack, then `n` stacks of the last group (each would gain 440 frames).
    fn chained_stacks(n: usize) -> Vec<Vec<u64>> {
        let root: Vec<u64> = (1..=480).collect();
        let mut stacks = vec![root.clone()];
        let mut prev = root[456..].to_vec();
        let mut id = 1000;
        for _ in 0..55 {
            let s: Vec<u64> = (0..8).map(|k| id + k).chain(prev[..16].iter().copied()).collect();
            id += 8;
            stacks.push(s.clone());
            prev = s;
        }
        stacks.push((0..24).map(|k| 0xff + (k << 12)).collect()); // sorts last (the quirk)
        stacks.extend(std::iter::repeat_n(prev, n));
        stacks
    }

    #[test]
    fn the_repair_stops_before_it_grows_a_profile_beyond_its_budget() {
        for (n, repaired) in [(10, true), (20_000, false)] {
            let mut stacks = chained_stacks(n);
            let frames = stacks.iter().map(Vec::len).sum();
            repair_stacks(&mut stacks, |id| id, PYROSCOPE, frames);
            let last = stacks.last().unwrap().len();
            assert_eq!(last > 24, repaired, "{n} stacks: the last has {last} frames");
            if repaired {
                assert_eq!(last, 24 + 440);
            }
        }
    }

    #[test]
    fn tokens_whose_keys_collide_are_keyed_by_their_frames() {
        let stacks = chained_stacks(10);
        let keys = suffix_keys(&stacks, |id| id);
        let (sorted, long) = sort_by_suffix(&keys);
        let groups = SuffixGroups::new(&sorted[long..], &keys);
        let suffixes = group_suffixes(&stacks, &groups);
        let exact = links_by(&suffixes, &groups, PYROSCOPE, <[u64]>::to_vec).unwrap();
        assert!(links_by(&suffixes, &groups, PYROSCOPE, |_| 0u8).is_none());
        let pairs = |l: &[Link]| l.iter().map(|l| (l.group, l.offset)).collect::<Vec<_>>();
        assert_eq!(pairs(&group_links(&stacks, &groups, PYROSCOPE)), pairs(&exact));
        assert!(exact.iter().filter(|l| l.group != 0).count() > 50);
    }

    #[test]
    fn cpu_fixture_matches_pyroscope() {
        let name = "cpu_go_truncated_1.pb.gz";
        let mut p = read(name);
        let before = collapse_pprof(&p);
        repair_as(&mut p, FIXTURE_ERA);
        let want = collapse_pprof(&read(&format!("{name}.fixed")));
        assert!(before != want);
        assert!(collapse_pprof(&p) == want);
    }

    #[test]
    fn heap_fixture_matches_pyroscope() {
        let name = "heap_go_truncated_4.pb.gz";
        let raw = read(name);
        let mut p = raw.clone();
        repair_as(&mut p, FIXTURE_ERA);
        // The fixture was also written while Pyroscope's self-merge (after dropping type
        // parameters) counted the first of equal samples twice.
        let (_, new_id) = merged_symbols(&raw, &strings(&raw)).expect("type parameters");
        let mut seen = std::collections::HashSet::new();
        for (s, r) in p.sample.iter_mut().zip(&raw.sample) {
            let mut labels: Vec<(i64, i64)> = r.label.iter().map(|l| (l.key, l.str)).collect();
            labels.sort_unstable();
            let stack: Vec<u64> = r.location_id.iter().map(|id| new_id[id]).collect();
            if seen.insert((stack, labels)) {
                s.value.iter_mut().for_each(|v| *v *= 2);
            }
        }
        let want = collapse_pprof(&read(&format!("{name}.fixed")));
        assert!(collapse_pprof(&p) == want);
    }

    /// Today's behaviour through `normalize`: the truncated fixtures are repaired (fewer
    /// distinct root frames: cut stacks are grafted back under their real roots), and no
    /// value is lost or invented.
    #[test]
    fn normalize_repairs_go_profiles() {
        for name in ["cpu_go_truncated_1.pb.gz", "heap_go_truncated_4.pb.gz", "heap", "heap_delta"] {
            let raw = read(name);
            let before = collapse_pprof(&raw);
            let got = collapse(&normalized(raw));
            assert!(got != before, "{name}: nothing repaired");
            let total = |c: &Collapsed| c.values().map(|v| v[0]).sum::<i64>();
            assert_eq!(total(&got), total(&before), "{name}");
            let roots = |c: &Collapsed| {
                c.keys()
                    .map(|k| k.split(';').next().unwrap_or("").to_string())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
            };
            assert!(roots(&got) < roots(&before), "{name}: {} roots before, {} after", roots(&before), roots(&got));
        }
    }

    #[test]
    fn leaves_complete_go_profiles_alone() {
        for name in ["go.cpu.labels.pprof", "single_group_with_optional_span_id.pb.gz"] {
            let raw = read(name);
            let mut p = raw.clone();
            repair_pprof(&mut p, &strings(&raw));
            assert!(p == raw, "{name}");
            assert!(collapse(&normalized(raw.clone())) == collapse_pprof(&raw), "{name}");
        }
    }

    /// A Go CPU pprof whose samples are stacks of frames `f<n>` (leaf first), location and
    /// function `n` having id `n + 1`.
    fn synthetic(stacks: &[Vec<u32>], file: &str) -> ProfileInput {
        let frames = stacks.iter().flatten().max().map_or(0, |m| m + 1);
        let mut strings = vec![String::new(), "cpu".into(), "nanoseconds".into(), file.into()];
        strings.extend((0..frames).map(|n| format!("f{n}")));
        ProfileInput {
            sample_type: vec![pb::ValueType { r#type: 1, unit: 2 }],
            string_table: strings.into_iter().map(String::into_bytes).collect(),
            function: (0..frames)
                .map(|n| pb::Function {
                    id: u64::from(n) + 1,
                    name: i64::from(n) + 4,
                    filename: 3,
                    ..Default::default()
                })
                .collect(),
            location: (0..frames)
                .map(|n| pb::Location {
                    id: u64::from(n) + 1,
                    line: vec![pb::Line { function_id: u64::from(n) + 1, line: 1 }],
                    ..Default::default()
                })
                .collect(),
            sample: stacks
                .iter()
                .map(|s| pb::Sample {
                    location_id: s.iter().map(|&n| u64::from(n) + 1).collect(),
                    value: vec![1],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Frames `hi` down to `lo`: a stack, leaf first, whose root is `f<lo>`.
    fn frames(hi: u32, lo: u32) -> Vec<u32> {
        (lo..=hi).rev().collect()
    }

    fn names(p: &Profile, sample: usize) -> Vec<String> {
        p.samples[sample].locations.iter().map(|&l| p.string(p.functions[l as usize].name).to_string()).collect()
    }

    fn f(stack: &[u32]) -> Vec<String> {
        stack.iter().map(|n| format!("f{n}")).collect()
    }

    #[test]
    fn grafts_the_missing_root_part() {
        // One call path f0 (root) … f73, seen complete near the root (a) and cut by the
        // 64-frame limit: b lacks f0..f4, found 5 frames above a's root; c lacks f0..f9, and
        // its root-most 16 frames sit 5 frames above b's root (but 10 above a's, too far for
        // a token), so the chain c → b → a adds up to 10 frames.
        let stacks = vec![
            frames(39, 0),    // a
            frames(68, 5),    // b
            frames(73, 10),   // c
            frames(3, 0),     // short: never touched
            frames(140, 100), // unrelated: nothing to graft
        ];
        let want = [frames(39, 0), frames(68, 0), frames(73, 0), frames(3, 0), frames(140, 100)];
        let p = normalized(synthetic(&stacks, "main.go"));
        for (i, w) in want.iter().enumerate() {
            assert_eq!(names(&p, i), f(w), "sample {i}");
        }
        // The same on a normalised profile (here one not recognised as Go, so not repaired
        // by normalisation).
        let mut p = normalized(synthetic(&stacks, "main.c"));
        assert_eq!(names(&p, 1), f(&frames(68, 5)));
        repair_truncated_stacks(&mut p);
        for (i, w) in want.iter().enumerate() {
            assert_eq!(names(&p, i), f(w), "sample {i}");
        }
    }

    #[test]
    fn needs_deep_enough_cpu_stacks() {
        // 59 frames: not deep enough for a CPU profile to be suspected.
        let stacks = vec![frames(39, 0), frames(63, 5)];
        let p = normalized(synthetic(&stacks, "main.go"));
        assert_eq!(names(&p, 1), f(&frames(63, 5)));
    }

    #[test]
    fn last_group_in_sort_order_is_cut_short() {
        // Pyroscope takes the number of groups as the end of the last group (in sort order).
        // Here the last group is that of the two equal truncated stacks (their suffix sorts
        // after the complete stack's): only the first of them in sort order is repaired.
        let stacks = vec![frames(39, 0), frames(68, 5), frames(68, 5)];
        let p = normalized(synthetic(&stacks, "main.go"));
        assert_eq!(names(&p, 0), f(&frames(39, 0)));
        let repaired: Vec<bool> = (1..3).map(|i| names(&p, i) == f(&frames(68, 0))).collect();
        assert_eq!(repaired.iter().filter(|r| **r).count(), 1, "{repaired:?}");
    }

    #[test]
    fn suspicion_heuristics() {
        let go = |types: &[&str], depths: &[usize]| may_be_truncated(types.iter().copied(), depths.iter().copied());
        assert!(go(&["cpu"], &[3, 60]));
        assert!(!go(&["cpu"], &[3, 59]));
        assert!(go(&["samples", "cpu"], &[64, 200]));
        assert!(go(&["inuse_space"], &[28, 32]));
        assert!(!go(&["inuse_space"], &[27]));
        // Go 1.23+ heap stacks go up to 128 frames: nothing to repair.
        assert!(!go(&["alloc_objects", "alloc_space"], &[32, 33]));
        assert!(!go(&["inuse_objects", "cpu"], &[40, 70]));
        assert!(!go(&["contentions", "delay"], &[64]));
        assert!(!go(&[], &[64]));
    }

    /// The links as Pyroscope's repair finds them, written plainly: every token of every
    /// group big enough to lend one in one table, keyed by its frames.
    fn plain_links(stacks: &[Vec<u64>], groups: &SuffixGroups<'_>, params: Params) -> Vec<(u32, u32)> {
        let token = |g: usize, off: usize| {
            let s = &stacks[groups.first(g)];
            s[s.len() - off - TOKEN_LEN..s.len() - off].to_vec()
        };
        let mut owners: BTreeMap<Vec<u64>, (u32, u32)> = BTreeMap::new();
        for g in 0..groups.len() {
            if (groups.end_of(g) as isize - groups.starts[g] as isize) < params.min_group {
                continue;
            }
            for off in 1..=TOKENS {
                let owner = owners.entry(token(g, off)).or_insert((0, 0));
                if owner.0 == 0 || off as u32 > owner.1 {
                    *owner = (g as u32 + 1, off as u32);
                }
            }
        }
        (0..groups.len())
            .map(|g| match owners.get(&token(g, 0)) {
                Some(&(owner, off)) if owner as usize != g + 1 => (owner, off),
                _ => (0, 0),
            })
            .collect()
    }

    /// Stacks cut from a few shared frame sequences, at any offset, under leaf frames of
    /// their own (tokens recur across groups at every offset, as in a truncated profile);
    /// or strung from a few short runs of frames (tokens recur at one offset in groups that
    /// differ elsewhere: ties between owners).
    fn arb_windowed_stacks() -> impl proptest::strategy::Strategy<Value = Vec<Vec<u64>>> {
        use proptest::prelude::*;
        let leaf = || prop::collection::vec(10u64..14, 0..3);
        let bases = prop::collection::vec(prop::collection::vec(0u64..4, 100), 1..3);
        let cuts = prop::collection::vec((0usize..3, 0usize..77, 24usize..77, leaf()), 1..60);
        let windows = (bases, cuts).prop_map(|(bases, cuts)| {
            cuts.into_iter()
                .map(|(b, start, len, leaf)| {
                    let base = &bases[b % bases.len()];
                    let start = start.min(base.len() - 24);
                    let end = (start + len).min(base.len());
                    leaf.into_iter().chain(base[start..end].iter().copied()).collect()
                })
                .collect()
        });
        let runs = prop::collection::vec((leaf(), prop::collection::vec(0usize..3, 6..15)), 1..60).prop_map(|stacks| {
            stacks
                .into_iter()
                .map(|(leaf, runs)| {
                    leaf.into_iter()
                        .chain(runs.into_iter().flat_map(|r| (0..4).map(move |k| 20 + 4 * r as u64 + k)))
                        .collect()
                })
                .collect()
        });
        prop_oneof![windows, runs]
    }

    proptest::proptest! {
        #[test]
        fn slice_sets_number_runs_as_a_map_of_vectors_does(
            runs in proptest::collection::vec(proptest::collection::vec(0u64..3, 0..4), 0..40),
        ) {
            let mut set = SliceSet::with_capacity(0, 0);
            let mut plain: BTreeMap<Vec<u64>, usize> = BTreeMap::new();
            for run in &runs {
                let start = set.open();
                set.arena.extend_from_slice(run);
                let n = plain.len();
                proptest::prop_assert_eq!(set.close(start), *plain.entry(run.clone()).or_insert(n));
            }
            proptest::prop_assert_eq!(set.len(), plain.len());
            for (run, &i) in &plain {
                proptest::prop_assert_eq!(set.get(i), &run[..]);
            }
        }

        #[test]
        fn group_links_match_a_plain_table_of_every_token(
            stacks in arb_windowed_stacks(),
            min_group in 1isize..3,
        ) {
            let params = Params { min_group, ..PYROSCOPE };
            let keys = suffix_keys(&stacks, |id| id);
            let (sorted, long) = sort_by_suffix(&keys);
            let groups = SuffixGroups::new(&sorted[long..], &keys);
            let links: Vec<(u32, u32)> = group_links(&stacks, &groups, params).iter().map(|l| (l.group, l.offset)).collect();
            proptest::prop_assert_eq!(links, plain_links(&stacks, &groups, params));
        }

        #[test]
        fn type_parameter_lists_are_found_as_a_substring_search_finds_them(
            name in crate::distributor::pprof::tests::arb_go_name(),
        ) {
            // The search by `str::find` this replaced.
            let by_find = |s: &str| -> String {
                if !s.contains(GO_SHAPE) {
                    return s.to_string();
                }
                let b = s.as_bytes();
                let mut out = String::new();
                let mut i = 0;
                while i < s.len() {
                    let Some(start) = s[i..].find(GO_SHAPE).map(|k| i + k) else {
                        out.push_str(&s[i..]);
                        break;
                    };
                    out.push_str(&s[i..start]);
                    let mut depth = 0usize;
                    let mut end = None;
                    for (j, &c) in b.iter().enumerate().skip(start) {
                        if c == b'[' {
                            depth += 1;
                        } else if c == b']' {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(j + 1);
                                break;
                            }
                        }
                    }
                    match end {
                        Some(e) => i = e,
                        None => {
                            out.push_str(&s[i..]);
                            break;
                        }
                    }
                }
                out
            };
            proptest::prop_assert_eq!(pyroscope_drop_type_params(&name).into_owned(), by_find(&name));
        }
    }

    #[test]
    fn type_parameters_as_pyroscope_drops_them() {
        for (input, want) in [
            ("pkg.(*Distributor).Push", "pkg.(*Distributor).Push"),
            ("pkg.Func[go.shape.int]", "pkg.Func"),
            ("pkg.(*T[go.shape.struct { F []uint8 }]).Method", "pkg.(*T).Method"),
            ("pkg.Func[go.shape.int].Method[go.shape.string]", "pkg.Func.Method"),
            ("pkg.Func[int]", "pkg.Func[int]"),
            // Unbalanced: Pyroscope repeats what precedes the list.
            ("a.b[go.shape.int", "a.ba.b[go.shape.int"),
        ] {
            assert_eq!(pyroscope_drop_type_params(input), want);
        }
    }
}
