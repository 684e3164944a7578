//! Wire formats the tool needs: the subscriber requests, a WebSocket frame reader (server
//! frames are unmasked) and writer (client frames are masked), v3 `#!NGINXNMS!#` payloads,
//! publish requests and HTTP response heads, for push-server and for the nchan peer. Everything coming from the network is parsed
//! into `Result`s; nothing here panics on bad input.

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

const START: &[u8] = b"#!NGINXNMS!#";
const END: &[u8] = b"#!NGINXNME!#";

/// Which server the tool talks to: push-server (v3 protocol, signed channel ids) or the nchan
/// peer of `bench/nchan.conf.in` (plain channel ids, raw message bodies), with its
/// memory store (`/sub/`, `/pub/`) or its Redis store (`/rsub/`, `/rpub/`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    Push,
    Nchan,
    NchanRedis,
}

impl Target {
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "push" | "push-server" => Some(Target::Push),
            "nchan" => Some(Target::Nchan),
            "nchan-redis" => Some(Target::NchanRedis),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Push => "push",
            Target::Nchan => "nchan",
            Target::NchanRedis => "nchan-redis",
        }
    }

    pub fn is_nchan(self) -> bool {
        self != Target::Push
    }

    /// Requests per keep-alive connection the server allows: nginx's `keepalive_requests`
    /// default (1000) for nchan; push-server sets no limit.
    pub fn requests_per_conn(self) -> Option<u64> {
        self.is_nchan().then_some(1000)
    }

    /// The location prefixes (subscribe, publish) of the nchan peer.
    fn nchan_paths(self) -> (&'static str, &'static str) {
        match self {
            Target::NchanRedis => ("/rsub/", "/rpub/"),
            _ => ("/sub/", "/pub/"),
        }
    }
}

/// The subscribe request as a WebSocket upgrade or a plain long poll: push-server's
/// `GET /bitrix/subws/?CHANNEL_ID=<id>.<sig>`, or nchan's `GET /sub/<id>`; `extra` is
/// appended to the header lines as it is.
pub fn subscribe_request(
    target: Target,
    channel_item: &str,
    websocket: bool,
    extra: &str,
) -> Vec<u8> {
    let mut r = if target.is_nchan() {
        format!(
            "GET {}{channel_item} HTTP/1.1\r\nHost: localhost\r\n",
            target.nchan_paths().0
        )
    } else {
        format!(
            "GET /bitrix/subws/?CHANNEL_ID={channel_item}&revision=19 HTTP/1.1\r\nHost: localhost\r\n"
        )
    };
    if websocket {
        r.push_str(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        );
    }
    r.push_str(extra);
    r.push_str("\r\n");
    r.into_bytes()
}

/// Appends a text publish to `out` (HTTP/1.1 keep-alive): push-server's
/// `POST /bitrix/pub/?CHANNEL_ID=<ids>` (`/`-joined ids) or nchan's `POST /pub/<id>`.
pub fn publish_request(target: Target, channels: &str, body: &[u8], out: &mut Vec<u8>) {
    let path = if target.is_nchan() {
        format!("{}{channels}", target.nchan_paths().1)
    } else {
        format!("/bitrix/pub/?CHANNEL_ID={channels}")
    };
    out.extend_from_slice(
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
}

/// Appends one masked client frame.
pub fn write_client_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// One server frame found at the start of a buffer.
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    /// Payload range within the buffer.
    pub start: usize,
    pub end: usize,
}

/// Parses one frame at the start of `buf`: `Ok(None)` when more bytes are needed.
pub fn parse_server_frame(buf: &[u8]) -> Result<Option<Frame>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    if buf[0] & 0x70 != 0 {
        return Err(format!("frame with RSV bits set (byte 0x{:02x})", buf[0]));
    }
    let opcode = buf[0] & 0x0F;
    if buf[1] & 0x80 != 0 {
        return Err("server frame is masked".into());
    }
    let Some((len, hdr)) = push_server::websocket::payload_len(buf) else {
        return Ok(None);
    };
    if len > 64 << 20 {
        return Err(format!("frame of {len} bytes is too large"));
    }
    let end = hdr + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin,
        opcode,
        start: hdr,
        end,
    }))
}

/// One message of a v3 payload.
pub struct V3Message<'a> {
    pub mid: u128,
    pub text: &'a [u8],
}

/// Calls `f` for each `#!NGINXNMS!#{...}#!NGINXNME!#` frame of a v3 payload, in order.
pub fn for_each_v3(payload: &[u8], mut f: impl FnMut(V3Message<'_>)) -> Result<usize, String> {
    let mut rest = payload;
    let mut n = 0;
    loop {
        let Some(s) = find(rest, START) else {
            if rest.iter().any(|b| !b.is_ascii_whitespace()) && n == 0 {
                return Err(format!("text without a v3 frame: {}", preview(rest)));
            }
            return Ok(n);
        };
        let body = &rest[s + START.len()..];
        let Some(e) = find(body, END) else {
            return Err(format!("unterminated v3 frame: {}", preview(body)));
        };
        f(parse_v3_object(&body[..e])?);
        n += 1;
        rest = &body[e + END.len()..];
    }
}

/// Pulls `mid` and `text` out of `{"id":..,"mid":"<26>",...,"text":<body>}` (fixed field order).
fn parse_v3_object(obj: &[u8]) -> Result<V3Message<'_>, String> {
    const MID: &[u8] = b"\"mid\":\"";
    const TEXT: &[u8] = b",\"text\":";
    let m = find(obj, MID).ok_or_else(|| format!("v3 frame without mid: {}", preview(obj)))?;
    let digits = obj
        .get(m + MID.len()..m + MID.len() + 26)
        .ok_or_else(|| format!("short mid: {}", preview(obj)))?;
    if !digits.iter().all(u8::is_ascii_digit) || obj.get(m + MID.len() + 26) != Some(&b'"') {
        return Err(format!("mid is not 26 digits: {}", preview(obj)));
    }
    let mid = digits
        .iter()
        .fold(0u128, |acc, d| acc * 10 + u128::from(d - b'0'));
    let after = m + MID.len() + 27;
    let t = find(&obj[after..], TEXT)
        .ok_or_else(|| format!("v3 frame without text: {}", preview(obj)))?;
    let text_start = after + t + TEXT.len();
    if obj.last() != Some(&b'}') || obj.len() <= text_start {
        return Err(format!("v3 frame is not an object: {}", preview(obj)));
    }
    Ok(V3Message {
        mid,
        text: &obj[text_start..obj.len() - 1],
    })
}

/// The unsigned integer right after `key` (e.g. `{"seq":`) at the start of a body.
pub fn leading_number(text: &[u8], key: &[u8]) -> Option<u64> {
    let rest = text.strip_prefix(key)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// A body `prefix<number>` padded with a `"pad"` string so the whole body has at least `size`
/// bytes, e.g. `{"seq":7,"pad":"xxxx"}`.
pub fn body(prefix: &str, number: u64, size: usize) -> Vec<u8> {
    let mut b = format!("{prefix}{number}").into_bytes();
    let closing = 1;
    if b.len() + closing < size {
        let pad = size.saturating_sub(b.len() + closing + 9);
        b.extend_from_slice(b",\"pad\":\"");
        b.extend(std::iter::repeat_n(b'x', pad));
        b.push(b'"');
    }
    b.push(b'}');
    b
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// A short printable excerpt for error messages.
pub fn preview(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(80)]).into_owned();
    if b.len() > 80 { s + "..." } else { s }
}

/// An HTTP response head: status and body length.
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the head including the blank line.
    pub head_len: usize,
    pub content_length: usize,
}

/// Parses a response head at the start of `buf`; `Ok(None)` when incomplete.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            return Err("response head over 16 KiB".into());
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| format!("non-UTF-8 response head: {}", preview(&buf[..end])))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "not an HTTP response: {}",
            preview(status_line.as_bytes())
        ));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {status_line}"))?;
    let mut content_length = 0;
    for line in lines {
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            content_length = v
                .trim()
                .parse()
                .map_err(|_| format!("bad Content-Length: {line}"))?;
        }
    }
    Ok(Some(ResponseHead {
        status,
        head_len: end + 4,
        content_length,
    }))
}

/// A `Cookie` header line of `bytes` bytes, CRLF included (none for 0), shaped like a portal's
/// `BITRIX_SM_*` cookies.
pub fn cookie_header(bytes: usize) -> String {
    if bytes == 0 {
        return String::new();
    }
    let mut h = String::from("Cookie: PHPSESSID=0123456789abcdef0123456789abcdef");
    let mut i = 0;
    while h.len() + 2 < bytes {
        h.push_str(&format!(
            "; BITRIX_SM_C{i}=0123456789abcdef0123456789abcdef0123"
        ));
        i += 1;
    }
    h.truncate(bytes.saturating_sub(2).max("Cookie: a".len()));
    h.push_str("\r\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_payload_parses() {
        let p = br#"#!NGINXNMS!#{"id":3,"mid":"17954797730000000000000003","channel":"-","tag":"1","time":"x","text":{"seq":5}}#!NGINXNME!##!NGINXNMS!#{"id":4,"mid":"17954797730000000000000004","channel":"-","tag":"1","time":"x","text":abc}#!NGINXNME!#"#;
        let mut got = Vec::new();
        let n = for_each_v3(p, |m| got.push((m.mid, m.text.to_vec()))).expect("parses");
        assert_eq!(n, 2);
        assert_eq!(got[0].0, 17954797730000000000000003);
        assert_eq!(leading_number(&got[0].1, b"{\"seq\":"), Some(5));
        assert_eq!(got[1].1, b"abc");
        assert!(for_each_v3(b"garbage", |_| {}).is_err());
    }

    #[test]
    fn body_is_padded() {
        let b = body("{\"seq\":", 7, 100);
        assert_eq!(b.len(), 100);
        assert!(serde_json::from_slice::<serde_json::Value>(&b).is_ok());
        assert_eq!(body("{\"seq\":", 7, 0), b"{\"seq\":7}");
    }

    #[test]
    fn frames_round_trip_headers() {
        assert!(parse_server_frame(&[0x81]).expect("ok").is_none());
        let f = parse_server_frame(&[0x81, 0x02, b'h', b'i'])
            .expect("ok")
            .expect("frame");
        assert_eq!((f.opcode, f.start, f.end, f.fin), (OP_TEXT, 2, 4, true));
        assert!(parse_server_frame(&[0x81, 0x82, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn cookie_header_has_the_asked_size() {
        assert_eq!(cookie_header(0), "");
        for n in [100, 1500, 6000] {
            let h = cookie_header(n);
            assert_eq!(h.len(), n, "{h}");
            assert!(h.starts_with("Cookie: PHPSESSID=") && h.ends_with("\r\n"));
        }
    }
}
