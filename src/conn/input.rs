//! Turns a connection's buffered input into the next thing the loop acts on, one step at a
//! time: a complete request, a client WebSocket frame, or the error that ends the connection.
//!
//! This is pure: it works on the phase and the read buffer only, never on the socket or the
//! server, so it is tested with in-memory byte streams (below) and fuzzed. The loop calls it
//! repeatedly and acts on each [`Input`] before asking for the next; nothing here calls back
//! into the loop, so pipelined input cannot deepen the stack (docs/loop.md).

use bytes::{Buf, BytesMut};
use tungstenite::Bytes;

use super::Phase;
use crate::error::{HttpError, close};
use crate::http::{self, RequestHead};
use crate::websocket::{self, Frame};

/// Unparsed input a held long poll may accumulate (pipelined bytes) before it is cut; also
/// what a connection reads ahead of the request it is working on.
pub const READ_AHEAD: usize = 64 * 1024;

/// The request limits parsing enforces.
#[derive(Clone, Copy, Debug)]
pub struct InputLimits {
    /// `MAX_HEADER_SIZE`: request line and headers (431 beyond).
    pub max_head: usize,
    /// `MAX_PAYLOAD`: a request body or a whole WebSocket message (413 / 1009 beyond).
    pub max_payload: usize,
}

/// The next step for the loop.
#[derive(Debug)]
pub enum Input {
    /// Nothing to act on until more bytes arrive or the phase changes.
    Wait,
    /// A complete request; the phase is back at `Request(None)` and the loop sets the next.
    Request(Box<RequestHead>, Bytes),
    /// The request cannot be served: answer with this error and close (the stream position
    /// is unknown after a framing error).
    BadRequest(HttpError),
    /// A client WebSocket frame, unmasked.
    Frame(Frame),
    /// The WebSocket peer broke the protocol: close with this code.
    Violation(u16),
    /// A held long poll got more pipelined input than it may buffer.
    Overrun,
}

/// How much unparsed input the connection may hold in its phase: what the current request
/// needs plus [`READ_AHEAD`]. The rest waits in the kernel, which is the back-pressure on a
/// client that sends faster than it is served.
pub fn read_cap(phase: &Phase, limits: InputLimits) -> usize {
    match phase {
        Phase::Request(Some(head)) => head.content_length + READ_AHEAD,
        // A WebSocket message may be MAX_PAYLOAD long, plus its frame headers.
        Phase::WebSocket(_) => limits.max_head + limits.max_payload + 64,
        _ => READ_AHEAD.max(limits.max_head),
    }
}

/// Takes the next step out of `rbuf` for a connection in `phase`, consuming what it used.
pub fn next_input(phase: &mut Phase, rbuf: &mut BytesMut, limits: InputLimits) -> Input {
    loop {
        match phase {
            Phase::Request(None) => {
                if rbuf.is_empty() {
                    return Input::Wait;
                }
                match http::parse_head(rbuf, limits.max_head) {
                    Ok(None) => return Input::Wait,
                    Err(e) => {
                        *rbuf = BytesMut::new();
                        return Input::BadRequest(e);
                    }
                    Ok(Some((head, len))) => {
                        consume(rbuf, len);
                        if head.content_length > limits.max_payload {
                            *rbuf = BytesMut::new();
                            return Input::BadRequest(HttpError::PayloadTooLarge);
                        }
                        *phase = Phase::Request(Some(Box::new(head)));
                    }
                }
            }
            Phase::Request(Some(head)) => {
                let len = head.content_length;
                if rbuf.len() < len {
                    return Input::Wait;
                }
                let Phase::Request(Some(head)) = std::mem::replace(phase, Phase::Request(None))
                else {
                    unreachable!("matched Request(Some) above");
                };
                let body = Bytes::copy_from_slice(&rbuf[..len]);
                consume(rbuf, len);
                return Input::Request(head, body);
            }
            Phase::WebSocket(ws) => {
                return match ws.reader.parse(rbuf, limits.max_payload) {
                    Ok(None) => Input::Wait,
                    Ok(Some((frame, used))) => {
                        consume(rbuf, used);
                        Input::Frame(frame)
                    }
                    Err(websocket::Violation(code)) => {
                        *rbuf = BytesMut::new();
                        Input::Violation(code)
                    }
                };
            }
            // Pipelined requests wait in the buffer (bounded by the read cap) until the store
            // answers.
            Phase::Busy => return Input::Wait,
            Phase::Hold(_) if rbuf.len() > READ_AHEAD => return Input::Overrun,
            Phase::Hold(_) => return Input::Wait,
            Phase::Closing => {
                *rbuf = BytesMut::new();
                return Input::Wait;
            }
        }
    }
}

/// The close code and reason for a WebSocket protocol violation.
pub fn violation_reason(code: u16) -> &'static str {
    if code == close::TOO_BIG {
        "message too big"
    } else {
        "protocol error"
    }
}

/// Drops consumed input and frees the buffer once it is empty, so an idle connection holds
/// no read buffer. Consuming from the front only moves the start (`BytesMut::advance`): with
/// many pipelined requests buffered, shifting the rest down for each one cost a copy of the
/// whole buffer per request. The space is reclaimed when the buffer next grows.
fn consume(rbuf: &mut BytesMut, n: usize) {
    if n >= rbuf.len() {
        *rbuf = BytesMut::new();
    } else {
        rbuf.advance(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: InputLimits = InputLimits {
        max_head: 8192,
        max_payload: 1024,
    };

    /// Feeds `stream` in pieces of `step` bytes and collects every step until `Wait` with
    /// nothing left, the way the loop does. Requests move the phase back to Request(None).
    fn run(stream: &[u8], step: usize) -> Vec<String> {
        let mut phase = Phase::Request(None);
        let mut rbuf = BytesMut::new();
        let mut out = Vec::new();
        for piece in stream.chunks(step) {
            rbuf.extend_from_slice(piece);
            loop {
                match next_input(&mut phase, &mut rbuf, LIMITS) {
                    Input::Wait => break,
                    Input::Request(head, body) => out.push(format!(
                        "{} {}",
                        head.target,
                        String::from_utf8_lossy(&body)
                    )),
                    Input::BadRequest(e) => {
                        out.push(format!("bad {e:?}"));
                        phase = Phase::Closing;
                    }
                    other => out.push(format!("{other:?}")),
                }
            }
        }
        out
    }

    #[test]
    fn pipelined_requests_come_out_one_by_one_whatever_the_split() {
        let mut stream = Vec::new();
        for i in 0..50 {
            stream.extend_from_slice(
                format!("POST /p{i} HTTP/1.1\r\nContent-Length: 2\r\n\r\n{i:02}").as_bytes(),
            );
        }
        let whole = run(&stream, stream.len());
        assert_eq!(whole.len(), 50);
        assert_eq!(whole[7], "/p7 07");
        for step in [1, 3, 17, 64] {
            assert_eq!(run(&stream, step), whole, "split in pieces of {step}");
        }
    }

    #[test]
    fn oversized_head_and_body_are_refused_and_the_rest_dropped() {
        let mut big = b"GET /".to_vec();
        big.extend(std::iter::repeat_n(b'a', 10_000));
        big.extend_from_slice(b" HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(run(&big, big.len()), ["bad HeaderTooLarge"]);
        let body = b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
        assert_eq!(run(body, 7), ["bad PayloadTooLarge"]);
    }

    #[test]
    fn a_held_poll_accepts_a_little_pipelined_input_only() {
        let mut phase = Phase::Busy;
        let mut rbuf = BytesMut::from(&vec![0u8; READ_AHEAD + 1][..]);
        assert!(matches!(
            next_input(&mut phase, &mut rbuf, LIMITS),
            Input::Wait
        ));
        assert_eq!(
            rbuf.len(),
            READ_AHEAD + 1,
            "a busy request keeps its pipeline"
        );
        let mut closing = Phase::Closing;
        assert!(matches!(
            next_input(&mut closing, &mut rbuf, LIMITS),
            Input::Wait
        ));
        assert!(rbuf.is_empty(), "a closing connection discards input");
    }

    #[test]
    fn read_caps_follow_the_phase() {
        assert_eq!(read_cap(&Phase::Request(None), LIMITS), READ_AHEAD);
        assert_eq!(read_cap(&Phase::Busy, LIMITS), READ_AHEAD);
    }
}
