//! WebSocket framing (RFC 6455) for the server side: the handshake accept key, frames built
//! once and shared by every subscriber, and a parser for client frames.
//!
//! Server frames are unmasked, so one built frame serves every subscriber of a wire format. The
//! client-frame parser works straight on the connection's read buffer and keeps no state of
//! its own beyond the size of a fragmented message, so an idle socket holds no buffer.

use tungstenite::Bytes;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for a client key.
pub fn accept_key(key: &str) -> String {
    tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// Appends one unmasked final frame to `out`.
pub fn write_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// One unmasked final frame, built once and shared by every subscriber.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut f = Vec::new();
    write_frame(opcode, payload, &mut f);
    Bytes::from(f)
}

/// A close frame with `code` and a reason (truncated to fit a control frame).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    let r = reason.as_bytes();
    payload.extend_from_slice(&r[..r.len().min(123)]);
    server_frame(OP_CLOSE, &payload)
}

/// A client frame, unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Why the peer's input ends the connection; the value is the close code to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation(pub u16);

/// The payload length of the frame at the start of `buf` and where its header's mask or
/// payload begins (RFC 6455 §5.2): `None` until the length bytes are there. `buf` holds at
/// least the two first header bytes.
pub fn payload_len(buf: &[u8]) -> Option<(u64, usize)> {
    match buf[1] & 0x7F {
        126 => {
            let b = buf.get(2..4)?;
            Some((u64::from(u16::from_be_bytes([b[0], b[1]])), 4))
        }
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some((u64::from_be_bytes(b), 10))
        }
        n => Some((u64::from(n), 2)),
    }
}

/// Tracks a fragmented message across frames so its total size can be limited.
#[derive(Default)]
pub struct Reader {
    /// Opcode and bytes so far of a message whose final frame has not come yet.
    fragmented: Option<(u8, usize)>,
}

impl Reader {
    /// Parses one frame from the start of `buf`. `Ok(None)`: need more bytes.
    /// A message (all its fragments) over `max_message` is a violation with code 1009.
    pub fn parse(
        &mut self,
        buf: &[u8],
        max_message: usize,
    ) -> Result<Option<(Frame, usize)>, Violation> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let fin = buf[0] & 0x80 != 0;
        if buf[0] & 0x70 != 0 {
            return Err(Violation(1002));
        }
        let opcode = buf[0] & 0x0F;
        if buf[1] & 0x80 == 0 {
            // Clients must mask (RFC 6455 §5.1).
            return Err(Violation(1002));
        }
        let Some((len, mut pos)) = payload_len(buf) else {
            return Ok(None);
        };
        let is_control = opcode & 0x8 != 0;
        if is_control && (!fin || len > 125) {
            return Err(Violation(1002));
        }
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(Violation(1002)),
        }
        let so_far = match (opcode, self.fragmented) {
            (OP_CONTINUATION, Some((_, n))) => n,
            (OP_CONTINUATION, None) => return Err(Violation(1002)),
            (OP_TEXT | OP_BINARY, Some(_)) => return Err(Violation(1002)),
            _ => 0,
        };
        let total = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(so_far))
            .filter(|&t| t <= max_message)
            .ok_or(Violation(1009))?;
        let len = len as usize;
        // Only without a real limit can the end overflow; such a frame cannot be buffered.
        let end = (pos + 4).checked_add(len).ok_or(Violation(1009))?;
        if buf.len() < end {
            return Ok(None);
        }
        let mask = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        let payload: Vec<u8> = buf[pos..pos + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        if !is_control {
            self.fragmented = if fin {
                None
            } else {
                let first = self.fragmented.map_or(opcode, |(op, _)| op);
                Some((first, total))
            };
        }
        Ok(Some((
            Frame {
                fin,
                opcode,
                payload,
            },
            pos + len,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    #[test]
    fn rfc6455_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn server_frame_lengths() {
        assert_eq!(&server_frame(OP_TEXT, b"hi")[..], b"\x81\x02hi");
        let f = server_frame(OP_BINARY, &[0u8; 300]);
        assert_eq!(&f[..4], &[0x82, 126, 1, 44]);
        let f = server_frame(OP_TEXT, &vec![0u8; 70000]);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70010);
        assert_eq!(
            &close_frame(4010, "4010: Wrong Channel Id.")[..4],
            b"\x88\x19\x0f\xaa"
        );
    }

    #[test]
    fn parses_split_masked_frames() {
        let mut r = Reader::default();
        let f = masked(0x81, b"hello");
        assert_eq!(r.parse(&f[..3], 100), Ok(None));
        let (frame, used) = r.parse(&f, 100).unwrap().unwrap();
        assert_eq!(used, f.len());
        assert_eq!(frame.payload, b"hello");
        assert_eq!(frame.opcode, OP_TEXT);
    }

    #[test]
    fn limits_and_violations() {
        let mut r = Reader::default();
        assert_eq!(r.parse(&masked(0x82, &[0; 200]), 100), Err(Violation(1009)));
        let mut r = Reader::default();
        assert!(r.parse(&masked(0x02, &[0; 60]), 100).unwrap().is_some());
        assert_eq!(r.parse(&masked(0x80, &[0; 60]), 100), Err(Violation(1009)));
        let mut r = Reader::default();
        assert_eq!(
            r.parse(b"\x81\x02hi", 100),
            Err(Violation(1002)),
            "unmasked"
        );
        assert_eq!(
            r.parse(&masked(0x80, b"x"), 100),
            Err(Violation(1002)),
            "stray continuation"
        );
        assert_eq!(
            r.parse(&masked(0x09, b"x"), 100),
            Err(Violation(1002)),
            "fragmented ping"
        );
        let (ping, _) = r.parse(&masked(0x89, b"p"), 100).unwrap().unwrap();
        assert_eq!((ping.opcode, ping.payload), (OP_PING, b"p".to_vec()));
    }

    /// Found by the `ws_reader` fuzz target: without a message limit (`usize::MAX`) a 64-bit
    /// length near `u64::MAX` passed the limit check and `pos + 4 + len` overflowed. A frame
    /// that cannot fit in memory is too big (1009), whatever the limit.
    #[test]
    fn huge_length_without_limit_is_too_big() {
        let mut r = Reader::default();
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&u64::MAX.to_be_bytes());
        f.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(r.parse(&f, usize::MAX), Err(Violation(1009)));
        // The largest length that fits is still just "need more".
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&((usize::MAX - 14) as u64).to_be_bytes());
        assert_eq!(r.parse(&f, usize::MAX), Ok(None));
    }
}
