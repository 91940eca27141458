//! A push's quorum accounting. A push carries many series, each with its own replica set; the
//! distributor sends each instance one request with all of its series, and records one answer
//! per instance. The push succeeds once every series has `quorum` acks and fails as soon as
//! some series can no longer reach its quorum, without waiting for the slower answers.
use super::ReplicaSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone)]
pub struct QuorumTracker {
    /// Per series: acks and failures so far, how many replicas it has and how many acks it
    /// needs.
    series: Vec<SeriesCount>,
    /// Per distinct instance, sorted by instance: the series it holds a replica of, and
    /// whether its answer has been recorded (a second answer is ignored).
    instances: Vec<(u32, Vec<usize>, bool)>,
    /// Instances that answered with a failure, in the order recorded.
    failed: Vec<u32>,
    /// Series still short of their quorum: the push has succeeded when it reaches 0.
    short: usize,
    outcome: Outcome,
}

#[derive(Debug, Clone, Copy)]
struct SeriesCount {
    acks: usize,
    fails: usize,
    replicas: usize,
    quorum: usize,
}

impl QuorumTracker {
    pub fn new(sets: &[ReplicaSet]) -> QuorumTracker {
        let mut pairs: Vec<(u32, usize)> = Vec::new();
        let mut series = Vec::with_capacity(sets.len());
        for (s, set) in sets.iter().enumerate() {
            series.push(SeriesCount { acks: 0, fails: 0, replicas: set.members.len(), quorum: set.quorum });
            pairs.extend(set.members.iter().map(|m| (m.instance, s)));
        }
        pairs.sort_unstable();
        let mut instances: Vec<(u32, Vec<usize>, bool)> = Vec::new();
        for (i, s) in pairs {
            match instances.last_mut() {
                Some((last, list, _)) if *last == i => list.push(s),
                _ => instances.push((i, vec![s], false)),
            }
        }
        let short = series.iter().filter(|c| c.quorum > 0).count();
        // A set that cannot reach its quorum even with every replica's ack fails at once.
        let outcome = if series.iter().any(|c| c.replicas < c.quorum) {
            Outcome::Failed
        } else if short == 0 {
            Outcome::Succeeded
        } else {
            Outcome::Pending
        };
        QuorumTracker { series, instances, failed: Vec::new(), short, outcome }
    }

    /// The distinct instances to send to, ascending.
    pub fn instances(&self) -> impl Iterator<Item = u32> + '_ {
        self.instances.iter().map(|(i, _, _)| *i)
    }

    /// The indexes (into the sets given to `new`) of the series `instance` holds a replica of.
    pub fn series_of(&self, instance: u32) -> &[usize] {
        match self.instances.binary_search_by_key(&instance, |(i, _, _)| *i) {
            Ok(k) => &self.instances[k].1,
            Err(_) => &[],
        }
    }

    /// Records `instance`'s answer for all its series. Once the outcome is final it stays; an
    /// instance not in any set, or answering twice, changes nothing.
    pub fn record(&mut self, instance: u32, ok: bool) -> Outcome {
        let Ok(k) = self.instances.binary_search_by_key(&instance, |(i, _, _)| *i) else {
            return self.outcome;
        };
        let (_, list, done) = &mut self.instances[k];
        if *done {
            return self.outcome;
        }
        *done = true;
        if !ok {
            self.failed.push(instance);
        }
        for &s in list.iter() {
            let c = &mut self.series[s];
            if ok {
                c.acks += 1;
                if c.acks == c.quorum {
                    self.short -= 1;
                }
            } else {
                c.fails += 1;
                // Invariant: acks + fails <= replicas, so this does not underflow.
                if c.replicas - c.fails < c.quorum && self.outcome == Outcome::Pending {
                    self.outcome = Outcome::Failed;
                }
            }
        }
        if self.outcome == Outcome::Pending && self.short == 0 {
            self.outcome = Outcome::Succeeded;
        }
        self.outcome
    }

    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The instances that answered with a failure, in the order recorded (for the error).
    pub fn failed(&self) -> &[u32] {
        &self.failed
    }
}
