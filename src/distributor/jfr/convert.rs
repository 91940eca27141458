//! JFR events to kiln's normalised profiles, one per event kind, as Pyroscope converts them
//! (jfr-parser's `pprof` package; the table is shared/api.md §2.2).
//!
//! 1. Each chunk's events are read in order. `jdk.ActiveSetting` named `event` sets the
//!    recording's event setting (`cpu`, `wall`, ...), which decides whether an execution
//!    sample is also a wall sample, and becomes the `jfr_event` label.
//! 2. A sample event adds its values to the sample of its kind with the same stack trace,
//!    context, span id and span name in this chunk, or makes one: its stack resolved frame by
//!    frame (method → `<class>.<method>`, a frame whose method or class is missing is left
//!    out, as jfr-parser does), its labels from the context's labels in the
//!    `LabelsSnapshot` plus `span_name`, its span id from the event (or the context's
//!    `profile_id` label).
//! 3. CPU and wall values are multiplied by the period (1e9 / sample rate). Like jfr-parser,
//!    the first value of every sample is "the last wall-clock sample count" (1 until a
//!    `profiler.WallClockSample` sets it), a quirk its goldens depend on.
//!
//! Memory: everything built comes from the input's pools and events; what it costs is
//! counted as it is built and bounded by `Options::max_bytes` (a long class name shared by
//! many methods, or one deep stack shared by many contexts, would otherwise multiply).
use super::events::{self, EventKind};
use super::labels::LabelsSnapshot;
use super::plan::Values;
use super::pool::Pools;
use super::symbols::stable_name;
use super::JfrError;
use crate::distributor::pprof::{Decoded, SeriesGroups, MAX_SAMPLE_LABELS, MAX_STACK_DEPTH, NON_SERIES_SAMPLE_LABELS};
use kiln_shards::model::profile::{Function, Line, Location, Mapping, Profile, Sample, ValueType};
use rustc_hash::FxHashMap;

/// How conversion runs: the request's time range and sample rate, and its bounds.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `time_nanos` of every profile (the request's `from`).
    pub time_nanos: i64,
    /// `duration_nanos` of every profile (`until - from`).
    pub duration_nanos: i64,
    /// Samples per second; 0 makes CPU and wall values 0.
    pub sample_rate: i64,
    /// What the profiles may cost built, in bytes (0: no bound).
    pub max_bytes: usize,
    /// Samples per profile (0: no limit).
    pub max_samples: usize,
}

/// One converted profile: its `__name__` and the profile with its label groups.
pub struct JfrProfile {
    pub name: &'static str,
    pub decoded: Decoded,
}

pub struct Converted {
    pub profiles: Vec<JfrProfile>,
    /// The recording's `event` setting ("" if none).
    pub event: String,
}

/// The profile kinds, in the order their profiles are returned.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Cpu = 0,
    Wall,
    InNewTlab,
    OutsideTlab,
    Lock,
    ThreadPark,
    LiveObject,
    AllocSample,
    Malloc,
}
const KINDS: usize = 9;

struct KindInfo {
    name: &'static str,
    sample_types: &'static [(&'static str, &'static str)],
    period_type: Option<(&'static str, &'static str)>,
}

const INFO: [KindInfo; KINDS] = [
    KindInfo {
        name: "process_cpu",
        sample_types: &[("cpu", "nanoseconds")],
        period_type: Some(("cpu", "nanoseconds")),
    },
    KindInfo { name: "wall", sample_types: &[("wall", "nanoseconds")], period_type: Some(("wall", "nanoseconds")) },
    KindInfo {
        name: "memory",
        sample_types: &[("alloc_in_new_tlab_objects", "count"), ("alloc_in_new_tlab_bytes", "bytes")],
        period_type: Some(("space", "bytes")),
    },
    KindInfo {
        name: "memory",
        sample_types: &[("alloc_outside_tlab_objects", "count"), ("alloc_outside_tlab_bytes", "bytes")],
        period_type: Some(("space", "bytes")),
    },
    KindInfo {
        name: "mutex",
        sample_types: &[("contentions", "count"), ("delay", "nanoseconds")],
        period_type: Some(("mutex", "count")),
    },
    KindInfo {
        name: "block",
        sample_types: &[("contentions", "count"), ("delay", "nanoseconds")],
        period_type: Some(("block", "count")),
    },
    KindInfo { name: "memory", sample_types: &[("live", "count")], period_type: Some(("objects", "count")) },
    KindInfo {
        name: "memory",
        sample_types: &[("alloc_sample_objects", "count"), ("alloc_sample_bytes", "bytes")],
        period_type: Some(("space", "bytes")),
    },
    KindInfo {
        name: "memory",
        sample_types: &[("malloc_objects", "count"), ("malloc_bytes", "bytes")],
        period_type: None,
    },
];

/// What an event ties its sample to besides its stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct Correlation {
    context: u64,
    span_id: u64,
    span_name: u64,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SampleKey {
    chunk: u32,
    stack: u64,
    correlation: Correlation,
}

/// About what one built entry (a function, a location, a sample, a string) costs besides
/// its variable part: its struct and its hash index entries.
const ENTRY_COST: usize = 96;

/// The profile of one kind as it is built.
struct Builder {
    profile: Profile,
    strings: FxHashMap<String, u32>,
    /// Name string → function.
    functions: FxHashMap<u32, u32>,
    /// (function, line) → location.
    locations: FxHashMap<(u32, u32), u32>,
    samples: FxHashMap<SampleKey, u32>,
    /// Each sample's label set, an index into `label_sets`.
    sample_labels: Vec<u32>,
    label_sets: Vec<Vec<(u32, u32)>>,
    /// (context, span name) → (label set, span id of the context's `profile_id`).
    label_index: FxHashMap<(u64, u64), (u32, u64)>,
    /// This chunk's frame ids ([`ChunkFrames`]) → location; `u32::MAX`: not made yet.
    frame_locations: Vec<u32>,
}

impl Builder {
    fn new(kind: Kind, o: &Options) -> Builder {
        let info = &INFO[kind as usize];
        let mut b = Builder {
            profile: Profile {
                strings: vec![String::new()],
                time_nanos: o.time_nanos,
                duration_nanos: o.duration_nanos,
                mappings: vec![Mapping { has_functions: true, ..Default::default() }],
                ..Default::default()
            },
            strings: FxHashMap::default(),
            functions: FxHashMap::default(),
            locations: FxHashMap::default(),
            samples: FxHashMap::default(),
            sample_labels: Vec::new(),
            label_sets: Vec::new(),
            label_index: FxHashMap::default(),
            frame_locations: Vec::new(),
        };
        b.strings.insert(String::new(), 0);
        for (t, u) in info.sample_types {
            let vt = ValueType { r#type: b.string(t), unit: b.string(u) };
            b.profile.sample_types.push(vt);
        }
        if let Some((t, u)) = info.period_type {
            b.profile.period_type = Some(ValueType { r#type: b.string(t), unit: b.string(u) });
        }
        b
    }

    fn string(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.strings.len() as u32;
        self.profile.strings.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn start_chunk(&mut self) {
        self.frame_locations.clear();
    }

    /// The location of this chunk's frame `frame`, made if new.
    fn location(&mut self, frames: &ChunkFrames, frame: u32, cost: &mut Cost) -> Result<u32, JfrError> {
        if let Some(&l) = self.frame_locations.get(frame as usize).filter(|l| **l != u32::MAX) {
            return Ok(l);
        }
        let (name, line) = frames.frame(frame);
        let before = self.profile.strings.len();
        let s = self.string(name);
        if self.profile.strings.len() > before {
            cost.add(ENTRY_COST + 2 * name.len())?;
        }
        let functions = &mut self.profile.functions;
        let f = *self.functions.entry(s).or_insert_with(|| {
            functions.push(Function { name: s, system_name: 0, filename: 0, start_line: 0 });
            functions.len() as u32 - 1
        });
        let locations = &mut self.profile.locations;
        let l = *self.locations.entry((f, line)).or_insert_with(|| {
            let lines = vec![Line { function: f, line: i64::from(line) }];
            locations.push(Location { mapping: 1, address: 0, lines });
            locations.len() as u32 - 1
        });
        cost.add(ENTRY_COST)?;
        if self.frame_locations.len() <= frame as usize {
            self.frame_locations.resize(frame as usize + 1, u32::MAX);
        }
        self.frame_locations[frame as usize] = l;
        Ok(l)
    }

    /// The label set of (context, span name), and the span id the context gives.
    fn labels(&mut self, snapshot: &LabelsSnapshot, c: Correlation, cost: &mut Cost) -> Result<(u32, u64), JfrError> {
        if let Some(&r) = self.label_index.get(&(c.context, c.span_name)) {
            return Ok(r);
        }
        let mut set = Vec::new();
        let mut span = 0;
        if let Some(ctx) = i64::try_from(c.context).ok().and_then(|id| snapshot.contexts.get(&id)) {
            if ctx.labels.len() + 1 > MAX_SAMPLE_LABELS {
                return Err(JfrError::new(format!(
                    "context {} has {} labels, which is more than the limit of {MAX_SAMPLE_LABELS}",
                    c.context,
                    ctx.labels.len()
                )));
            }
            for (&k, &v) in &ctx.labels {
                let (k, v) = (snapshot.string(k), snapshot.string(v));
                if k == "profile_id" {
                    // The hex of the span id, as a pprof's `profile_id` label is read
                    // (`model::profile::parse_span_id`: the number byte-swapped). The Java
                    // agent leaves out leading zeros, so shorter hex is taken too.
                    let n = (1..=16).contains(&v.len()).then(|| u64::from_str_radix(v, 16).ok()).flatten();
                    span = n.map_or(0, u64::swap_bytes);
                }
                if v.is_empty() || NON_SERIES_SAMPLE_LABELS.contains(&k) {
                    continue;
                }
                cost.add(ENTRY_COST + k.len() + v.len())?;
                set.push((self.string(k), self.string(v)));
            }
        }
        let span_name = i64::try_from(c.span_name).map_or("", |id| snapshot.string(id));
        if c.span_name != 0 && !span_name.is_empty() {
            cost.add(ENTRY_COST + span_name.len())?;
            set.push((self.string("span_name"), self.string(span_name)));
        }
        set.sort_unstable();
        set.dedup_by_key(|(k, _)| *k);
        let r = (self.label_sets.len() as u32, span);
        self.label_sets.push(set);
        self.label_index.insert((c.context, c.span_name), r);
        Ok(r)
    }

    /// The profile with its all-zero samples dropped, grouped by label set.
    fn finish(self, max_samples: usize) -> Result<Decoded, JfrError> {
        let mut profile = self.profile;
        let mut groups = SeriesGroups::default();
        let mut kept = Vec::with_capacity(profile.samples.len());
        for (s, set) in std::mem::take(&mut profile.samples).into_iter().zip(self.sample_labels) {
            if s.values.iter().all(|v| *v == 0) {
                continue;
            }
            groups.add(&self.label_sets[set as usize], &profile.strings, kept.len() as u32);
            kept.push(s);
        }
        if max_samples > 0 && kept.len() > max_samples {
            return Err(JfrError::new(format!(
                "profile has {} samples, which is more than the limit of {max_samples} (-validation.max-profile-stacktrace-samples)",
                kept.len()
            )));
        }
        profile.samples = kept;
        Ok(Decoded { profile, groups: groups.into_groups() })
    }
}

/// What the built profiles cost so far, against the bound.
struct Cost {
    used: usize,
    max: usize,
}

impl Cost {
    fn add(&mut self, n: usize) -> Result<(), JfrError> {
        self.used = self.used.saturating_add(n);
        if self.max > 0 && self.used > self.max {
            return Err(JfrError::new(format!(
                "the converted profiles would take more than {} bytes of memory: too many distinct frames, stacks or contexts for the recording's size",
                self.max
            )));
        }
        Ok(())
    }
}

/// This chunk's frames, shared by every profile built from it: each (method, line) a frame
/// id once its method and class resolve, each stack trace its frame ids (leaf first, the
/// root-most [`MAX_STACK_DEPTH`] of them), each method its name, all made once per chunk.
#[derive(Default)]
struct ChunkFrames {
    /// Method id → index in `names` (`None`: method or class missing).
    methods: FxHashMap<u64, Option<u32>>,
    names: Vec<String>,
    /// (method, line) → frame id (`None`: the method does not resolve).
    index: FxHashMap<(u64, u32), Option<u32>>,
    /// Frame id → (name in `names`, line).
    frames: Vec<(u32, u32)>,
    /// Stack trace id → its frame ids in `stack_frames` (start, length).
    stacks: FxHashMap<u64, (u32, u32)>,
    stack_frames: Vec<u32>,
}

impl ChunkFrames {
    fn clear(&mut self) {
        self.methods.clear();
        self.frames.clear();
        self.index.clear();
        self.frames.clear();
        self.stacks.clear();
        self.stack_frames.clear();
    }

    fn frame(&self, id: u32) -> (&str, u32) {
        let (name, line) = self.frames[id as usize];
        (&self.names[name as usize], line)
    }

    /// The frames of stack trace `stack` in `stack_frames` (start, length); `None` if the
    /// chunk has no such stack trace.
    fn stack(&mut self, pools: &Pools<'_>, stack: u64, cost: &mut Cost) -> Result<Option<(u32, u32)>, JfrError> {
        let (start, len) = match self.stacks.get(&stack) {
            Some(&r) => r,
            None => {
                let Some(frames) = pools.stack(stack) else { return Ok(None) };
                let start = self.stack_frames.len();
                for f in frames {
                    if let Some(id) = self.frame_id(pools, f.method, f.line, cost)? {
                        self.stack_frames.push(id);
                    }
                }
                let kept = (self.stack_frames.len() - start).saturating_sub(MAX_STACK_DEPTH);
                self.stack_frames.drain(start..start + kept);
                cost.add(4 * (self.stack_frames.len() - start))?;
                let r = (start as u32, (self.stack_frames.len() - start) as u32);
                self.stacks.insert(stack, r);
                r
            }
        };
        Ok(Some((start, len)))
    }

    fn frame_id(
        &mut self,
        pools: &Pools<'_>,
        method: u64,
        line: u32,
        cost: &mut Cost,
    ) -> Result<Option<u32>, JfrError> {
        if let Some(&id) = self.index.get(&(method, line)) {
            return Ok(id);
        }
        let id = self.name(pools, method, cost)?.map(|name| {
            self.frames.push((name, line));
            self.frames.len() as u32 - 1
        });
        self.index.insert((method, line), id);
        Ok(id)
    }

    /// The index in `names` of method `method`'s frame name, made once.
    fn name(&mut self, pools: &Pools<'_>, method: u64, cost: &mut Cost) -> Result<Option<u32>, JfrError> {
        if let Some(&i) = self.methods.get(&method) {
            return Ok(i);
        }
        let name = pools.methods.get(&method).and_then(|&(class, name)| {
            let class_name = pools.symbol(*pools.classes.get(&class)?);
            Some(format!("{}.{}", stable_name(class_name), stable_name(pools.symbol(name))))
        });
        let i = match name {
            Some(n) => {
                cost.add(ENTRY_COST + n.len())?;
                self.names.push(n);
                Some(self.names.len() as u32 - 1)
            }
            None => None,
        };
        self.methods.insert(method, i);
        Ok(i)
    }
}

/// The state of one conversion across chunks.
pub struct Converter<'s> {
    opts: Options,
    snapshot: &'s LabelsSnapshot,
    period: i64,
    builders: [Option<Builder>; KINDS],
    event: String,
    /// jfr-parser's `values[0]`: 1, or the last wall-clock sample's count.
    count: i64,
    chunk: u32,
    frames: ChunkFrames,
    cost: Cost,
}

impl<'s> Converter<'s> {
    pub fn new(snapshot: &'s LabelsSnapshot, opts: Options) -> Self {
        let period = if opts.sample_rate == 0 { 0 } else { 1_000_000_000 / opts.sample_rate };
        Converter {
            opts,
            snapshot,
            period,
            builders: Default::default(),
            event: String::new(),
            count: 1,
            chunk: 0,
            frames: ChunkFrames::default(),
            cost: Cost { used: 0, max: opts.max_bytes },
        }
    }

    /// Called before each chunk's events: ids are the chunk's own.
    pub fn start_chunk(&mut self) {
        self.chunk = self.chunk.wrapping_add(1);
        self.frames.clear();
        for b in self.builders.iter_mut().flatten() {
            b.start_chunk();
        }
    }

    /// Converts one event of `kind` with values `v`, read with the chunk's `pools`.
    pub fn event(&mut self, kind: EventKind, v: &Values<'_>, pools: &Pools<'_>) -> Result<(), JfrError> {
        let stack = v.ints[events::STACK];
        let correlation = Correlation {
            context: v.ints[events::CONTEXT],
            span_id: v.ints[events::SPAN_ID],
            span_name: v.ints[events::SPAN_NAME],
        };
        let state = || pools.thread_states.get(&v.ints[events::STATE]).map(|s| pools.text(s));
        let value = v.ints[events::VALUE] as i64;
        let count = self.count;
        let wall = self.event == "wall";
        match kind {
            EventKind::ExecutionSample => {
                if state().is_some_and(|s| s != "STATE_SLEEPING") {
                    self.add(Kind::Cpu, correlation, stack, &[count], pools)?;
                }
                if wall {
                    self.add(Kind::Wall, correlation, stack, &[count], pools)?;
                }
            }
            EventKind::WallClockSample => {
                // jfr-parser keeps the count as a 32-bit unsigned int.
                self.count = i64::from(value as u32);
                if wall && state() == Some("STATE_RUNNABLE") {
                    self.add(Kind::Cpu, correlation, stack, &[self.count], pools)?;
                }
                self.add(Kind::Wall, correlation, stack, &[self.count], pools)?;
            }
            EventKind::AllocInNewTlab => self.add(Kind::InNewTlab, correlation, stack, &[count, value], pools)?,
            EventKind::AllocOutsideTlab => self.add(Kind::OutsideTlab, correlation, stack, &[count, value], pools)?,
            EventKind::AllocSample => {
                self.add(Kind::AllocSample, Correlation::default(), stack, &[count, value], pools)?
            }
            EventKind::MonitorEnter => self.add(Kind::Lock, correlation, stack, &[count, value], pools)?,
            EventKind::ThreadPark => {
                self.add(Kind::ThreadPark, Correlation::default(), stack, &[count, value], pools)?
            }
            EventKind::LiveObject => self.add(Kind::LiveObject, Correlation::default(), stack, &[count], pools)?,
            EventKind::Malloc => self.add(Kind::Malloc, Correlation::default(), stack, &[count, value], pools)?,
            EventKind::ActiveSetting => {
                let text = |i: usize| v.strs[i].as_ref().map_or("", |s| pools.text(s));
                if text(events::NAME) == "event" {
                    self.event = text(events::SETTING).to_string();
                }
            }
        }
        Ok(())
    }

    fn add(
        &mut self,
        kind: Kind,
        c: Correlation,
        stack: u64,
        values: &[i64],
        pools: &Pools<'_>,
    ) -> Result<(), JfrError> {
        let mul = if matches!(kind, Kind::Cpu | Kind::Wall) { self.period } else { 1 };
        let opts = &self.opts;
        let b = self.builders[kind as usize].get_or_insert_with(|| Builder::new(kind, opts));
        let key = SampleKey { chunk: self.chunk, stack, correlation: c };
        if let Some(&i) = b.samples.get(&key) {
            let s = &mut b.profile.samples[i as usize];
            for (dst, v) in s.values.iter_mut().zip(values) {
                *dst = dst.wrapping_add(v.wrapping_mul(mul));
            }
            return Ok(());
        }
        let Some((start, len)) = self.frames.stack(pools, stack, &mut self.cost)? else {
            return Ok(());
        };
        let frames = &self.frames.stack_frames[start as usize..(start + len) as usize];
        let mut locations = Vec::with_capacity(frames.len());
        for &f in frames {
            locations.push(b.location(&self.frames, f, &mut self.cost)?);
        }
        let (set, context_span) = b.labels(self.snapshot, c, &mut self.cost)?;
        self.cost.add(ENTRY_COST + 4 * locations.len() + 8 * values.len())?;
        // jfr-parser writes an event's span id as the label `profile_id` = `%016x` of it, which
        // Pyroscope reads as 8 bytes little-endian (`parse_span_id`): the id byte-swapped.
        let span_id = if c.span_id != 0 { c.span_id.swap_bytes() } else { context_span };
        let values = values.iter().map(|v| v.wrapping_mul(mul)).collect();
        b.samples.insert(key, b.profile.samples.len() as u32);
        b.profile.samples.push(Sample { locations, values, span_id });
        b.sample_labels.push(set);
        Ok(())
    }

    /// The profiles built, in kind order, those without a sample left out.
    pub fn finish(self) -> Result<Converted, JfrError> {
        let mut profiles = Vec::new();
        for (i, b) in self.builders.into_iter().enumerate() {
            let Some(b) = b else { continue };
            let decoded = b.finish(self.opts.max_samples)?;
            if !decoded.profile.samples.is_empty() {
                profiles.push(JfrProfile { name: INFO[i].name, decoded });
            }
        }
        Ok(Converted { profiles, event: self.event })
    }
}
