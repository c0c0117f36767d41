//! `GET /fleet/v1/events` against a real etcd: typed events arrive with the
//! revision as id, a reconnect with `Last-Event-ID` loses nothing, and a
//! compacted resume point is a clear error.

use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use fleet_api::client::SseMessage;
use fleet_api::events::EventEntity;
use fleet_registry::testing::{Etcd, compact};
use fleet_registry::{Placement, ScheduleChange, ScheduleReasons, TargetState, UnitState};
use fleet_systemd::unit::UnitFile;

use super::{Api, machine_id, unit_name};

const DEADLINE: Duration = Duration::from_secs(20);

/// An open event stream through the router, read frame by frame.
struct Stream {
    body: Body,
    buffer: String,
}

impl Stream {
    async fn open(api: &Api, uri: &str, last_event_id: Option<&str>) -> Stream {
        let mut request = Request::builder().uri(uri);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = api
            .router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .expect("the router is infallible");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Stream {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next message with data (keep-alive comments skipped); `None` at
    /// the end of the stream.
    async fn next(&mut self) -> Option<SseMessage> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(message) = parse(&block) {
                    return Some(message);
                }
                continue;
            }
            let frame = tokio::time::timeout(DEADLINE, self.body.frame())
                .await
                .expect("an event within the deadline")?
                .expect("reading the stream");
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next `n` events, decoded.
    async fn take(&mut self, n: usize) -> Vec<(EventEntity, Option<String>)> {
        let mut events = Vec::new();
        while events.len() < n {
            let message = self.next().await.expect("the stream goes on");
            let entity: EventEntity = serde_json::from_str(&message.data).unwrap();
            assert_eq!(message.event, entity.kind, "{message:?}");
            events.push((entity, message.id));
        }
        events
    }
}

fn parse(block: &str) -> Option<SseMessage> {
    let mut message = SseMessage::default();
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            message.event = value.trim().to_owned();
        } else if let Some(value) = line.strip_prefix("data:") {
            message.data.push_str(value.trim_start());
        } else if let Some(value) = line.strip_prefix("id:") {
            message.id = Some(value.trim().to_owned());
        }
    }
    (!message.data.is_empty()).then_some(message)
}

fn kinds(events: &[(EventEntity, Option<String>)]) -> Vec<&str> {
    events.iter().map(|(e, _)| e.kind.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_typed_and_resume_without_loss() {
    let api = Api::start("events", 100).await;
    let registry = &api.registry;
    let mut stream = Stream::open(&api, "/fleet/v1/events", None).await;

    let lease = api.register_machine("m1", &[]).await;
    let file = UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
    let hello = unit_name("hello.service");
    registry
        .create_unit(&hello, &file, TargetState::Loaded)
        .await
        .unwrap();
    registry
        .set_desired_state(&hello, TargetState::Launched)
        .await
        .unwrap();
    let events = stream.take(3).await;
    assert_eq!(
        kinds(&events),
        ["machine.joined", "unit.submitted", "unit.target-changed"]
    );
    let (joined, joined_id) = &events[0];
    assert_eq!(joined.machine.as_deref(), Some("m1"));
    assert_eq!(joined.public_ip.as_deref(), Some("10.0.0.2"));
    assert_eq!(
        joined_id.as_deref(),
        Some(joined.revision.to_string().as_str())
    );
    let (changed, changed_id) = &events[2];
    assert_eq!(changed.unit.as_deref(), Some("hello.service"));
    assert_eq!(changed.previous_target_state.as_deref(), Some("loaded"));
    assert_eq!(changed.target_state.as_deref(), Some("launched"));
    let last_id = changed_id
        .clone()
        .expect("the last event of a revision has an id");
    drop(stream);

    // While nobody listens: a leader, a placement, a reported state, a destroy.
    let m1 = machine_id("m1");
    let leadership = registry.campaign(&m1, lease).await.unwrap().unwrap();
    let placement = Placement {
        unit: hello.clone(),
        machine: m1.clone(),
        hash: file.hash(),
        target_state: TargetState::Launched,
    };
    registry
        .commit_schedule(&leadership, &[ScheduleChange::Place(placement)])
        .await
        .unwrap();
    let state = UnitState {
        unit: hello.clone(),
        machine: m1.clone(),
        hash: file.hash(),
        load_state: "loaded".to_owned(),
        active_state: "active".to_owned(),
        sub_state: "running".to_owned(),
        reached: TargetState::Launched,
        run: None,
    };
    registry.put_unit_state(&state, lease).await.unwrap();
    registry.destroy_unit(&hello).await.unwrap();

    // Resuming after the last id sees every one of them, in order.
    let mut resumed = Stream::open(&api, "/fleet/v1/events", Some(&last_id)).await;
    let events = resumed.take(4).await;
    assert_eq!(
        kinds(&events),
        [
            "engine.leader-changed",
            "unit.placed",
            "unit.state-changed",
            "unit.destroyed"
        ]
    );
    assert_eq!(events[0].0.machine.as_deref(), Some("m1"));
    assert_eq!(events[2].0.active_state.as_deref(), Some("active"));
    assert_eq!(events[2].0.sub_state.as_deref(), Some("running"));
    let revisions: Vec<i64> = events.iter().map(|(e, _)| e.revision).collect();
    assert!(revisions.is_sorted(), "{revisions:?}");
    assert!(revisions[0] > last_id.parse::<i64>().unwrap());

    // A filter and follow=false: the history of one unit, then the end.
    let since = joined.revision;
    let uri = format!("/fleet/v1/events?unit=hello.service&since={since}&follow=false");
    let mut history = Stream::open(&api, &uri, None).await;
    let mut seen = Vec::new();
    while let Some(message) = history.next().await {
        seen.push(message.event);
    }
    assert_eq!(
        seen,
        [
            "unit.submitted",
            "unit.target-changed",
            "unit.placed",
            "unit.state-changed",
            "unit.destroyed"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_compacted_resume_points_are_clear_errors() {
    // Its own etcd: compacting the shared one would break the other tests.
    let etcd = std::sync::Arc::new(Etcd::start().await);
    let api = Api::start_on(etcd, "events-errors", 100).await;
    let reply = api.get("/fleet/v1/events?since=yesterday").await;
    reply.assert_error(
        400,
        "an event id is an etcd revision (a non-negative integer), not \"yesterday\"",
    );
    let reply = api.get("/fleet/v1/events?follow=maybe").await;
    reply.assert_error(400, "follow must be true or false, not \"maybe\"");
    // Compact the history up to now: revision 1 is gone.
    api.register_machine("m-compact", &[]).await;
    let head = api.registry.head_revision().await.unwrap();
    compact(&api.registry, head).await.unwrap();
    // etcd confirms a watch before it cancels it for compaction, so the
    // error comes as the stream's one message.
    let mut stream = Stream::open(&api, "/fleet/v1/events?since=0", None).await;
    let message = stream.next().await.expect("an error message");
    assert_eq!(message.event, "error", "{message:?}");
    let error: fleet_api::events::EventError = serde_json::from_str(&message.data).unwrap();
    assert_eq!(error.error, "compacted", "{error:?}");
    assert_eq!(error.compact_revision, Some(head.get()), "{error:?}");
    assert!(
        stream.next().await.is_none(),
        "the stream ends after the error"
    );
}

/// The engine stores why it placed or unplaced a unit with the schedule
/// change (in the same transaction), and the stream carries it: the reason
/// of a placement from its schedule record, that of an unplacement from the
/// unload order written beside the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placements_and_unplacements_say_why() {
    let api = Api::start("events-reasons", 100).await;
    let registry = &api.registry;
    let lease = api.register_machine("m1", &[]).await;
    let m1 = machine_id("m1");
    let file = UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
    let hello = unit_name("hello.service");
    let quiet = unit_name("quiet.service");
    let leadership = registry.campaign(&m1, lease).await.unwrap().unwrap();
    let mut stream = Stream::open(&api, "/fleet/v1/events?machine=m1", None).await;

    let placement = |unit: &fleet_systemd::unit::UnitName| Placement {
        unit: unit.clone(),
        machine: m1.clone(),
        hash: file.hash(),
        target_state: TargetState::Launched,
    };
    let mut reasons = ScheduleReasons::new();
    reasons.insert((hello.clone(), m1.clone()), "new unit scheduled".to_owned());
    let long = "x".repeat(1000);
    reasons.insert((quiet.clone(), m1.clone()), long);
    registry
        .commit_explained_schedule(
            &leadership,
            &[
                ScheduleChange::Place(placement(&hello)),
                ScheduleChange::Place(placement(&quiet)),
            ],
            &reasons,
        )
        .await
        .unwrap();
    let mut reasons = ScheduleReasons::new();
    reasons.insert(
        (hello.clone(), m1.clone()),
        "machine m1 is draining".to_owned(),
    );
    registry
        .commit_explained_schedule(
            &leadership,
            &[
                ScheduleChange::Unplace {
                    unit: hello.clone(),
                    machine: m1.clone(),
                },
                ScheduleChange::Unplace {
                    unit: quiet.clone(),
                    machine: m1.clone(),
                },
            ],
            &reasons,
        )
        .await
        .unwrap();

    let events = stream.take(4).await;
    let seen: Vec<(&str, Option<&str>, Option<usize>)> = events
        .iter()
        .map(|(e, _)| {
            (
                e.kind.as_str(),
                e.unit.as_deref(),
                e.reason.as_ref().map(String::len),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("unit.placed", Some("hello.service"), Some(18)),
            // Kept small: a long reason is cut.
            ("unit.placed", Some("quiet.service"), Some(160)),
            ("unit.unplaced", Some("hello.service"), Some(22)),
            // No reason given: none shown.
            ("unit.unplaced", Some("quiet.service"), None),
        ]
    );
    assert_eq!(events[0].0.reason.as_deref(), Some("new unit scheduled"));
    assert_eq!(
        events[2].0.reason.as_deref(),
        Some("machine m1 is draining")
    );
    // The unload orders (which carry the reason) are no events of their own.
    let unload_orders = registry.unload_orders(&m1).await.unwrap();
    assert_eq!(unload_orders.len(), 2);
}
