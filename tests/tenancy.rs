//! Tenancy as Pyroscope does it: `anonymous` by default; with multitenancy on,
//! `X-Scope-OrgID` is required and no query sees another tenant's data.
mod common;

use common::*;

fn ingest(port: u16, tenant: Option<&str>, app: &str, body: &[u8]) -> Resp {
    let h: Vec<(&str, &str)> = tenant.map(|t| vec![("x-scope-orgid", t)]).unwrap_or_default();
    post(port, &format!("/ingest?name={app}.cpu&format=folded&sampleRate=0"), &h, body.to_vec())
}

fn total(port: u16, tenant: &str, app: &str) -> i64 {
    let r = connect_json(
        port,
        "/querier.v1.QuerierService/SelectMergeStacktraces",
        &[("x-scope-orgid", tenant)],
        serde_json::json!({"profileTypeID": "process_cpu:samples:count::", "labelSelector": format!("{{service_name=\"{app}\"}}"), "start": (now_ms() - 60_000).to_string(), "end": (now_ms() + 1000).to_string()}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["flamegraph"]["total"].as_str().map(|s| s.parse().unwrap()).unwrap_or(0)
}

#[test]
fn tenants_are_isolated() {
    let k = Kiln::start(&["-auth.multitenancy-enabled=true"]);
    let r = ingest(k.port, None, "app", b"a;b 1\n");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["code"], "unauthenticated");
    let r = connect_json(k.port, "/querier.v1.QuerierService/LabelNames", &[], serde_json::json!({}));
    assert_eq!(r.status, 401);

    assert_eq!(ingest(k.port, Some("team-a"), "app", b"a;b 5\n").status, 200);
    assert_eq!(ingest(k.port, Some("team-b"), "app", b"a;b 7\n").status, 200);
    assert_eq!(total(k.port, "team-a", "app"), 5);
    assert_eq!(total(k.port, "team-b", "app"), 7);
    assert_eq!(total(k.port, "team-c", "app"), 0);
    // Reads may name several tenants.
    assert_eq!(total(k.port, "team-a|team-b", "app"), 12);
    // Writes must name exactly one.
    assert_eq!(ingest(k.port, Some("team-a|team-b"), "app", b"a 1\n").status, 400);
}

#[test]
fn single_tenant_mode_ignores_the_header() {
    let k = Kiln::start(&[]);
    assert_eq!(ingest(k.port, Some("whoever"), "app", b"a;b 2\n").status, 200);
    assert_eq!(ingest(k.port, None, "app", b"a;b 3\n").status, 200);
    assert_eq!(total(k.port, "someone-else", "app"), 5);
}
