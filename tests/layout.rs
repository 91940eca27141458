//! The layout's rules, checked on the source tree so they hold by themselves:
//! the edge (`src/api`) imports the components and no component imports the edge; the
//! contract (`src/service`) imports no component; in `kiln-shards` the per-core parts of the
//! components never reach back into the runtime that composes them; and ARCHITECTURE.md
//! names every source file of the two crates.
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every `crate::<module>` a folder's (or file's) code names, with where.
fn crate_refs(path: &Path) -> Vec<(String, PathBuf)> {
    let files = if path.is_dir() { rust_files(path) } else { vec![path.to_path_buf()] };
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            out.push((name, f.clone()));
        }
    }
    out
}

fn assert_no_refs(from: &str, forbidden: &[&str], base: &Path) {
    for (name, file) in crate_refs(&base.join(from)) {
        assert!(!forbidden.contains(&name.as_str()), "{} imports crate::{name}, which {from} must not", file.display());
    }
}

#[test]
fn no_component_imports_the_edge() {
    let src = root().join("src");
    for component in [
        "distributor",
        "ingester",
        "querier",
        "store_gateway",
        "query_frontend",
        "query_scheduler",
        "compactor",
        "service",
        "config",
        "cluster",
        "self_profiling",
    ] {
        assert_no_refs(component, &["api", "target", "process"], &src);
    }
    // The contract imports no component.
    assert_no_refs("service", &["distributor", "ingester", "querier", "store_gateway", "cluster"], &src);
    // Membership knows no component: components read it, not the reverse.
    assert_no_refs("cluster", &["distributor", "ingester", "querier", "store_gateway"], &src);
}

#[test]
fn per_core_parts_do_not_reach_back_into_the_runtime() {
    let shards = root().join("shards").join("src");
    for part in ["ingester", "store_gateway", "model", "eval.rs", "query", "ring", "block"] {
        assert_no_refs(part, &["runtime"], &shards);
    }
    // The store-gateway serves blocks; it knows nothing of heads being written.
    for (name, file) in crate_refs(&shards.join("store_gateway")) {
        if name == "ingester" {
            let text = std::fs::read_to_string(&file).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            assert!(!code.contains("crate::ingester"), "{} imports the ingester outside its tests", file.display());
        }
    }
}

#[test]
fn architecture_names_every_source_file() {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    for (krate, dir) in [("src", root().join("src")), ("shards/src", root().join("shards").join("src"))] {
        for f in rust_files(&dir) {
            let rel = f.strip_prefix(&dir).unwrap().to_string_lossy().to_string();
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if name == "lib.rs" || name == "tests.rs" {
                continue;
            }
            // A folder's mod.rs is its folder's paragraph; any other file is named.
            let wanted = if name == "mod.rs" {
                format!("{}/", f.parent().unwrap().file_name().unwrap().to_string_lossy())
            } else {
                name.clone()
            };
            assert!(doc.contains(&format!("`{wanted}")), "ARCHITECTURE.md does not name {krate}/{rel} (`{wanted}`)");
        }
    }
}
