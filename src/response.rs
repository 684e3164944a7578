//! HTTP responses as bytes: status lines and the fixed header blocks of docs/protocol.md.
//!
//! Never chunked (nginx and PHP speak HTTP/1.0 on several routes): every response either carries
//! `Content-Length` or is a bodiless 304/101.

use crate::error::ApiError;

const CORS: &str = "Access-Control-Allow-Origin: *\r\n";

/// Whether the connection stays open after the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persist {
    KeepAlive,
    Close,
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Status line and headers up to and including the blank line, for a body of `len` bytes.
pub fn head(status: u16, content_type: &str, len: usize, persist: Persist) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n{CORS}Content-Length: {len}\r\n",
        reason(status)
    );
    if persist == Persist::Close {
        h.push_str("Connection: close\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// A complete response with a small body.
pub fn full(status: u16, content_type: &str, body: &[u8], persist: Persist) -> Vec<u8> {
    let mut r = head(status, content_type, body.len(), persist);
    r.extend_from_slice(body);
    r
}

/// The error answer: `<code>: <text>` as text/plain with the CORS header (docs/protocol.md#errors-and-close-codes).
pub fn error(err: ApiError, persist: Persist) -> Vec<u8> {
    full(
        err.status(),
        "text/plain",
        err.http_body().as_bytes(),
        persist,
    )
}

/// The long-poll timeout answer, exactly as docs/protocol.md#long-poll lists it (no body, so no length).
pub fn not_modified(last_message_id: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(256);
    r.extend_from_slice(
        b"HTTP/1.1 304 Not Modified\r\nContent-Type: text/plain\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: Last-Message-Id\r\nLast-Message-Id: ",
    );
    r.extend_from_slice(last_message_id);
    r.extend_from_slice(b"\r\nExpires: Thu, 01 Jan 1973 11:11:01 GMT\r\n\r\n");
    r
}

/// CORS preflight answer (docs/protocol.md#long-poll).
pub fn options(persist: Persist) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{CORS}Access-Control-Allow-Methods: POST, GET, DELETE, OPTIONS\r\nAccess-Control-Allow-Headers: If-Modified-Since, If-None-Match\r\nContent-Length: 0\r\n"
    );
    if persist == Persist::Close {
        r.push_str("Connection: close\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// WebSocket handshake answer, without a subprotocol.
pub fn switching_protocols(accept_key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_modified_is_exact() {
        let r = not_modified(b"17954797730000000000000003");
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "HTTP/1.1 304 Not Modified\r\nContent-Type: text/plain\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: Last-Message-Id\r\nLast-Message-Id: 17954797730000000000000003\r\nExpires: Thu, 01 Jan 1973 11:11:01 GMT\r\n\r\n"
        );
    }

    #[test]
    fn error_body_and_close() {
        let r = String::from_utf8(error(ApiError::WrongChannelId, Persist::Close)).unwrap();
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(r.contains("Access-Control-Allow-Origin: *\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\n4010: Wrong Channel Id."));
    }
}
