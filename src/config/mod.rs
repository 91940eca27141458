//! Flags and the YAML config file, with Pyroscope's names and defaults.
//!
//! Precedence: defaults, then `-config.file` YAML (Pyroscope's keys), then flags. Flags are
//! Go style: `-name=value`, `--name=value`, `-name value`, and a bare `-bool-flag` for true.
//! Where Pyroscope reads 0 as "no limit", so does kiln.
pub mod expand_env;
pub mod modes;
mod yaml;

pub use modes::{BackendKind, Component, LogFormat, LogLevel, Target, WalSyncPolicy};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    #[serde(with = "go_duration")]
    pub reject_older_than: Duration,
    #[serde(with = "go_duration")]
    pub reject_newer_than: Duration,
    pub max_profile_size_bytes: usize,
    pub max_profile_stacktrace_samples: usize,
    pub max_label_names_per_series: usize,
    pub max_label_name_length: usize,
    pub max_label_value_length: usize,
    pub ingestion_rate_mb: f64,
    pub ingestion_burst_size_mb: f64,
    pub ingestion_body_limit_mb: f64,
    #[serde(with = "go_duration")]
    pub max_query_lookback: Duration,
    #[serde(with = "go_duration")]
    pub max_query_length: Duration,
    pub max_flamegraph_nodes_default: i64,
    pub max_flamegraph_nodes_max: i64,
    /// Series per tenant in this process (Pyroscope: per ingester; 0 = no limit).
    pub max_local_series_per_tenant: usize,
    /// Series per tenant across the cluster (0 = no limit); on one node the same as local.
    pub max_global_series_per_tenant: usize,
    /// Series (or `groupBy` groups) one time-series answer may hold (0: no limit).
    pub max_query_series: usize,
    /// Points one time-series answer may hold, over all its series (0: no limit).
    pub max_query_points: usize,
    /// The query-frontend splits a query's range into parts of this length (0: no split).
    #[serde(with = "go_duration")]
    pub split_queries_by_interval: Duration,
    /// Parts of one query the query-frontend runs at once (0: all).
    pub max_query_parallelism: usize,
    /// Shuffle sharding (README, Shuffle sharding): the instances a tenant is given, drawn by
    /// `kiln_shards::ring::shuffle` (0: all of them). The ingesters its series are written to
    /// (`-distributor.ingestion-tenant-shard-size`; reads still ask every ingester).
    pub ingestion_tenant_shard_size: usize,
    /// The store-gateways that serve its blocks (`-store-gateway.tenant-shard-size`).
    pub store_gateway_tenant_shard_size: usize,
    /// The queriers that take its queries from the scheduler
    /// (`-query-frontend.max-queriers-per-tenant`).
    pub max_queriers_per_tenant: usize,
    /// The compactors that compact its blocks (`-compactor.compactor-tenant-shard-size`): the
    /// work of its tenant goes to owners within its shard of the compactor ring.
    pub compactor_tenant_shard_size: usize,
    /// Blocks whose newest profile is older than this are marked for deletion by the
    /// compactor (`-compactor.blocks-retention-period`; 0: kept forever).
    #[serde(with = "go_duration")]
    pub compactor_blocks_retention_period: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            reject_older_than: Duration::from_secs(3600),
            reject_newer_than: Duration::from_secs(600),
            max_profile_size_bytes: 4 * 1024 * 1024,
            max_profile_stacktrace_samples: 16000,
            max_label_names_per_series: 30,
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            ingestion_rate_mb: 4.0,
            ingestion_burst_size_mb: 2.0,
            ingestion_body_limit_mb: 256.0,
            max_query_lookback: Duration::from_secs(7 * 86400),
            max_query_length: Duration::from_secs(86400),
            max_flamegraph_nodes_default: 8192,
            max_flamegraph_nodes_max: 1_048_576,
            max_local_series_per_tenant: 0,
            max_global_series_per_tenant: 5000,
            max_query_series: 10_000,
            max_query_points: 2_000_000,
            split_queries_by_interval: Duration::ZERO,
            max_query_parallelism: 32,
            ingestion_tenant_shard_size: 0,
            store_gateway_tenant_shard_size: 0,
            max_queriers_per_tenant: 0,
            compactor_tenant_shard_size: 0,
            compactor_blocks_retention_period: Duration::ZERO,
        }
    }
}

impl Limits {
    /// `-distributor.ingestion-body-limit-mb` in bytes (0: no limit): a write request's body,
    /// and its uncompressed budget.
    pub fn body_limit_bytes(&self) -> usize {
        (self.ingestion_body_limit_mb * 1024.0 * 1024.0) as usize
    }
}

/// A credential: shown as `********` by `/config` (as Pyroscope shows its secrets) and in
/// `Debug`, so neither a page nor a log line leaks it. An empty one shows as empty.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn masked(&self) -> &'static str {
        if self.0.is_empty() {
            ""
        } else {
            "********"
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.masked())
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.masked())
    }
}

/// Object storage for blocks, with Pyroscope's `storage.*` names (YAML keys as `/config`
/// shows them).
#[derive(Debug, Clone, Serialize)]
pub struct Storage {
    pub backend: BackendKind,
    /// Every object under `<prefix>/`; letters and digits only, as in Pyroscope.
    pub prefix: String,
    pub filesystem: FilesystemStorage,
    pub s3: S3Storage,
    pub gcs: GcsStorage,
    pub azure: AzureStorage,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FilesystemStorage {
    /// Empty: `<storage_path>/blocks`.
    pub dir: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct S3Storage {
    /// A host (`minio:9000`) or a URL; empty: AWS for `region`.
    pub endpoint: String,
    pub bucket_name: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// http instead of https for an endpoint given without a scheme.
    pub insecure: bool,
    pub force_path_style: bool,
    /// auto, path-style or virtual-hosted-style (auto: path style except on AWS).
    pub bucket_lookup_type: String,
    /// Only v4 is supported.
    pub signature_version: String,
    /// Accepted for Pyroscope command lines: without keys, the AWS environment is used anyway.
    pub native_aws_auth_enabled: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcsStorage {
    pub bucket_name: String,
    /// A service account key file, or the key's JSON itself; secret either way.
    pub service_account: Secret,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AzureStorage {
    pub account_name: String,
    pub account_key: Secret,
    pub container_name: String,
    /// e.g. `blob.core.windows.net`, or a whole URL; empty: Azure's public cloud.
    pub endpoint_suffix: String,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            backend: BackendKind::Filesystem,
            prefix: String::new(),
            filesystem: Default::default(),
            s3: S3Storage { bucket_lookup_type: "auto".into(), signature_version: "v4".into(), ..Default::default() },
            gcs: Default::default(),
            azure: Default::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub config_file: String,
    pub http_listen_address: String,
    pub http_listen_port: u16,
    /// A second port serving the same APIs (gRPC clients that dial Pyroscope's 9095);
    /// 0 = none: the HTTP port serves gRPC (h2c) already.
    pub grpc_listen_port: u16,
    /// Time to read a request, head and body, from its first byte (for a new connection: from
    /// the accept); 0 = no limit.
    pub http_server_read_timeout: Duration,
    /// Time to hand a response over once it is ready, and the longest a connection's writes
    /// may make no progress; 0 = no limit.
    pub http_server_write_timeout: Duration,
    /// An HTTP/1.1 keep-alive connection, or an HTTP/2 one, with no request open for this
    /// long is closed; 0 = no limit.
    pub http_server_idle_timeout: Duration,
    /// Open client connections, over every core; past it a new one is closed at once; 0 = no
    /// limit. Unset: the open-file limit less a reserve (`effective_http_conn_limit`).
    pub http_conn_limit: Option<usize>,
    /// Request body bytes being read or handled at once, over every core; a body that does
    /// not fit is refused with 429. 0 = no limit. Unset: a quarter of the total head limit.
    pub max_inflight_body_bytes: Option<u64>,
    pub storage_path: String,
    /// Cores (executors) to run, each owning its shard of the series (`-shards`, the flag's
    /// name since the first version). 0 = one per available core.
    pub cores: usize,
    pub ring_tokens_per_core: u32,
    /// Empty: `<storage_path>/wal`.
    pub wal_dir: String,
    pub wal_segment_size_bytes: u64,
    /// `fsync` (durable before ack) or `write` (ack once in the page cache).
    pub wal_sync_policy: WalSyncPolicy,
    /// Each core's next WAL segment is written full of zeros ahead of need, so that a sync
    /// commits no metadata (`-ingester.wal-preallocate`).
    pub wal_preallocate: bool,
    /// Head bytes a core may hold before pushes are refused with 429; 0 = no limit. Unset:
    /// half of the machine's memory, split over the cores.
    pub max_head_bytes_per_core: Option<u64>,
    /// A head is cut into a block this long after its first profile.
    pub max_block_duration: Duration,
    /// A core's head is cut into blocks once it holds this many bytes. Unset: a quarter of
    /// the head limit.
    pub max_block_bytes: Option<u64>,
    /// Bytes of opened blocks (index, symbols, footers) a core keeps cached; 0 = no limit.
    /// Unset: an eighth of the head limit.
    pub block_cache_bytes_per_core: Option<u64>,
    /// Bytes of decoded row groups of blocks a core keeps cached; 0 = none. Unset: an eighth
    /// of the head limit.
    pub rows_cache_bytes_per_core: Option<u64>,
    pub storage: Storage,
    pub multitenancy_enabled: bool,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub limits: Limits,
    /// Per-tenant overrides of `limits`.
    pub overrides: std::collections::BTreeMap<String, Limits>,
    /// Gossip membership (`-memberlist.*`): off unless a flag of it is given.
    pub memberlist: Memberlist,
    /// This instance on the rings, and the rings' timing.
    pub ring: RingSettings,
    /// Ingesters each series is written to (`-distributor.replication-factor`).
    pub replication_factor: usize,
    /// How long a push waits for its replicas' quorum (`-distributor.push.timeout`).
    pub push_timeout: Duration,
    /// Profiles this large (inflated bytes) are decoded on a decode thread, not on the core
    /// that accepted them (`-distributor.decode-offload-bytes`); 0: every one on its core.
    pub decode_offload_bytes: usize,
    /// Stack frames a push's part may have before its owning core interns its stacks in
    /// steps, serving other requests between them (`-ingester.append-step-frames`); 0: never.
    pub append_step_frames: usize,
    /// Pyroscope's `-querier.query-store-after`: accepted for compatibility, no effect (each
    /// ingester answers for the blocks it cut as long as they exist; see README, Cluster mode).
    pub query_store_after: Duration,
    /// Store-gateways each block is served by (`-store-gateway.sharding-ring.replication-factor`).
    pub store_gateway_replication_factor: usize,
    /// How often a store-gateway re-reads the bucket indexes (`-store-gateway.sync-interval`).
    pub store_gateway_sync_interval: Duration,
    /// The query-frontend, the query-scheduler and the querier's workers.
    pub read_path: ReadPath,
    /// `-compactor.*`.
    pub compactor: CompactorSettings,
    /// `-self-profiling.*`: kiln's profiles of itself, pushed to itself.
    pub self_profiling: SelfProfiling,
}

/// `-self-profiling.*`: kiln samples its own CPU and pushes the profiles to itself (as
/// Pyroscope pushes its own with its Go SDK), or to `url`.
#[derive(Debug, Clone, Serialize)]
pub struct SelfProfiling {
    /// No timer, no signal handler, nothing pushed (Pyroscope's flag).
    pub disable_push: bool,
    /// The tenant the profiles are pushed as; empty: no `X-Scope-OrgID` (anonymous), as
    /// Pyroscope's. With `-auth.multitenancy-enabled`, the pushes are refused without one.
    pub tenant_id: String,
    /// How often the profile of the past interval is pushed (the Go SDK's upload rate).
    #[serde(with = "go_duration")]
    pub push_interval: Duration,
    /// Where to push (`http://host:port`); empty: this process's own HTTP port.
    pub url: String,
}

impl SelfProfiling {
    /// `-self-profiling.*`; `false`: not one of them.
    fn set_flag(&mut self, k: &str, v: &str) -> Result<bool, String> {
        let bad = |e: String| format!("invalid value {v:?} for flag -{k}: {e}");
        match k {
            "self-profiling.disable-push" => self.disable_push = parse_bool(v).map_err(bad)?,
            "self-profiling.tenant-id" => self.tenant_id = v.into(),
            "self-profiling.push-interval" => self.push_interval = parse_duration(v).map_err(bad)?,
            "self-profiling.url" => self.url = v.into(),
            // Pyroscope's Go runtime rates for its mutex and block profiles: kiln has
            // neither profile; accepted (as numbers) so Pyroscope's command lines start.
            "self-profiling.mutex-profile-fraction" | "self-profiling.block-profile-rate" => {
                v.parse::<i64>().map_err(|e| bad(format!("{e}")))?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn check(&self) -> Result<(), String> {
        if self.disable_push {
            return Ok(());
        }
        if self.push_interval.is_zero() {
            return Err("-self-profiling.push-interval=0: it must be positive".into());
        }
        if !self.url.is_empty() && !self.url.starts_with("http://") {
            return Err(format!(
                "-self-profiling.url={}: kiln pushes its own profiles over plain HTTP, give an http:// URL",
                self.url
            ));
        }
        Ok(())
    }
}

impl Default for SelfProfiling {
    fn default() -> Self {
        SelfProfiling {
            disable_push: false,
            tenant_id: String::new(),
            push_interval: Duration::from_secs(15),
            url: String::new(),
        }
    }
}

/// The compactor's flags (Pyroscope's names and defaults); per-tenant retention is a limit.
#[derive(Debug, Clone, Serialize)]
pub struct CompactorSettings {
    /// The ranges blocks are compacted into, ascending (`-compactor.block-ranges`).
    #[serde(serialize_with = "go_durations")]
    pub block_ranges: Vec<Duration>,
    /// How often the compactor plans and runs jobs (and once at start).
    #[serde(with = "go_duration")]
    pub compaction_interval: Duration,
    /// Level-1 blocks are compacted only once uploaded this long ago, so that every core's
    /// and every replica's block of a range is there first.
    #[serde(with = "go_duration")]
    pub first_level_compaction_wait_period: Duration,
    /// Jobs run at once.
    pub compaction_concurrency: usize,
    /// A block marked for deletion is deleted this long after its mark.
    #[serde(with = "go_duration")]
    pub deletion_delay: Duration,
    /// How often the cleaner applies retention, deletes marked blocks and partial blocks.
    #[serde(with = "go_duration")]
    pub cleanup_interval: Duration,
    /// A block folder not in the bucket index (an upload that never finished) is deleted
    /// once its newest file is this old.
    #[serde(with = "go_duration")]
    pub partial_block_deletion_delay: Duration,
    /// What one compaction job may hold in memory, by the planner's estimate
    /// (`compactor::plan::estimate`); a larger window merges in several jobs (0: no bound).
    pub max_memory_bytes: u64,
    /// Where a job writes its output's `profiles.parquet` before uploading it
    /// (`-compactor.data-dir`; empty: `<storage.path>/compactor`).
    pub data_dir: String,
}

impl Default for CompactorSettings {
    fn default() -> Self {
        CompactorSettings {
            block_ranges: [1, 2, 8].iter().map(|h| Duration::from_secs(h * 3600)).collect(),
            compaction_interval: Duration::from_secs(30 * 60),
            first_level_compaction_wait_period: Duration::from_secs(25 * 60),
            compaction_concurrency: 1,
            deletion_delay: Duration::from_secs(12 * 3600),
            cleanup_interval: Duration::from_secs(15 * 60),
            partial_block_deletion_delay: Duration::from_secs(24 * 3600),
            max_memory_bytes: 4 << 30,
            data_dir: String::new(),
        }
    }
}

fn go_durations<S: serde::Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.iter().map(|d| format_duration(*d)).collect::<Vec<_>>().join(","))
}

/// The read path at scale: `-query-frontend.*`, `-query-scheduler.*` and the querier's
/// workers.
#[derive(Debug, Clone, Serialize)]
pub struct ReadPath {
    /// Jobs one tenant may have queued at a scheduler; past it, 429.
    pub max_outstanding_requests_per_tenant: usize,
    /// Jobs a querier runs at once, over every scheduler.
    pub querier_max_concurrent: usize,
    /// Where a frontend enqueues (`host:port`); empty: the schedulers of the ring.
    pub frontend_scheduler_address: String,
    /// Where a querier pulls work from; empty: the schedulers of the ring.
    pub querier_scheduler_address: String,
    /// Whether the frontend keeps the results of past parts.
    pub cache_results: bool,
    /// The results cache's bound, in bytes.
    pub results_cache_max_bytes: usize,
    /// Parts ending later than this before now are not cached.
    #[serde(with = "go_duration")]
    pub max_cache_freshness: Duration,
}

impl Default for ReadPath {
    fn default() -> Self {
        ReadPath {
            max_outstanding_requests_per_tenant: 100,
            querier_max_concurrent: 4,
            frontend_scheduler_address: String::new(),
            querier_scheduler_address: String::new(),
            cache_results: true,
            results_cache_max_bytes: 256 << 20,
            max_cache_freshness: Duration::from_secs(600),
        }
    }
}

/// `-memberlist.*`: how this process finds and gossips with the others.
#[derive(Debug, Clone, Serialize)]
pub struct Memberlist {
    /// Whether any `-memberlist.*` flag (or YAML key) was given: cluster mode.
    #[serde(skip)]
    pub enabled: bool,
    pub bind_addr: String,
    pub bind_port: u16,
    /// `host:port`, `dns+host:port` or `dnssrv+_service._proto.name`, repeatable.
    pub join: Vec<String>,
    /// Empty: the HTTP listen address when it is not a wildcard, else the bind address
    /// when it is not, else 127.0.0.1.
    pub advertise_addr: String,
    /// 0: the bind port.
    pub advertise_port: u16,
    /// Members gossip only with members of the same label.
    pub cluster_label: String,
}

impl Default for Memberlist {
    fn default() -> Self {
        Memberlist {
            enabled: false,
            bind_addr: "0.0.0.0".into(),
            bind_port: 7946,
            join: Vec::new(),
            advertise_addr: String::new(),
            advertise_port: 0,
            cluster_label: String::new(),
        }
    }
}

/// This instance on the rings, and the rings' timing.
#[derive(Debug, Clone, Serialize)]
pub struct RingSettings {
    /// Empty: `<hostname>-<http port>` (unique per process on one machine).
    pub instance_id: String,
    pub availability_zone: String,
    /// How often this instance publishes its heartbeat.
    #[serde(with = "go_duration")]
    pub heartbeat_period: Duration,
    /// A member whose heartbeat is older than this is UNHEALTHY.
    #[serde(with = "go_duration")]
    pub heartbeat_timeout: Duration,
    /// An UNHEALTHY member is forgotten once its heartbeat is this old (Pyroscope's
    /// ingesters are never forgotten); 0: never.
    #[serde(with = "go_duration")]
    pub auto_forget_after: Duration,
}

impl Default for RingSettings {
    fn default() -> Self {
        RingSettings {
            instance_id: String::new(),
            availability_zone: String::new(),
            heartbeat_period: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(60),
            auto_forget_after: Duration::from_secs(600),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            target: Target::ALL,
            config_file: String::new(),
            http_listen_address: "0.0.0.0".into(),
            http_listen_port: 4040,
            grpc_listen_port: 0,
            http_server_read_timeout: Duration::from_secs(30),
            http_server_write_timeout: Duration::from_secs(30),
            http_server_idle_timeout: Duration::from_secs(120),
            http_conn_limit: None,
            max_inflight_body_bytes: None,
            storage_path: "./data".into(),
            cores: 0,
            ring_tokens_per_core: 128,
            wal_dir: String::new(),
            wal_segment_size_bytes: 128 * 1024 * 1024,
            wal_sync_policy: WalSyncPolicy::Fsync,
            wal_preallocate: true,
            max_head_bytes_per_core: None,
            max_block_duration: Duration::from_secs(3600),
            max_block_bytes: None,
            block_cache_bytes_per_core: None,
            rows_cache_bytes_per_core: None,
            storage: Storage::default(),
            multitenancy_enabled: false,
            log_level: LogLevel::Info,
            log_format: LogFormat::Logfmt,
            limits: Limits::default(),
            overrides: Default::default(),
            memberlist: Memberlist::default(),
            ring: RingSettings::default(),
            replication_factor: 3,
            push_timeout: Duration::from_secs(5),
            decode_offload_bytes: crate::distributor::offload::OFFLOAD_BYTES,
            append_step_frames: kiln_shards::ingester::STEP_FRAMES,
            query_store_after: Duration::from_secs(4 * 3600),
            read_path: ReadPath::default(),
            store_gateway_replication_factor: 1,
            store_gateway_sync_interval: Duration::from_secs(15 * 60),
            compactor: CompactorSettings::default(),
            self_profiling: SelfProfiling::default(),
        }
    }
}

/// Every tenant's limits: the defaults and the per-tenant overrides, shared read-only by the
/// components that enforce them.
#[derive(Debug, Clone, Default)]
pub struct TenantLimits {
    default: Limits,
    overrides: std::collections::BTreeMap<String, Limits>,
}

impl TenantLimits {
    pub fn for_tenant(&self, tenant: &str) -> &Limits {
        self.overrides.get(tenant).unwrap_or(&self.default)
    }

    /// The limits of tenants without overrides.
    pub fn default(&self) -> &Limits {
        &self.default
    }
}

impl Config {
    /// What a start should tell the operator about risky settings (logged as warnings by
    /// `main`): in a cluster, readers let go of a compacted block's inputs `retire_after`
    /// their mark, so a shorter deletion delay deletes files a reader may still read (its
    /// queries fail until it syncs).
    pub fn notices(&self) -> Vec<String> {
        let c = &self.compactor;
        let readers_let_go = retire_after(self.store_gateway_sync_interval) + kiln_shards::store_gateway::RETIRED_KEPT;
        if self.cluster_mode() && self.target.runs(Component::Compactor) && c.deletion_delay < readers_let_go {
            return vec![format!(
                "-compactor.deletion-delay={} is shorter than the {} after which readers drop a compacted block's inputs (three -store-gateway.sync-interval and 2s, then 300s for the queries that listed them): they may still read blocks it deletes, and those queries fail",
                format_duration(c.deletion_delay),
                format_duration(readers_let_go)
            )];
        }
        Vec::new()
    }

    /// The default limits and each tenant's overrides, each with what names it in a message
    /// ("" for the defaults, " (overrides of tenant …)").
    fn every_limits(&self) -> impl Iterator<Item = (String, &Limits)> {
        let tenants = self.overrides.iter().map(|(t, l)| (format!(" (overrides of tenant {t:?})"), l));
        std::iter::once((String::new(), &self.limits)).chain(tenants)
    }
}

impl Config {
    /// The tenants' limits, for the components that enforce them.
    pub fn tenant_limits(&self) -> TenantLimits {
        TenantLimits { default: self.limits.clone(), overrides: self.overrides.clone() }
    }

    pub fn wal_dir(&self) -> std::path::PathBuf {
        if self.wal_dir.is_empty() {
            std::path::Path::new(&self.storage_path).join("wal")
        } else {
            self.wal_dir.clone().into()
        }
    }

    /// Where the compactor writes its jobs' outputs before uploading them.
    pub fn compactor_dir(&self) -> std::path::PathBuf {
        if self.compactor.data_dir.is_empty() {
            std::path::Path::new(&self.storage_path).join("compactor")
        } else {
            self.compactor.data_dir.clone().into()
        }
    }

    /// The directory of the filesystem backend.
    pub fn blocks_dir(&self) -> std::path::PathBuf {
        if self.storage.filesystem.dir.is_empty() {
            std::path::Path::new(&self.storage_path).join("blocks")
        } else {
            self.storage.filesystem.dir.clone().into()
        }
    }

    /// The object storage backend the flags describe, or what is missing for it.
    pub fn store_backend(&self) -> Result<kiln_io::store::Backend, String> {
        use kiln_io::store::Backend;
        let st = &self.storage;
        let need = |v: &str, flag: &str| {
            if v.trim().is_empty() {
                Err(format!("-storage.backend={} needs -{flag}", st.backend))
            } else {
                Ok(())
            }
        };
        if !st.prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!(
                "-storage.prefix {:?}: only letters and digits are allowed, as in Pyroscope",
                st.prefix
            ));
        }
        match st.backend {
            BackendKind::Filesystem => Ok(Backend::Filesystem { dir: self.blocks_dir() }),
            BackendKind::S3 => {
                let s3 = &st.s3;
                need(&s3.bucket_name, "storage.s3.bucket-name")?;
                if s3.signature_version != "v4" {
                    return Err(format!(
                        "-storage.s3.signature-version={}: only v4 is supported",
                        s3.signature_version
                    ));
                }
                let path_style = match s3.bucket_lookup_type.as_str() {
                    "auto" | "virtual-hosted-style" => s3.force_path_style,
                    "path-style" => true,
                    other => {
                        return Err(format!(
                            "-storage.s3.bucket-lookup-type={other}: use auto, path-style or virtual-hosted-style"
                        ))
                    }
                };
                if s3.force_path_style && s3.bucket_lookup_type == "virtual-hosted-style" {
                    return Err("cannot use -storage.s3.force-path-style=true and \
                                -storage.s3.bucket-lookup-type=virtual-hosted-style at the same time"
                        .into());
                }
                if s3.access_key_id.is_empty() != s3.secret_access_key.expose().is_empty() {
                    return Err("-storage.s3.access-key-id and -storage.s3.secret-access-key go together: \
                                give both, or neither to use the environment's credentials"
                        .into());
                }
                Ok(Backend::S3 {
                    endpoint: s3.endpoint.clone(),
                    bucket: s3.bucket_name.clone(),
                    region: s3.region.clone(),
                    access_key_id: s3.access_key_id.clone(),
                    secret_access_key: s3.secret_access_key.expose().to_string(),
                    insecure: s3.insecure,
                    force_path_style: path_style,
                })
            }
            BackendKind::Gcs => {
                need(&st.gcs.bucket_name, "storage.gcs.bucket-name")?;
                Ok(Backend::Gcs {
                    bucket: st.gcs.bucket_name.clone(),
                    service_account_path: st.gcs.service_account.expose().to_string(),
                })
            }
            BackendKind::Azure => {
                let az = &st.azure;
                need(&az.account_name, "storage.azure.account-name")?;
                need(&az.container_name, "storage.azure.container-name")?;
                Ok(Backend::Azure {
                    account_name: az.account_name.clone(),
                    account_key: az.account_key.expose().to_string(),
                    container: az.container_name.clone(),
                    endpoint: az.endpoint_suffix.clone(),
                })
            }
        }
    }

    /// The head limit per core: the flag, or half of physical memory over the cores.
    pub fn effective_max_head_bytes(&self) -> u64 {
        if let Some(v) = self.max_head_bytes_per_core {
            return v;
        }
        mem_total() / 2 / self.effective_cores().max(1) as u64
    }

    /// The cap on open connections for a process allowed `nofile` descriptors: the flag, or
    /// `nofile` less what kiln needs besides connections (per core an io_uring, a listener,
    /// WAL segments and block files being read; the store thread's files and sockets), never
    /// less than half of `nofile` for connections.
    pub fn effective_http_conn_limit(&self, nofile: u64) -> usize {
        if let Some(v) = self.http_conn_limit {
            return v;
        }
        let reserve = (256 + 64 * self.effective_cores() as u64).min(nofile / 2);
        nofile.saturating_sub(reserve).max(1) as usize
    }

    /// The in-flight request body budget: the flag, or a quarter of the head limit of every
    /// core together (an eighth of memory by default; bodies are compressed, what they expand
    /// to is bounded per profile by the validation limits). Without a head limit, an eighth of
    /// memory; without a known memory size, 1 GiB.
    pub fn effective_max_inflight_body_bytes(&self) -> u64 {
        if let Some(v) = self.max_inflight_body_bytes {
            return v;
        }
        let heads = self.effective_max_head_bytes().saturating_mul(self.effective_cores().max(1) as u64);
        let v = if heads > 0 { heads / 4 } else { mem_total() / 8 };
        if v == 0 {
            1 << 30
        } else {
            v
        }
    }

    pub fn effective_max_block_bytes(&self) -> u64 {
        self.max_block_bytes.unwrap_or(self.effective_max_head_bytes() / 4)
    }

    pub fn effective_block_cache_bytes(&self) -> u64 {
        self.block_cache_bytes_per_core.unwrap_or(self.effective_max_head_bytes() / 8)
    }

    pub fn effective_rows_cache_bytes(&self) -> u64 {
        self.rows_cache_bytes_per_core.unwrap_or(self.effective_max_head_bytes() / 8)
    }

    /// The memberlist settings, marking cluster mode on: any `-memberlist.*` flag turns it on.
    fn memberlist_mut(&mut self) -> &mut Memberlist {
        self.memberlist.enabled = true;
        &mut self.memberlist
    }

    /// Whether this process joins a cluster (gossip, rings, replication) or runs alone.
    pub fn cluster_mode(&self) -> bool {
        self.memberlist.enabled
    }

    /// This instance's ID on the rings: `-ring.instance-id`, else `<hostname>-<http port>`,
    /// unique among processes on one machine that differ in their port.
    pub fn instance_id(&self) -> String {
        if !self.ring.instance_id.is_empty() {
            return self.ring.instance_id.clone();
        }
        let host = hostname().unwrap_or_else(|| "kiln".into());
        format!("{host}-{}", self.http_listen_port)
    }

    /// The address other members reach this one's HTTP port at.
    pub fn advertised_http_addr(&self) -> String {
        format!("{}:{}", self.advertised_host(), self.http_listen_port)
    }

    /// The gossip address other members reach this one at.
    pub fn advertised_gossip_addr(&self) -> String {
        let port = if self.memberlist.advertise_port == 0 {
            self.memberlist.bind_port
        } else {
            self.memberlist.advertise_port
        };
        format!("{}:{port}", self.advertised_host())
    }

    /// `-memberlist.advertise-addr`, else the HTTP listen address when it is not a wildcard,
    /// else the gossip bind address when it is not, else 127.0.0.1.
    fn advertised_host(&self) -> String {
        let wildcard = |a: &str| a.is_empty() || a == "0.0.0.0" || a == "::" || a == "[::]";
        [&self.memberlist.advertise_addr, &self.http_listen_address, &self.memberlist.bind_addr]
            .into_iter()
            .find(|a| !wildcard(a))
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".into())
    }

    pub fn effective_cores(&self) -> usize {
        if self.cores > 0 {
            self.cores
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }

    /// The config as the process runs it, for `/config`: the values whose default is
    /// resolved at start (empty or 0 in the flags) replaced by what they resolve to: the
    /// cores (`shards`), the WAL, filesystem blocks and compactor directories.
    pub fn resolved(&self) -> Config {
        let mut cfg = self.clone();
        cfg.cores = self.effective_cores();
        cfg.wal_dir = self.wal_dir().display().to_string();
        cfg.storage.filesystem.dir = self.blocks_dir().display().to_string();
        cfg.compactor.data_dir = self.compactor_dir().display().to_string();
        cfg
    }

    /// Builds the config from command-line arguments (without the program name).
    pub fn from_args(args: &[String]) -> Result<Config, String> {
        let flags = split_flags(args)?;
        let mut cfg = Config::default();
        let expand_environment = match flags.iter().rev().find(|(k, _)| k == "config.expand-env") {
            Some((_, v)) => parse_bool(v).map_err(|e| format!("-config.expand-env={v}: {e}"))?,
            None => false,
        };
        if let Some((_, file)) = flags.iter().rev().find(|(k, _)| k == "config.file") {
            let mut text = std::fs::read_to_string(file).map_err(|e| format!("reading -config.file {file}: {e}"))?;
            if expand_environment {
                text = expand_env::expand(&text, &|name| std::env::var(name).ok());
            }
            cfg.apply_yaml(&text)?;
            cfg.config_file = file.clone();
        }
        for (k, v) in &flags {
            // Read above; `-version` is answered by main before the config is built.
            if k == "config.file" || k == "config.expand-env" || k == "version" {
                continue;
            }
            cfg.set_flag(k, v)?;
        }
        cfg.check_relations()?;
        Ok(cfg)
    }

    /// Limits that only make sense together, checked once at start with a clear error that
    /// names the flags involved.
    ///
    /// Relations considered and left out on purpose:
    /// - WAL segment size against the largest record: a record larger than a segment is
    ///   written alone into a fresh one (`SegmentWriter::prepare` rotates only a segment
    ///   that holds something), so any segment size works; the hard bound is the record's
    ///   own (below).
    /// - the in-flight body budget against the body limit: a budget below it is a supported
    ///   setting (a body larger than the whole budget is refused with 413 naming the flag),
    ///   and the default budget derives from the head limit, which tests set small.
    /// - the block cache against the head: separate memory, and a store-gateway-heavy setup
    ///   may want a cache larger than its heads.
    fn check_relations(&self) -> Result<(), String> {
        if !self.target.is_all() && !self.cluster_mode() {
            return Err(format!(
                "-target={}: a process that runs only some components is one part of a cluster; give it -memberlist.join (and -memberlist.bind-port) to find the others",
                self.target
            ));
        }
        if self.replication_factor == 0 {
            return Err("-distributor.replication-factor=0: every series needs at least one ingester".into());
        }
        if self.store_gateway_replication_factor == 0 || self.store_gateway_sync_interval.is_zero() {
            return Err("-store-gateway.sharding-ring.replication-factor and -store-gateway.sync-interval must be above 0: every block needs a store-gateway, and each one re-reads the bucket indexes".into());
        }
        if self.ring.heartbeat_period.is_zero() || self.ring.heartbeat_timeout <= self.ring.heartbeat_period {
            return Err(format!(
                "-ring.heartbeat-timeout={:?} must be above -ingester.heartbeat-period={:?} (and the period positive): every member would be UNHEALTHY between two heartbeats",
                self.ring.heartbeat_timeout, self.ring.heartbeat_period
            ));
        }
        if !self.ring.auto_forget_after.is_zero() && self.ring.auto_forget_after < self.ring.heartbeat_timeout {
            return Err(format!(
                "-ring.auto-forget-after={:?} is below -ring.heartbeat-timeout={:?}: a member would be forgotten before it is even UNHEALTHY",
                self.ring.auto_forget_after, self.ring.heartbeat_timeout
            ));
        }
        if self.push_timeout.is_zero() {
            return Err("-distributor.push.timeout=0: it must be positive".into());
        }
        self.self_profiling.check()?;
        let head = self.effective_max_head_bytes();
        if let Some(block) = self.max_block_bytes.filter(|&b| b > 0 && head > 0 && b >= head) {
            return Err(format!(
                "-ingester.max-block-bytes={block} must be below -ingester.max-head-bytes-per-core={head}: the head would refuse pushes before it is ever large enough to be cut"
            ));
        }
        if self.max_block_duration.is_zero() {
            return Err(
                "-ingester.max-block-duration=0: it must be positive (every head would be cut as soon as it holds a profile)"
                    .into(),
            );
        }
        if self.ring_tokens_per_core == 0 {
            return Err("-ring.tokens-per-core=0: every core needs at least one token to own series".into());
        }
        for (of, l) in self.every_limits() {
            if l.max_flamegraph_nodes_max > 0 && l.max_flamegraph_nodes_default > l.max_flamegraph_nodes_max {
                return Err(format!(
                    "-querier.max-flamegraph-nodes-default={} is above -querier.max-flamegraph-nodes-max={}{of}",
                    l.max_flamegraph_nodes_default, l.max_flamegraph_nodes_max
                ));
            }
            // A profile becomes one WAL record per owning core (its symbols, stacks and group
            // labels); the distributor bounds a profile by -validation.max-profile-size-bytes
            // and by the request's uncompressed budget, the body limit. The smaller of the
            // two must fit a WAL record, or every profile near it would be refused. (Both 0,
            // no limit: a record over the limit is refused when it is made.)
            let record = kiln_io::wal::record::MAX_RECORD;
            let bound = [l.max_profile_size_bytes, l.body_limit_bytes()].into_iter().filter(|&b| b > 0).min();
            if let Some(bound) = bound.filter(|&b| b > record) {
                return Err(format!(
                    "-validation.max-profile-size-bytes={} and -distributor.ingestion-body-limit-mb={} let a profile of {bound} bytes in, above the largest WAL record ({record} bytes){of}: lower one of them",
                    l.max_profile_size_bytes, l.ingestion_body_limit_mb
                ));
            }
        }
        Ok(())
    }

    fn set_flag(&mut self, k: &str, v: &str) -> Result<(), String> {
        let bad = |e: String| format!("invalid value {v:?} for flag -{k}: {e}");
        let l = &mut self.limits;
        match k {
            "target" => self.target = v.parse()?,
            "server.http-listen-port" => self.http_listen_port = v.parse().map_err(|e| bad(format!("{e}")))?,
            "server.grpc-listen-port" => self.grpc_listen_port = v.parse().map_err(|e| bad(format!("{e}")))?,
            "server.http-listen-address" => self.http_listen_address = v.into(),
            "server.http-server-read-timeout" => self.http_server_read_timeout = parse_duration(v).map_err(bad)?,
            "server.http-server-write-timeout" => self.http_server_write_timeout = parse_duration(v).map_err(bad)?,
            "server.http-server-idle-timeout" => self.http_server_idle_timeout = parse_duration(v).map_err(bad)?,
            "server.http-conn-limit" => self.http_conn_limit = Some(parse_num(v).map_err(bad)?),
            "server.max-inflight-body-bytes" => {
                self.max_inflight_body_bytes = Some(v.parse().map_err(|e| bad(format!("{e}")))?)
            }
            "storage.path" => self.storage_path = v.into(),
            "shards" => self.cores = v.parse().map_err(|e| bad(format!("{e}")))?,
            "ring.tokens-per-core" => self.ring_tokens_per_core = v.parse().map_err(|e| bad(format!("{e}")))?,
            "ingester.wal-dir" => self.wal_dir = v.into(),
            "ingester.max-head-bytes-per-core" => {
                self.max_head_bytes_per_core = Some(v.parse().map_err(|e| bad(format!("{e}")))?)
            }
            "ingester.wal-segment-size-bytes" => {
                self.wal_segment_size_bytes = v.parse().map_err(|e| bad(format!("{e}")))?
            }
            "ingester.max-block-duration" => self.max_block_duration = parse_duration(v).map_err(bad)?,
            "ingester.max-block-bytes" => self.max_block_bytes = Some(parse_num(v).map_err(bad)? as u64),
            "store-gateway.cache-bytes-per-core" => {
                self.block_cache_bytes_per_core = Some(parse_num(v).map_err(bad)? as u64)
            }
            "ingester.wal-sync-policy" => self.wal_sync_policy = v.parse().map_err(bad)?,
            "ingester.wal-preallocate" => self.wal_preallocate = parse_bool(v).map_err(bad)?,
            "auth.multitenancy-enabled" => self.multitenancy_enabled = parse_bool(v).map_err(bad)?,
            "log.level" => self.log_level = v.parse().map_err(bad)?,
            "log.format" => self.log_format = v.parse().map_err(bad)?,
            "validation.reject-older-than" => l.reject_older_than = parse_duration(v).map_err(bad)?,
            "validation.reject-newer-than" => l.reject_newer_than = parse_duration(v).map_err(bad)?,
            "validation.max-profile-size-bytes" => l.max_profile_size_bytes = parse_num(v).map_err(bad)?,
            "validation.max-profile-stacktrace-samples" => {
                l.max_profile_stacktrace_samples = parse_num(v).map_err(bad)?
            }
            "validation.max-label-names-per-series" => l.max_label_names_per_series = parse_num(v).map_err(bad)?,
            "ingester.max-local-series-per-tenant" => l.max_local_series_per_tenant = parse_num(v).map_err(bad)?,
            "ingester.max-global-series-per-tenant" => l.max_global_series_per_tenant = parse_num(v).map_err(bad)?,
            "validation.max-length-label-name" => l.max_label_name_length = parse_num(v).map_err(bad)?,
            "validation.max-length-label-value" => l.max_label_value_length = parse_num(v).map_err(bad)?,
            "distributor.ingestion-rate-limit-mb" => {
                l.ingestion_rate_mb = v.parse().map_err(|e| bad(format!("{e}")))?
            }
            "distributor.ingestion-burst-size-mb" => {
                l.ingestion_burst_size_mb = v.parse().map_err(|e| bad(format!("{e}")))?
            }
            "distributor.ingestion-body-limit-mb" => {
                l.ingestion_body_limit_mb = v.parse().map_err(|e| bad(format!("{e}")))?
            }
            "querier.max-query-lookback" => l.max_query_lookback = parse_duration(v).map_err(bad)?,
            "querier.max-query-length" => l.max_query_length = parse_duration(v).map_err(bad)?,
            "querier.max-flamegraph-nodes-default" => {
                l.max_flamegraph_nodes_default = v.parse().map_err(|e| bad(format!("{e}")))?
            }
            "querier.max-flamegraph-nodes-max" => {
                l.max_flamegraph_nodes_max = v.parse().map_err(|e| bad(format!("{e}")))?
            }
            "querier.max-query-series" => l.max_query_series = parse_num(v).map_err(bad)?,
            "querier.max-query-points" => l.max_query_points = parse_num(v).map_err(bad)?,
            "querier.split-queries-by-interval" => l.split_queries_by_interval = parse_duration(v).map_err(bad)?,
            "querier.max-query-parallelism" => l.max_query_parallelism = parse_num(v).map_err(bad)?,
            "distributor.ingestion-tenant-shard-size" => {
                l.ingestion_tenant_shard_size = parse_shard_size(v).map_err(bad)?
            }
            "store-gateway.tenant-shard-size" => {
                l.store_gateway_tenant_shard_size = parse_shard_size(v).map_err(bad)?
            }
            "query-frontend.max-queriers-per-tenant" => l.max_queriers_per_tenant = parse_shard_size(v).map_err(bad)?,
            _ if self.self_profiling.set_flag(k, v)? => {}
            _ if self.set_storage_flag(k, v)? => {}
            _ if self.set_cluster_flag(k, v)? => {}
            _ if self.set_read_path_flag(k, v)? => {}
            _ if self.set_compactor_flag(k, v)? => {}
            _ => return Err(format!("flag provided but not defined: -{k}")),
        }
        Ok(())
    }

    /// The object storage flags (`-storage.*` but `-storage.path`); `false`: not one of them.
    fn set_storage_flag(&mut self, k: &str, v: &str) -> Result<bool, String> {
        let bad = |e: String| format!("invalid value {v:?} for flag -{k}: {e}");
        match k {
            "storage.backend" => self.storage.backend = v.parse().map_err(bad)?,
            "storage.filesystem.dir" => self.storage.filesystem.dir = v.into(),
            "storage.prefix" => self.storage.prefix = v.into(),
            "storage.s3.bucket-lookup-type" => self.storage.s3.bucket_lookup_type = v.into(),
            "storage.s3.signature-version" => self.storage.s3.signature_version = v.into(),
            "storage.s3.native-aws-auth-enabled" => {
                self.storage.s3.native_aws_auth_enabled = parse_bool(v).map_err(bad)?
            }
            "storage.s3.endpoint" => self.storage.s3.endpoint = v.into(),
            "storage.s3.bucket-name" => self.storage.s3.bucket_name = v.into(),
            "storage.s3.region" => self.storage.s3.region = v.into(),
            "storage.s3.access-key-id" => self.storage.s3.access_key_id = v.into(),
            "storage.s3.secret-access-key" => self.storage.s3.secret_access_key = Secret(v.into()),
            "storage.s3.insecure" => self.storage.s3.insecure = parse_bool(v).map_err(bad)?,
            "storage.s3.force-path-style" => self.storage.s3.force_path_style = parse_bool(v).map_err(bad)?,
            "storage.gcs.bucket-name" => self.storage.gcs.bucket_name = v.into(),
            "storage.gcs.service-account" => self.storage.gcs.service_account = Secret(v.into()),
            "storage.azure.account-name" => self.storage.azure.account_name = v.into(),
            "storage.azure.account-key" => self.storage.azure.account_key = Secret(v.into()),
            "storage.azure.container-name" => self.storage.azure.container_name = v.into(),
            "storage.azure.endpoint-suffix" => self.storage.azure.endpoint_suffix = v.into(),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The cluster's flags (`-memberlist.*`, the rings, replication); `false`: not one of them.
    fn set_cluster_flag(&mut self, k: &str, v: &str) -> Result<bool, String> {
        let bad = |e: String| format!("invalid value {v:?} for flag -{k}: {e}");
        match k {
            "memberlist.bind-addr" => self.memberlist_mut().bind_addr = v.into(),
            "memberlist.bind-port" => self.memberlist_mut().bind_port = v.parse().map_err(|e| bad(format!("{e}")))?,
            "memberlist.join" => {
                if !v.is_empty() {
                    self.memberlist_mut().join.push(v.into());
                }
            }
            "memberlist.advertise-addr" => self.memberlist_mut().advertise_addr = v.into(),
            "memberlist.advertise-port" => {
                self.memberlist_mut().advertise_port = v.parse().map_err(|e| bad(format!("{e}")))?
            }
            "memberlist.cluster-label" => self.memberlist_mut().cluster_label = v.into(),
            "ring.instance-id" | "ingester.lifecycler.ID" => self.ring.instance_id = v.into(),
            "ring.instance-availability-zone" | "ingester.availability-zone" => self.ring.availability_zone = v.into(),
            "ingester.heartbeat-period" => self.ring.heartbeat_period = parse_duration(v).map_err(bad)?,
            "ring.heartbeat-timeout" => self.ring.heartbeat_timeout = parse_duration(v).map_err(bad)?,
            "ring.auto-forget-after" => self.ring.auto_forget_after = parse_duration(v).map_err(bad)?,
            "distributor.replication-factor" => self.replication_factor = parse_num(v).map_err(bad)?,
            "distributor.push.timeout" => self.push_timeout = parse_duration(v).map_err(bad)?,
            "distributor.decode-offload-bytes" => self.decode_offload_bytes = parse_num(v).map_err(bad)?,
            "ingester.append-step-frames" => self.append_step_frames = parse_num(v).map_err(bad)?,
            "querier.query-store-after" => self.query_store_after = parse_duration(v).map_err(bad)?,
            "store-gateway.sharding-ring.replication-factor" => {
                self.store_gateway_replication_factor = parse_num(v).map_err(bad)?
            }
            "store-gateway.sync-interval" | "blocks-storage.bucket-store.sync-interval" => {
                self.store_gateway_sync_interval = parse_duration(v).map_err(bad)?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The read path's flags (frontend, scheduler, the querier's workers); `false`: not one.
    fn set_read_path_flag(&mut self, k: &str, v: &str) -> Result<bool, String> {
        let bad = |e: String| format!("invalid value {v:?} for flag -{k}: {e}");
        if k == "store-gateway.rows-cache-bytes-per-core" {
            self.rows_cache_bytes_per_core = Some(parse_num(v).map_err(bad)? as u64);
            return Ok(true);
        }
        let r = &mut self.read_path;
        match k {
            "query-scheduler.max-outstanding-requests-per-tenant" => {
                r.max_outstanding_requests_per_tenant = parse_num(v).map_err(bad)?
            }
            "querier.max-concurrent" => r.querier_max_concurrent = parse_num(v).map_err(bad)?,
            "query-frontend.scheduler-address" => r.frontend_scheduler_address = v.into(),
            "querier.scheduler-address" => r.querier_scheduler_address = v.into(),
            "query-frontend.cache-results" => r.cache_results = parse_bool(v).map_err(bad)?,
            "query-frontend.results-cache-max-bytes" => r.results_cache_max_bytes = parse_num(v).map_err(bad)?,
            "query-frontend.max-cache-freshness" => r.max_cache_freshness = parse_duration(v).map_err(bad)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `-compactor.*` (retention is a limit); `false`: not one.
    fn set_compactor_flag(&mut self, k: &str, v: &str) -> Result<bool, String> {
        let bad = |e: String| format!("invalid value {v:?} for flag -{k}: {e}");
        let c = &mut self.compactor;
        match k {
            "compactor.compactor-tenant-shard-size" => {
                self.limits.compactor_tenant_shard_size = parse_shard_size(v).map_err(bad)?
            }
            "compactor.blocks-retention-period" => {
                self.limits.compactor_blocks_retention_period = parse_duration(v).map_err(bad)?
            }
            "compactor.block-ranges" => {
                let ranges =
                    v.split(',').map(|r| parse_duration(r.trim())).collect::<Result<Vec<_>, _>>().map_err(bad)?;
                if ranges.is_empty() || ranges.iter().any(|r| r.is_zero()) || ranges.windows(2).any(|w| w[1] <= w[0]) {
                    return Err(bad("the ranges must be longer than zero and ascending, e.g. 1h,2h,8h".into()));
                }
                if ranges.windows(2).any(|w| w[1].as_millis() % w[0].as_millis() != 0) {
                    return Err(bad("each range must be a multiple of the one before, e.g. 1h,2h,8h".into()));
                }
                c.block_ranges = ranges;
            }
            "compactor.compaction-interval" => c.compaction_interval = parse_duration(v).map_err(bad)?,
            "compactor.first-level-compaction-wait-period" => {
                c.first_level_compaction_wait_period = parse_duration(v).map_err(bad)?
            }
            "compactor.compaction-concurrency" => {
                c.compaction_concurrency = parse_num(v).map_err(bad)?;
                if c.compaction_concurrency == 0 {
                    return Err(bad("at least 1".into()));
                }
            }
            "compactor.deletion-delay" => c.deletion_delay = parse_duration(v).map_err(bad)?,
            "compactor.cleanup-interval" => c.cleanup_interval = parse_duration(v).map_err(bad)?,
            "compactor.partial-block-deletion-delay" => {
                c.partial_block_deletion_delay = parse_duration(v).map_err(bad)?
            }
            "compactor.max-memory-bytes" => c.max_memory_bytes = parse_num(v).map_err(bad)? as u64,
            "compactor.data-dir" => c.data_dir = v.into(),
            _ => return Ok(false),
        }
        if c.compaction_interval.is_zero() || c.cleanup_interval.is_zero() {
            return Err(bad("the compactor's intervals must be longer than zero".into()));
        }
        Ok(true)
    }
}

/// A shuffle shard size: a whole number of instances, 0 for all of them.
fn parse_shard_size(v: &str) -> Result<usize, String> {
    v.trim().parse().map_err(|_| "a shard size is a whole number of instances, 0 for all of them".to_string())
}

fn split_flags(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let Some(body) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            return Err(format!("unexpected argument {a:?}: flags look like -name=value"));
        };
        if let Some((k, v)) = body.split_once('=') {
            out.push((k.to_string(), v.to_string()));
        } else if is_bool_flag(body) {
            out.push((body.to_string(), "true".to_string()));
        } else if i + 1 < args.len() {
            out.push((body.to_string(), args[i + 1].clone()));
            i += 1;
        } else {
            return Err(format!("flag needs an argument: -{body}"));
        }
        i += 1;
    }
    Ok(out)
}

fn is_bool_flag(name: &str) -> bool {
    matches!(
        name,
        "auth.multitenancy-enabled"
            | "config.expand-env"
            | "version"
            | "self-profiling.disable-push"
            | "storage.s3.insecure"
            | "storage.s3.force-path-style"
            | "storage.s3.native-aws-auth-enabled"
            | "query-frontend.cache-results"
    )
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("not a boolean".into()),
    }
}

/// The machine's host name (the kernel's), if it has one.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).ok().filter(|h| !h.is_empty())
}

/// Physical memory in bytes, 0 when unknown.
fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn parse_num(v: &str) -> Result<usize, String> {
    v.parse().map_err(|e| format!("{e}"))
}

/// Go's `time.ParseDuration` units (ns, us, µs, ms, s, m, h), plus `d`, `w`, `y` as
/// Prometheus model durations allow; a bare `0` is zero.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    if v == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = v;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return Err(format!("invalid duration {v:?}"));
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| format!("invalid duration {v:?}"))?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "w" => 7.0 * 86400.0,
            "y" => 365.0 * 86400.0,
            _ => return Err(format!("unknown unit {unit:?} in duration {v:?}")),
        };
        total += n * secs;
    }
    Ok(Duration::from_secs_f64(total))
}

/// How long after its deletion mark a cluster's readers keep reading a block: three
/// `-store-gateway.sync-interval`s and two seconds, by which every store-gateway has synced
/// at least once since the compaction's index write (a sync comes at most an interval and a
/// second, its thread's tick, after the last) and serves its output. Until then a query may
/// read a compacted block and its inputs both; each profile still counts once, the output
/// being a source of its own (I18). See `store_gateway::sync`.
pub fn retire_after(sync_interval: Duration) -> Duration {
    sync_interval * 3 + Duration::from_secs(2)
}

/// A duration as Go writes the simple ones: `0s`, `2h`, `30m`, `1.5s`.
fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 && d.subsec_nanos() == 0 {
        "0s".to_string()
    } else if secs % 3600 == 0 && d.subsec_nanos() == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 && d.subsec_nanos() == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

mod go_duration {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn go_style_flags() {
        let c = Config::from_args(&args(&[
            "-server.http-listen-port=5050",
            "--shards",
            "3",
            "-auth.multitenancy-enabled",
            "-validation.reject-older-than=0",
            "-querier.max-query-lookback=168h",
        ]))
        .unwrap();
        assert_eq!(c.http_listen_port, 5050);
        assert_eq!(c.cores, 3);
        assert!(c.multitenancy_enabled);
        assert_eq!(c.limits.reject_older_than, Duration::ZERO);
        assert_eq!(c.limits.max_query_lookback, Duration::from_secs(7 * 86400));
        assert!(Config::from_args(&args(&["-nope=1"])).is_err());
        let e = Config::from_args(&args(&["-target=ingester"])).unwrap_err();
        assert!(e.contains("-memberlist.join"), "{e}");
        let c = Config::from_args(&args(&["-target=ingester", "-memberlist.join=127.0.0.1:7946"])).unwrap();
        assert!(c.cluster_mode() && !c.target.is_all());
        let c = Config::from_args(&args(&["-target=compactor", "-memberlist.join=127.0.0.1:7946"])).unwrap();
        assert!(c.notices().is_empty(), "12h against 50m2s");
        let c = Config::from_args(&args(&[
            "-target=compactor",
            "-memberlist.join=127.0.0.1:7946",
            "-compactor.deletion-delay=10m",
        ]))
        .unwrap();
        assert!(c.notices()[0].contains("-compactor.deletion-delay=10m"), "{:?}", c.notices());
    }

    #[test]
    fn self_profiling_flags_and_yaml() {
        let c = Config::from_args(&[]).unwrap();
        let sp = &c.self_profiling;
        assert!(!sp.disable_push && sp.tenant_id.is_empty() && sp.url.is_empty());
        assert_eq!(sp.push_interval, Duration::from_secs(15));
        let c = Config::from_args(&args(&[
            "-self-profiling.disable-push",
            "-self-profiling.tenant-id=ops",
            "-self-profiling.push-interval=1s",
            "-self-profiling.mutex-profile-fraction=5",
            "-self-profiling.block-profile-rate=5",
        ]))
        .unwrap();
        let sp = &c.self_profiling;
        assert!(sp.disable_push);
        assert_eq!((sp.tenant_id.as_str(), sp.push_interval), ("ops", Duration::from_secs(1)));
        assert!(c.to_yaml().contains("push_interval: 1s"));
        for bad in ["-self-profiling.push-interval=0s", "-self-profiling.url=https://x:4040"] {
            assert!(Config::from_args(&args(&[bad])).is_err(), "{bad}");
        }
        // Off, its settings are not checked.
        assert!(
            Config::from_args(&args(&["-self-profiling.disable-push=true", "-self-profiling.push-interval=0"])).is_ok()
        );
        let f = std::env::temp_dir().join(format!("kiln-cfg-sp-{}.yaml", std::process::id()));
        std::fs::write(&f, "self_profiling:\n  disable_push: true\n  tenant_id: self\n  push_interval: 30s\n").unwrap();
        let c = Config::from_args(&args(&[&format!("-config.file={}", f.display())])).unwrap();
        let _ = std::fs::remove_file(&f);
        assert!(c.self_profiling.disable_push);
        assert_eq!(
            (c.self_profiling.tenant_id.as_str(), c.self_profiling.push_interval),
            ("self", Duration::from_secs(30))
        );
    }

    #[test]
    fn yaml_then_flags() {
        let dir = std::env::temp_dir().join(format!("kiln-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.yaml");
        std::fs::write(
            &f,
            "server:\n  http_listen_port: 7000\nmultitenancy_enabled: true\nlimits:\n  max_profile_size_bytes: 100\n  reject_older_than: 2h\noverrides:\n  t1:\n    ingestion_rate_mb: 0\n",
        )
        .unwrap();
        let c = Config::from_args(&args(&[&format!("-config.file={}", f.display()), "-server.http-listen-port=7001"]))
            .unwrap();
        assert_eq!(c.http_listen_port, 7001);
        assert!(c.multitenancy_enabled);
        assert_eq!(c.limits.max_profile_size_bytes, 100);
        assert_eq!(c.tenant_limits().for_tenant("t1").ingestion_rate_mb, 0.0);
        assert_eq!(c.tenant_limits().for_tenant("t1").max_profile_size_bytes, 100);
        assert_eq!(c.tenant_limits().for_tenant("t2").ingestion_rate_mb, 4.0);
        assert!(c.to_yaml().contains("reject_older_than: 2h"));
    }

    #[test]
    fn shuffle_shard_sizes_by_flag_and_per_tenant() {
        let c = Config::from_args(&args(&[])).unwrap();
        let l = &c.limits;
        let sizes = |l: &Limits| {
            [
                l.ingestion_tenant_shard_size,
                l.store_gateway_tenant_shard_size,
                l.max_queriers_per_tenant,
                l.compactor_tenant_shard_size,
            ]
        };
        assert_eq!(sizes(l), [0; 4], "off by default");
        assert!(c.notices().is_empty());
        let c = Config::from_args(&args(&[
            "-distributor.ingestion-tenant-shard-size=3",
            "-store-gateway.tenant-shard-size=2",
            "-query-frontend.max-queriers-per-tenant=4",
            "-compactor.compactor-tenant-shard-size=1",
        ]))
        .unwrap();
        assert_eq!(sizes(&c.limits), [3, 2, 4, 1]);
        let e = Config::from_args(&args(&["-distributor.ingestion-tenant-shard-size=-1"])).unwrap_err();
        assert!(e.contains("whole number"), "{e}");

        let yaml = "limits:\n  ingestion_tenant_shard_size: 2\noverrides:\n  big:\n    ingestion_tenant_shard_size: 5\n    store_gateway_tenant_shard_size: 3\n    max_queriers_per_tenant: 2\n    compactor_tenant_shard_size: 2\n";
        let path = std::env::temp_dir().join(format!("kiln-cfg-shuffle-{}.yaml", std::process::id()));
        std::fs::write(&path, yaml).unwrap();
        let c = Config::from_args(&args(&[&format!("-config.file={}", path.display())])).unwrap();
        let t = c.tenant_limits();
        assert_eq!(sizes(t.for_tenant("big")), [5, 3, 2, 2]);
        assert_eq!(sizes(t.for_tenant("small")), [2, 0, 0, 0]);
        let yaml = c.to_yaml();
        for key in [
            "ingestion_tenant_shard_size: 5",
            "store_gateway_tenant_shard_size: 3",
            "max_queriers_per_tenant: 2",
            "compactor_tenant_shard_size: 2",
        ] {
            assert!(yaml.contains(key), "/config lacks {key}: {yaml}");
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn storage_flags() {
        use kiln_io::store::Backend;
        let c = Config::from_args(&args(&["-storage.path=/var/kiln"])).unwrap();
        assert_eq!(c.storage.backend, BackendKind::Filesystem);
        match c.store_backend().unwrap() {
            Backend::Filesystem { dir } => assert_eq!(dir, std::path::Path::new("/var/kiln/blocks")),
            b => panic!("{b:?}"),
        }
        let c = Config::from_args(&args(&["-storage.filesystem.dir", "/blocks"])).unwrap();
        assert!(
            matches!(c.store_backend().unwrap(), Backend::Filesystem { dir } if dir == std::path::Path::new("/blocks"))
        );

        let c = Config::from_args(&args(&[
            "-storage.backend=s3",
            "-storage.s3.endpoint=minio:9000",
            "-storage.s3.bucket-name=profiles",
            "-storage.s3.region=eu-west-1",
            "-storage.s3.access-key-id=AKID",
            "-storage.s3.secret-access-key=s3cr3t-value",
            "-storage.s3.insecure",
            "-storage.s3.force-path-style=true",
        ]))
        .unwrap();
        match c.store_backend().unwrap() {
            Backend::S3 { endpoint, bucket, region, access_key_id, secret_access_key, insecure, force_path_style } => {
                assert_eq!(
                    (endpoint.as_str(), bucket.as_str(), region.as_str(), access_key_id.as_str()),
                    ("minio:9000", "profiles", "eu-west-1", "AKID")
                );
                assert_eq!(secret_access_key, "s3cr3t-value");
                assert!(insecure && force_path_style);
            }
            b => panic!("{b:?}"),
        }
        // /config and Debug never show a secret.
        let yaml = c.to_yaml();
        assert!(!yaml.contains("s3cr3t-value"), "{yaml}");
        assert!(yaml.contains("secret_access_key: '********'"), "{yaml}");
        assert!(yaml.contains("bucket_name: profiles"), "{yaml}");
        assert!(!format!("{c:?}").contains("s3cr3t-value"));

        // Missing pieces are named.
        let e = Config::from_args(&args(&["-storage.backend=s3"])).unwrap().store_backend().unwrap_err();
        assert!(e.contains("-storage.s3.bucket-name"), "{e}");
        let e = Config::from_args(&args(&[
            "-storage.backend=s3",
            "-storage.s3.bucket-name=b",
            "-storage.s3.access-key-id=k",
        ]))
        .unwrap()
        .store_backend()
        .unwrap_err();
        assert!(e.contains("secret-access-key"), "{e}");
        let e = Config::from_args(&args(&["-storage.backend=gcs"])).unwrap().store_backend().unwrap_err();
        assert!(e.contains("-storage.gcs.bucket-name"), "{e}");
        let e = Config::from_args(&args(&["-storage.backend=azure", "-storage.azure.account-name=a"]))
            .unwrap()
            .store_backend()
            .unwrap_err();
        assert!(e.contains("-storage.azure.container-name"), "{e}");
        assert!(Config::from_args(&args(&["-storage.backend=swift"])).is_err());
        assert!(Config::from_args(&args(&["-storage.s3.insecure=maybe"])).is_err());

        // Pyroscope's other S3 flags: the lookup type picks path style; only v4 signs.
        let s3 = |extra: &[&str]| {
            let mut a = vec!["-storage.backend=s3", "-storage.s3.bucket-name=b", "-storage.s3.endpoint=minio:9000"];
            a.extend_from_slice(extra);
            Config::from_args(&args(&a)).unwrap().store_backend()
        };
        assert!(matches!(
            s3(&["-storage.s3.bucket-lookup-type=path-style", "-storage.s3.native-aws-auth-enabled"]).unwrap(),
            Backend::S3 { force_path_style: true, .. }
        ));
        assert!(matches!(s3(&[]).unwrap(), Backend::S3 { force_path_style: false, .. }));
        assert!(s3(&["-storage.s3.signature-version=v2"]).unwrap_err().contains("only v4"));
        assert!(s3(&["-storage.s3.bucket-lookup-type=sideways"]).is_err());
        assert!(s3(&["-storage.s3.force-path-style", "-storage.s3.bucket-lookup-type=virtual-hosted-style"]).is_err());
        assert!(s3(&["-storage.prefix=cluster1"]).is_ok());
        assert!(s3(&["-storage.prefix=a/b"]).unwrap_err().contains("-storage.prefix"));

        let c = Config::from_args(&args(&[
            "-storage.backend=gcs",
            "-storage.gcs.bucket-name=g",
            "-storage.gcs.service-account=/etc/sa.json",
        ]))
        .unwrap();
        assert!(matches!(c.store_backend().unwrap(), Backend::Gcs { bucket, service_account_path }
            if bucket == "g" && service_account_path == "/etc/sa.json"));
        assert!(!c.to_yaml().contains("/etc/sa.json"));
    }

    #[test]
    fn storage_yaml() {
        let dir = std::env::temp_dir().join(format!("kiln-cfg-storage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.yaml");
        std::fs::write(
            &f,
            "storage:\n  backend: azure\n  azure:\n    account_name: acct\n    account_key: azure-key-value\n    \
             container_name: blocks\n    endpoint_suffix: blob.core.chinacloudapi.cn\n  s3:\n    insecure: true\n",
        )
        .unwrap();
        let c = Config::from_args(&args(&[&format!("-config.file={}", f.display())])).unwrap();
        assert!(c.storage.s3.insecure);
        match c.store_backend().unwrap() {
            kiln_io::store::Backend::Azure { account_name, account_key, container, endpoint } => {
                assert_eq!(account_name, "acct");
                assert_eq!(account_key, "azure-key-value");
                assert_eq!(container, "blocks");
                assert_eq!(endpoint, "blob.core.chinacloudapi.cn");
            }
            b => panic!("{b:?}"),
        }
        let yaml = c.to_yaml();
        assert!(!yaml.contains("azure-key-value") && yaml.contains("account_key: '********'"), "{yaml}");
        // A flag wins over the file.
        let c = Config::from_args(&args(&[&format!("-config.file={}", f.display()), "-storage.backend=filesystem"]))
            .unwrap();
        assert_eq!(c.storage.backend, BackendKind::Filesystem);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn connection_flags() {
        let c = Config::default();
        assert_eq!(
            (c.http_server_read_timeout, c.http_server_write_timeout, c.http_server_idle_timeout),
            (Duration::from_secs(30), Duration::from_secs(30), Duration::from_secs(120))
        );
        // Unset: derived from the descriptors, leaving a reserve, never below half of them.
        let c = Config::from_args(&args(&["-shards=2"])).unwrap();
        assert_eq!(c.effective_http_conn_limit(1_048_576), 1_048_576 - 384);
        assert_eq!(c.effective_http_conn_limit(64), 32);
        assert!(c.effective_max_inflight_body_bytes() > 0);
        let c = Config::from_args(&args(&["-shards=2", "-ingester.max-head-bytes-per-core=1000"])).unwrap();
        assert_eq!(c.effective_max_inflight_body_bytes(), 500);

        let dir = std::env::temp_dir().join(format!("kiln-cfg-conn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.yaml");
        std::fs::write(
            &f,
            "server:\n  http_server_read_timeout: 5s\n  http_server_idle_timeout: 1m\n  http_conn_limit: 100\n  \
             max_inflight_body_bytes: 1048576\n",
        )
        .unwrap();
        let c = Config::from_args(&args(&[
            &format!("-config.file={}", f.display()),
            "-server.http-server-write-timeout=1500ms",
            "-server.http-conn-limit=0",
        ]))
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(c.http_server_read_timeout, Duration::from_secs(5));
        assert_eq!(c.http_server_write_timeout, Duration::from_millis(1500));
        assert_eq!(c.http_server_idle_timeout, Duration::from_secs(60));
        // An explicit 0 is "no limit", as in dskit, and wins over the derived default.
        assert_eq!(c.effective_http_conn_limit(64), 0);
        assert_eq!(c.effective_max_inflight_body_bytes(), 1_048_576);
        let yaml = c.to_yaml();
        assert!(yaml.contains("http_server_read_timeout: 5s"), "{yaml}");
        assert!(yaml.contains("http_server_write_timeout: 1.5s"), "{yaml}");
        assert!(yaml.contains("http_server_idle_timeout: 1m"), "{yaml}");
        assert!(yaml.contains("http_conn_limit: 0"), "{yaml}");
        assert!(Config::from_args(&args(&["-server.http-server-idle-timeout=soon"])).is_err());
        assert!(Config::from_args(&args(&["-server.http-conn-limit=-1"])).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn limits_that_contradict_each_other_are_refused_at_start() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = Config::from_args(&args(&["-ingester.max-head-bytes-per-core=1000", "-ingester.max-block-bytes=1000"]))
            .unwrap_err();
        assert!(e.contains("must be below"), "{e}");
        assert!(Config::from_args(&args(&["-ingester.max-head-bytes-per-core=1000", "-ingester.max-block-bytes=999"]))
            .is_ok());
        assert!(Config::from_args(&args(&["-ingester.max-head-bytes-per-core=1000", "-ingester.max-block-bytes=0"]))
            .is_ok());
        let e = Config::from_args(&args(&[
            "-querier.max-flamegraph-nodes-default=10",
            "-querier.max-flamegraph-nodes-max=5",
        ]))
        .unwrap_err();
        assert!(e.contains("above"), "{e}");
    }

    #[test]
    fn a_block_duration_of_zero_is_refused_at_start() {
        let e = Config::from_args(&args(&["-ingester.max-block-duration=0s"])).unwrap_err();
        assert!(e.contains("-ingester.max-block-duration=0") && e.contains("positive"), "{e}");
        assert!(Config::from_args(&args(&["-ingester.max-block-duration=100ms"])).is_ok());
    }

    #[test]
    fn a_ring_without_tokens_is_refused_at_start() {
        let e = Config::from_args(&args(&["-ring.tokens-per-core=0"])).unwrap_err();
        assert!(e.contains("-ring.tokens-per-core=0"), "{e}");
        assert!(Config::from_args(&args(&["-ring.tokens-per-core=1"])).is_ok());
    }

    #[test]
    fn a_profile_limit_above_the_wal_record_limit_is_refused_at_start() {
        let both = |e: &str| {
            e.contains("-validation.max-profile-size-bytes") && e.contains("-distributor.ingestion-body-limit-mb")
        };
        // No per-profile limit: the body limit (2 GiB uncompressed) bounds a profile.
        let e = Config::from_args(&args(&[
            "-validation.max-profile-size-bytes=0",
            "-distributor.ingestion-body-limit-mb=2048",
        ]))
        .unwrap_err();
        assert!(both(&e) && e.contains("largest WAL record"), "{e}");
        // The smaller of the two bounds a profile: either may keep it below a record.
        assert!(Config::from_args(&args(&[
            "-validation.max-profile-size-bytes=4194304",
            "-distributor.ingestion-body-limit-mb=2048",
        ]))
        .is_ok());
        assert!(Config::from_args(&args(&[
            "-validation.max-profile-size-bytes=0",
            "-distributor.ingestion-body-limit-mb=256",
        ]))
        .is_ok());
        let e = Config::from_args(&args(&["-validation.max-profile-size-bytes=2147483648"]));
        assert!(e.is_ok(), "the body limit (256 MiB by default) still bounds it: {e:?}");
        // A tenant's overrides are checked too, and named.
        let dir = std::env::temp_dir().join(format!("kiln-cfg-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kiln.yaml");
        std::fs::write(&file, "overrides:\n  big:\n    max_profile_size_bytes: 0\n    ingestion_body_limit_mb: 4096\n")
            .unwrap();
        let r = Config::from_args(&args(&[&format!("-config.file={}", file.display())]));
        let _ = std::fs::remove_dir_all(&dir);
        let e = r.unwrap_err();
        assert!(both(&e) && e.contains("tenant \"big\""), "{e}");
    }
}
