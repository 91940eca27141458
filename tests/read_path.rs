//! The read path at scale with real processes on 127.0.0.1: queries through a query-frontend,
//! queued at a query-scheduler and run by the queriers that pull them, answer exactly as one
//! node does, with and without splitting, from the results cache, and while a querier dies.
mod common;
use common::members::*;
use common::snapshot::{
    assert_same, end, flush, profile_type_ids, push_fixture, single_node_half_in_blocks, snapshot, wait_for_answers,
    START,
};
use common::*;
use std::collections::BTreeMap;

/// `/pyroscope/render`'s flame graph of every profile type, as JSON text.
fn renders(port: u16, types: &[String]) -> BTreeMap<String, String> {
    let until = end() / 1000;
    types
        .iter()
        .map(|pt| {
            let q = format!("/pyroscope/render?query={pt}%7B%7D&from={}&until={until}&max-nodes=100000", START / 1000);
            let r = get(port, &q);
            assert_eq!(r.status, 200, "{}", r.text());
            (pt.clone(), r.json()["flamebearer"].to_string())
        })
        .collect()
}

#[test]
fn the_frontend_answers_as_one_node_split_or_not_from_its_cache_and_while_a_querier_dies() {
    let _serial = one_at_a_time();
    // One node writes half the fixtures into blocks of a shared bucket and keeps the other
    // half in its head: its answers are what the frontend must give.
    let blocks = blocks_dir("frontend");
    let (single, new) = single_node_half_in_blocks(&blocks);
    let want = snapshot(single.port);
    let types = profile_type_ids(single.port);
    let want_render = renders(single.port, &types);
    drop(single);

    let targets = [
        "query-scheduler",
        "ingester",
        "ingester",
        "ingester",
        "store-gateway",
        "store-gateway",
        "distributor",
        "querier",
        "querier",
    ];
    let mut procs = start_members("frontend", &targets, &blocks, FIXTURE_FLAGS);
    let (scheduler, distributor) = (procs[0].port, procs[6].port);
    let seed = gossip_port_of(&procs[0]);
    let start_frontend = |name: &str, flags: &[&str]| {
        let data = std::env::temp_dir().join(format!("kiln-frontend-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        let mut all = member_flags(free_udp_port(), seed, &blocks);
        all.push("-target=query-frontend".into());
        all.extend(FIXTURE_FLAGS.iter().chain(flags).map(|s| s.to_string()));
        start_member(data, hold_port(), &all)
    };
    // One frontend splits the fixtures' range (from 1970 to `end()`, an hour or more from now) by the hour
    // (capped at 256 parts, a longer interval each) and caches past parts: the distributor
    // takes the fixtures' old timestamps, but this frontend is told profiles older than two
    // hours are refused, so it caches every part that ends before then.
    let split = start_frontend("split", &["-querier.split-queries-by-interval=1h", "-validation.reject-older-than=2h"]);
    // The other neither splits nor caches.
    let unsplit = start_frontend("plain", &["-query-frontend.cache-results=false"]);
    let frontend = split.port;
    // The queriers, which fan the parts out, must see every reader too: a querier whose
    // gossip has not brought a store-gateway yet reads none of that store-gateway's blocks.
    for port in [frontend, procs[7].port, procs[8].port] {
        wait_until("three ACTIVE ingesters", || ring_states(port) == ["ACTIVE"; 3]);
        wait_until("two ACTIVE store-gateways", || {
            get(port, "/store-gateway/ring").text().matches("<td>ACTIVE</td>").count() == 2
        });
    }
    wait_until("the distributor sees three ingesters", || ring_states(distributor) == ["ACTIVE"; 3]);
    wait_until("both queriers pull from the scheduler", || {
        metric(scheduler, "kiln_query_scheduler_connected_queriers") == 2.0
    });
    for port in [frontend, unsplit.port] {
        wait_until("the frontend is ready", || get(port, "/ready").status == 200);
    }
    for (i, path) in new.iter().enumerate() {
        push_fixture(distributor, &format!("new-{i}"), std::fs::read(path).unwrap());
    }
    wait_for_answers(frontend, &want, "the splitting frontend answers as the single node");
    assert_same(&want, &snapshot(unsplit.port), "through the frontend that does not split");
    assert_eq!(renders(frontend, &types), want_render, "/pyroscope/render through the splitting frontend");
    assert_eq!(renders(unsplit.port, &types), want_render, "/pyroscope/render through the plain frontend");
    // Split: many parts per query; the parts wholly in the past come from the cache the
    // second time round, with the same answers.
    let queries = metric(frontend, "kiln_query_frontend_queries_total");
    let parts = metric(frontend, "kiln_query_frontend_split_parts_total");
    assert!(parts > 10.0 * queries, "{parts} parts for {queries} queries");
    assert_eq!(
        metric(unsplit.port, "kiln_query_frontend_split_parts_total"),
        metric(unsplit.port, "kiln_query_frontend_queries_total")
    );
    // The runs of cached parts were merged into one entry each, which the next round reads.
    assert!(metric(frontend, "kiln_query_frontend_results_cache_runs_merged_total") > 0.0, "no run merged");
    let hits = metric(frontend, "kiln_query_frontend_results_cache_hits_total");
    assert_same(&want, &snapshot(frontend), "from the results cache");
    assert!(metric(frontend, "kiln_query_frontend_results_cache_hits_total") > hits, "no cache hits the second time");
    // Each component serves its own routes only: the scheduler has no query API.
    let r = get(scheduler, "/pyroscope/label-values?label=service_name");
    assert_eq!(r.status, 404, "{}", r.text());

    // The ingesters' heads cut into blocks: the same answers.
    for k in &procs[1..4] {
        flush(k.port);
    }
    assert_same(&want, &snapshot(unsplit.port), "after the ingesters cut their heads");

    // kill -9 of a querier while queries run: its jobs go back to the queue once the ring
    // counts it dead, and the other querier runs them; every answer is still right.
    let running = std::thread::spawn(move || (0..3).map(|_| snapshot(frontend)).collect::<Vec<_>>());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let _ = procs.remove(8).kill();
    for (i, got) in running.join().unwrap().iter().enumerate() {
        assert_same(&want, got, &format!("query round {i} while a querier was killed"));
    }
    assert_same(&want, &snapshot(unsplit.port), "with one querier left");
    drop((split, unsplit));
    drop(procs);
    let _ = std::fs::remove_dir_all(&blocks);
}

#[test]
fn a_tenant_flooding_the_scheduler_is_refused_past_its_limit_and_another_tenant_is_answered() {
    let _serial = one_at_a_time();
    let blocks = blocks_dir("flood");
    let targets = ["query-scheduler", "ingester", "distributor", "querier", "query-frontend"];
    let extra = [
        "-auth.multitenancy-enabled=true",
        "-distributor.replication-factor=1",
        "-querier.max-concurrent=1",
        "-querier.max-query-parallelism=4",
        "-query-scheduler.max-outstanding-requests-per-tenant=8",
        "-querier.split-queries-by-interval=1m",
        "-query-frontend.cache-results=false",
        "-validation.reject-older-than=0",
    ];
    let procs = start_members("flood", &targets, &blocks, &extra);
    let (scheduler, distributor, frontend) = (procs[0].port, procs[2].port, procs[4].port);
    wait_until("an ACTIVE ingester", || ring_states(distributor) == ["ACTIVE"]);
    wait_until("the querier pulls", || metric(scheduler, "kiln_query_scheduler_connected_queriers") == 1.0);
    wait_until("the frontend is ready", || get(frontend, "/ready").status == 200);
    let push = |tenant: &str, n: u64| {
        let until = now_ms() / 1000;
        let path = format!("/ingest?name=app&from={}&until={until}&format=folded", until - 10);
        let r = post(distributor, &path, &[("X-Scope-OrgID", tenant)], format!("main;work {n}").into_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
    };
    push("heavy", 5);
    push("light", 7);
    let render = move |tenant: &str, from: &str| {
        let q = format!("/pyroscope/render?query=process_cpu:cpu:nanoseconds:cpu:nanoseconds%7Bservice_name%3D%22app%22%7D&from={from}&until=now%2B1m");
        request(frontend, "GET", &q, &[("X-Scope-OrgID", tenant)], Vec::new(), false)
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Six hours split by the minute: 256 parts, four at a time per query; four
                    // such queries at once pass the tenant's 8 queued jobs.
                    statuses.push(render("heavy", "now-6h").status);
                }
                statuses
            })
        })
        .collect();
    // While the heavy tenant floods, the light tenant's queries are answered, right.
    for _ in 0..5 {
        // Five minutes: six parts, within its own queue's limit.
        let r = render("light", "now-5m");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["flamebearer"]["numTicks"].as_u64(), Some(7 * 10_000_000));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses: Vec<u16> = flood.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(statuses.contains(&429), "the heavy tenant was never refused: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert!(metric(scheduler, "kiln_query_scheduler_jobs_total{outcome=\"refused\"}") > 0.0);
    drop(procs);
    let _ = std::fs::remove_dir_all(&blocks);
}

#[test]
fn a_client_that_goes_away_takes_its_queued_parts_off_the_scheduler() {
    let _serial = one_at_a_time();
    let blocks = blocks_dir("cancel");
    // No querier: the parts stay queued until someone takes them off.
    let procs = start_members(
        "cancel",
        &["query-scheduler", "query-frontend"],
        &blocks,
        &["-querier.split-queries-by-interval=1h", "-querier.max-query-parallelism=3"],
    );
    let (scheduler, frontend) = (procs[0].port, procs[1].port);
    wait_until("the frontend is ready", || get(frontend, "/ready").status == 200);
    let queued = || {
        let (_, body) = raw_get(scheduler, "/metrics").unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix("kiln_query_scheduler_queue_length{tenant=\"anonymous\"} "))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };
    use std::io::Write;
    let mut client = std::net::TcpStream::connect(("127.0.0.1", frontend)).unwrap();
    let q = "/pyroscope/render?query=process_cpu:cpu:nanoseconds:cpu:nanoseconds%7B%7D&from=now-6h&until=now";
    write!(client, "GET {q} HTTP/1.1\r\nhost: kiln\r\n\r\n").unwrap();
    wait_until("the query's parts are queued", || queued() == 3.0);
    assert_eq!(metric(scheduler, "kiln_query_scheduler_jobs_total{outcome=\"cancelled\"}"), 0.0);
    drop(client);
    wait_until("the parts are taken off the queue", || queued() == 0.0);
    assert_eq!(metric(scheduler, "kiln_query_scheduler_jobs_total{outcome=\"cancelled\"}"), 3.0);
    assert_eq!(metric(frontend, "kiln_query_frontend_cancelled_parts_total"), 3.0);
    assert_eq!(metric(frontend, "kiln_query_frontend_pending_parts"), 0.0);
    drop(procs);
    let _ = std::fs::remove_dir_all(&blocks);
}
