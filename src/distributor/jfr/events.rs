//! The events conversion reads, and the fields it takes from each (jfr-parser's names and
//! shapes). Every other event is skipped by its size.
use super::metadata::Types;
use super::plan::{Expect, Plan, Values};
use super::reader::Reader;
use super::JfrError;
use rustc_hash::FxHashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    ExecutionSample,
    WallClockSample,
    AllocInNewTlab,
    AllocOutsideTlab,
    AllocSample,
    MonitorEnter,
    ThreadPark,
    LiveObject,
    Malloc,
    ActiveSetting,
}

/// The index of each want in [`Values`]: the same for every event kind.
pub const STACK: usize = 0;
pub const STATE: usize = 1;
pub const CONTEXT: usize = 2;
pub const SPAN_ID: usize = 3;
pub const SPAN_NAME: usize = 4;
/// The event's value: samples, TLAB or allocation size, weight, duration or malloc size.
pub const VALUE: usize = 5;
/// `jdk.ActiveSetting`'s name and value (strings).
pub const NAME: usize = 6;
pub const SETTING: usize = 7;

const KINDS: &[(&str, EventKind, Option<&str>, bool)] = &[
    // (event, kind, value field, whether it carries a context and span)
    ("jdk.ExecutionSample", EventKind::ExecutionSample, None, true),
    ("profiler.WallClockSample", EventKind::WallClockSample, Some("samples"), true),
    ("jdk.ObjectAllocationInNewTLAB", EventKind::AllocInNewTlab, Some("tlabSize"), true),
    ("jdk.ObjectAllocationOutsideTLAB", EventKind::AllocOutsideTlab, Some("allocationSize"), true),
    ("jdk.ObjectAllocationSample", EventKind::AllocSample, Some("weight"), false),
    ("jdk.JavaMonitorEnter", EventKind::MonitorEnter, Some("duration"), true),
    ("jdk.ThreadPark", EventKind::ThreadPark, Some("duration"), false),
    ("profiler.LiveObject", EventKind::LiveObject, None, false),
    ("profiler.Malloc", EventKind::Malloc, Some("size"), false),
    ("jdk.ActiveSetting", EventKind::ActiveSetting, None, false),
];

/// The event types of one chunk that conversion reads, by type id.
pub struct EventPlans {
    plans: FxHashMap<u64, (EventKind, Plan)>,
}

impl EventPlans {
    pub fn new(types: &Types) -> Self {
        let mut plans = FxHashMap::default();
        for &(name, kind, value, correlated) in KINDS {
            let Some(class) = types.by_name(name) else { continue };
            let index = types.index_of(class.id).expect("a class found by name has an index");
            // Wants keep their fixed indices: an unused one gets a name no field has.
            let mut wants: Vec<(&str, Expect)> = vec![("", Expect::Int); 8];
            wants[STACK] = ("stackTrace", Expect::Ref("jdk.types.StackTrace"));
            if matches!(kind, EventKind::ExecutionSample | EventKind::WallClockSample) {
                wants[STATE] = ("state", Expect::Ref("jdk.types.ThreadState"));
            }
            if correlated {
                wants[CONTEXT] = ("contextId", Expect::Int);
                wants[SPAN_ID] = ("spanId", Expect::Int);
                wants[SPAN_NAME] = ("spanName", Expect::Int);
            }
            if let Some(v) = value {
                wants[VALUE] = (v, Expect::Int);
            }
            if kind == EventKind::ActiveSetting {
                wants[STACK] = ("", Expect::Int);
                wants[NAME] = ("name", Expect::Str);
                wants[SETTING] = ("value", Expect::Str);
            }
            plans.insert(class.id, (kind, Plan::new(types, index, &wants)));
        }
        EventPlans { plans }
    }

    /// Reads the next event of `r` (a chunk's events); `None` at the end. An event of a kind
    /// conversion reads comes back with its values; others come back as `Some(None)`.
    pub fn next<'a>(
        &self,
        types: &Types,
        r: &mut Reader<'a>,
        v: &mut Values<'a>,
    ) -> Result<Option<Option<EventKind>>, JfrError> {
        if r.is_empty() {
            return Ok(None);
        }
        let mut body = r.event("event")?;
        let event_type = body.varint("event type")?;
        if event_type <= 1 {
            // Metadata and checkpoints, read already.
            return Ok(Some(None));
        }
        let Some((kind, plan)) = self.plans.get(&event_type) else {
            return Ok(Some(None));
        };
        plan.read(types, &mut body, v, |_, _, _| Err(JfrError::new("an event field binds an array")))?;
        Ok(Some(Some(*kind)))
    }
}
