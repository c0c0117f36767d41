//! The client side of `GET /fleet/v1/events`: one long response read as
//! server-sent events, message by message.

use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;

use super::{Client, ClientError, api_error, escape_query_value};

/// One server-sent event: its `event:` name, `data:` and `id:` (if any).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseMessage {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// An open event stream.
pub struct EventReader {
    body: Incoming,
    buffer: Buffer,
    endpoint: String,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader").finish_non_exhaustive()
    }
}

impl Client {
    /// Opens the event stream with these query parameters (`unit`,
    /// `machine`, `since`, `follow`). No timeout: it lasts as long as the
    /// caller reads.
    ///
    /// # Errors
    /// Transport failures, or the API's error answer (e.g. 410 for a
    /// compacted `since`).
    pub async fn events(&self, query: &[(&str, &str)]) -> Result<EventReader, ClientError> {
        let mut uri = format!("{}events?alt=json", self.endpoint.base_path());
        for (key, value) in query {
            uri.push_str(&format!("&{key}={}", escape_query_value(value)));
        }
        self.open_sse(&uri, &[]).await
    }

    /// Opens one long GET of `uri` (path and query) read as server-sent
    /// events, on a connection of its own, with `headers` added.
    pub(super) async fn open_sse(
        &self,
        uri: &str,
        headers: &[(&'static str, String)],
    ) -> Result<EventReader, ClientError> {
        let endpoint = self.endpoint.url().to_owned();
        let transport = |detail: String| ClientError::Transport {
            endpoint: endpoint.clone(),
            detail,
        };
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(http::header::HOST, self.endpoint.host_header())
            .header(http::header::USER_AGENT, "fleetctl")
            .header(http::header::ACCEPT, "text/event-stream");
        if let Some(token) = &self.token {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let request = builder
            .body(Empty::<Bytes>::new())
            .map_err(|error| transport(format!("building GET {uri}: {error}")))?;
        let connection = self
            .dialer
            .dial()
            .await
            .map_err(|error| transport(error.to_string()))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(connection))
                .await
                .map_err(|error| transport(format!("GET {uri}: {error}")))?;
        // Runs until the response body ends or the reader is dropped.
        tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| transport(format!("GET {uri}: {error}")))?;
        let status = response.status();
        let body = response.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|error| transport(format!("GET {uri}: reading body: {error}")))?
                .to_bytes();
            return Err(api_error(status, &bytes));
        }
        Ok(EventReader {
            body,
            buffer: Buffer::default(),
            endpoint,
        })
    }
}

impl EventReader {
    /// The next message; `Ok(None)` when the server ended the stream.
    ///
    /// # Errors
    /// [`ClientError::Transport`] when the connection breaks.
    pub async fn next(&mut self) -> Result<Option<SseMessage>, ClientError> {
        loop {
            if let Some(message) = self.buffer.take_message() {
                return Ok(Some(message));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(error)) => {
                    return Err(ClientError::Transport {
                        endpoint: self.endpoint.clone(),
                        detail: format!("reading the event stream: {error}"),
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.push(&data);
                    }
                }
            }
        }
    }
}

/// Bytes received but not yet parsed into a complete message (the SSE wire
/// format, kept apart from the I/O so it can be tested).
#[derive(Default)]
struct Buffer {
    pending: Vec<u8>,
}

impl Buffer {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next complete message (ended by a blank line), skipping
    /// comment-only blocks (keep-alives).
    fn take_message(&mut self) -> Option<SseMessage> {
        loop {
            let end = self.pending.windows(2).position(|w| w == b"\n\n")?;
            let block: Vec<u8> = self.pending.drain(..end + 2).collect();
            if let Some(message) = parse_block(&String::from_utf8_lossy(&block)) {
                return Some(message);
            }
        }
    }
}

/// One block of lines; `None` when it holds no data (a comment).
fn parse_block(block: &str) -> Option<SseMessage> {
    let mut message = SseMessage::default();
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => message.event = value.to_owned(),
            "data" => data.push(value),
            "id" => message.id = Some(value.to_owned()),
            _ => {} // comments (empty field) and unknown fields
        }
    }
    if data.is_empty() {
        return None;
    }
    message.data = data.join("\n");
    if message.event.is_empty() {
        message.event = "message".to_owned();
    }
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_chunks_are_reassembled() {
        let mut buffer = Buffer::default();
        buffer.push(b": keep-alive\n\nevent: unit.placed\ndata: {\"revision\"");
        assert_eq!(buffer.take_message(), None);
        buffer.push(b":7}\nid: 7\n\ndata: x\n\n");
        assert_eq!(
            buffer.take_message(),
            Some(SseMessage {
                event: "unit.placed".to_owned(),
                data: "{\"revision\":7}".to_owned(),
                id: Some("7".to_owned()),
            })
        );
        assert_eq!(
            buffer.take_message().map(|m| m.event),
            Some("message".to_owned())
        );
        assert_eq!(buffer.take_message(), None);
    }
}
