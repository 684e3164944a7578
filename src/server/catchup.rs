//! Catch-up after a pub/sub gap (docs/redis.md, "Catch-up after a pub/sub gap").
//!
//! Local delivery comes only from the store's live stream ([`Done::Deliver`]). When that
//! stream is cut and comes back ([`Done::Resubscribed`]), what was announced in between never
//! reaches this instance's connected subscribers, and they are not disconnected, so they never
//! resume by `mid` either. So the server reads from the store every message newer than the
//! last one it got live, for every channel it has subscribers on, and fans those out before
//! the live messages that arrive meanwhile (held back), in id order, each once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use crate::message::{Message, Mid};
use crate::store::{CatchUpChunk, Job, Receiver, StoreError};

use super::Server;
use super::store_io::Waiter;

/// Channels per catch-up job: one script call each; the jobs of one catch-up go to the store
/// in the same pass, so they share pipelines.
pub(super) const CHANNELS_PER_JOB: usize = 1000;
/// Messages (and stored bytes) per chunk of a catch-up job; more are read after the last id.
const CHUNK: usize = 2000;
const CHUNK_BYTES: usize = 8 << 20;
/// Live messages held back while a catch-up runs; past this it is abandoned (logged), and
/// what it had read is delivered with them, so memory stays bounded when the store cannot
/// answer (a pub/sub that came back before the command connection).
const MAX_HELD: usize = 100_000;

type Item = (Arc<Message>, Vec<Receiver>);

/// The catch-up state of the server.
#[derive(Default)]
pub(super) struct CatchUp {
    /// The newest id delivered from the live stream (or the first `latest` of the store):
    /// everything announced up to it reached the local subscribers.
    pub live_mid: Mid,
    /// A catch-up in progress.
    run: Option<Run>,
    /// Ids a finished catch-up delivered that the live stream may still bring (announced
    /// before the read, arriving after it): skipped once, until the stream is past `high`.
    delivered: HashSet<Mid>,
    high: Mid,
    /// Incremented for every (re)start, so answers of an abandoned run are ignored.
    generation: u64,
}

struct Run {
    /// Read from the store: everything newer than this.
    after: Mid,
    /// Jobs not answered yet (a chunk with `more` is followed by another job for its batch).
    open: usize,
    /// A job failed: the run is restarted when the store is back (or at the next sweep).
    failed: bool,
    got: Vec<Item>,
    /// Live messages arrived since the resubscription, delivered after the catch-up.
    held: Vec<Item>,
    started: Instant,
}

impl Server {
    /// The live stream is back after a gap: catch up from the store.
    pub(super) fn on_resubscribed(&mut self) {
        let after = match &self.catchup.run {
            // A gap during a catch-up: read again from the same id, keeping what was held.
            Some(run) => run.after,
            None => self.catchup.live_mid,
        };
        let held = self.catchup.run.take().map(|r| r.held).unwrap_or_default();
        self.catchup.run = Some(Run {
            after,
            open: 0,
            failed: false,
            got: Vec::new(),
            held,
            started: Instant::now(),
        });
        self.start_catchup();
    }

    /// Submits the jobs of the current run, one per batch of local channels.
    fn start_catchup(&mut self) {
        self.catchup.generation += 1;
        let generation = self.catchup.generation;
        let channels: Vec<Receiver> = self.registry.channels().collect();
        let Some(run) = self.catchup.run.as_mut() else {
            return;
        };
        run.open = 0;
        run.failed = false;
        run.got.clear();
        let after = run.after;
        log::info!(
            "store subscription back: catching up {} local channel(s) after {after}",
            channels.len()
        );
        for batch in channels.chunks(CHANNELS_PER_JOB) {
            self.submit_catchup(batch.to_vec(), after, generation);
        }
        self.maybe_finish_catchup();
    }

    fn submit_catchup(&mut self, receivers: Vec<Receiver>, after: Mid, generation: u64) {
        let waiter = Waiter::CatchUp {
            receivers: receivers.clone(),
            generation,
        };
        let ok = self.submit(
            |token| Job::CatchUp {
                token,
                receivers,
                after,
                limit: CHUNK,
                max_bytes: CHUNK_BYTES,
            },
            waiter,
        );
        if let Some(run) = self.catchup.run.as_mut() {
            if ok {
                run.open += 1;
            } else {
                run.failed = true;
            }
        }
    }

    pub(super) fn on_catchup(
        &mut self,
        receivers: Vec<Receiver>,
        generation: u64,
        result: Result<CatchUpChunk, StoreError>,
    ) {
        if generation != self.catchup.generation {
            return;
        }
        let Some(run) = self.catchup.run.as_mut() else {
            return;
        };
        run.open = run.open.saturating_sub(1);
        match result {
            Ok(chunk) => {
                let last = chunk.msgs.last().map(|(m, _)| m.mid);
                run.got.extend(chunk.msgs);
                if chunk.more
                    && let Some(last) = last
                {
                    self.submit_catchup(receivers, last, generation);
                }
            }
            Err(e) => {
                log::info!("catch-up read failed, retried when the store is back: {e}");
                run.failed = true;
            }
        }
        self.maybe_finish_catchup();
    }

    /// Restarts a failed catch-up (the store is back, or the periodic sweep).
    pub(super) fn retry_catchup(&mut self) {
        if self
            .catchup
            .run
            .as_ref()
            .is_some_and(|r| r.failed && r.open == 0)
        {
            self.start_catchup();
        }
    }

    /// Live messages from the store: held while a catch-up runs, otherwise delivered (minus
    /// those a catch-up delivered already).
    pub(super) fn on_deliver(&mut self, batch: Vec<Item>) {
        if let Some(run) = self.catchup.run.as_mut() {
            run.held.extend(batch);
            if run.held.len() > MAX_HELD {
                log::warn!(
                    "catch-up after a store subscription gap abandoned: no answer from the \
                     store while {MAX_HELD} live messages waited; messages announced in the \
                     gap reach subscribers only when they resume by mid"
                );
                let run = self.catchup.run.take().map(|r| (r.got, r.held));
                if let Some((got, held)) = run {
                    self.deliver_merged(got, held);
                }
            }
            return;
        }
        for (msg, receivers) in batch {
            if msg.mid <= self.catchup.high && self.catchup.delivered.remove(&msg.mid) {
                continue;
            }
            if msg.mid > self.catchup.high && !self.catchup.delivered.is_empty() {
                self.catchup.delivered = HashSet::new();
            }
            self.deliver_live(&msg, &receivers);
        }
    }

    fn deliver_live(&mut self, msg: &Arc<Message>, receivers: &[Receiver]) {
        if msg.mid > self.catchup.live_mid {
            self.catchup.live_mid = msg.mid;
        }
        // What a shutdown drain waits for (docs/restart.md).
        self.delivered_mid = self.delivered_mid.max(msg.mid);
        self.note_mid(msg.mid);
        self.fan_out(msg, receivers);
    }

    fn maybe_finish_catchup(&mut self) {
        let done = self
            .catchup
            .run
            .as_ref()
            .is_some_and(|r| r.open == 0 && !r.failed);
        if !done {
            return;
        }
        let Some(run) = self.catchup.run.take() else {
            return;
        };
        log::info!(
            "caught up {} message(s) after {} in {:?}",
            run.got.len(),
            run.after,
            run.started.elapsed()
        );
        self.deliver_merged(run.got, run.held);
    }

    /// Delivers what a catch-up read and the live messages held meanwhile, in id order, each
    /// once; remembers the ids read that the live stream may still bring.
    fn deliver_merged(&mut self, got: Vec<Item>, held: Vec<Item>) {
        let live: HashSet<Mid> = held.iter().map(|(m, _)| m.mid).collect();
        self.catchup.delivered = got
            .iter()
            .map(|(m, _)| m.mid)
            .filter(|m| !live.contains(m))
            .collect();
        self.catchup.high = self
            .catchup
            .delivered
            .iter()
            .copied()
            .max()
            .unwrap_or_default();
        let mut all = got;
        // Live ones last, then reversed: for an id in both, the live one (with all its
        // receivers) comes first and is kept (the sort is stable).
        all.extend(held);
        all.reverse();
        all.sort_by_key(|(m, _)| m.mid);
        all.dedup_by_key(|(m, _)| m.mid);
        for (msg, receivers) in all {
            self.deliver_live(&msg, &receivers);
        }
    }
}
