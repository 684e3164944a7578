//! The subscriber thread: one `PSUBSCRIBE <prefix>pushserver:*` per instance.
//!
//! Pub/sub is fire-and-forget: what other instances publish while this connection is down is
//! not replayed here; subscribers recover stored messages by `mid` (the backlog).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use log::{trace, warn};
use redis::ConnectionInfo;

use super::codec::decode_notification;
use super::{Backoff, IO_TIMEOUT, Shared};
use crate::store::Done;

/// How often a blocked read returns to look at the stop flag.
const POLL: Duration = Duration::from_millis(250);
/// A PING after this long without messages notices a half-open TCP connection.
const IDLE_PING: Duration = Duration::from_secs(5);

pub(super) fn run(shared: Arc<Shared>, info: ConnectionInfo) {
    let mut backoff = Backoff::new();
    while !shared.stop.load(Ordering::Acquire) {
        let reason = session(&shared, &info, &mut backoff);
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        shared.set_sub(Err(reason));
        let until = Instant::now() + backoff.next_delay();
        while Instant::now() < until && !shared.stop.load(Ordering::Acquire) {
            thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
        }
    }
}

/// One subscribed connection, until it fails (the reason) or the store stops.
fn session(shared: &Shared, info: &ConnectionInfo, backoff: &mut Backoff) -> String {
    let client = match redis::Client::open(info.clone()) {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let mut conn = match client.get_connection_with_timeout(IO_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    if let Err(e) = conn
        .set_write_timeout(Some(IO_TIMEOUT))
        .and_then(|()| conn.set_read_timeout(Some(IO_TIMEOUT)))
    {
        return e.to_string();
    }
    let mut ps = conn.as_pubsub();
    if let Err(e) = ps.psubscribe(shared.keys.notify_pattern()) {
        return e.to_string();
    }
    if let Err(e) = ps.set_read_timeout(Some(POLL)) {
        return e.to_string();
    }
    backoff.reset();
    shared.set_sub(Ok(()));
    let own = shared.keys.notify_channel(&shared.uid);
    let mut last_traffic = Instant::now();
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return "stopped".into();
        }
        match ps.get_message() {
            Ok(msg) => {
                last_traffic = Instant::now();
                // Our own notifications are delivered too: local delivery must follow the one
                // order in which Redis ran the publish scripts, or a subscriber could get our
                // newer id before another instance's older one (and a long poll resuming from
                // the newer id would skip the older).
                let is_own = msg.get_channel_name().as_bytes() == own.as_slice();
                match decode_notification(msg.get_payload_bytes()) {
                    Ok(batch) if batch.is_empty() => {}
                    Ok(batch) => {
                        if !is_own && let Some((m, _)) = batch.last() {
                            shared.see_remote(m.mid);
                        }
                        trace!(
                            "redis: {} message(s) from {}",
                            batch.len(),
                            msg.get_channel_name()
                        );
                        shared.send(Done::Deliver(batch));
                    }
                    Err(e) => warn!(
                        "redis: undecodable notification on {} ({} bytes): {e}",
                        msg.get_channel_name(),
                        msg.get_payload_bytes().len()
                    ),
                }
            }
            Err(e) if e.is_timeout() => {
                if last_traffic.elapsed() >= IDLE_PING {
                    last_traffic = Instant::now();
                    if let Err(e) = ps.ping::<redis::Value>() {
                        return e.to_string();
                    }
                }
            }
            Err(e) => return e.to_string(),
        }
    }
}
