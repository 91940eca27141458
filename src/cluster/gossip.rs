//! The gossip thread: chitchat on a current-thread tokio runtime of its own. It publishes
//! this instance's entry and heartbeat, applies the process's commands (state changes,
//! Forget), and swaps a new ring snapshot in whenever what it knows of the members changes.
use super::{entry, join, now_ms, Cluster, Command};
use crate::config::Config;
use arc_swap::ArcSwap;
use chitchat::transport::UdpTransport;
use chitchat::{spawn_chitchat, Chitchat, ChitchatConfig, ChitchatId, FailureDetectorConfig};
use kiln_shards::ring::member::{InstanceDesc, State};
use kiln_shards::ring::snapshot::{RingConfig, Snapshot};
use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How often chitchat gossips with a few peers (memberlist's default is 200 ms; a member's
/// news reaches all N members in about log₃(N) rounds).
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(250);

/// The most members a snapshot holds (those with the lowest IDs are kept): a flood of
/// strangers on the gossip port cannot make every core's ring grow without bound.
pub const MAX_MEMBERS: usize = 4096;

/// What the thread remembers of each member between rounds: the generation it follows and
/// when (on this clock) that member's heartbeat last changed.
struct Seen {
    generation: u64,
    heartbeat: String,
    changed_ms: u64,
}

/// Starts the gossip thread for `own` (this instance's entry) and returns the cluster handle
/// once the gossip port is bound; an error says why it could not be.
pub fn start(cfg: &Config, own: InstanceDesc) -> Result<Arc<Cluster>, String> {
    let listen: SocketAddr = format!("{}:{}", cfg.memberlist.bind_addr, cfg.memberlist.bind_port)
        .parse()
        .map_err(|e| format!("-memberlist.bind-addr/-bind-port: {e}"))?;
    let advertise: SocketAddr = cfg
        .advertised_gossip_addr()
        .parse()
        .map_err(|e| format!("-memberlist.advertise-addr must be an IP address: {e}"))?;
    let ring = super::ring_config(cfg);
    let (tx, rx) = mpsc::channel();
    let cluster = Arc::new(Cluster {
        snapshot: ArcSwap::from_pointee(Snapshot::build(vec![own.clone()], now_ms(), &ring)),
        commands: tx,
        self_id: own.id.clone(),
        replication_factor: cfg.replication_factor,
        store_gateway_replication_factor: cfg.store_gateway_replication_factor,
        push_timeout: cfg.push_timeout,
        swaps: AtomicU64::new(0),
        calls: Default::default(),
        tenant_shards: Default::default(),
        members_dropped: AtomicU64::new(0),
        heartbeats: ArcSwap::default(),
    });
    // A restart is a new generation: members drop the old one's entry for it.
    let generation =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let grace = if cfg.ring.auto_forget_after.is_zero() {
        Duration::from_secs(7 * 24 * 3600)
    } else {
        cfg.ring.auto_forget_after
    };
    let cc = ChitchatConfig {
        chitchat_id: ChitchatId::new(own.id.clone(), generation, advertise),
        cluster_id: if cfg.memberlist.cluster_label.is_empty() {
            "kiln".into()
        } else {
            cfg.memberlist.cluster_label.clone()
        },
        gossip_interval: GOSSIP_INTERVAL,
        listen_addr: listen,
        seed_nodes: join::seeds(&cfg.memberlist.join),
        failure_detector_config: FailureDetectorConfig {
            dead_node_grace_period: grace,
            initial_interval: cfg.ring.heartbeat_period,
            ..Default::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    };
    let srv_joins: Vec<String> = cfg.memberlist.join.iter().filter(|j| j.starts_with("dnssrv+")).cloned().collect();
    let (bound_tx, bound_rx) = mpsc::channel();
    let c = cluster.clone();
    let heartbeat_period = cfg.ring.heartbeat_period;
    std::thread::Builder::new()
        .name("kiln-gossip".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = bound_tx.send(Err(format!("starting the gossip runtime: {e}")));
                    return;
                }
            };
            rt.block_on(run(c, own, cc, ring, rx, bound_tx, heartbeat_period, srv_joins));
        })
        .map_err(|e| format!("starting the gossip thread: {e}"))?;
    match bound_rx.recv() {
        Ok(Ok(())) => Ok(cluster),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the gossip thread stopped while starting".into()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    cluster: Arc<Cluster>,
    mut own: InstanceDesc,
    cc: ChitchatConfig,
    ring: RingConfig,
    commands: mpsc::Receiver<Command>,
    bound: mpsc::Sender<Result<(), String>>,
    heartbeat_period: Duration,
    srv_joins: Vec<String>,
) {
    let self_gen = cc.chitchat_id.generation_id;
    let mut keys = entry::own_keys(&own);
    keys.push((entry::HEARTBEAT.into(), now_ms().to_string()));
    let handle = match spawn_chitchat(cc, keys, &UdpTransport).await {
        Ok(h) => h,
        Err(e) => {
            let _ = bound.send(Err(format!("gossip: {e:#}")));
            return;
        }
    };
    let _ = bound.send(Ok(()));
    let mut seen: FxHashMap<String, Seen> = FxHashMap::default();
    let mut last_shape: Option<Vec<u8>> = None;
    let mut last_heartbeat = std::time::Instant::now();
    let mut last_srv = None::<std::time::Instant>;
    let mut tick = tokio::time::interval(GOSSIP_INTERVAL);
    loop {
        tick.tick().await;
        let mut news = Vec::new();
        while let Ok(c) = commands.try_recv() {
            news.push(c);
        }
        let beat = last_heartbeat.elapsed() >= heartbeat_period;
        if beat {
            last_heartbeat = std::time::Instant::now();
        }
        // A dnssrv+ join is resolved again every minute: members come and go behind it.
        if !srv_joins.is_empty() && last_srv.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            last_srv = Some(std::time::Instant::now());
            for addr in join::resolve_srv_all(&srv_joins).await {
                let _ = handle.gossip(addr);
            }
        }
        let now = now_ms();
        let descs = handle
            .with_chitchat(|c| {
                apply(c, &mut own, &news);
                if beat {
                    c.self_node_state().set(entry::HEARTBEAT, now.to_string());
                }
                collect(c, &own, self_gen, &mut seen, now)
            })
            .await;
        let mut descs = descs;
        if descs.len() > MAX_MEMBERS {
            descs.sort_unstable_by(|a, b| (a.id != own.id, &a.id).cmp(&(b.id != own.id, &b.id)));
            cluster.members_dropped.fetch_add((descs.len() - MAX_MEMBERS) as u64, std::sync::atomic::Ordering::Relaxed);
            descs.truncate(MAX_MEMBERS);
        }
        cluster.heartbeats.store(Arc::new(descs.iter().map(|d| (d.id.clone(), d.heartbeat_ms)).collect()));
        let shape = shape(&descs, now, &ring);
        if last_shape.as_ref() != Some(&shape) {
            last_shape = Some(shape);
            // Rings whose members did not change are shared with the last snapshot.
            let next = cluster.snapshot().rebuild(descs, now, &ring);
            cluster.publish(next);
        }
    }
}

/// Applies the process's commands to this instance's own state.
fn apply(c: &mut Chitchat, own: &mut InstanceDesc, news: &[Command]) {
    for cmd in news {
        match cmd {
            Command::SetState(s) => {
                own.state = *s;
                c.self_node_state().set(entry::STATE, s.as_str());
                tracing::info!(state = s.as_str(), "ring state");
            }
            Command::Forget(id) => {
                let generation = c
                    .node_states()
                    .keys()
                    .filter(|k| &*k.node_id == id.as_str())
                    .map(|k| k.generation_id)
                    .max()
                    .unwrap_or(u64::MAX);
                c.self_node_state().set(format!("{}{id}", entry::FORGET_PREFIX), generation.to_string());
                tracing::info!(member = %id, generation, "forgetting a ring member");
            }
        }
    }
}

/// Every member this instance knows, newest generation of each ID, less the forgotten ones,
/// with the time (on this clock) each heartbeat was last seen to change.
fn collect(
    c: &Chitchat,
    own: &InstanceDesc,
    self_gen: u64,
    seen: &mut FxHashMap<String, Seen>,
    now: u64,
) -> Vec<InstanceDesc> {
    let mut forgotten: FxHashMap<&str, u64> = FxHashMap::default();
    for st in c.node_states().values() {
        for (k, v) in st.iter_prefix(entry::FORGET_PREFIX) {
            let id = &k[entry::FORGET_PREFIX.len()..];
            let g = v.value.parse().unwrap_or(0);
            let e = forgotten.entry(id).or_insert(0);
            *e = (*e).max(g);
        }
    }
    let mut newest: FxHashMap<&str, (&ChitchatId, &chitchat::NodeState)> = FxHashMap::default();
    for (id, st) in c.node_states() {
        let keep = newest.get(&*id.node_id).is_none_or(|(old, _)| old.generation_id < id.generation_id);
        if keep {
            newest.insert(&id.node_id, (id, st));
        }
    }
    let mut out = Vec::with_capacity(newest.len());
    for (node, (id, st)) in newest {
        if node == own.id && id.generation_id == self_gen {
            let mut me = own.clone();
            me.heartbeat_ms = now;
            out.push(me);
            continue;
        }
        if forgotten.get(node).is_some_and(|g| *g >= id.generation_id) {
            continue;
        }
        let mut desc = match entry::decode(node, |k| st.get(k)) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "member left out until its entry is whole");
                continue;
            }
        };
        let hb = st.get(entry::HEARTBEAT).unwrap_or("");
        // At first sight a member is as fresh as its own last heartbeat says (capped at now):
        // one that died before this instance started is unhealthy at once, as dskit judges
        // it, not healthy for a heartbeat timeout (a store-gateway starting then would leave
        // the dead one's share of the blocks to it). After that, a heartbeat is fresh when
        // it is seen to change, on this clock alone: no skew between hosts matters.
        let s = seen.entry(node.to_string()).or_insert_with(|| Seen {
            generation: id.generation_id,
            heartbeat: hb.to_string(),
            changed_ms: hb.parse::<u64>().map_or(now, |t| t.min(now)),
        });
        if s.generation != id.generation_id || s.heartbeat != hb {
            *s = Seen { generation: id.generation_id, heartbeat: hb.to_string(), changed_ms: now };
        }
        desc.heartbeat_ms = s.changed_ms;
        out.push(desc);
    }
    let present: rustc_hash::FxHashSet<&str> = out.iter().map(|d| d.id.as_str()).collect();
    seen.retain(|id, _| present.contains(id.as_str()));
    out
}

/// What a snapshot depends on, short of its heartbeats' exact times: a new snapshot is built
/// only when this changes (a member joins, leaves, changes state, turns UNHEALTHY or is
/// forgotten), not every round.
fn shape(descs: &[InstanceDesc], now: u64, ring: &RingConfig) -> Vec<u8> {
    let mut parts: Vec<String> = descs
        .iter()
        .map(|d| {
            let age = now.saturating_sub(d.heartbeat_ms);
            let healthy = age <= ring.heartbeat_timeout_ms;
            let gone = ring.forget_after_ms > 0 && age > ring.forget_after_ms;
            format!(
                "{}|{}|{}|{}|{}|{}|{:x}|{healthy}|{gone}",
                d.id,
                d.addr,
                d.zone,
                d.components,
                d.state.as_str(),
                d.cores,
                d.token_seed
            )
        })
        .collect();
    parts.sort_unstable();
    parts.join("\n").into_bytes()
}

/// Sets this instance's state for good before the process exits, and gives gossip a few
/// rounds to carry it (LEFT: the others drop the entry at once instead of waiting for it to
/// turn UNHEALTHY).
pub fn leave(cluster: &Cluster) {
    cluster.set_state(State::Left);
    std::thread::sleep(GOSSIP_INTERVAL * 4);
}
