//! The subscriber thread: one `PSUBSCRIBE <prefix>pushserver:*` per instance.
//!
//! Pub/sub is fire-and-forget: what is announced while this connection is down is not heard.
//! Every subscription after the first is reported as [`Done::Resubscribed`], between the last
//! message of the old one and the first of the new, and the server catches its subscribers up
//! from the store (docs/redis.md, "Catch-up after a pub/sub gap").

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use log::{trace, warn};

use super::codec::decode_notification;
use super::endpoint::Endpoint;
use super::{Backoff, Shared};
use crate::store::Done;

/// How often a blocked read returns to look at the stop flag.
const POLL: Duration = Duration::from_millis(250);
/// A PING after this long without messages notices a half-open TCP connection.
const IDLE_PING: Duration = Duration::from_secs(5);
/// Test-only, never documented for operators: a delay before every re-subscription, so that
/// a test can make two instances come back in a known order (tests/redis_cluster.rs,
/// docs/redis.md "Catch-up after a pub/sub gap").
const TEST_RESUBSCRIBE_DELAY: &str = "PUSH_TEST_RESUBSCRIBE_DELAY_MS";

pub(super) fn run(shared: Arc<Shared>, info: Endpoint) {
    let mut backoff = Backoff::new();
    let delay = std::env::var(TEST_RESUBSCRIBE_DELAY)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let mut subscribed_before = false;
    while !shared.stop.load(Ordering::Acquire) {
        if subscribed_before && let Some(d) = delay {
            pause(&shared, d);
        }
        let reason = session(&shared, &info, &mut backoff, &mut subscribed_before);
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        shared.set_sub(Err(reason));
        pause(&shared, backoff.next_delay());
    }
}

/// Sleeps for `d`, or until the store stops.
fn pause(shared: &Shared, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !shared.stop.load(Ordering::Acquire) {
        thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
}

/// One subscribed connection, until it fails (the reason) or the store stops.
/// `subscribed_before`: whether an earlier session got as far as subscribing (this one then
/// reports [`Done::Resubscribed`]).
fn session(
    shared: &Shared,
    info: &Endpoint,
    backoff: &mut Backoff,
    subscribed_before: &mut bool,
) -> String {
    let mut conn = match info.connect() {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let mut ps = conn.as_pubsub();
    if let Err(e) = ps.psubscribe(shared.keys.notify_pattern()) {
        return e.to_string();
    }
    if let Err(e) = ps.set_read_timeout(Some(POLL)) {
        return e.to_string();
    }
    backoff.reset();
    shared.set_sub(Ok(()));
    if std::mem::replace(subscribed_before, true) {
        // After Up (when this completes the link), before any message of this subscription.
        shared.send(Done::Resubscribed);
    }
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
