//! The config file in Pyroscope's YAML tree, both ways: `-config.file` is read into flags
//! through [`KEYS`], and `/config` writes the running config back through the same table,
//! so what `/config` shows can be pasted into a config file and means the same config
//! (checked by `config_round_trips_through_its_own_yaml`).
use super::{format_duration, Config, Limits};
use serde::Serialize;
use serde_yaml::{Mapping, Value};
use std::time::Duration;

/// How `/config` reads one key's value back; `Null` leaves the key out (an unset value
/// that is resolved at start, a section that is off, or an alias of another key).
type Get = fn(&Config) -> Value;

fn val<T: Serialize>(x: &T) -> Value {
    serde_yaml::to_value(x).unwrap_or(Value::Null)
}

fn dur(d: Duration) -> Value {
    Value::String(format_duration(d))
}

/// A second spelling of a key shown under its first one.
fn alias(_: &Config) -> Value {
    Value::Null
}

/// The memberlist keys are shown only in cluster mode: any of them turns it on.
fn gossip(c: &Config, v: Value) -> Value {
    if c.memberlist.enabled {
        v
    } else {
        Value::Null
    }
}

/// The YAML keys (Pyroscope's config file tree), the flag each one sets, and its value. The
/// order is `/config`'s.
const KEYS: &[(&[&str], &str, Get)] = &[
    (&["target"], "target", |c| val(&c.target)),
    (&["shards"], "shards", |c| val(&c.cores)),
    (&["server", "http_listen_address"], "server.http-listen-address", |c| val(&c.http_listen_address)),
    (&["server", "http_listen_port"], "server.http-listen-port", |c| val(&c.http_listen_port)),
    (&["server", "grpc_listen_port"], "server.grpc-listen-port", |c| val(&c.grpc_listen_port)),
    (&["server", "http_server_read_timeout"], "server.http-server-read-timeout", |c| dur(c.http_server_read_timeout)),
    (
        &["server", "http_server_write_timeout"],
        "server.http-server-write-timeout",
        |c| dur(c.http_server_write_timeout),
    ),
    (&["server", "http_server_idle_timeout"], "server.http-server-idle-timeout", |c| dur(c.http_server_idle_timeout)),
    (&["server", "http_conn_limit"], "server.http-conn-limit", |c| val(&c.http_conn_limit)),
    (&["server", "max_inflight_body_bytes"], "server.max-inflight-body-bytes", |c| val(&c.max_inflight_body_bytes)),
    (&["server", "log_level"], "log.level", |c| val(&c.log_level)),
    (&["server", "log_format"], "log.format", |c| val(&c.log_format)),
    (&["multitenancy_enabled"], "auth.multitenancy-enabled", |c| val(&c.multitenancy_enabled)),
    (&["auth", "multitenancy_enabled"], "auth.multitenancy-enabled", alias),
    (&["storage", "path"], "storage.path", |c| val(&c.storage_path)),
    (&["storage", "backend"], "storage.backend", |c| val(&c.storage.backend)),
    (&["storage", "prefix"], "storage.prefix", |c| val(&c.storage.prefix)),
    (&["storage", "filesystem", "dir"], "storage.filesystem.dir", |c| val(&c.storage.filesystem.dir)),
    (&["storage", "s3", "endpoint"], "storage.s3.endpoint", |c| val(&c.storage.s3.endpoint)),
    (&["storage", "s3", "bucket_name"], "storage.s3.bucket-name", |c| val(&c.storage.s3.bucket_name)),
    (&["storage", "s3", "region"], "storage.s3.region", |c| val(&c.storage.s3.region)),
    (&["storage", "s3", "access_key_id"], "storage.s3.access-key-id", |c| val(&c.storage.s3.access_key_id)),
    (&["storage", "s3", "secret_access_key"], "storage.s3.secret-access-key", |c| val(&c.storage.s3.secret_access_key)),
    (&["storage", "s3", "insecure"], "storage.s3.insecure", |c| val(&c.storage.s3.insecure)),
    (&["storage", "s3", "force_path_style"], "storage.s3.force-path-style", |c| val(&c.storage.s3.force_path_style)),
    (&["storage", "s3", "bucket_lookup_type"], "storage.s3.bucket-lookup-type", |c| {
        val(&c.storage.s3.bucket_lookup_type)
    }),
    (&["storage", "s3", "signature_version"], "storage.s3.signature-version", |c| val(&c.storage.s3.signature_version)),
    (&["storage", "s3", "native_aws_auth_enabled"], "storage.s3.native-aws-auth-enabled", |c| {
        val(&c.storage.s3.native_aws_auth_enabled)
    }),
    (&["storage", "gcs", "bucket_name"], "storage.gcs.bucket-name", |c| val(&c.storage.gcs.bucket_name)),
    (&["storage", "gcs", "service_account"], "storage.gcs.service-account", |c| val(&c.storage.gcs.service_account)),
    (&["storage", "azure", "account_name"], "storage.azure.account-name", |c| val(&c.storage.azure.account_name)),
    (&["storage", "azure", "account_key"], "storage.azure.account-key", |c| val(&c.storage.azure.account_key)),
    (&["storage", "azure", "container_name"], "storage.azure.container-name", |c| val(&c.storage.azure.container_name)),
    (&["storage", "azure", "endpoint_suffix"], "storage.azure.endpoint-suffix", |c| {
        val(&c.storage.azure.endpoint_suffix)
    }),
    (&["ingester", "wal_dir"], "ingester.wal-dir", |c| val(&c.wal_dir)),
    (&["ingester", "wal_segment_size_bytes"], "ingester.wal-segment-size-bytes", |c| val(&c.wal_segment_size_bytes)),
    (&["ingester", "wal_sync_policy"], "ingester.wal-sync-policy", |c| val(&c.wal_sync_policy)),
    (&["ingester", "wal_preallocate"], "ingester.wal-preallocate", |c| val(&c.wal_preallocate)),
    (&["ingester", "max_head_bytes_per_core"], "ingester.max-head-bytes-per-core", |c| val(&c.max_head_bytes_per_core)),
    (&["ingester", "max_block_duration"], "ingester.max-block-duration", |c| dur(c.max_block_duration)),
    (&["ingester", "max_block_bytes"], "ingester.max-block-bytes", |c| val(&c.max_block_bytes)),
    (&["ingester", "heartbeat_period"], "ingester.heartbeat-period", |c| dur(c.ring.heartbeat_period)),
    (&["distributor", "replication_factor"], "distributor.replication-factor", |c| val(&c.replication_factor)),
    (&["distributor", "push_timeout"], "distributor.push.timeout", |c| dur(c.push_timeout)),
    (&["distributor", "decode_offload_bytes"], "distributor.decode-offload-bytes", |c| val(&c.decode_offload_bytes)),
    (&["ingester", "append_step_frames"], "ingester.append-step-frames", |c| val(&c.append_step_frames)),
    (&["ring", "instance_id"], "ring.instance-id", |c| val(&c.ring.instance_id)),
    (&["ring", "instance_availability_zone"], "ring.instance-availability-zone", |c| val(&c.ring.availability_zone)),
    (&["ring", "heartbeat_timeout"], "ring.heartbeat-timeout", |c| dur(c.ring.heartbeat_timeout)),
    (&["ring", "auto_forget_after"], "ring.auto-forget-after", |c| dur(c.ring.auto_forget_after)),
    (&["ring", "tokens_per_core"], "ring.tokens-per-core", |c| val(&c.ring_tokens_per_core)),
    (&["memberlist", "bind_addr"], "memberlist.bind-addr", |c| gossip(c, val(&c.memberlist.bind_addr))),
    (&["memberlist", "bind_port"], "memberlist.bind-port", |c| gossip(c, val(&c.memberlist.bind_port))),
    (&["memberlist", "advertise_addr"], "memberlist.advertise-addr", |c| gossip(c, val(&c.memberlist.advertise_addr))),
    (&["memberlist", "advertise_port"], "memberlist.advertise-port", |c| gossip(c, val(&c.memberlist.advertise_port))),
    (&["memberlist", "cluster_label"], "memberlist.cluster-label", |c| gossip(c, val(&c.memberlist.cluster_label))),
    (&["querier", "query_store_after"], "querier.query-store-after", |c| dur(c.query_store_after)),
    (&["querier", "max_concurrent"], "querier.max-concurrent", |c| val(&c.read_path.querier_max_concurrent)),
    (
        &["query_scheduler", "max_outstanding_requests_per_tenant"],
        "query-scheduler.max-outstanding-requests-per-tenant",
        |c| val(&c.read_path.max_outstanding_requests_per_tenant),
    ),
    (&["frontend", "scheduler_address"], "query-frontend.scheduler-address", |c| {
        val(&c.read_path.frontend_scheduler_address)
    }),
    (&["frontend", "cache_results"], "query-frontend.cache-results", |c| val(&c.read_path.cache_results)),
    (&["frontend", "results_cache_max_bytes"], "query-frontend.results-cache-max-bytes", |c| {
        val(&c.read_path.results_cache_max_bytes)
    }),
    (&["frontend", "max_cache_freshness"], "query-frontend.max-cache-freshness", |c| {
        dur(c.read_path.max_cache_freshness)
    }),
    (&["frontend_worker", "scheduler_address"], "querier.scheduler-address", |c| {
        val(&c.read_path.querier_scheduler_address)
    }),
    (&["store_gateway", "cache_bytes_per_core"], "store-gateway.cache-bytes-per-core", |c| {
        val(&c.block_cache_bytes_per_core)
    }),
    (&["store_gateway", "rows_cache_bytes_per_core"], "store-gateway.rows-cache-bytes-per-core", |c| {
        val(&c.rows_cache_bytes_per_core)
    }),
    (
        &["store_gateway", "sharding_ring", "replication_factor"],
        "store-gateway.sharding-ring.replication-factor",
        |c| val(&c.store_gateway_replication_factor),
    ),
    (&["store_gateway", "sync_interval"], "store-gateway.sync-interval", |c| dur(c.store_gateway_sync_interval)),
    (&["blocks_storage", "bucket_store", "sync_interval"], "store-gateway.sync-interval", alias),
    (&["compactor", "block_ranges"], "compactor.block-ranges", |c| {
        Value::Sequence(c.compactor.block_ranges.iter().map(|d| dur(*d)).collect())
    }),
    (&["compactor", "compaction_interval"], "compactor.compaction-interval", |c| dur(c.compactor.compaction_interval)),
    (&["compactor", "first_level_compaction_wait_period"], "compactor.first-level-compaction-wait-period", |c| {
        dur(c.compactor.first_level_compaction_wait_period)
    }),
    (&["compactor", "compaction_concurrency"], "compactor.compaction-concurrency", |c| {
        val(&c.compactor.compaction_concurrency)
    }),
    (&["compactor", "deletion_delay"], "compactor.deletion-delay", |c| dur(c.compactor.deletion_delay)),
    (&["compactor", "cleanup_interval"], "compactor.cleanup-interval", |c| dur(c.compactor.cleanup_interval)),
    (&["compactor", "partial_block_deletion_delay"], "compactor.partial-block-deletion-delay", |c| {
        dur(c.compactor.partial_block_deletion_delay)
    }),
    (&["compactor", "max_memory_bytes"], "compactor.max-memory-bytes", |c| val(&c.compactor.max_memory_bytes)),
    (&["compactor", "data_dir"], "compactor.data-dir", |c| val(&c.compactor.data_dir)),
    (&["self_profiling", "disable_push"], "self-profiling.disable-push", |c| val(&c.self_profiling.disable_push)),
    (&["self_profiling", "tenant_id"], "self-profiling.tenant-id", |c| val(&c.self_profiling.tenant_id)),
    (&["self_profiling", "push_interval"], "self-profiling.push-interval", |c| dur(c.self_profiling.push_interval)),
    (&["self_profiling", "url"], "self-profiling.url", |c| val(&c.self_profiling.url)),
];

/// `limits:` and each tenant's `overrides:` keys, with the flag each one sets; `/config`
/// shows them as `Limits` serializes (the same names).
const LIMIT_KEYS: &[(&str, &str)] = &[
    ("reject_older_than", "validation.reject-older-than"),
    ("reject_newer_than", "validation.reject-newer-than"),
    ("max_profile_size_bytes", "validation.max-profile-size-bytes"),
    ("max_profile_stacktrace_samples", "validation.max-profile-stacktrace-samples"),
    ("max_label_names_per_series", "validation.max-label-names-per-series"),
    ("max_local_series_per_tenant", "ingester.max-local-series-per-tenant"),
    ("max_global_series_per_tenant", "ingester.max-global-series-per-tenant"),
    ("max_label_name_length", "validation.max-length-label-name"),
    ("max_label_value_length", "validation.max-length-label-value"),
    ("ingestion_rate_mb", "distributor.ingestion-rate-limit-mb"),
    ("ingestion_burst_size_mb", "distributor.ingestion-burst-size-mb"),
    ("ingestion_body_limit_mb", "distributor.ingestion-body-limit-mb"),
    ("max_query_lookback", "querier.max-query-lookback"),
    ("max_query_length", "querier.max-query-length"),
    ("max_flamegraph_nodes_default", "querier.max-flamegraph-nodes-default"),
    ("max_flamegraph_nodes_max", "querier.max-flamegraph-nodes-max"),
    ("max_query_series", "querier.max-query-series"),
    ("max_query_points", "querier.max-query-points"),
    ("split_queries_by_interval", "querier.split-queries-by-interval"),
    ("max_query_parallelism", "querier.max-query-parallelism"),
    ("ingestion_tenant_shard_size", "distributor.ingestion-tenant-shard-size"),
    ("store_gateway_tenant_shard_size", "store-gateway.tenant-shard-size"),
    ("max_queriers_per_tenant", "query-frontend.max-queriers-per-tenant"),
    ("compactor_tenant_shard_size", "compactor.compactor-tenant-shard-size"),
    ("compactor_blocks_retention_period", "compactor.blocks-retention-period"),
];

impl Config {
    /// Reads a config file's text (already `-config.expand-env`ed) into the flags it sets.
    pub(super) fn apply_yaml(&mut self, text: &str) -> Result<(), String> {
        let doc: Value = serde_yaml::from_str(text).map_err(|e| format!("parsing config file: {e}"))?;
        let get = |path: &[&str]| -> Option<String> {
            let mut v = &doc;
            for p in path {
                v = v.get(p)?;
            }
            Some(scalar(v))
        };
        for (path, flag, _) in KEYS {
            if let Some(v) = get(path) {
                self.set_flag(flag, &v)?;
            }
        }
        if let Some(Value::Sequence(joins)) = doc.get("memberlist").and_then(|m| m.get("join_members")) {
            for j in joins {
                self.set_flag("memberlist.join", &scalar(j))?;
            }
        }
        if let Some(l) = doc.get("limits") {
            apply_limits(&mut self.limits, l)?;
        }
        if let Some(Value::Mapping(m)) = doc.get("overrides") {
            for (tenant, l) in m {
                let mut lim = self.limits.clone();
                apply_limits(&mut lim, l)?;
                self.overrides.insert(scalar(tenant), lim);
            }
        }
        Ok(())
    }

    /// The config in Pyroscope's YAML tree (`server:`, `storage:`, `limits:` …), as `/config`
    /// shows it: secrets masked, values left unset (resolved at start) left out.
    pub fn to_yaml(&self) -> String {
        let mut root = Mapping::new();
        for (path, _, get) in KEYS {
            let v = get(self);
            if !v.is_null() {
                insert(&mut root, path, v);
            }
        }
        if self.memberlist.enabled && !self.memberlist.join.is_empty() {
            insert(&mut root, &["memberlist", "join_members"], val(&self.memberlist.join));
        }
        root.insert("limits".into(), val(&self.limits));
        if !self.overrides.is_empty() {
            root.insert("overrides".into(), val(&self.overrides));
        }
        serde_yaml::to_string(&Value::Mapping(root)).unwrap_or_default()
    }
}

/// Puts `v` at `path`, making the sections on the way (in first-seen order).
fn insert(root: &mut Mapping, path: &[&str], v: Value) {
    let (last, sections) = path.split_last().expect("a key has a name");
    let mut map = root;
    for s in sections {
        let entry = map.entry(Value::from(*s)).or_insert_with(|| Value::Mapping(Mapping::new()));
        map = match entry {
            Value::Mapping(m) => m,
            _ => unreachable!("{s} is a section in KEYS and never a value"),
        };
    }
    map.insert(Value::from(*last), v);
}

fn apply_limits(limits: &mut Limits, v: &Value) -> Result<(), String> {
    let mut tmp = Config { limits: limits.clone(), ..Config::default() };
    if let Value::Mapping(m) = v {
        for (k, val) in m {
            let key = scalar(k);
            let Some((_, flag)) = LIMIT_KEYS.iter().find(|(y, _)| *y == key) else {
                return Err(format!("config file: unknown key limits.{key}"));
            };
            tmp.set_flag(flag, &scalar(val))?;
        }
    }
    *limits = tmp.limits;
    Ok(())
}

/// A YAML value as the flag's text.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // A list (`block_ranges: [1h, 2h, 8h]`) as the comma-separated flag value.
        Value::Sequence(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_yaml(yaml: &str, flags: &[&str]) -> Config {
        let path = std::env::temp_dir().join(format!("kiln-yaml-{}-{:p}.yaml", std::process::id(), yaml));
        std::fs::write(&path, yaml).unwrap();
        let mut args = vec![format!("-config.file={}", path.display())];
        args.extend(flags.iter().map(|f| f.to_string()));
        let c = Config::from_args(&args);
        let _ = std::fs::remove_file(&path);
        c.unwrap()
    }

    /// What `/config` shows, pasted into a config file, is the same config: every key it
    /// writes is one the file reader takes, with a value it parses back to the same.
    #[test]
    fn config_round_trips_through_its_own_yaml() {
        let flags: &[&[&str]] = &[
            &[],
            &[
                "-target=ingester",
                "-memberlist.join=127.0.0.1:7946",
                "-memberlist.join=127.0.0.1:7947",
                "-memberlist.bind-port=7950",
                "-memberlist.cluster-label=blue",
                "-shards=3",
                "-server.http-conn-limit=100",
                "-server.http-server-write-timeout=1500ms",
                "-log.level=debug",
                "-log.format=json",
                "-storage.backend=s3",
                "-storage.s3.bucket-name=b",
                "-storage.s3.endpoint=127.0.0.1:9000",
                "-storage.s3.force-path-style=true",
                "-ingester.wal-sync-policy=write",
                "-ingester.max-block-bytes=1000000",
                "-distributor.replication-factor=3",
                "-compactor.block-ranges=30s,2m,1h",
                "-query-frontend.cache-results=false",
                "-validation.max-profile-size-bytes=1234",
                "-querier.split-queries-by-interval=90m",
                "-ring.tokens-per-core=7",
                "-distributor.decode-offload-bytes=0",
                "-ingester.append-step-frames=1000",
                "-self-profiling.push-interval=2s",
                "-self-profiling.tenant-id=ops",
                "-auth.multitenancy-enabled=true",
            ],
        ];
        for f in flags {
            let args: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            let c = Config::from_args(&args).unwrap();
            let yaml = c.to_yaml();
            let mut back = from_yaml(&yaml, &[]);
            back.config_file.clone_from(&c.config_file);
            assert_eq!(format!("{back:#?}"), format!("{c:#?}"), "flags {f:?}, through\n{yaml}");
            assert_eq!(back.to_yaml(), yaml);
        }
    }

    #[test]
    fn config_shows_pyroscopes_tree() {
        let c = from_yaml(
            "server:\n  http_listen_port: 4141\nlimits:\n  ingestion_rate_mb: 7\noverrides:\n  t1:\n    max_query_length: 36h\n",
            &["-storage.s3.secret-access-key=hunter2"],
        );
        let doc: Value = serde_yaml::from_str(&c.to_yaml()).unwrap();
        assert_eq!(doc["server"]["http_listen_port"], Value::from(4141));
        assert_eq!(doc["limits"]["ingestion_rate_mb"], Value::from(7.0));
        assert_eq!(doc["overrides"]["t1"]["max_query_length"], Value::from("36h"));
        assert_eq!(doc["storage"]["s3"]["secret_access_key"], Value::from("********"));
        assert_eq!(doc["compactor"]["block_ranges"], val(&["1h", "2h", "8h"]));
        // Off in a single node: showing them would turn cluster mode on when pasted back.
        assert!(doc.get("memberlist").is_none());
        // Unset values resolved at start are left out, never shown as a value they are not.
        assert!(doc["server"].get("http_conn_limit").is_none());
        // An alias is read but shown once, under its first spelling.
        assert!(doc.get("blocks_storage").is_none() && doc.get("auth").is_none());
        // Every section the keys name is a mapping, never a value.
        for (path, _, _) in KEYS {
            let mut v = &doc;
            for s in &path[..path.len() - 1] {
                match v.get(s) {
                    Some(next) => v = next,
                    None => break,
                }
                assert!(v.is_mapping(), "{path:?}");
            }
        }
    }
}
