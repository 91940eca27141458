//! The `labels` part of a JFR upload: Pyroscope's Java agent's `LabelsSnapshot`, the labels
//! of each context id its events carry (`contextId`), as string ids into its own table.
//!
//! `LabelsSnapshot { map<int64, Context> contexts = 1; map<int64, string> strings = 2; }`,
//! `Context { map<int64, int64> labels = 1; }`.
use std::collections::HashMap;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Context {
    #[prost(map = "int64, int64", tag = "1")]
    pub labels: HashMap<i64, i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelsSnapshot {
    #[prost(map = "int64, message", tag = "1")]
    pub contexts: HashMap<i64, Context>,
    #[prost(map = "int64, string", tag = "2")]
    pub strings: HashMap<i64, String>,
}

impl LabelsSnapshot {
    /// The text of string `id` ("" if the snapshot lacks it, as Pyroscope reads it).
    pub fn string(&self, id: i64) -> &str {
        self.strings.get(&id).map_or("", String::as_str)
    }
}
