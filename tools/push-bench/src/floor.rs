//! `push-bench floor --sub PATH --pub PATH`: the floor of a fan-out, to measure push-server
//! against in the same run. A minimal server on the same kind of sockets that does nothing
//! but the unavoidable work: it accepts WebSocket subscribers (any path, any channel, no
//! checks), answers each HTTP publish with an empty 200, encodes the message once as a v3
//! text frame, and writes it to every subscriber with one write each. No store, no timers,
//! no routing, no queues (a subscriber whose socket is full loses the frame, counted on
//! stderr). It runs until killed.

use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use push_server::message::{Message, Mid, Sender, now_ms};
use push_server::websocket;

const SUB: Token = Token(0);
const PUB: Token = Token(1);
const FIRST: usize = 2;

enum Peer {
    /// Reading a request head (and, for a publisher, its body).
    Reading {
        stream: UnixStream,
        buf: Vec<u8>,
        publisher: bool,
    },
    Subscriber(UnixStream),
    Gone,
}

pub fn run(sub: &Path, publ: &Path) -> Result<(), String> {
    let bind = |p: &Path| -> Result<UnixListener, String> {
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(p);
        }
        UnixListener::bind(p).map_err(|e| format!("bind {}: {e}", p.display()))
    };
    let (mut sl, mut pl) = (bind(sub)?, bind(publ)?);
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    poll.registry()
        .register(&mut sl, SUB, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    poll.registry()
        .register(&mut pl, PUB, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    let mut peers: Vec<Peer> = Vec::new();
    let mut subscribers: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let epoch = now_ms() / 1000;
    let mut counter = 0u64;
    let mut dropped = 0u64;
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.to_string());
        }
        for ev in events.iter() {
            match ev.token() {
                SUB | PUB => {
                    let listener = if ev.token() == SUB { &sl } else { &pl };
                    while let Ok((mut stream, _)) = listener.accept() {
                        let token = Token(FIRST + peers.len());
                        if poll
                            .registry()
                            .register(&mut stream, token, Interest::READABLE)
                            .is_ok()
                        {
                            peers.push(Peer::Reading {
                                stream,
                                buf: Vec::new(),
                                publisher: ev.token() == PUB,
                            });
                        }
                    }
                }
                Token(t) => {
                    let i = t - FIRST;
                    let Some(Peer::Reading {
                        mut stream,
                        mut buf,
                        publisher,
                    }) = peers.get_mut(i).map(|p| std::mem::replace(p, Peer::Gone))
                    else {
                        continue;
                    };
                    let mut chunk = [0u8; 16384];
                    let closed = loop {
                        match stream.read(&mut chunk) {
                            Ok(0) => break true,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => break true,
                        }
                    };
                    if publisher {
                        // Every complete request in the buffer: answer, encode once, write
                        // to each subscriber.
                        while let Some((body, used)) = take_request(&buf) {
                            counter += 1;
                            let msg = Message::new(
                                Mid::new(epoch, counter),
                                now_ms(),
                                86400,
                                Sender::Backend,
                                body.into(),
                                None,
                            );
                            let frame = msg.v3_ws_frame().clone();
                            let _ =
                                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                            buf.drain(..used);
                            for &s in &subscribers {
                                if let Some(Peer::Subscriber(sock)) = peers.get_mut(s)
                                    && !matches!(sock.write(&frame), Ok(n) if n == frame.len())
                                {
                                    dropped += 1;
                                }
                            }
                        }
                        if !closed {
                            peers[i] = Peer::Reading {
                                stream,
                                buf,
                                publisher,
                            };
                        }
                    } else if let Some(key) = ws_key(&buf) {
                        let answer = format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                             Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                            websocket::accept_key(&key)
                        );
                        if stream.write_all(answer.as_bytes()).is_ok() {
                            // Input (pongs, closes) is ignored from now on.
                            let _ = poll.registry().deregister(&mut stream);
                            peers[i] = Peer::Subscriber(stream);
                            subscribers.push(i);
                        }
                    } else if !closed {
                        peers[i] = Peer::Reading {
                            stream,
                            buf,
                            publisher,
                        };
                    }
                }
            }
        }
        if dropped > 0 {
            eprintln!("floor: {dropped} frames did not fit a subscriber's socket");
            dropped = 0;
        }
    }
}

/// One complete HTTP request with a Content-Length body: (body, bytes used).
fn take_request(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= end + len).then(|| (buf[end..end + len].to_vec(), end + len))
}

/// The `Sec-WebSocket-Key` of a complete request head.
fn ws_key(buf: &[u8]) -> Option<String> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_keys() {
        let raw = b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST";
        let (body, used) = take_request(raw).unwrap();
        assert_eq!((body.as_slice(), used), (&b"abc"[..], raw.len() - 4));
        assert!(take_request(b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nab").is_none());
        let head = b"GET / HTTP/1.1\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(ws_key(head).as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
    }
}
