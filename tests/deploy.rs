//! The files under `deploy/`, checked without Docker or Kubernetes (neither runs on the
//! machines that build kiln): every YAML file parses and is one of three kinds (a compose
//! file, a kiln config file, Kubernetes manifests), and what the files say to each other
//! holds: compose services, volumes and gossip peers that exist; Kubernetes Services,
//! Secrets, ConfigMaps and volumes that a workload names are defined beside it; selectors
//! that select something; kiln only on its own ports; each `$(VAR)` defined; every kiln
//! command line, with the image's entrypoint before it and its config file found where it
//! is mounted, accepted by kiln's own flag parser.
//!
//! `deploy_checks_catch_broken_files` breaks copies of the files and expects each break to
//! be found, so the checks cannot silently pass everything.
use kiln::config::Config;
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A kiln process that a deploy file starts.
struct Kiln {
    /// The file and the service or container, for messages.
    at: String,
    /// The image's entrypoint flags, then the file's, each `$(VAR)` replaced and
    /// `-config.file` pointing at the file that would be mounted there.
    args: Vec<String>,
    /// The container's memory limit in bytes, if it has one.
    memory_limit: Option<u64>,
}

/// What `survey` found under a `deploy/` folder.
struct Survey {
    problems: Vec<String>,
    kilns: Vec<Kiln>,
    /// The kiln config files (standalone or from a ConfigMap), as files on this machine.
    configs: Vec<(String, PathBuf)>,
    /// Where ConfigMap contents were written for the parser; removed on drop.
    scratch: PathBuf,
}

impl Drop for Survey {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn scratch_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "kiln-deploy-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn get_str<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path)?.as_str()
}

fn seq(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_sequence).map(Vec::as_slice).unwrap_or(&[])
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(Value::Mapping(m)) = v {
        for (k, v) in m {
            if let (Some(k), Some(v)) = (k.as_str(), v.as_str()) {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    out
}

/// Whether every label of `selector` is among `labels` (an empty selector selects nothing
/// here: every selector in these files names its pods).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The values of `-name=value` among `args`.
fn flag_values<'a>(args: &'a [String], name: &str) -> Vec<&'a str> {
    args.iter().filter_map(|a| a.strip_prefix('-')?.strip_prefix(name)?.strip_prefix('=')).collect()
}

fn last_flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    flag_values(args, name).pop()
}

/// Whether the last `-target` runs an ingester (`all`, or a list naming it).
fn runs_ingester(args: &[String]) -> bool {
    last_flag(args, "target").is_none_or(|t| t == "all" || t.split(',').any(|c| c.trim() == "ingester"))
}

/// The flags of the Dockerfile's `ENTRYPOINT` (its exec form), after the binary.
fn entrypoint_flags(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    let line = text.lines().find(|l| l.starts_with("ENTRYPOINT")).expect("deploy/Dockerfile has an ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(line["ENTRYPOINT".len()..].trim())
        .expect("deploy/Dockerfile's ENTRYPOINT is in exec form, a JSON array");
    assert!(argv[0].ends_with("/kiln"), "deploy/Dockerfile's ENTRYPOINT runs {:?}, not kiln", argv[0]);
    argv[1..].to_vec()
}

/// A Kubernetes quantity (`4Gi`, `512Mi`, `1G`, `1000`) in bytes.
fn quantity(q: &str) -> Option<u64> {
    let units: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (u, m) in units {
        if let Some(n) = q.strip_suffix(u) {
            return n.parse::<u64>().ok().map(|n| n * m);
        }
    }
    q.parse().ok()
}

/// Reads every YAML file under `root/deploy` and checks what the files say to each other.
fn survey(root: &Path) -> Survey {
    let mut s = Survey { problems: Vec::new(), kilns: Vec::new(), configs: Vec::new(), scratch: scratch_dir("cfg") };
    let entry = entrypoint_flags(root);
    let mut files = Vec::new();
    yaml_files(&root.join("deploy"), &mut files);
    assert!(!files.is_empty(), "no YAML under {}", root.join("deploy").display());
    // Kubernetes manifests are checked a folder at a time: a folder is applied as a whole.
    let mut k8s: BTreeMap<PathBuf, Vec<(String, Value)>> = BTreeMap::new();
    for path in &files {
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let text = std::fs::read_to_string(path).unwrap();
        let mut docs = Vec::new();
        for d in serde_yaml::Deserializer::from_str(&text) {
            match Value::deserialize(d) {
                Ok(Value::Null) => {}
                Ok(v) => docs.push(v),
                // serde_yaml's document iterator yields the same error again and again
                // after one: the rest of the file is not read.
                Err(e) => {
                    s.problems.push(format!("{rel}: does not parse: {e}"));
                    break;
                }
            }
        }
        let name = path.file_name().unwrap().to_str().unwrap();
        if rel.starts_with("deploy/kubernetes/") {
            let folder = k8s.entry(path.parent().unwrap().to_path_buf()).or_default();
            folder.extend(docs.into_iter().map(|d| (rel.clone(), d)));
        } else if name == "docker-compose.yaml" {
            match docs.as_slice() {
                [doc] => check_compose(&mut s, path, &rel, doc, &entry),
                _ => s.problems.push(format!("{rel}: a compose file is one YAML document")),
            }
        } else {
            // Anything else is a kiln config file: only kiln's own top-level keys, and
            // kiln takes it.
            let known = [
                "target",
                "server",
                "storage",
                "ingester",
                "store_gateway",
                "compactor",
                "shards",
                "multitenancy_enabled",
                "auth",
                "limits",
                "overrides",
            ];
            for doc in &docs {
                for k in doc.as_mapping().into_iter().flat_map(|m| m.keys()) {
                    if !k.as_str().is_some_and(|k| known.contains(&k)) {
                        s.problems.push(format!(
                            "{rel}: {k:?} is not a key of kiln's config file (a compose file is named docker-compose.yaml, manifests go under deploy/kubernetes/)"
                        ));
                    }
                }
            }
            s.configs.push((rel, path.clone()));
        }
    }
    for (folder, docs) in &k8s {
        check_kubernetes(&mut s, root, folder, docs, &entry);
    }
    s
}

/// A compose service's mount: its source (a named volume, or a path beside the file when it
/// starts with `.` or `/`) and its target in the container.
struct Mount {
    src: String,
    dst: String,
}

impl Mount {
    fn is_bind(&self) -> bool {
        self.src.starts_with('.') || self.src.starts_with('/')
    }
}

fn check_compose(s: &mut Survey, path: &Path, rel: &str, doc: &Value, entry: &[String]) {
    let Some(services) = doc.get("services").and_then(Value::as_mapping) else {
        s.problems.push(format!("{rel}: no services"));
        return;
    };
    let volumes: BTreeSet<String> = doc
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| m.keys().filter_map(|k| k.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    let mut host_ports = BTreeSet::new();
    // (service, its args) of every kiln service, for the checks across services.
    let mut kilns: Vec<(String, Vec<String>)> = Vec::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap_or("?");
        let at = format!("{rel}: service {name}");
        let svc = ComposeService { at: &at, name, v: svc, dir: path.parent().unwrap() };
        svc.check_depends_on(s, &names);
        let mounts = svc.mounts(s, &volumes);
        let dockerfile = svc.dockerfile(s);
        let is_kiln = dockerfile.as_ref().is_some_and(|(_, f)| f == "deploy/Dockerfile")
            || get_str(svc.v, &["image"]).is_some_and(|i| i.starts_with("kiln:"));
        svc.check_ports(s, is_kiln, &mut host_ports);
        if !is_kiln {
            continue;
        }
        if dockerfile.is_none() {
            s.problems.push(format!(
                "{at}: builds no image (every kiln service builds deploy/Dockerfile, so `up --build` needs no registry)"
            ));
        }
        if let Some(args) = svc.kiln_args(s, entry, &mounts, &volumes) {
            kilns.push((name.to_string(), args.clone()));
            s.kilns.push(Kiln { at: at.clone(), args, memory_limit: None });
        }
    }
    check_compose_gossip(s, rel, &kilns);
    let ingesters = kilns.iter().filter(|(_, a)| runs_ingester(a)).count();
    check_replication(s, rel, kilns.iter().map(|(n, a)| (n.as_str(), a.as_slice())), ingesters);
}

/// Gossip peers are kiln services of the file, on the port they bind.
fn check_compose_gossip(s: &mut Survey, rel: &str, kilns: &[(String, Vec<String>)]) {
    for (name, args) in kilns {
        for join in flag_values(args, "memberlist.join") {
            let (host, port) = join.rsplit_once(':').unwrap_or((join, "7946"));
            match kilns.iter().find(|(n, _)| n == host) {
                Some((_, peer)) => {
                    let bind = last_flag(peer, "memberlist.bind-port").unwrap_or("7946");
                    if bind != port {
                        s.problems.push(format!("{rel}: service {name} joins {join}, but {host} gossips on {bind}"));
                    }
                }
                None => {
                    s.problems.push(format!("{rel}: service {name} joins {join}, which is no kiln service of the file"))
                }
            }
        }
    }
}

/// One service of a compose file.
struct ComposeService<'a> {
    at: &'a str,
    name: &'a str,
    v: &'a Value,
    /// The compose file's folder, which relative paths start from.
    dir: &'a Path,
}

impl ComposeService<'_> {
    fn check_depends_on(&self, s: &mut Survey, names: &BTreeSet<&str>) {
        let deps: Vec<&str> = match self.v.get("depends_on") {
            Some(Value::Sequence(v)) => v.iter().filter_map(Value::as_str).collect(),
            Some(Value::Mapping(m)) => m.keys().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for d in deps {
            if d == self.name || !names.contains(d) {
                s.problems.push(format!("{}: depends_on {d:?}, which is not another service of the file", self.at));
            }
        }
    }

    /// Its mounts, each bind mount's source present and each named volume defined.
    fn mounts(&self, s: &mut Survey, volumes: &BTreeSet<String>) -> Vec<Mount> {
        let mut mounts = Vec::new();
        for v in seq(self.v.get("volumes")) {
            let m = match v {
                Value::String(m) => {
                    let mut parts = m.splitn(3, ':');
                    let src = parts.next().unwrap_or("").to_string();
                    Mount { src, dst: parts.next().unwrap_or("").to_string() }
                }
                _ => Mount {
                    src: get_str(v, &["source"]).unwrap_or("").to_string(),
                    dst: get_str(v, &["target"]).unwrap_or("").to_string(),
                },
            };
            if m.is_bind() {
                if !self.dir.join(&m.src).exists() {
                    s.problems.push(format!("{}: mounts {}, which does not exist beside the file", self.at, m.src));
                }
            } else if !volumes.contains(&m.src) {
                s.problems
                    .push(format!("{}: mounts volume {:?}, which the file's volumes do not define", self.at, m.src));
            }
            mounts.push(m);
        }
        mounts
    }

    /// The (context, Dockerfile) it builds, which must exist.
    fn dockerfile(&self, s: &mut Survey) -> Option<(String, String)> {
        let (ctx, file) = match self.v.get("build")? {
            Value::String(ctx) => (ctx.clone(), "Dockerfile".to_string()),
            b => (
                get_str(b, &["context"]).unwrap_or(".").to_string(),
                get_str(b, &["dockerfile"]).unwrap_or("Dockerfile").to_string(),
            ),
        };
        if !self.dir.join(&ctx).join(&file).is_file() {
            s.problems.push(format!("{}: builds {file} in {ctx}, which does not exist", self.at));
        }
        Some((ctx, file))
    }

    /// Host ports published once in the file; kiln's container ports its own.
    fn check_ports(&self, s: &mut Survey, is_kiln: bool, host_ports: &mut BTreeSet<String>) {
        for p in seq(self.v.get("ports")) {
            let p = match p {
                Value::String(p) => p.clone(),
                Value::Number(n) => n.to_string(),
                other => format!("{other:?}"),
            };
            let p = p.split('/').next().unwrap();
            let (host, container) = p.rsplit_once(':').map(|(h, c)| (Some(h), c)).unwrap_or((None, p));
            if let Some(h) = host {
                if !host_ports.insert(h.to_string()) {
                    s.problems.push(format!("{}: host port {h} is published twice in the file", self.at));
                }
            }
            if is_kiln && !matches!(container, "4040" | "7946") {
                s.problems.push(format!("{}: kiln listens on 4040 (HTTP) and 7946 (gossip), not {container}", self.at));
            }
        }
    }

    /// The kiln command line: the image's entrypoint flags, then `command`, with the config
    /// file read from the repository file mounted at its path; its data on named volumes.
    fn kiln_args(
        &self,
        s: &mut Survey,
        entry: &[String],
        mounts: &[Mount],
        volumes: &BTreeSet<String>,
    ) -> Option<Vec<String>> {
        let at = self.at;
        if self.v.get("entrypoint").is_some() {
            s.problems.push(format!("{at}: replaces the entrypoint; kiln flags go in `command`"));
        }
        let given: Vec<String> = match self.v.get("command") {
            None => Vec::new(),
            Some(Value::Sequence(v)) => v.iter().map(|a| a.as_str().unwrap_or("").to_string()).collect(),
            Some(_) => {
                s.problems.push(format!("{at}: `command` must be a list of flags"));
                return None;
            }
        };
        check_flag_form(s, at, &given);
        let mut args: Vec<String> = entry.iter().cloned().chain(given.iter().cloned()).collect();
        for a in args.iter_mut() {
            if let Some(file) = a.strip_prefix("-config.file=") {
                match mounts.iter().find(|m| m.dst == file && m.is_bind()) {
                    Some(m) => *a = format!("-config.file={}", self.dir.join(&m.src).display()),
                    None => s
                        .problems
                        .push(format!("{at}: -config.file={file} is not a file of the repository mounted there")),
                }
            }
        }
        for flag in ["storage.path", "storage.filesystem.dir"] {
            for p in flag_values(&given, flag) {
                let on_volume = mounts
                    .iter()
                    .any(|m| volumes.contains(&m.src) && (p == m.dst || p.starts_with(&format!("{}/", m.dst))));
                if !on_volume {
                    s.problems.push(format!(
                        "{at}: -{flag}={p} is not on a named volume: its data would die with the container"
                    ));
                }
            }
        }
        Some(args)
    }
}

/// Flags in deploy files are written `-name=value`, one argument each, so that reading them
/// (here and by people) needs no knowledge of which flags are booleans.
fn check_flag_form(s: &mut Survey, at: &str, args: &[String]) {
    for a in args {
        if !a.starts_with('-') || a.starts_with("--") || !a.contains('=') {
            s.problems.push(format!("{at}: {a:?} is not written -name=value"));
        }
    }
}

/// Every kiln of one deployment gives the same replication factor, and there are at least
/// that many ingesters to hold the replicas.
fn check_replication<'a>(
    s: &mut Survey,
    at: &str,
    kilns: impl Iterator<Item = (&'a str, &'a [String])>,
    ingesters: usize,
) {
    let mut factors: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, args) in kilns {
        let rf = last_flag(args, "distributor.replication-factor").unwrap_or("1");
        factors.entry(rf.to_string()).or_default().push(name);
    }
    if factors.len() > 1 {
        s.problems.push(format!("{at}: the replication factor differs between processes: {factors:?}"));
    }
    for rf in factors.keys() {
        match rf.parse::<usize>() {
            Ok(n) if n >= 1 && n <= ingesters => {}
            _ => s.problems.push(format!("{at}: replication factor {rf} with {ingesters} ingesters")),
        }
    }
}

/// One Kubernetes object with where it came from.
struct Obj<'a> {
    file: &'a str,
    kind: &'a str,
    ns: &'a str,
    name: &'a str,
    v: &'a Value,
}

/// A folder of manifests, applied together.
struct Folder<'a> {
    rel: String,
    objs: Vec<Obj<'a>>,
}

impl Folder<'_> {
    fn find(&self, kind: &str, ns: &str, name: &str) -> Option<&Obj<'_>> {
        self.objs.iter().find(|o| o.kind == kind && o.ns == ns && o.name == name)
    }

    fn workloads(&self) -> impl Iterator<Item = &Obj<'_>> {
        self.objs.iter().filter(|o| matches!(o.kind, "Deployment" | "StatefulSet" | "DaemonSet" | "Job"))
    }
}

fn pod_labels(w: &Obj) -> BTreeMap<String, String> {
    string_map(get(w.v, &["spec", "template", "metadata", "labels"]))
}

/// The kiln processes of a folder, for the checks across them.
#[derive(Default)]
struct FolderKilns {
    kilns: Vec<(String, Vec<String>)>,
    /// Ingester pods, counting replicas.
    ingesters: usize,
}

fn check_kubernetes(s: &mut Survey, root: &Path, folder: &Path, docs: &[(String, Value)], entry: &[String]) {
    let mut f = Folder { rel: folder.strip_prefix(root).unwrap().display().to_string(), objs: Vec::new() };
    for (file, v) in docs {
        let (Some(_), Some(kind), Some(name)) =
            (get_str(v, &["apiVersion"]), get_str(v, &["kind"]), get_str(v, &["metadata", "name"]))
        else {
            s.problems.push(format!("{file}: a document lacks apiVersion, kind or metadata.name"));
            continue;
        };
        let ns = get_str(v, &["metadata", "namespace"]).unwrap_or("");
        f.objs.push(Obj { file, kind, ns, name, v });
    }
    let namespaces: BTreeSet<&str> = f.objs.iter().filter(|o| o.kind == "Namespace").map(|o| o.name).collect();
    for o in &f.objs {
        if o.kind != "Namespace" && !namespaces.contains(o.ns) {
            s.problems.push(format!(
                "{}: {} {} is in namespace {:?}, which {} does not define",
                o.file, o.kind, o.name, o.ns, f.rel
            ));
        }
    }
    let mut fk = FolderKilns::default();
    for w in f.workloads() {
        check_workload(s, &f, w, entry, &mut fk);
    }
    check_selectors(s, &f);
    if !fk.kilns.is_empty() {
        check_replication(s, &f.rel, fk.kilns.iter().map(|(n, a)| (n.as_str(), a.as_slice())), fk.ingesters);
    }
}

/// A workload's selector, governing Service, volumes and containers.
fn check_workload(s: &mut Survey, f: &Folder, w: &Obj, entry: &[String], fk: &mut FolderKilns) {
    let at = format!("{}: {} {}", w.file, w.kind, w.name);
    if w.kind != "Job" && !selects(&string_map(get(w.v, &["spec", "selector", "matchLabels"])), &pod_labels(w)) {
        s.problems.push(format!("{at}: spec.selector.matchLabels does not select its own pod template"));
    }
    if w.kind == "StatefulSet" {
        match get_str(w.v, &["spec", "serviceName"]) {
            Some(svc) => match f.find("Service", w.ns, svc) {
                Some(o) if get_str(o.v, &["spec", "clusterIP"]) == Some("None") => {}
                Some(_) => s.problems.push(format!("{at}: serviceName {svc} is not a headless Service")),
                None => s.problems.push(format!("{at}: serviceName {svc} is no Service of {}", f.rel)),
            },
            None => s.problems.push(format!("{at}: a StatefulSet needs a serviceName")),
        }
    }
    let pod = get(w.v, &["spec", "template", "spec"]).unwrap_or(&Value::Null);
    for v in seq(pod.get("volumes")) {
        let name = get_str(v, &["name"]).unwrap_or("?");
        for (kind, path) in [("ConfigMap", ["configMap", "name"]), ("Secret", ["secret", "secretName"])] {
            if let Some(r) = get_str(v, &path) {
                if f.find(kind, w.ns, r).is_none() {
                    s.problems.push(format!("{at}: volume {name} names {kind} {r}, which {} does not define", f.rel));
                }
            }
        }
    }
    for c in seq(pod.get("containers")) {
        let cname = get_str(c, &["name"]).unwrap_or("?");
        let pc = PodContainer { at: format!("{at}, container {cname}"), f, w, pod, c };
        let env = pc.env(s);
        let args = pc.expand(s, "args", &env);
        pc.expand(s, "command", &env);
        pc.check_probe_and_mounts(s);
        let image = get_str(c, &["image"]).unwrap_or("");
        if image.rsplit('/').next().is_some_and(|i| i.starts_with("kiln:") || i.starts_with("kiln@")) {
            pc.check_kiln(s, entry, args, fk);
        }
    }
}

/// One container of a workload's pod template.
struct PodContainer<'a> {
    at: String,
    f: &'a Folder<'a>,
    w: &'a Obj<'a>,
    pod: &'a Value,
    c: &'a Value,
}

impl PodContainer<'_> {
    /// The environment as the kubelet would give it; every Secret or ConfigMap key it reads
    /// defined in the folder.
    fn env(&self, s: &mut Survey) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for e in seq(self.c.get("env")) {
            let Some(name) = get_str(e, &["name"]) else { continue };
            let secret = get(e, &["valueFrom", "secretKeyRef"]);
            let value = if let Some(v) = get_str(e, &["value"]) {
                v.to_string()
            } else if let Some(field) = get_str(e, &["valueFrom", "fieldRef", "fieldPath"]) {
                if field == "status.podIP" {
                    "10.0.0.1".to_string()
                } else {
                    field.to_string()
                }
            } else if let Some(r) = secret.or(get(e, &["valueFrom", "configMapKeyRef"])) {
                let kind = if secret.is_some() { "Secret" } else { "ConfigMap" };
                let (rname, key) = (get_str(r, &["name"]).unwrap_or(""), get_str(r, &["key"]).unwrap_or(""));
                let found = self.f.find(kind, self.w.ns, rname).and_then(|o| {
                    get_str(o.v, &["stringData", key]).or(get_str(o.v, &["data", key])).map(String::from)
                });
                found.unwrap_or_else(|| {
                    s.problems.push(format!(
                        "{}: env {name} reads key {key} of {kind} {rname}, which {} does not define",
                        self.at, self.f.rel
                    ));
                    String::new()
                })
            } else {
                s.problems.push(format!("{}: env {name} has no value", self.at));
                String::new()
            };
            env.insert(name.to_string(), value);
        }
        env
    }

    /// `args` or `command` with each `$(VAR)` replaced, every one defined in `env`.
    fn expand(&self, s: &mut Survey, key: &str, env: &BTreeMap<String, String>) -> Vec<String> {
        let mut expanded = Vec::new();
        for a in seq(self.c.get(key)) {
            let a = a.as_str().unwrap_or("");
            let mut out = String::new();
            let mut rest = a;
            while let Some(i) = rest.find("$(") {
                out.push_str(&rest[..i]);
                let Some(j) = rest[i..].find(')') else { break };
                let var = &rest[i + 2..i + j];
                match env.get(var) {
                    Some(v) => out.push_str(v),
                    None => s
                        .problems
                        .push(format!("{}: {a:?} reads $({var}), which the container's env does not define", self.at)),
                }
                rest = &rest[i + j + 1..];
            }
            out.push_str(rest);
            expanded.push(out);
        }
        expanded
    }

    /// (name, number, protocol) of its ports.
    fn ports(&self) -> Vec<(&str, u64, &str)> {
        seq(self.c.get("ports"))
            .iter()
            .map(|p| {
                (
                    get_str(p, &["name"]).unwrap_or(""),
                    get(p, &["containerPort"]).and_then(Value::as_u64).unwrap_or(0),
                    get_str(p, &["protocol"]).unwrap_or("TCP"),
                )
            })
            .collect()
    }

    fn claims(&self) -> BTreeSet<&str> {
        seq(get(self.w.v, &["spec", "volumeClaimTemplates"]))
            .iter()
            .filter_map(|c| get_str(c, &["metadata", "name"]))
            .collect()
    }

    fn volume(&self, name: &str) -> Option<&Value> {
        seq(self.pod.get("volumes")).iter().find(|v| get_str(v, &["name"]) == Some(name))
    }

    /// Mount path → (volume, subPath).
    fn mounts(&self) -> BTreeMap<&str, (&str, Option<&str>)> {
        seq(self.c.get("volumeMounts"))
            .iter()
            .filter_map(|m| Some((get_str(m, &["mountPath"])?, (get_str(m, &["name"])?, get_str(m, &["subPath"])))))
            .collect()
    }

    fn check_probe_and_mounts(&self, s: &mut Survey) {
        if let Some(port) = get(self.c, &["readinessProbe", "httpGet", "port"]) {
            let ports = self.ports();
            let ok = match port {
                Value::String(n) => ports.iter().any(|p| p.0 == n),
                Value::Number(n) => ports.iter().any(|p| Some(p.1) == n.as_u64()),
                _ => false,
            };
            if !ok {
                s.problems
                    .push(format!("{}: the readiness probe's port {port:?} is not a port of the container", self.at));
            }
        }
        let claims = self.claims();
        for (_, (name, _)) in self.mounts() {
            if self.volume(name).is_none() && !claims.contains(name) {
                s.problems.push(format!(
                    "{}: mounts volume {name}, which is neither a volume of the pod nor a claim template",
                    self.at
                ));
            }
        }
    }

    /// The text of the ConfigMap key mounted at `file`.
    fn mounted_config(&self, file: &str) -> Option<&str> {
        self.mounts().into_iter().find_map(|(path, (vol, sub))| {
            let key = match sub {
                Some(sub) if path == file => sub,
                None => file.strip_prefix(path)?.strip_prefix('/')?,
                _ => return None,
            };
            let cm = get_str(self.volume(vol)?, &["configMap", "name"])?;
            get_str(self.f.find("ConfigMap", self.w.ns, cm)?.v, &["data", key])
        })
    }

    /// A kiln container: its ports, probe, config file, gossip, sizes and, for an ingester,
    /// its volume and time to stop.
    fn check_kiln(&self, s: &mut Survey, entry: &[String], given: Vec<String>, fk: &mut FolderKilns) {
        let at = &self.at;
        if self.c.get("command").is_some() {
            s.problems.push(format!("{at}: replaces the image's entrypoint; kiln flags go in args"));
        }
        check_flag_form(s, at, &given);
        for (name, port, _) in self.ports() {
            if !matches!(port, 4040 | 7946) {
                s.problems.push(format!("{at}: port {name} is {port}; kiln listens on 4040 (HTTP) and 7946 (gossip)"));
            }
        }
        if get_str(self.c, &["readinessProbe", "httpGet", "path"]) != Some("/ready") {
            s.problems.push(format!("{at}: no readiness probe on /ready"));
        }
        let mut args: Vec<String> = entry.iter().cloned().chain(given).collect();
        for a in args.iter_mut() {
            let Some(file) = a.strip_prefix("-config.file=").map(String::from) else { continue };
            match self.mounted_config(&file) {
                Some(text) => {
                    let cname = get_str(self.c, &["name"]).unwrap_or("c");
                    let local = s.scratch.join(format!("{}-{}-{cname}.yaml", self.w.ns, self.w.name));
                    std::fs::write(&local, text).unwrap();
                    s.configs.push((format!("{at}: {file}"), local.clone()));
                    *a = format!("-config.file={}", local.display());
                }
                None => s.problems.push(format!("{at}: -config.file={file} is no key of a ConfigMap mounted there")),
            }
        }
        self.check_gossip(s, &args);
        let memory_limit = get_str(self.c, &["resources", "limits", "memory"]).and_then(quantity);
        if memory_limit.is_some() {
            for f in ["shards", "ingester.max-head-bytes-per-core"] {
                if last_flag(&args, f).is_none() {
                    s.problems.push(format!(
                        "{at}: with a memory limit, -{f} must be given: its default reads the node, not the pod's limits"
                    ));
                }
            }
        }
        if runs_ingester(&args) {
            self.check_ingester(s, &args);
            fk.ingesters += get(self.w.v, &["spec", "replicas"]).and_then(Value::as_u64).unwrap_or(1) as usize;
        }
        fk.kilns.push((format!("{} {}", self.w.kind, self.w.name), args.clone()));
        s.kilns.push(Kiln { at: at.clone(), args, memory_limit });
    }

    /// Each `dnssrv+_port._proto.service.namespace.svc…` join names a headless Service of the
    /// folder that publishes not-ready pods, has that port and selects this pod.
    fn check_gossip(&self, s: &mut Survey, args: &[String]) {
        let at = &self.at;
        let joins = flag_values(args, "memberlist.join");
        for join in &joins {
            let Some(name) = join.strip_prefix("dnssrv+") else { continue };
            let parts: Vec<&str> = name.split('.').collect();
            let ok = parts.len() >= 5 && parts[4] == "svc" && parts[0].starts_with('_') && parts[1].starts_with('_');
            if !ok {
                s.problems.push(format!("{at}: {join} is not dnssrv+_port._proto.service.namespace.svc…"));
                continue;
            }
            let (port, proto, svc, ns) = (&parts[0][1..], parts[1][1..].to_uppercase(), parts[2], parts[3]);
            let Some(o) = self.f.find("Service", ns, svc) else {
                s.problems
                    .push(format!("{at}: joins {join}, but {} defines no Service {svc} in namespace {ns}", self.f.rel));
                continue;
            };
            if get_str(o.v, &["spec", "clusterIP"]) != Some("None") {
                s.problems.push(format!(
                    "{at}: joins {join}, but Service {svc} is not headless (its SRV records would name the Service, not the pods)"
                ));
            }
            if get(o.v, &["spec", "publishNotReadyAddresses"]).and_then(Value::as_bool) != Some(true) {
                s.problems.push(format!(
                    "{at}: Service {svc} must publish not-ready pods: a pod turns ready only after it joined"
                ));
            }
            let named = seq(get(o.v, &["spec", "ports"]))
                .iter()
                .any(|p| get_str(p, &["name"]) == Some(port) && get_str(p, &["protocol"]).unwrap_or("TCP") == proto);
            if !named {
                s.problems.push(format!("{at}: joins {join}, but Service {svc} has no {proto} port named {port}"));
            }
            if !selects(&string_map(get(o.v, &["spec", "selector"])), &pod_labels(self.w)) {
                s.problems.push(format!("{at}: Service {svc}, which it joins through, does not select its pods"));
            }
        }
        if !joins.is_empty() && last_flag(args, "memberlist.advertise-addr").is_none() {
            s.problems.push(format!("{at}: no -memberlist.advertise-addr: peers must reach the pod's IP"));
        }
    }

    /// An ingester keeps its WAL on a claim of its StatefulSet and has time to stop cleanly.
    fn check_ingester(&self, s: &mut Survey, args: &[String]) {
        let at = &self.at;
        let grace = get(self.pod, &["terminationGracePeriodSeconds"]).and_then(Value::as_u64).unwrap_or(30);
        if grace < 120 {
            s.problems.push(format!(
                "{at}: terminationGracePeriodSeconds {grace}: an ingester needs time to gossip LEAVING and sync its WAL (at least 120)"
            ));
        }
        let data = last_flag(args, "storage.path").unwrap_or("./data");
        let claimed = self.mounts().get(data).is_some_and(|(vol, _)| self.claims().contains(vol));
        if self.w.kind != "StatefulSet" || !claimed {
            s.problems.push(format!(
                "{at}: an ingester keeps its WAL in -storage.path={data}, which must be a StatefulSet's claim template"
            ));
        }
    }
}

/// Services and disruption budgets select pods of the folder, on ports the pods have.
fn check_selectors(s: &mut Survey, f: &Folder) {
    for o in f.objs.iter().filter(|o| matches!(o.kind, "Service" | "PodDisruptionBudget")) {
        let at = format!("{}: {} {}", o.file, o.kind, o.name);
        let selector = if o.kind == "Service" {
            string_map(get(o.v, &["spec", "selector"]))
        } else {
            string_map(get(o.v, &["spec", "selector", "matchLabels"]))
        };
        let selected: Vec<&Obj> =
            f.workloads().filter(|w| w.ns == o.ns && selects(&selector, &pod_labels(w))).collect();
        if selected.is_empty() {
            s.problems.push(format!("{at}: its selector {selector:?} selects no pod template of {}", f.rel));
        }
        for p in seq(get(o.v, &["spec", "ports"])) {
            let target = get(p, &["targetPort"]).or(get(p, &["port"]));
            let has = |w: &&Obj| {
                seq(get(w.v, &["spec", "template", "spec", "containers"])).iter().any(|c| {
                    seq(c.get("ports")).iter().any(|cp| match target {
                        Some(Value::String(n)) => get_str(cp, &["name"]) == Some(n),
                        Some(Value::Number(n)) => get(cp, &["containerPort"]).and_then(Value::as_u64) == n.as_u64(),
                        _ => false,
                    })
                })
            };
            if !selected.is_empty() && !selected.iter().all(has) {
                s.problems.push(format!("{at}: port {target:?} is not a port of every pod it selects"));
            }
        }
    }
}

fn assert_no_problems(s: &Survey) {
    assert!(s.problems.is_empty(), "deploy/ has problems:\n  {}", s.problems.join("\n  "));
}

#[test]
fn deploy_files_are_consistent() {
    let s = survey(&repo_root());
    assert_no_problems(&s);
    // Every example is there: each kind of deployment starts kiln somewhere.
    for at in [
        "deploy/docker-compose.yaml",
        "deploy/cluster/",
        "deploy/microservices/",
        "deploy/kubernetes/microservices/",
        "deploy/kubernetes/monolithic/",
    ] {
        assert!(s.kilns.iter().any(|k| k.at.starts_with(at)), "no kiln started by {at}");
    }
}

#[test]
fn deploy_config_files_are_accepted() {
    let s = survey(&repo_root());
    assert!(s.configs.len() >= 3, "expected deploy/kiln.yaml, deploy/microservices/kiln.yaml and ConfigMaps");
    for (at, path) in &s.configs {
        let cfg = Config::from_args(&[format!("-config.file={}", path.display())])
            .unwrap_or_else(|e| panic!("{at}: kiln refuses the config file: {e}"));
        cfg.store_backend().unwrap_or_else(|e| panic!("{at}: {e}"));
    }
}

/// Every command line parses, with its sizes checked against the container's memory limit.
#[test]
fn deploy_kiln_args_parse() {
    let s = survey(&repo_root());
    assert!(!s.kilns.is_empty());
    for k in &s.kilns {
        let args = &k.args;
        let cfg = Config::from_args(args).unwrap_or_else(|e| panic!("{}: kiln refuses {args:?}: {e}", k.at));
        cfg.store_backend().unwrap_or_else(|e| panic!("{}: {e}", k.at));
        if let Some(limit) = k.memory_limit {
            // Heads and block caches take at most three quarters of the limit; the rest is
            // for queries, bodies in flight and the process itself.
            let cores = cfg.effective_cores() as u64;
            let used = cores * (cfg.effective_max_head_bytes() + cfg.effective_block_cache_bytes());
            assert!(
                used <= limit / 4 * 3,
                "{}: {cores} cores' heads and block caches take {used} bytes of a {limit}-byte limit",
                k.at
            );
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_tree(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

/// Each break, made alone in a copy of deploy/, must be reported.
#[test]
fn deploy_checks_catch_broken_files() {
    let breaks: &[(&str, &str, &str, &str)] = &[
        // (file, text, replacement, what the report must say)
        ("cluster/docker-compose.yaml", "      - kiln-1\n", "      - kiln-9\n", "depends_on \"kiln-9\""),
        ("cluster/docker-compose.yaml", "- kiln-3-data:/data", "- kiln-4-data:/data", "kiln-4-data"),
        (
            "cluster/docker-compose.yaml",
            "-memberlist.join=kiln-2:7946",
            "-memberlist.join=kiln-2:7947",
            "gossips on 7946",
        ),
        ("cluster/docker-compose.yaml", "\"4042:4040\"", "\"4042:8080\"", "not 8080"),
        ("microservices/docker-compose.yaml", "replication-factor=3", "replication-factor=2", "differs"),
        ("microservices/docker-compose.yaml", "./kiln.yaml:/etc/kiln", "./kiln.yml:/etc/kiln", "kiln.yml"),
        (
            "kubernetes/microservices/gossip.yaml",
            "- name: gossip\n",
            "- name: memberlist\n",
            "no TCP port named gossip",
        ),
        (
            "kubernetes/microservices/gossip.yaml",
            "publishNotReadyAddresses: true",
            "publishNotReadyAddresses: false",
            "not-ready",
        ),
        ("kubernetes/microservices/ingester.yaml", "serviceName: kiln-gossip", "serviceName: kiln-peers", "kiln-peers"),
        (
            "kubernetes/microservices/ingester.yaml",
            "terminationGracePeriodSeconds: 600",
            "terminationGracePeriodSeconds: 30",
            "LEAVING",
        ),
        ("kubernetes/microservices/ingester.yaml", "replicas: 3", "replicas: 2", "replication factor 3 with 2"),
        ("kubernetes/microservices/querier.yaml", "$(POD_IP)", "$(NODE_IP)", "$(NODE_IP)"),
        (
            "kubernetes/microservices/querier.yaml",
            "component: querier\n  ports:",
            "component: quer1er\n  ports:",
            "selects no pod",
        ),
        ("kubernetes/microservices/distributor.yaml", "containerPort: 4040", "containerPort: 8080", "8080"),
        ("kubernetes/microservices/distributor.yaml", "path: /ready", "path: /healthz", "/ready"),
        ("kubernetes/microservices/config.yaml", "  kiln.yaml: |", "  kiln.yml: |", "no key of a ConfigMap"),
        (
            "kubernetes/microservices/config.yaml",
            "  AWS_SECRET_ACCESS_KEY: ",
            "  AWS_SECRET_KEY: ",
            "AWS_SECRET_ACCESS_KEY",
        ),
        ("kubernetes/monolithic/kiln-monolithic.yaml", "-shards=4\n", "-log.level=info\n", "-shards"),
        ("kubernetes/monolithic/00-namespace.yaml", "name: kiln-monolithic", "name: kiln-mono", "namespace"),
        ("kiln.yaml", "multitenancy_enabled:", "multitenancy:", "\"multitenancy\""),
        // A line indented wrong: reported, not read forever.
        (
            "kubernetes/microservices/query-frontend.yaml",
            "          env:\n",
            "                env:\n",
            "does not parse",
        ),
    ];
    let src = repo_root().join("deploy");
    for (file, text, with, expect) in breaks {
        let root = scratch_dir("broken");
        copy_tree(&src, &root.join("deploy"));
        let path = root.join("deploy").join(file);
        let original = std::fs::read_to_string(&path).unwrap();
        assert!(original.contains(text), "deploy/{file} no longer contains {text:?}; update this break");
        std::fs::write(&path, original.replacen(text, with, 1)).unwrap();
        let s = survey(&root);
        let found = s.problems.iter().any(|p| p.contains(expect));
        let problems = s.problems.join("\n  ");
        drop(s);
        std::fs::remove_dir_all(&root).unwrap();
        assert!(
            found,
            "deploy/{file} with {text:?} made {with:?}: no problem mentions {expect:?}; found:\n  {problems}"
        );
    }
}
