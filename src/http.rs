//! HTTP/1.x request heads: one `httparse` call over the buffered bytes, turned into a compact
//! owned [`RequestHead`] that outlives the read buffer.
//!
//! We check framing ourselves and reject anything ambiguous (request smuggling hides there):
//! `Transfer-Encoding` of any kind, repeated or malformed `Content-Length`. Bodies are never
//! parsed as forms, whatever `Content-Type` says (docs/protocol.md#routes-and-http).

use crate::error::HttpError;

/// Headers beyond this count are a 431, like an oversized head.
const MAX_HEADERS: usize = 48;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    /// Answered like GET without the body (not on the subscribe routes).
    Head,
    Post,
    Options,
    Other,
}

#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    /// Path and query exactly as sent.
    pub target: Box<str>,
    /// Index of `?` in `target`, or its length.
    path_end: usize,
    /// HTTP/1.0 (true) or 1.1.
    pub http10: bool,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    pub content_length: usize,
    /// `Sec-WebSocket-Key` of a real upgrade (docs/protocol.md#routes-and-http rule), else `None`.
    pub ws_key: Option<Box<str>>,
    /// `Message-Expiry` when it parses as an integer > 0, else 0 (docs/protocol.md#publishing-text-v3).
    pub message_expiry: u32,
    /// Client address from `X-Real-IP` or the first `X-Forwarded-For` entry, for logs only.
    pub client_ip: Option<Box<str>>,
    /// `X-HostId`: older Bitrix modules name their host id there instead of in the query
    /// of a v5 backend call (docs/v5.md, "The backend endpoint").
    pub host_id: Option<Box<str>>,
}

impl RequestHead {
    pub fn path(&self) -> &str {
        &self.target[..self.path_end]
    }

    pub fn query(&self) -> &[u8] {
        self.target
            .as_bytes()
            .get(self.path_end + 1..)
            .unwrap_or_default()
    }
}

/// Finds the end of the head (`\r\n\r\n`); returns the head length including it.
fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6), with the optional whitespace (SP, HTAB) around a
/// field value (§5.5). Anything else, a sign (`+5`, `-1`), inner spaces (`5 5`), an empty value,
/// `0x5`, or a number beyond `usize`, is [`HttpError::Malformed`]: a length that another hop
/// might read differently is where request smuggling hides.
fn parse_content_length(value: &[u8]) -> Result<usize, HttpError> {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    let digits = &value[start..end];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::Malformed);
    }
    digits
        .iter()
        .try_fold(0usize, |n, &d| {
            n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        })
        .ok_or(HttpError::Malformed)
}

/// Parses a complete head at the start of `buf`. `Ok(None)`: need more bytes.
pub fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let Some(len) = head_len(&buf[..buf.len().min(max_head.saturating_add(4))]) else {
        return if buf.len() > max_head {
            Err(HttpError::HeaderTooLarge)
        } else {
            Ok(None)
        };
    };
    if len > max_head {
        return Err(HttpError::HeaderTooLarge);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HttpError::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeaderTooLarge),
        Err(_) => return Err(HttpError::Malformed),
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("POST") => Method::Post,
        Some("OPTIONS") => Method::Options,
        _ => Method::Other,
    };
    let target: Box<str> = req.path.ok_or(HttpError::Malformed)?.into();
    let http10 = req.version == Some(0);

    let mut content_length: Option<usize> = None;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut conn_upgrade = false;
    let mut upgrade_ws = false;
    let mut ws_key = None;
    let mut message_expiry = 0;
    let mut real_ip = None;
    let mut forwarded = None;
    let mut host_id = None;
    for h in req.headers.iter() {
        let name = h.name;
        let value = h.value;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(value)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HttpError::Malformed);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // PHP and nginx never send it to us; refusing it closes the smuggling door.
            return Err(HttpError::Malformed);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                conn_close |= t.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                conn_upgrade |= t.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ws = value.trim_ascii().eq_ignore_ascii_case(b"websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            ws_key = std::str::from_utf8(value.trim_ascii()).ok().map(Box::from);
        } else if name.eq_ignore_ascii_case("message-expiry") {
            message_expiry = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or(0);
        } else if name.eq_ignore_ascii_case("x-real-ip") {
            real_ip = std::str::from_utf8(value.trim_ascii()).ok().map(Box::from);
        } else if name.eq_ignore_ascii_case("x-hostid") {
            host_id = std::str::from_utf8(value.trim_ascii()).ok().map(Box::from);
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.split(',').next())
                .map(|v| Box::from(v.trim()));
        }
    }
    // Only a real handshake upgrades; nginx's `Upgrade: websocket` + `Connection: close` on a
    // plain GET is a long poll (docs/protocol.md#routes-and-http).
    #[allow(clippy::borrowed_box)]
    let ws_key = if conn_upgrade && upgrade_ws && method == Method::Get {
        ws_key.filter(|k: &Box<str>| !k.as_ref().is_empty())
    } else {
        None
    };
    let keep_alive = if http10 {
        conn_keep_alive && !conn_close
    } else {
        !conn_close
    };
    let path_end = target.find('?').unwrap_or(target.len());
    Ok(Some((
        RequestHead {
            method,
            target,
            path_end,
            http10,
            keep_alive,
            content_length: content_length.unwrap_or(0),
            ws_key,
            message_expiry,
            client_ip: real_ip.or(forwarded),
            host_id,
        },
        len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<(RequestHead, usize)>, HttpError> {
        parse_head(s.as_bytes(), 8192)
    }

    #[test]
    fn partial_then_complete() {
        assert!(
            parse("GET /bitrix/sub/?CHANNEL_ID=a HTTP/1.1\r\nHost: x\r\n")
                .unwrap()
                .is_none()
        );
        let (h, len) = parse("GET /bitrix/sub/?CHANNEL_ID=a HTTP/1.1\r\nHost: x\r\n\r\nNEXT")
            .unwrap()
            .unwrap();
        assert_eq!(len, 51);
        assert_eq!(h.path(), "/bitrix/sub/");
        assert_eq!(h.query(), b"CHANNEL_ID=a");
        assert!(h.keep_alive && !h.http10 && h.ws_key.is_none());
    }

    #[test]
    fn pipelined_heads_parse_one_at_a_time() {
        let two = "OPTIONS /a HTTP/1.1\r\n\r\nOPTIONS /b HTTP/1.1\r\n\r\n";
        let (h, len) = parse(two).unwrap().unwrap();
        assert_eq!(h.path(), "/a");
        let (h2, _) = parse(&two[len..]).unwrap().unwrap();
        assert_eq!(h2.path(), "/b");
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let (h, _) = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(h.http10 && !h.keep_alive);
        let (h, _) = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let (h, _) = parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn websocket_detection_follows_nginx_rules() {
        let lp = "GET /bitrix/subws/ HTTP/1.1\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n";
        assert!(parse(lp).unwrap().unwrap().0.ws_key.is_none());
        let ws = "GET /bitrix/subws/ HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(
            parse(ws).unwrap().unwrap().0.ws_key.as_deref(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        let no_key = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        assert!(parse(no_key).unwrap().unwrap().0.ws_key.is_none());
    }

    #[test]
    fn framing_checks() {
        assert_eq!(
            parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err(),
            HttpError::Malformed
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").unwrap_err(),
            HttpError::Malformed
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").unwrap_err(),
            HttpError::Malformed
        );
        let (h, _) = parse("POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\nmessage-expiry: 120\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.content_length, h.message_expiry), (5, 120));
        let (h, _) = parse("POST / HTTP/1.1\r\nMessage-Expiry: soon\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.message_expiry, 0);
        assert_eq!(parse("garbage\r\n\r\n").unwrap_err(), HttpError::Malformed);
    }

    fn with_length(value: &str) -> Result<Option<(RequestHead, usize)>, HttpError> {
        parse(&format!(
            "POST / HTTP/1.1\r\nContent-Length:{value}\r\n\r\n"
        ))
    }

    #[test]
    fn content_length_is_digits_only() {
        for bad in [
            " +5",
            " -1",
            " 5 5",
            "",
            " ",
            " 0x5",
            " 5,5",
            " 5;",
            " 0.5",
            " \u{663}",
            " 18446744073709551616",
            " 99999999999999999999999",
        ] {
            assert_eq!(
                with_length(bad).unwrap_err(),
                HttpError::Malformed,
                "Content-Length:{bad:?}"
            );
        }
        for (ok, n) in [
            ("5", 5),
            (" 5", 5),
            ("\t5\t", 5),
            ("  5  ", 5),
            (" 0", 0),
            (" 007", 7),
            (" 18446744073709551615", usize::MAX),
        ] {
            let (h, _) = with_length(ok).unwrap().unwrap();
            assert_eq!(h.content_length, n, "Content-Length:{ok:?}");
        }
        // A repeated header must agree after parsing, so `5` and `05` are the same length.
        let (h, _) = parse("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.content_length, 5);
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: +5\r\n\r\n")
                .unwrap_err(),
            HttpError::Malformed
        );
    }

    /// Found by the `http_head` fuzz target: `max_head + 4` overflowed for a limit of
    /// `usize::MAX` ("no limit"), a panic instead of parsing.
    #[test]
    fn no_head_limit_does_not_overflow() {
        assert!(parse_head(b"\xff\xff", usize::MAX).unwrap().is_none());
        let (h, len) = parse_head(b"GET /x HTTP/1.1\r\n\r\n", usize::MAX)
            .unwrap()
            .unwrap();
        assert_eq!((h.path(), len), ("/x", 19));
    }

    #[test]
    fn oversized_heads() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse(&big).unwrap_err(), HttpError::HeaderTooLarge);
        let unfinished = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
        assert_eq!(parse(&unfinished).unwrap_err(), HttpError::HeaderTooLarge);
        let many: String = (0..60).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(),
            HttpError::HeaderTooLarge
        );
    }

    #[test]
    fn client_ip_from_proxy_headers() {
        let (h, _) = parse("GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.client_ip.as_deref(), Some("10.0.0.1"));
        let (h, _) =
            parse("GET / HTTP/1.1\r\nX-Real-IP: 1.2.3.4\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(h.client_ip.as_deref(), Some("1.2.3.4"));
    }
}
