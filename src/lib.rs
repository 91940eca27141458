//! kiln: a thread-per-core continuous profiling database that speaks Grafana Pyroscope's APIs.
//!
//! One folder per component, named after its `-target` (`distributor`, `ingester`,
//! `querier`, `query_frontend`, `query_scheduler`, `store_gateway`): each is the component as the network sees it, its routes and
//! its client; what a component keeps on each core is in the `kiln-shards` crate, in the
//! folder of the same name. `api` is the edge (listener, router, RPC framing, operational
//! pages): it imports the components, and none imports it. `service` is the contract between
//! the two (request, answer, status, route tables). `target` maps `-target` to the
//! components it starts and starts them in order; `config` parses flags and the YAML file.
pub mod ad_hoc_profiles;
pub mod api;
pub mod budget;
pub mod cluster;
pub mod compactor;
pub mod config;
pub mod distributor;
pub mod ingester;
pub mod log;
pub mod process;
pub mod querier;
pub mod query_frontend;
pub mod query_scheduler;
pub mod self_profiling;
pub mod service;
pub mod store_gateway;
pub mod target;
pub mod tenant_settings;
pub mod timeparse;

pub use target::run;
