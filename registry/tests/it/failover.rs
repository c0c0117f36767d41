//! One etcd member down is a non-event: on a 3-member cluster, the registry
//! routes every request around a killed member (leader or follower), keeps
//! leases alive and watches going, and uses the member again once it is back.

use std::time::{Duration, Instant};

use fleet_registry::testing::EtcdCluster;
use fleet_registry::{LeaseKeepAlive, Registry, TargetState, WatchEventKind};

use crate::util::{machine, unique_prefix, unit_file, unit_name, wait_until};

/// Sequential requests after a kill; every one must succeed.
const REQUESTS: usize = 30;

async fn cluster_registry(test: &str) -> (EtcdCluster, Registry) {
    let cluster = EtcdCluster::start().await;
    let registry = Registry::connect(&cluster.config(&unique_prefix(test)))
        .await
        .expect("connecting to the test etcd cluster");
    // Touch every member, so each has an open connection to break.
    for _ in 0..6 {
        registry
            .units()
            .await
            .expect("listing units before the kill");
    }
    (cluster, registry)
}

/// `REQUESTS` rounds of a write and two reads; panics on the first failure
/// with what failed and etcd's logs. Returns how long it took (printed, not
/// asserted).
async fn reads_and_writes_succeed(cluster: &EtcdCluster, registry: &Registry, tag: &str) {
    let started = Instant::now();
    for round in 0..REQUESTS {
        let name = unit_name(&format!("{tag}-{round}.service"));
        let file = unit_file(&format!("/bin/true {tag} {round}"));
        if let Err(error) = registry
            .create_unit(&name, &file, TargetState::Launched)
            .await
        {
            panic!(
                "submit {round} after the kill failed: {error}\n{}",
                cluster.log()
            );
        }
        match registry.unit(&name).await {
            Ok(Some(unit)) => assert_eq!(unit.desired_state, TargetState::Launched),
            other => panic!(
                "get unit {round} after the kill: {other:?}\n{}",
                cluster.log()
            ),
        }
        if let Err(error) = registry.units().await {
            panic!(
                "list units {round} after the kill failed: {error}\n{}",
                cluster.log()
            );
        }
    }
    eprintln!(
        "{tag}: {REQUESTS} submits and {} reads after the kill took {:?}",
        REQUESTS * 2,
        started.elapsed()
    );
}

/// A lease kept alive over one stream stays alive across the kill, and a
/// watch (re-established if its member died) sees a write made after it.
async fn lease_and_watch_survive(cluster: &mut EtcdCluster, registry: &Registry, victim: usize) {
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("granting a lease");
    let mut keeper = LeaseKeepAlive::new(registry, lease);
    assert!(
        keeper
            .keep_alive()
            .await
            .expect("first keep-alive")
            .is_some()
    );
    let me = machine("m1");
    registry
        .register_machine(&me, lease)
        .await
        .expect("registering a machine");
    let (_, revision) = registry
        .machine_schedule(&me.id)
        .await
        .expect("reading the schedule revision");
    let prefix = registry.keys().machines();
    let mut watch = registry
        .watch_prefix(prefix.clone(), revision.next())
        .await
        .expect("watching the machines");

    cluster.kill(victim);
    // While the two members left elect a leader (a dead leader's case),
    // every member answers a keep-alive with "no leader"; the lease cannot
    // expire meanwhile (a new leader renews every lease), and a fleetd's
    // heart retries within the TTL. On a loaded machine the election can
    // outlast one request deadline, so the keep-alives start after it.
    cluster.wait_leader().await;

    for round in 0..3 {
        match keeper.keep_alive().await {
            Ok(Some(_)) => {}
            other => panic!(
                "keep-alive {round} after the kill: {other:?}\n{}",
                cluster.log()
            ),
        }
    }
    let mut changed = me.clone();
    changed.public_ip = "10.0.0.2".to_owned();
    registry
        .update_machine(&changed, lease)
        .await
        .expect("updating the machine after the kill");
    let seen = match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
        Ok(Ok(Some(events))) => events,
        // The watch's member died: watch again, from where we were.
        Ok(Err(error)) => {
            assert!(error.is_retriable(), "{error}");
            let mut again = registry
                .watch_prefix(prefix, revision.next())
                .await
                .expect("watching again on a live member");
            match tokio::time::timeout(Duration::from_secs(10), again.next()).await {
                Ok(Ok(Some(events))) => events,
                other => panic!("the re-established watch saw nothing: {other:?}"),
            }
        }
        other => panic!("the watch saw nothing after the kill: {other:?}"),
    };
    assert!(
        seen.iter().any(|event| event.kind == WatchEventKind::Put),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_route_around_a_dead_leader() {
    let (mut cluster, registry) = cluster_registry("dead-leader").await;
    let leader = cluster.wait_leader().await;
    cluster.kill(leader);
    // The two members left need an election (about a second, longer on a
    // loaded machine) before anything can be written; a request in that gap
    // fails with "no leader" on every member, which the API turns into a 503
    // that fleetctl retries. What this test checks is the routing: once
    // there is a leader, no request goes to (or waits on) the dead member.
    cluster.wait_leader().await;
    reads_and_writes_succeed(&cluster, &registry, "after-leader").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_route_around_a_dead_follower() {
    let (mut cluster, registry) = cluster_registry("dead-follower").await;
    let leader = cluster.wait_leader().await;
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    reads_and_writes_succeed(&cluster, &registry, "after-follower").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_watches_survive_a_dead_leader() {
    let (mut cluster, registry) = cluster_registry("lease-leader").await;
    let leader = cluster.wait_leader().await;
    lease_and_watch_survive(&mut cluster, &registry, leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_is_used_again() {
    let (mut cluster, registry) = cluster_registry("restarted").await;
    let leader = cluster.wait_leader().await;
    let victim = (leader + 1) % 3;
    let victim_url = cluster.endpoint(victim);
    cluster.kill(victim);
    reads_and_writes_succeed(&cluster, &registry, "while-down").await;
    let victim_down = registry
        .endpoint_health()
        .into_iter()
        .any(|(url, up)| url == victim_url && !up);
    assert!(victim_down, "{:?}", registry.endpoint_health());

    cluster.restart(victim).await;
    wait_until(
        Duration::from_secs(10),
        "the probe marks the member up",
        || {
            let health = registry.endpoint_health();
            async move { health.iter().all(|(_, up)| *up) }
        },
    )
    .await;
    let before = cluster
        .handled_requests(victim)
        .await
        .expect("the restarted member's metrics");
    for round in 0..REQUESTS {
        if let Err(error) = registry.units().await {
            panic!("list units {round} after the restart failed: {error}");
        }
    }
    let after = cluster
        .handled_requests(victim)
        .await
        .expect("the restarted member's metrics");
    assert!(
        after > before,
        "the restarted member served none of {REQUESTS} reads ({before} -> {after} handled)"
    );
}

/// etcd's count of keep-alive streams opened and keep-alive messages received
/// over every member.
async fn keep_alive_counts(cluster: &EtcdCluster) -> (f64, f64) {
    const METHOD: &str = "grpc_method=\"LeaseKeepAlive\"";
    (
        cluster
            .metric_sum("grpc_server_started_total", METHOD)
            .await,
        cluster
            .metric_sum("grpc_server_msg_received_total", METHOD)
            .await,
    )
}

/// `LeaseKeepAlive` keeps a lease alive over one stream: `KEEP_ALIVES`
/// keep-alives open one stream, where one stream per keep-alive (the old
/// `keep_alive_once` way) opens one each and sends two messages each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_share_one_stream_per_lease() {
    const KEEP_ALIVES: usize = 20;
    let (cluster, registry) = cluster_registry("one-stream").await;
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("granting a lease");

    let (streams_before, messages_before) = keep_alive_counts(&cluster).await;
    let mut keeper = LeaseKeepAlive::new(&registry, lease);
    for round in 0..KEEP_ALIVES {
        let ttl = keeper.keep_alive().await.expect("keep-alive");
        assert!(ttl.is_some(), "keep-alive {round}: the lease expired");
    }
    let (streams_after, messages_after) = keep_alive_counts(&cluster).await;
    let (streams, messages) = (
        streams_after - streams_before,
        messages_after - messages_before,
    );
    eprintln!(
        "one stream per lease: {KEEP_ALIVES} keep-alives -> {streams} streams, {messages} messages"
    );
    assert_eq!(streams, 1.0, "one stream for every keep-alive of the lease");
    // Opening sends one keep-alive and asks the TTL with a second.
    assert_eq!(messages, (KEEP_ALIVES + 1) as f64);

    let (streams_before, messages_before) = keep_alive_counts(&cluster).await;
    for round in 0..KEEP_ALIVES {
        let ttl = registry.keep_alive_once(lease).await.expect("keep-alive");
        assert!(ttl.is_some(), "keep-alive {round}: the lease expired");
    }
    let (streams_after, messages_after) = keep_alive_counts(&cluster).await;
    let (streams, messages) = (
        streams_after - streams_before,
        messages_after - messages_before,
    );
    eprintln!(
        "one stream per keep-alive: {KEEP_ALIVES} keep-alives -> {streams} streams, {messages} messages"
    );
    assert_eq!(streams, KEEP_ALIVES as f64);
    assert_eq!(messages, (2 * KEEP_ALIVES) as f64);
}

/// The survey self-fencing asks when keep-alives fail: with one member down
/// etcd still has a leader; with two of three down the survivor answers "no
/// leader" (etcd's error, since every request requires a leader) and the
/// survey proves etcd leaderless, so no machine fences for a quorum loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survey_tells_a_quorum_loss_from_one_member_down() {
    let (mut cluster, registry) = cluster_registry("survey").await;
    let leader = cluster.wait_leader().await;
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    let survey = registry.survey().await;
    assert!(!survey.cluster_is_leaderless(), "{survey}");
    assert!(survey.any_answered(), "{survey}");
    cluster.kill(leader);
    wait_until(
        Duration::from_secs(15),
        "the survey proves etcd leaderless",
        || {
            let registry = registry.clone();
            async move { registry.survey().await.cluster_is_leaderless() }
        },
    )
    .await;
    let survey = registry.survey().await;
    assert!(survey.cluster_is_leaderless(), "{survey}");
}
