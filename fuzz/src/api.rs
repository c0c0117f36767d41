//! The `api` target: the API request path before etcd.

use std::str::FromStr;

use fleet_api::server::precheck::{Rejection, precheck};
use fleet_api::token::PageToken;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

/// The server's page size the `api` target runs with (fleetd's default).
const TOKEN_LIMIT: u16 = 100;

/// `api`: an HTTP request as text: `METHOD URI`, header lines
/// `Name: value`, a blank line, then the body (bytes, not necessarily
/// UTF-8). Lines that do not make a valid method, URI or header are
/// dropped (the HTTP layer would refuse them before fleet sees them).
///
/// Property: every rejection before etcd is a 4xx with a message, never a
/// panic or a 5xx. Also: a page token that decodes encodes back to itself.
pub fn api(data: &[u8]) {
    let (head, body) = split_head(data);
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let (method, target) = request_line.split_once(' ').unwrap_or((request_line, "/"));
    let (Ok(method), Ok(uri)) = (Method::from_str(method), Uri::from_str(target)) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_str(name.trim()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    match precheck(&method, &uri, &headers, body, TOKEN_LIMIT) {
        Ok(_) => {}
        Err(Rejection { status, message }) => {
            assert!(status.is_client_error(), "{status} before etcd: {message}");
        }
    }
    if let Ok(token) = PageToken::decode(&String::from_utf8_lossy(body)) {
        assert_eq!(PageToken::decode(&token.encode()), Ok(token));
        let _ = token.window(usize::from(TOKEN_LIMIT) * 3);
        let _ = token.next().window(body.len());
    }
}

/// Splits at the first blank line (`\n\n` or `\r\n\r\n`).
fn split_head(data: &[u8]) -> (&[u8], &[u8]) {
    for (separator, len) in [(&b"\r\n\r\n"[..], 4), (&b"\n\n"[..], 2)] {
        if let Some(at) = data.windows(len).position(|window| window == separator) {
            return (&data[..at], &data[at + len..]);
        }
    }
    (data, &[])
}
