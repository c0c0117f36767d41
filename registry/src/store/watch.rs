//! Watches: the raw events of one prefix from a revision, grouped by
//! transaction. The engine and the agent do not use these directly: they go
//! through [`crate::changes::ChangeStream`], which decodes them into typed
//! changes.

#[allow(clippy::wildcard_imports)] // the store's imports, shared by its parts
use super::*;

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEventKind {
    Put,
    Delete,
}

/// One change seen by a watch: a raw key and value. Outside the registry, use
/// [`crate::changes::ChangeStream`], which decodes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub key: String,
    /// The new value; empty for a delete.
    pub value: Vec<u8>,
    pub kind: WatchEventKind,
    /// The revision of the change (for a delete, the revision of the delete).
    pub mod_revision: Revision,
}

/// The events of a watch, in revision order, grouped as etcd sends them (all
/// the events of one transaction arrive in one batch).
pub struct WatchStream {
    /// Holds the request half too: dropping it would end the watch.
    stream: etcd_client::WatchStream,
    /// The member serving the watch, marked down when the stream breaks.
    member: MemberRef,
    /// Events that came with the response confirming the watch.
    pending: Option<Vec<WatchEvent>>,
}

impl fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}

impl WatchStream {
    /// The next batch of events; `Ok(None)` when etcd ended the stream.
    /// Cancel-safe: usable in a looping `select!` (no state is kept between
    /// awaits).
    ///
    /// # Errors
    /// [`RegistryError::Compacted`] when etcd compacted past our position
    /// (re-list and watch again); [`RegistryError::Etcd`] when the connection
    /// broke or etcd cancelled the watch (watch again from the last revision seen).
    pub async fn next(&mut self) -> Result<Option<Vec<WatchEvent>>, RegistryError> {
        if let Some(events) = self.pending.take() {
            return Ok(Some(events));
        }
        let batch = self.next_batch().await;
        if let Err(error) = &batch {
            fleet_metrics::get().etcd.watch_failed(match error {
                RegistryError::Compacted { .. } => "compacted",
                _ => "broken",
            });
        }
        batch
    }

    pub(super) async fn next_batch(&mut self) -> Result<Option<Vec<WatchEvent>>, RegistryError> {
        loop {
            let response = match self.stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Ok(None),
                Err(error) => {
                    self.member.failed(&error);
                    return Err(etcd_error("watch", error));
                }
            };
            if let Some(events) = watch_batch(&response)? {
                return Ok(Some(events));
            }
        }
    }
}

/// The events of one watch response, `None` for one without events (created,
/// progress), or the error a cancelled watch means.
pub(super) fn watch_batch(
    response: &etcd_client::WatchResponse,
) -> Result<Option<Vec<WatchEvent>>, RegistryError> {
    if response.canceled() {
        if response.compact_revision() > 0 {
            return Err(RegistryError::Compacted {
                revision: Revision::new(response.compact_revision()),
            });
        }
        return Err(RegistryError::Etcd {
            op: "watch",
            message: format!("etcd cancelled the watch: {}", response.cancel_reason()),
        });
    }
    if response.events().is_empty() {
        return Ok(None);
    }
    let events = response
        .events()
        .iter()
        .filter_map(|event| {
            let kv = event.kv()?;
            let key = kv.key_str().ok()?.to_owned();
            let kind = match event.event_type() {
                EventType::Put => WatchEventKind::Put,
                EventType::Delete => WatchEventKind::Delete,
            };
            Some(WatchEvent {
                key,
                value: kv.value().to_vec(),
                kind,
                mod_revision: Revision::new(kv.mod_revision()),
            })
        })
        .collect();
    Ok(Some(events))
}

impl Registry {
    /// Watches every key under `prefix` (take it from [`Registry::keys`]),
    /// from `from_revision` on (use a list's revision + 1). Waits, within the
    /// request deadline, until etcd has accepted the watch. Watches have no
    /// deadline themselves; a dead connection surfaces as an error of
    /// [`WatchStream::next`] after the HTTP/2 keep-alive timeout.
    ///
    /// # Errors
    /// [`RegistryError::Compacted`] when `from_revision` is compacted already
    /// (from here or from the first [`WatchStream::next`]: etcd confirms the
    /// watch before it cancels it).
    pub async fn watch_prefix(
        &self,
        prefix: String,
        from_revision: Revision,
    ) -> Result<WatchStream, RegistryError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from_revision.get());
        let (stream, first, member) = self.open_watch("watch", prefix, options).await?;
        // Events are not expected before `created`, but never drop any.
        let pending = watch_batch(&first)?;
        Ok(WatchStream {
            stream,
            member,
            pending,
        })
    }

    /// Opens a watch on a live member and reads etcd's first response, which
    /// confirms the watch (or cancels it at once when the revision is
    /// compacted). Retry-safe: a watch is a read; a watch whose member dies
    /// ends with an error and its owner watches again. The one way every
    /// watch of the registry is opened.
    pub(crate) async fn open_watch(
        &self,
        op: &'static str,
        prefix: String,
        options: WatchOptions,
    ) -> Result<
        (
            etcd_client::WatchStream,
            etcd_client::WatchResponse,
            MemberRef,
        ),
        RegistryError,
    > {
        fleet_metrics::get().etcd.watch_started();
        let ((stream, first), member) = self
            .inner
            .endpoints
            .run(op, |mut clients| {
                let (prefix, options) = (prefix.clone(), options.clone());
                async move {
                    let mut stream = clients.watch.watch(prefix, Some(options)).await?;
                    let first = stream.message().await?;
                    Ok((stream, first))
                }
            })
            .await?;
        let Some(first) = first else {
            return Err(RegistryError::Etcd {
                op,
                message: "etcd closed the watch at once".to_owned(),
            });
        };
        Ok((stream, first, member))
    }
}
