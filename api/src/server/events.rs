//! `GET /fleet/v1/events`: the cluster's changes as server-sent events (an
//! addition beside v1; the format is in [`crate::events`]).
//!
//! Query parameters, all optional:
//! - `unit=NAME`, `machine=ID`: only events about that unit / machine;
//! - `since=REV`: start after revision `REV` (the `Last-Event-ID` header,
//!   which browsers send when they reconnect, wins over it); without either
//!   the stream starts with the next change;
//! - `follow=false`: end the stream once the history up to now is sent
//!   (with `since`, "what happened since REV"; without, the last
//!   [`RECENT_REVISIONS`] revisions, or as many as etcd still keeps).
//!
//! Each stream is one etcd watch of the whole keyspace, held while the client
//! listens; nothing is kept once it goes.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fleet_registry::RegistryError;
use fleet_registry::events::{EventWatch, RegistryEvent, RevisionEvents};
use fleet_registry::store::Revision;
use futures_util::stream;
use http::HeaderMap;

use super::{ApiError, Query, Shared};
use crate::events::{EventEntity, EventError};

/// How far back `follow=false` without a resume point looks.
const RECENT_REVISIONS: i64 = 1000;

/// What a client asked to see.
struct Filter {
    unit: Option<String>,
    machine: Option<String>,
}

impl Filter {
    fn admits(&self, event: &RegistryEvent) -> bool {
        let unit_ok = self
            .unit
            .as_deref()
            .is_none_or(|want| event.unit().is_some_and(|unit| unit.as_str() == want));
        let machine_ok = self.machine.as_deref().is_none_or(|want| {
            event
                .machine()
                .is_some_and(|machine| machine.as_str() == want)
        });
        unit_ok && machine_ok
    }
}

/// The stream's state between messages.
struct Feed {
    watch: EventWatch,
    filter: Filter,
    /// `follow=false`: the revision to stop at.
    until: Option<Revision>,
    queue: VecDeque<Event>,
    done: bool,
}

/// Opens the stream.
pub(super) async fn stream(
    shared: &Shared,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let since = resume_point(query, headers)?;
    let follow = match query.first("follow") {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "follow must be true or false, not {other:?}"
            )));
        }
    };
    let registry = &shared.api.registry;
    let until = if follow {
        None
    } else {
        Some(
            registry
                .head_revision()
                .await
                .map_err(|error| ApiError::registry("read the head revision", error))?,
        )
    };
    let mut from = since.map_or(Revision::new(0), Revision::next);
    if let (None, Some(head)) = (since, until) {
        from = Revision::new((head.get() - RECENT_REVISIONS).max(1));
    }
    let mut watch = registry.watch_events(from).await;
    if let (None, Some(_), Err(RegistryError::Compacted { revision })) = (since, until, &watch) {
        // The recent history is shorter than asked: start where it starts.
        watch = registry.watch_events(*revision).await;
    }
    let feed = match watch {
        Ok(watch) => Feed {
            watch,
            filter: Filter {
                unit: query.first("unit").map(str::to_owned),
                machine: query.first("machine").map(str::to_owned),
            },
            until,
            queue: VecDeque::new(),
            done: false,
        },
        Err(RegistryError::Compacted { revision }) => {
            return Err(ApiError::new(
                http::StatusCode::GONE,
                format!("revision {from} is compacted; the oldest kept is {revision}"),
            ));
        }
        Err(error) => return Err(ApiError::registry("watch events", error)),
    };
    let messages = stream::unfold(feed, |mut feed| async move {
        let event = feed.next_message().await?;
        Some((Ok::<Event, Infallible>(event), feed))
    });
    Ok(Sse::new(messages)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Where to resume: `Last-Event-ID`, else `since`, else nowhere (from now).
fn resume_point(query: &Query, headers: &HeaderMap) -> Result<Option<Revision>, ApiError> {
    let header = headers
        .get("last-event-id")
        .map(|value| value.to_str().unwrap_or("?").trim().to_owned())
        .filter(|value| !value.is_empty());
    let Some(text) = header.or_else(|| query.first("since").map(str::to_owned)) else {
        return Ok(None);
    };
    match text.parse::<Revision>() {
        Ok(revision) => Ok(Some(revision)),
        _ => Err(ApiError::bad_request(format!(
            "an event id is an etcd revision (a non-negative integer), not {text:?}"
        ))),
    }
}

impl Feed {
    /// The next SSE message; `None` ends the stream.
    async fn next_message(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            let next = match self.until {
                Some(head) => self.watch.next_until(head).await,
                None => self.watch.next().await,
            };
            match next {
                Ok(Some(batch)) => self.enqueue(batch),
                Ok(None) => self.done = true,
                Err(error) => {
                    self.done = true;
                    return Some(error_message(&error));
                }
            }
        }
    }

    /// The messages of one revision; the last carries the revision as its id.
    fn enqueue(&mut self, batch: RevisionEvents) {
        let start = self.queue.len();
        for event in batch.events.iter().filter(|e| self.filter.admits(e)) {
            let entity = entity(batch.revision, event);
            let data = serde_json::to_string(&entity).unwrap_or_default();
            self.queue
                .push_back(Event::default().event(entity.kind).data(data));
        }
        if self.queue.len() > start
            && let Some(last) = self.queue.pop_back()
        {
            self.queue.push_back(last.id(batch.revision.to_string()));
        }
    }
}

/// The final message of a stream that cannot go on.
fn error_message(error: &RegistryError) -> Event {
    let body = match error {
        RegistryError::Compacted { revision } => EventError {
            error: "compacted".to_owned(),
            message: format!(
                "etcd compacted its history up to revision {revision}; start again without a resume point"
            ),
            compact_revision: Some(revision.get()),
        },
        other => EventError {
            error: "unavailable".to_owned(),
            message: format!("the event watch failed: {other}; reconnect with the last event id"),
            compact_revision: None,
        },
    };
    let data = serde_json::to_string(&body).unwrap_or_default();
    Event::default().event("error").data(data)
}

/// The wire form of one event.
pub(crate) fn entity(revision: Revision, event: &RegistryEvent) -> EventEntity {
    let mut entity = EventEntity {
        revision: revision.get(),
        kind: event.kind().to_owned(),
        unit: event.unit().map(ToString::to_string),
        machine: event.machine().map(ToString::to_string),
        ..EventEntity::default()
    };
    match event {
        RegistryEvent::UnitSubmitted { target, .. }
        | RegistryEvent::UnitReplaced { target, .. } => {
            entity.target_state = Some(target.as_str().to_owned());
        }
        RegistryEvent::UnitPlaced { target, reason, .. } => {
            entity.target_state = Some(target.as_str().to_owned());
            entity.reason.clone_from(reason);
        }
        RegistryEvent::UnitUnplaced { reason, .. } => entity.reason.clone_from(reason),
        RegistryEvent::UnitTargetChanged { from, to, .. } => {
            entity.target_state = Some(to.as_str().to_owned());
            entity.previous_target_state = Some(from.as_str().to_owned());
        }
        RegistryEvent::UnitStateChanged {
            load_state,
            active_state,
            sub_state,
            ..
        } => {
            entity.load_state = Some(load_state.clone());
            entity.active_state = Some(active_state.clone());
            entity.sub_state = Some(sub_state.clone());
        }
        RegistryEvent::MachineJoined { public_ip, .. }
        | RegistryEvent::MachineChanged { public_ip, .. } => {
            entity.public_ip = Some(public_ip.clone());
        }
        RegistryEvent::MachineCordoned { draining, .. } => entity.draining = Some(*draining),
        RegistryEvent::UnitDestroyed { .. }
        | RegistryEvent::MachineUncordoned { .. }
        | RegistryEvent::UnitStateRemoved { .. }
        | RegistryEvent::MachineLeft { .. }
        | RegistryEvent::LeaderChanged { .. } => {}
    }
    entity
}
