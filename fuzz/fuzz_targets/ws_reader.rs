//! `websocket::Reader::parse` over a client byte stream fed three ways (all at once, byte by
//! byte, and in chunks whose sizes the input chooses): each feeding must give the same frames,
//! then the same violation or the same unconsumed tail. The frames then go through
//! `v4::assemble_binary`, checked against a plain model of message reassembly.
//!
//! Input: byte 0 chooses `max_message`, byte 1 seeds the chunk sizes, the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use push_server::v4::assemble_binary;
use push_server::websocket::{
    Frame, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, Reader, Violation,
};

const MAX_MESSAGE: [usize; 9] = [0, 1, 125, 126, 4096, 65_536, 1 << 20, 64 << 20, usize::MAX];

#[derive(Debug, PartialEq, Eq)]
struct Run {
    frames: Vec<Frame>,
    /// Where the stream stopped: a violation, or the bytes left waiting for more input.
    end: Result<usize, Violation>,
}

/// Feeds `stream` in pieces of the sizes `sizes` yields, parsing after each piece as the
/// server does after each read: every complete frame at the front of its buffer.
fn feed(stream: &[u8], max: usize, mut sizes: impl FnMut() -> usize) -> Run {
    let mut reader = Reader::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    while fed < stream.len() {
        let n = sizes().clamp(1, stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            match reader.parse(&buf, max) {
                Ok(Some((frame, used))) => {
                    assert!(
                        used >= 6 && used <= buf.len(),
                        "used {used} of {}",
                        buf.len()
                    );
                    assert!(used - 6 >= frame.payload.len());
                    buf.drain(..used);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(v) => {
                    return Run {
                        frames,
                        end: Err(v),
                    };
                }
            }
        }
    }
    Run {
        frames,
        end: Ok(buf.len()),
    }
}

fn check_frames(run: &Run, max: usize) {
    let mut in_message = false;
    for f in &run.frames {
        match f.opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                assert!(f.fin && f.payload.len() <= 125, "{f:?}");
            }
            OP_TEXT | OP_BINARY => {
                assert!(!in_message, "new message inside a fragmented one");
                in_message = !f.fin;
            }
            OP_CONTINUATION => {
                assert!(in_message, "continuation outside a message");
                in_message = !f.fin;
            }
            op => panic!("reserved opcode {op:#x} accepted"),
        }
        assert!(f.payload.len() <= max);
    }
    if let Err(v) = &run.end {
        assert!(v.0 == 1002 || v.0 == 1009, "close code {}", v.0);
    }
}

/// The binary messages a v4 subscriber gets, through `assemble_binary` and through a model.
fn check_assembly(frames: &[Frame], max: usize) {
    let mut partial = None;
    let mut got = Vec::new();
    for f in frames {
        let copy = Frame {
            fin: f.fin,
            opcode: f.opcode,
            payload: f.payload.clone(),
        };
        if let Some(m) = assemble_binary(&mut partial, copy) {
            assert!(m.len() <= max, "message of {} over {max}", m.len());
            got.push(m);
        }
    }
    let mut want = Vec::new();
    let mut current: Option<(u8, Vec<u8>)> = None;
    for f in frames {
        match f.opcode {
            OP_TEXT | OP_BINARY => current = Some((f.opcode, f.payload.clone())),
            OP_CONTINUATION => {
                if let Some((_, buf)) = current.as_mut() {
                    buf.extend_from_slice(&f.payload);
                }
            }
            _ => continue,
        }
        if f.fin
            && let Some((op, buf)) = current.take()
            && op == OP_BINARY
        {
            want.push(buf);
        }
    }
    assert_eq!(got, want);
}

fuzz_target!(|data: &[u8]| {
    let Some((&[sel, seed], stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = MAX_MESSAGE[usize::from(sel) % MAX_MESSAGE.len()];
    let whole = feed(stream, max, || usize::MAX);
    check_frames(&whole, max);
    let bytewise = feed(stream, max, || 1);
    assert_eq!(whole, bytewise, "whole vs byte by byte");
    // Chunk sizes 1..=64 drawn from the stream itself, starting where `seed` says.
    let mut i = usize::from(seed);
    let chunked = feed(stream, max, || {
        i = i.wrapping_add(1);
        stream
            .get(i % stream.len().max(1))
            .map_or(1, |&b| usize::from(b % 64) + 1)
    });
    assert_eq!(whole, chunked, "whole vs chunked");
    check_assembly(&whole.frames, max);
});
