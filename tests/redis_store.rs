//! The Redis store driven directly (no server): round trips, ids across instances and across
//! Redis losing its data, fan-out between instances, outage and recovery. Each test has its own
//! `redis-server` on a temp Unix socket.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use tungstenite::Bytes;

use common::Redis;
use push_server::channel::ChannelId;
use push_server::config::StoreConfig;
use push_server::message::{Message, Mid, Sender, now_ms};
use push_server::registry::Kind;
use push_server::store::redis::{RedisOptions, RedisStore, Target};
use push_server::store::{BacklogChunk, Done, Draft, Job, Receiver, Store};

const WAIT: Duration = Duration::from_secs(10);

/// Each instance gets its own id state file beside the Redis socket.
fn store_cfg(sock: &Path) -> StoreConfig {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    StoreConfig {
        message_ttl: 86400,
        expiry0_grace: 60,
        online_ttl: 130,
        channel_history: 100,
        max_bytes: 1 << 20,
        state_file: sock.with_file_name(format!("mid-epoch-{n}")),
        state_dir: sock.with_file_name(format!("state-{n}")),
        legacy_state_file: None,
        fsync: push_server::config::Fsync::No,
    }
}

/// A store with its own Poll and Waker, as the server would have.
struct Inst {
    store: RedisStore,
    poll: Poll,
    events: Events,
    got: Vec<Done>,
    next_token: u64,
}

/// One `poll` wait. A signal (the test harness's, a child's exit) may cut it short with
/// EINTR, which mio passes on; that is an early wake-up, not a failure.
/// The jobs submitted so far go to the worker first, as the server's loop does before it
/// sleeps (`Store::flush`).
fn poll_once(store: &mut RedisStore, poll: &mut Poll, events: &mut Events, timeout: Duration) {
    store.flush();
    match poll.poll(events, Some(timeout)) {
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => events.clear(),
        r => r.unwrap(),
    }
}

impl Inst {
    fn start(sock: &Path, prefix: &str) -> Inst {
        Inst::with_config(sock, prefix, store_cfg(sock))
    }

    fn with_config(sock: &Path, prefix: &str, store: StoreConfig) -> Inst {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let opts = RedisOptions {
            target: Target::Socket(sock.to_path_buf()),
            prefix: prefix.into(),
            store,
            wait_replicas: 0,
        };
        Inst {
            store: RedisStore::start(opts, waker).unwrap(),
            poll,
            events: Events::with_capacity(8),
            got: Vec::new(),
            next_token: 1,
        }
    }

    fn up(sock: &Path) -> Inst {
        let mut i = Inst::start(sock, "");
        i.wait_up();
        i
    }

    /// Waits (woken by the store) for the first answer matching `pick`, keeping the others.
    fn wait<T>(&mut self, what: &str, mut pick: impl FnMut(&Done) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(pos) = self.got.iter().position(|d| pick(d).is_some()) {
                let d = self.got.remove(pos);
                return pick(&d).unwrap();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; have {:?}",
                self.got
            );
            poll_once(&mut self.store, &mut self.poll, &mut self.events, left);
            self.store.drain(&mut self.got);
        }
    }

    fn wait_up(&mut self) -> Mid {
        self.wait("Up", |d| match d {
            Done::Up { latest } => Some(*latest),
            _ => None,
        })
    }

    fn wait_down(&mut self) -> String {
        self.wait("Down", |d| match d {
            Done::Down { reason } => Some(reason.clone()),
            _ => None,
        })
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// The published messages as the subscribers get them: the answer carries only the ids
    /// (with the kind and time, checked here), the rest is the drafts'.
    fn publish_result(&mut self, drafts: Vec<Draft>) -> Result<Vec<Arc<Message>>, String> {
        let token = self.token();
        self.store
            .submit(Job::Publish {
                token,
                drafts: drafts.clone(),
            })
            .expect("queue has room");
        let minted = self.wait("Published", |d| match d {
            Done::Published { token: t, result } if *t == token => {
                Some(result.clone().map_err(|e| e.0))
            }
            _ => None,
        })?;
        assert_eq!(minted.len(), drafts.len());
        Ok(minted
            .into_iter()
            .zip(drafts)
            .map(|(m, d)| {
                assert_eq!((&m.kind, m.created_ms), (&d.kind, d.created_ms));
                Arc::new(Message::new(
                    m.mid,
                    m.created_ms,
                    d.expiry,
                    d.sender,
                    d.body,
                    m.kind,
                ))
            })
            .collect())
    }

    fn publish(&mut self, drafts: Vec<Draft>) -> Vec<Arc<Message>> {
        self.publish_result(drafts).expect("publish succeeds")
    }

    fn backlog(&mut self, receivers: Vec<Receiver>, after: Mid, limit: usize) -> Vec<Arc<Message>> {
        self.backlog_chunk(receivers, after, limit, 1 << 20).msgs
    }

    fn backlog_chunk(
        &mut self,
        receivers: Vec<Receiver>,
        after: Mid,
        limit: usize,
        max_bytes: usize,
    ) -> BacklogChunk {
        let token = self.token();
        self.store
            .submit(Job::Backlog {
                token,
                receivers,
                after,
                limit,
                max_bytes,
            })
            .unwrap();
        self.wait("Backlog", |d| match d {
            Done::Backlog { token: t, result } if *t == token => {
                Some(result.clone().expect("backlog succeeds"))
            }
            _ => None,
        })
    }

    fn online(&mut self, channels: Vec<Receiver>) -> Vec<bool> {
        let token = self.token();
        self.store.submit(Job::Online { token, channels }).unwrap();
        self.wait("Online", |d| match d {
            Done::Online { token: t, result } if *t == token => {
                Some(result.clone().expect("online succeeds"))
            }
            _ => None,
        })
    }

    fn stats(&mut self) -> Vec<String> {
        let token = self.token();
        self.store.submit(Job::Stats { token }).unwrap();
        self.wait("Stats", |d| match d {
            Done::Stats { token: t, result } if *t == token => {
                Some(result.clone().expect("stats succeed"))
            }
            _ => None,
        })
    }

    fn remote(&mut self) -> Vec<(Arc<Message>, Vec<Receiver>)> {
        self.wait("Deliver", |d| match d {
            Done::Deliver(batch) => Some(batch.clone()),
            _ => None,
        })
    }

    /// The announced batch that holds `mid` (every instance also hears its own publishes).
    fn remote_with(&mut self, mid: Mid) -> Vec<(Arc<Message>, Vec<Receiver>)> {
        self.wait("Deliver with the id", |d| match d {
            Done::Deliver(batch) if batch.iter().any(|(m, _)| m.mid == mid) => Some(batch.clone()),
            _ => None,
        })
    }
}

fn ch(n: u8) -> ChannelId {
    let mut id = [0u8; 16];
    id[0] = n;
    id[15] = 0xee;
    ChannelId(id)
}

fn draft(body: &str, receivers: Vec<Receiver>) -> Draft {
    Draft {
        body: Bytes::from(body.to_string()),
        expiry: 86400,
        sender: Sender::Backend,
        kind: Some("im_message".into()),
        receivers,
        created_ms: now_ms(),
        user_params: None,
    }
}

fn mids(msgs: &[Arc<Message>]) -> Vec<Mid> {
    msgs.iter().map(|m| m.mid).collect()
}

fn assert_increasing(ids: &[Mid]) {
    for w in ids.windows(2) {
        assert!(w[0] < w[1], "ids not strictly increasing: {ids:?}");
    }
}

#[test]
fn batch_of_100_is_one_round_trip_and_backlog_another() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let drafts: Vec<Draft> = (0..100)
        .map(|i| {
            draft(
                &format!("{{\"n\":{i}}}"),
                vec![(ch(1), Kind::Private), (ch(i as u8 % 4 + 2), Kind::Public)],
            )
        })
        .collect();
    let before = redis.calls("evalsha");
    let published_before = redis.calls("publish");
    let msgs = a.publish(drafts);
    assert_eq!(
        redis.calls("evalsha") - before,
        1,
        "one EVALSHA for 100 messages"
    );
    assert_eq!(
        redis.calls("publish") - published_before,
        1,
        "one notification"
    );
    assert_eq!(msgs.len(), 100);
    assert_increasing(&mids(&msgs));
    assert_eq!(&msgs[7].body[..], b"{\"n\":7}");
    assert_eq!(msgs[0].mid.counter() + 99, msgs[99].mid.counter());

    let before = redis.calls("evalsha");
    let got = a.backlog(
        vec![
            (ch(1), Kind::Private),
            (ch(2), Kind::Public),
            (ch(3), Kind::Public),
        ],
        msgs[9].mid,
        200,
    );
    assert_eq!(
        redis.calls("evalsha") - before,
        1,
        "one EVALSHA for a backlog"
    );
    assert_eq!(
        mids(&got),
        mids(&msgs[10..]),
        "merged, ascending, each once"
    );
    let m = &got[0];
    assert_eq!(m.kind.as_deref(), Some("im_message"));
    assert_eq!(m.created_ms, msgs[10].created_ms, "milliseconds survive");
    assert_eq!(m.sender, Sender::Backend);
    assert_eq!(m.expiry, 86400);

    // Limit, and the public set alone.
    let got = a.backlog(vec![(ch(2), Kind::Public)], Mid::new(0, 0), 5);
    let want: Vec<Mid> = msgs.iter().step_by(4).take(5).map(|m| m.mid).collect();
    assert_eq!(mids(&got), want);
    // Both sets of an id are read, whatever the kind asked for (as the embedded store does).
    let got = a.backlog(vec![(ch(2), Kind::Private)], Mid::new(0, 0), 5);
    assert_eq!(mids(&got), want);
}

/// A backlog read stops before the value that would take it past `max_bytes` (stored
/// sizes, read with STRLEN before any GET) or at `limit`, returns at least one message, and
/// says whether more is stored; expired messages neither come nor count as more.
#[test]
fn backlog_chunks_are_capped_in_bytes_and_say_whether_more_is_left() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let r = vec![(ch(1), Kind::Private), (ch(2), Kind::Public)];
    let msgs = a.publish(
        (0..10)
            .map(|i| draft(&"x".repeat(10_000), vec![r[i % 2]]))
            .collect(),
    );
    let mut c = redis.conn();
    let stored = |c: &mut redis::Connection, m: &Arc<Message>| -> usize {
        let key = [b"message:".as_slice(), &m.mid.to_binary()].concat();
        redis::cmd("STRLEN").arg(&key).query(c).unwrap()
    };
    let one = stored(&mut c, &msgs[0]);
    assert!(one > 10_000 && one < 10_100, "{one}");
    let zero = Mid::new(0, 0);
    let chunk = a.backlog_chunk(r.clone(), zero, 200, 3 * one);
    assert_eq!((mids(&chunk.msgs), chunk.more), (mids(&msgs[..3]), true));
    let chunk = a.backlog_chunk(r.clone(), zero, 200, 3 * one - 1);
    assert_eq!((mids(&chunk.msgs), chunk.more), (mids(&msgs[..2]), true));
    // The first always comes, however small the bound.
    let chunk = a.backlog_chunk(r.clone(), msgs[4].mid, 200, 1);
    assert_eq!((mids(&chunk.msgs), chunk.more), (mids(&msgs[5..6]), true));
    let chunk = a.backlog_chunk(r.clone(), zero, 4, usize::MAX >> 12);
    assert_eq!((mids(&chunk.msgs), chunk.more), (mids(&msgs[..4]), true));
    // Exactly the rest: no more. Expired (deleted) ones at the end do not count as more.
    let chunk = a.backlog_chunk(r.clone(), msgs[5].mid, 4, 1 << 20);
    assert_eq!((mids(&chunk.msgs), chunk.more), (mids(&msgs[6..]), false));
    for m in &msgs[8..] {
        let key = [b"message:".as_slice(), &m.mid.to_binary()].concat();
        let _: i64 = redis::cmd("DEL").arg(&key).query(&mut c).unwrap();
    }
    let chunk = a.backlog_chunk(r.clone(), msgs[5].mid, 2, 1 << 20);
    assert_eq!((mids(&chunk.msgs), chunk.more), (mids(&msgs[6..8]), false));
    // Chunk after chunk: everything once, in order, each chunk within its bound.
    let (mut after, mut got) = (zero, Vec::new());
    loop {
        let chunk = a.backlog_chunk(r.clone(), after, 200, 25_000);
        assert!(!chunk.msgs.is_empty() || !chunk.more);
        assert!(chunk.msgs.len() <= 2);
        got.extend(mids(&chunk.msgs));
        after = chunk.msgs.last().map_or(after, |m| m.mid);
        if !chunk.more {
            break;
        }
    }
    assert_eq!(got, mids(&msgs[..8]));
}

#[test]
fn layout_is_the_2_0_one() {
    let redis = Redis::start();
    let mut a = Inst::start(&redis.sock, "site1:");
    a.wait_up();
    let mut d = draft("{}", vec![(ch(1), Kind::Private), (ch(2), Kind::Public)]);
    d.expiry = 120;
    let m = a.publish(vec![d, draft("x", vec![(ch(1), Kind::Private)])]);
    let mut c = redis.conn();
    let start: u64 = redis::cmd("GET")
        .arg("site1:server:startdate")
        .query(&mut c)
        .unwrap();
    let counter: u64 = redis::cmd("GET")
        .arg("site1:server:messagecounter")
        .query(&mut c)
        .unwrap();
    assert_eq!(Mid::new(start, counter), m[1].mid);
    let key = [b"site1:message:".as_slice(), &m[0].mid.to_binary()].concat();
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut c).unwrap();
    assert!(
        (100..=120).contains(&ttl),
        "message TTL min(expiry, 86400): {ttl}"
    );
    let value: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
    use prost::Message as _;
    let om = push_server::proto::OutgoingMessage::decode(value.as_slice()).unwrap();
    assert_eq!(om.id, m[0].mid.to_binary());
    assert_eq!(om.body, b"{}");
    assert_eq!(om.expiry, 120);
    let set = [b"site1:channel:messages:".as_slice(), &ch(1).0].concat();
    let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
        .arg(&set)
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(
        members,
        vec![m[0].mid.to_binary().to_vec(), m[1].mid.to_binary().to_vec()]
    );
    let ttl: i64 = redis::cmd("TTL").arg(&set).query(&mut c).unwrap();
    assert!(ttl > 86000, "channel TTL 86400: {ttl}");
    let pubset = [b"site1:pubchannel:messages:".as_slice(), &ch(2).0].concat();
    let n: u64 = redis::cmd("ZCARD").arg(&pubset).query(&mut c).unwrap();
    assert_eq!(n, 1);
    // Expiry 0: kept for the grace window.
    let mut d = draft("live", vec![(ch(1), Kind::Private)]);
    d.expiry = 0;
    let m = a.publish(vec![d]);
    let key = [b"site1:message:".as_slice(), &m[0].mid.to_binary()].concat();
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut c).unwrap();
    assert!((50..=60).contains(&ttl), "grace window: {ttl}");
    // Nothing without the prefix.
    let unprefixed: Vec<Vec<u8>> = redis::cmd("KEYS").arg("server:*").query(&mut c).unwrap();
    assert!(unprefixed.is_empty());
}

#[test]
fn history_is_capped_and_expired_messages_are_skipped() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let r = vec![(ch(1), Kind::Private)];
    let msgs = a.publish((0..130).map(|i| draft(&i.to_string(), r.clone())).collect());
    let got = a.backlog(r.clone(), Mid::new(0, 0), 200);
    assert_eq!(mids(&got), mids(&msgs[30..]), "the newest 100");
    // A message that expired (deleted here) is skipped; its id stays in the set.
    let mut c = redis.conn();
    let key = [b"message:".as_slice(), &msgs[50].mid.to_binary()].concat();
    let _: i64 = redis::cmd("DEL").arg(&key).query(&mut c).unwrap();
    let got = a.backlog(r, msgs[48].mid, 3);
    assert_eq!(mids(&got), vec![msgs[49].mid, msgs[51].mid, msgs[52].mid]);
}

#[test]
fn ids_increase_across_instances_and_data_loss() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let mut b = Inst::up(&redis.sock);
    let r = vec![(ch(1), Kind::Private)];
    let mut all = Vec::new();
    for i in 0..5 {
        all.extend(mids(
            &a.publish(vec![draft("a", r.clone()), draft("a", r.clone())]),
        ));
        all.extend(mids(&b.publish(vec![draft(&i.to_string(), r.clone())])));
    }
    assert_increasing(&all);
    let mut c = redis.conn();

    // The counter is lost (eviction): a new epoch, above everything.
    let _: i64 = redis::cmd("DEL")
        .arg("server:messagecounter")
        .query(&mut c)
        .unwrap();
    all.extend(mids(&a.publish(vec![draft("x", r.clone())])));
    all.extend(mids(&b.publish(vec![draft("y", r.clone())])));
    assert_increasing(&all);

    // The counter goes backwards (restored from an old snapshot).
    let _: () = redis::cmd("SET")
        .arg("server:messagecounter")
        .arg(1)
        .query(&mut c)
        .unwrap();
    all.extend(mids(&b.publish(vec![draft("z", r.clone())])));
    assert_increasing(&all);

    // Everything is lost, twice within a second. B has seen A's id (pub/sub delivers in
    // milliseconds; an instance that has not would start the same epoch: docs/redis.md).
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    let m = a.publish(vec![draft("1", r.clone())])[0].mid;
    all.push(m);
    b.wait("A's id", |d| match d {
        Done::Deliver(batch) if batch.iter().any(|(x, _)| x.mid == m) => Some(()),
        _ => None,
    });
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    all.extend(mids(&b.publish(vec![draft("2", r.clone())])));
    all.extend(mids(&a.publish(vec![draft("3", r.clone())])));
    assert_increasing(&all);
    assert!(all.iter().all(|m| m.counter() > 0), "counters start at 1");

    // A third instance starting now reports a latest id not above the next one.
    let mut d = Inst::start(&redis.sock, "");
    let latest = d.wait_up();
    let next = d.publish(vec![draft("4", r.clone())])[0].mid;
    assert!(latest < next && *all.last().unwrap() < next);
}

#[test]
fn a_restarted_process_on_an_emptied_redis_stays_above_its_old_ids() {
    let mut redis = Redis::start();
    let cfg = store_cfg(&redis.sock);
    let r = vec![(ch(1), Kind::Private)];
    let mut a = Inst::with_config(&redis.sock, "", cfg.clone());
    a.wait_up();
    let old = a.publish(vec![draft("1", r.clone()), draft("2", r.clone())]);
    drop(a);
    // Redis restarts empty and the process restarts, both within the same second.
    redis.stop();
    redis.restart();
    let mut a = Inst::with_config(&redis.sock, "", cfg);
    let latest = a.wait_up();
    assert!(latest > old[1].mid, "{latest} > {}", old[1].mid);
    let new = a.publish(vec![draft("3", r)]);
    assert!(new[0].mid > old[1].mid, "{} > {}", new[0].mid, old[1].mid);
}

/// A Node 0.4.0 process reads `server:startdate` once and then only `INCR`s
/// `server:messagecounter` (docs/redis.md, "Sharing Redis with Node 0.4.0 processes"). When
/// push-server starts a new epoch on a Redis such a process shares (here: its state file has
/// seen a newer epoch than the one Node set long ago), resetting the counter to 0 made the
/// Node process mint its earlier ids again: the next `INCR` answered 1, and Node overwrote
/// `message:<its epoch, 1>` with a new message that clients then drop as already seen.
#[test]
fn a_new_epoch_keeps_the_counter_node_processes_increment() {
    let redis = Redis::start();
    let cfg = store_cfg(&redis.sock);
    let r = vec![(ch(1), Kind::Private)];
    // push-server ran before (a trial run), so its state file holds a recent epoch.
    let mut a = Inst::with_config(&redis.sock, "", cfg.clone());
    a.wait_up();
    let seen = a.publish(vec![draft("trial", r.clone())])[0].mid;
    drop(a);
    // The keys as a Node process that has used this Redis for long leaves them: `SETNX` of
    // its start date (older), then one `INCR` per message it published.
    let mut c = redis.conn();
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    let node_epoch = seen.epoch() - 1000;
    let _: i64 = redis::cmd("SETNX")
        .arg("server:startdate")
        .arg(node_epoch)
        .query(&mut c)
        .unwrap();
    for _ in 0..3 {
        let _: i64 = redis::cmd("INCR")
            .arg("server:messagecounter")
            .query(&mut c)
            .unwrap();
    }
    let mut a = Inst::with_config(&redis.sock, "", cfg);
    a.wait_up();
    let m = a.publish(vec![draft("rust", r)])[0].mid;
    assert!(m > seen && m.epoch() > node_epoch, "{m} after {seen}");
    // The Node process's next id is its cached epoch and its next `INCR`.
    let next: u64 = redis::cmd("INCR")
        .arg("server:messagecounter")
        .query(&mut c)
        .unwrap();
    assert!(
        next > 3,
        "Node would mint {node_epoch}{next:016} a second time"
    );
}

#[test]
fn other_instances_receive_with_receivers_and_sender() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let mut b = Inst::up(&redis.sock);
    let mut c = Inst::start(&redis.sock, "other-site:");
    c.wait_up();
    let mut d1 = draft(
        "{\"x\":1}",
        vec![(ch(1), Kind::Private), (ch(2), Kind::Public)],
    );
    d1.sender = Sender::Client(ch(9));
    d1.kind = None;
    let mut d2 = draft("bin\u{2028}", vec![(ch(3), Kind::Private)]);
    d2.expiry = 0;
    let sent = a.publish(vec![d1, d2]);
    let got = b.remote();
    assert_eq!(got.len(), 2);
    for ((m, rs), s) in got.iter().zip(&sent) {
        assert_eq!(m.mid, s.mid);
        assert_eq!(m.body, s.body);
        assert_eq!(m.created_ms, s.created_ms);
        assert_eq!(m.expiry, s.expiry);
        assert_eq!(m.sender, s.sender);
        assert_eq!(m.kind, s.kind);
        assert!(!rs.is_empty());
    }
    assert_eq!(
        got[0].1,
        vec![(ch(1), Kind::Private), (ch(2), Kind::Public)]
    );
    assert_eq!(got[1].1, vec![(ch(3), Kind::Private)]);
    assert_eq!(got[0].0.sender, Sender::Client(ch(9)));

    // B publishes; A hears it, and so does B itself (local delivery follows the announced
    // order); another prefix hears nothing.
    let sent = b.publish(vec![draft("from b", vec![(ch(1), Kind::Private)])]);
    assert_eq!(a.remote_with(sent[0].mid)[0].0.mid, sent[0].mid);
    assert_eq!(b.remote_with(sent[0].mid)[0].0.mid, sent[0].mid);
    // Marker: Redis delivers on each subscription in publish order, so once C has C2's marker,
    // anything else meant for it would already be there.
    let mut c2 = Inst::start(&redis.sock, "other-site:");
    c2.wait_up();
    let marker = c2.publish(vec![draft("marker", vec![(ch(1), Kind::Private)])]);
    assert_eq!(c.remote()[0].0.mid, marker[0].mid);
    c.store.drain(&mut c.got);
    assert!(
        !c.got.iter().any(|d| matches!(d, Done::Deliver(_))),
        "{:?}",
        c.got
    );
}

#[test]
fn online_and_stats_cover_every_instance() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let mut b = Inst::up(&redis.sock);
    a.store
        .submit(Job::Touch {
            channels: vec![
                (ch(1), Kind::Private),
                (ch(2), Kind::Public),
                (ch(1), Kind::Private),
            ],
        })
        .unwrap();
    let json_a = format!(
        r#"{{"pid":1,"date":{},"processUniqueId":"host-a-1","channels":3}}"#,
        now_ms()
    );
    a.store
        .submit(Job::PutStats {
            json: json_a.clone(),
        })
        .unwrap();
    // The touch and the stats write go ahead of this query on A's connection.
    assert_eq!(a.online(vec![(ch(1), Kind::Private)]), vec![true]);
    assert_eq!(
        b.online(vec![
            (ch(1), Kind::Private),
            (ch(2), Kind::Private),
            (ch(2), Kind::Public),
            (ch(3), Kind::Private)
        ]),
        vec![true, false, true, false]
    );
    let mut c = redis.conn();
    let ttl: i64 = redis::cmd("TTL")
        .arg([b"channel:online:".as_slice(), &ch(1).0].concat())
        .query(&mut c)
        .unwrap();
    assert!((120..=130).contains(&ttl), "online TTL: {ttl}");

    // A stale entry of a dead process is dropped and deleted.
    let stale = format!(
        r#"{{"date":{},"processUniqueId":"gone"}}"#,
        now_ms() - 71_000
    );
    let _: i64 = redis::cmd("HSET")
        .arg("stats")
        .arg("gone")
        .arg(&stale)
        .query(&mut c)
        .unwrap();
    let json_b = format!(r#"{{"date":{},"processUniqueId":"host-b-2"}}"#, now_ms());
    b.store
        .submit(Job::PutStats {
            json: json_b.clone(),
        })
        .unwrap();
    assert_eq!(b.stats(), vec![json_a.clone()], "others only, fresh only");
    assert_eq!(a.stats(), vec![json_b]);
    let left: Vec<String> = redis::cmd("HKEYS").arg("stats").query(&mut c).unwrap();
    assert!(!left.contains(&"gone".to_string()), "{left:?}");
}

#[test]
fn script_cache_loss_is_recovered() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let r = vec![(ch(1), Kind::Private)];
    let first = a.publish(vec![draft("1", r.clone())]);
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut redis.conn())
        .unwrap();
    let again = a.publish(vec![draft("2", r.clone())]);
    assert!(again[0].mid > first[0].mid);
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(a.backlog(r, Mid::new(0, 0), 10).len(), 2);
}

#[test]
fn outage_fails_fast_and_recovers() {
    let mut redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let mut b = Inst::up(&redis.sock);
    let r = vec![(ch(1), Kind::Private)];
    let kept = a.publish(vec![draft("kept 1", r.clone()), draft("kept 2", r.clone())]);
    let _ = b.remote();

    // Stopped, saving its data: both instances go down; publishes fail quickly with a reason.
    redis.shutdown_saving();
    let reason = a.wait_down();
    assert!(!reason.is_empty());
    b.wait_down();
    for _ in 0..3 {
        let t = Instant::now();
        let err = a
            .publish_result(vec![draft("lost", r.clone())])
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(err.starts_with("Redis unavailable"), "{err}");
    }
    let token = a.token();
    a.store
        .submit(Job::Backlog {
            token,
            receivers: r.clone(),
            after: Mid::new(0, 0),
            limit: 10,
            max_bytes: 1 << 20,
        })
        .unwrap();
    a.wait("backlog error", |d| match d {
        Done::Backlog {
            token: t,
            result: Err(_),
        } if *t == token => Some(()),
        _ => None,
    });
    // Down is reported once, not per request.
    a.store.drain(&mut a.got);
    assert!(
        !a.got.iter().any(|d| matches!(d, Done::Down { .. })),
        "{:?}",
        a.got
    );

    // Back with its data: up again, the backlog is there, ids go on increasing, and the
    // subscription works again.
    redis.restart();
    let latest = a.wait_up();
    b.wait_up();
    assert!(latest >= kept[1].mid);
    assert_eq!(mids(&a.backlog(r.clone(), Mid::new(0, 0), 10)), mids(&kept));
    let after = a.publish(vec![draft("after", r.clone())]);
    assert!(after[0].mid > kept[1].mid);
    assert_eq!(b.remote()[0].0.mid, after[0].mid);

    // Killed: what was published since the snapshot is lost, and the restart loads the
    // older snapshot (counter and all): ids still increase.
    redis.stop();
    a.wait_down();
    b.wait_down();
    redis.restart();
    a.wait_up();
    b.wait_up();
    let m1 = b.publish(vec![draft("b", r.clone())]);
    let m2 = a.publish(vec![draft("a", r.clone())]);
    assert!(after[0].mid < m1[0].mid && m1[0].mid < m2[0].mid);
    assert_eq!(
        mids(&a.backlog(r, kept[0].mid, 10)),
        vec![kept[1].mid, m1[0].mid, m2[0].mid]
    );
}

#[test]
fn starts_without_redis_and_connects_when_it_appears() {
    let mut redis = Redis::start();
    redis.stop();
    let mut a = Inst::start(&redis.sock, "");
    a.wait_down();
    let t = Instant::now();
    let err = a
        .publish_result(vec![draft("x", vec![(ch(1), Kind::Private)])])
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(err.contains("Redis unavailable"), "{err}");
    redis.restart();
    a.wait_up();
    let m = a.publish(vec![draft("x", vec![(ch(1), Kind::Private)])]);
    assert_eq!(m.len(), 1);
}

#[test]
fn a_full_queue_hands_the_job_back() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    // Freeze Redis so the worker sits in one round while the queue fills.
    let pid = redis.pid().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let token = a.token();
    a.store
        .submit(Job::Publish {
            token,
            drafts: vec![draft("x", vec![(ch(1), Kind::Private)])],
        })
        .unwrap();
    let mut rejected = 0;
    for _ in 0..push_server::store::redis::QUEUE_CAPACITY + 600 {
        if a.store
            .submit(Job::Touch {
                channels: vec![(ch(1), Kind::Private)],
            })
            .is_err()
        {
            rejected += 1;
        }
    }
    assert!(rejected > 0);
    assert_eq!(a.store.stats().rejected_jobs, rejected);
    // The frozen round times out: the link goes down and the publish fails.
    a.wait_down();
    let res = a.wait("Published", |d| match d {
        Done::Published { token: t, result } if *t == token => Some(result.clone()),
        _ => None,
    });
    assert!(res.is_err());
    let cont = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    assert!(cont.success());
    a.wait_up();
}

#[test]
fn a_one_megabyte_notification_arrives_whole() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let mut b = Inst::up(&redis.sock);
    let body = "x".repeat(10_000);
    let sent = a.publish(
        (0..100)
            .map(|i| draft(&format!("{i}{body}"), vec![(ch(1), Kind::Private)]))
            .collect(),
    );
    let got = b.remote();
    assert_eq!(got.len(), 100);
    for ((m, _), s) in got.iter().zip(&sent) {
        assert_eq!((m.mid, &m.body), (s.mid, &s.body));
    }
}

/// Publishes/s of 1-recipient messages, one message per publish job, with 1 and 2 instances
/// sharing one Redis. `cargo test --release --test redis_store -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_single_message_publishes() {
    let redis = Redis::start();
    const N: usize = 20_000;
    const IN_FLIGHT: usize = 200;
    let run = |sock: std::path::PathBuf| {
        std::thread::spawn(move || {
            let mut a = Inst::up(&sock);
            let t = Instant::now();
            let (mut sent, mut answered) = (0, 0);
            while answered < N {
                while sent < N && sent - answered < IN_FLIGHT {
                    let token = a.token();
                    let d = draft(
                        "{\"module_id\":\"im\",\"command\":\"x\"}",
                        vec![(ChannelId([(sent % 251) as u8; 16]), Kind::Private)],
                    );
                    a.store
                        .submit(Job::Publish {
                            token,
                            drafts: vec![d],
                        })
                        .unwrap();
                    sent += 1;
                }
                poll_once(&mut a.store, &mut a.poll, &mut a.events, WAIT);
                a.store.drain(&mut a.got);
                for d in a.got.drain(..) {
                    if let Done::Published { result, .. } = d {
                        result.unwrap();
                        answered += 1;
                    }
                }
            }
            t.elapsed()
        })
    };
    let one = run(redis.sock.clone()).join().unwrap();
    println!(
        "1 instance: {:.0} publishes/s",
        N as f64 / one.as_secs_f64()
    );
    let (x, y) = (run(redis.sock.clone()), run(redis.sock.clone()));
    let (x, y) = (x.join().unwrap(), y.join().unwrap());
    println!(
        "2 instances: {:.0} publishes/s together",
        2.0 * N as f64 / x.max(y).as_secs_f64()
    );
}

/// Sets a key with redis-cli-like raw bytes.
fn set_raw(c: &mut redis::Connection, key: &[u8], value: &[u8]) {
    let _: () = redis::cmd("SET").arg(key).arg(value).query(c).unwrap();
}

#[test]
fn foreign_values_in_the_id_keys_start_a_new_epoch() {
    let redis = Redis::start();
    let mut c = redis.conn();
    // Unparsable before the instance starts: it still comes up (and mints a fresh epoch).
    set_raw(&mut c, b"server:startdate", b"not a number");
    set_raw(&mut c, b"server:messagecounter", b"12abc");
    let mut a = Inst::up(&redis.sock);
    let r = vec![(ch(1), Kind::Private)];
    let mut all = mids(&a.publish(vec![draft("0", r.clone())]));
    // Values a Lua `tonumber` accepts but INCRBY does not, out-of-range ones, and a
    // key of another type: never a panic, never a malformed id, and ids keep increasing.
    let cases: [(&[u8], &[u8]); 8] = [
        (b"server:messagecounter", b"9999999999999999"),
        (b"server:messagecounter", b"9999999999999998"),
        (b"server:messagecounter", b"1.5"),
        (b"server:messagecounter", b"0x10"),
        (b"server:messagecounter", b"-7"),
        (b"server:messagecounter", b"99999999999999999999"),
        (b"server:startdate", b"99999999999"),
        (b"server:startdate", b"1e3"),
    ];
    for (key, value) in cases {
        set_raw(&mut c, key, value);
        let got = a
            .publish_result(vec![draft("1", r.clone()), draft("2", r.clone())])
            .unwrap_or_else(|e| panic!("{:?}={:?}: {e}", key, value));
        all.extend(mids(&got));
        assert_increasing(&all);
    }
    let _: i64 = redis::cmd("DEL")
        .arg("server:startdate")
        .query(&mut c)
        .unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg("server:startdate")
        .arg("f")
        .arg("v")
        .query(&mut c)
        .unwrap();
    all.extend(mids(&a.publish(vec![draft("3", r.clone())])));
    assert_increasing(&all);
    // A reconnect reads the keys again: a foreign value must not keep the store down.
    set_raw(&mut c, b"server:startdate", b"garbage");
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut c)
        .unwrap();
    let t = Instant::now();
    loop {
        match a.publish_result(vec![draft("4", r.clone())]) {
            Ok(m) => {
                all.extend(mids(&m));
                break;
            }
            Err(e) => assert!(t.elapsed() < Duration::from_secs(5), "still failing: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_increasing(&all);
    for m in &all {
        assert!(m.epoch() < 10_000_000_000 && m.counter() > 0, "{m}");
    }
}

#[test]
fn a_hostile_notification_neither_crashes_nor_poisons_the_ids() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let mut c = redis.conn();
    let r = vec![(ch(1), Kind::Private)];
    let before = a.publish(vec![draft("0", r.clone())]);
    // Garbage, a truncated protobuf, and an empty payload from another process.
    for payload in [&b"\xff\xff\xff"[..], b"\x0a\x05\x0a", b""] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("pushserver:zzzz")
            .arg(payload)
            .query(&mut c)
            .unwrap();
    }
    // A well-formed message with the largest possible id.
    let far = Mid::new(9_999_999_999, 9_999_999_999_999_999);
    let node = push_server::proto::OutgoingMessage {
        id: far.to_binary().to_vec(),
        body: b"{}".to_vec(),
        expiry: 60,
        created: 1,
        sender: None,
    };
    use prost::Message as _;
    let batch = push_server::proto::NotificationBatch {
        notifications: vec![push_server::proto::Notification {
            ipc_messages: Some(push_server::proto::IpcMessages {
                messages: vec![push_server::proto::IpcMessage {
                    receivers: vec![push_server::proto::Receiver {
                        id: ch(1).0.to_vec(),
                        is_private: true,
                        signature: Vec::new(),
                    }],
                    outgoing_message_id: far.to_binary().to_vec(),
                    outgoing_message: Some(node),
                }],
            }),
        }],
    };
    let _: i64 = redis::cmd("PUBLISH")
        .arg("pushserver:zzzz")
        .arg(batch.encode_to_vec())
        .query(&mut c)
        .unwrap();
    let got = a.remote_with(far);
    assert_eq!(got[0].0.mid, far);
    // Still publishing, with well-formed ids above the earlier ones.
    let after = a.publish(vec![draft("1", r.clone()), draft("2", r)]);
    assert_increasing(&[before[0].mid, after[0].mid, after[1].mid]);
    assert!(after[1].mid.epoch() < 10_000_000_000);
}

#[test]
fn backlog_skips_keys_of_a_foreign_type() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let mut c = redis.conn();
    let msgs = a.publish(vec![
        draft("1", vec![(ch(1), Kind::Private)]),
        draft("2", vec![(ch(1), Kind::Private)]),
    ]);
    // Another channel's set is a string; one message key is a hash.
    set_raw(
        &mut c,
        &[b"pubchannel:messages:".as_slice(), &ch(2).0].concat(),
        b"x",
    );
    let key = [b"message:".as_slice(), &msgs[0].mid.to_binary()].concat();
    let _: i64 = redis::cmd("DEL").arg(&key).query(&mut c).unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg(&key)
        .arg("f")
        .arg("v")
        .query(&mut c)
        .unwrap();
    let got = a.backlog(
        vec![(ch(1), Kind::Private), (ch(2), Kind::Public)],
        Mid::new(0, 0),
        10,
    );
    assert_eq!(mids(&got), vec![msgs[1].mid]);
    // Publishing to that channel replaces the junk instead of failing every time.
    let m = a.publish(vec![draft("3", vec![(ch(2), Kind::Public)])]);
    let got = a.backlog(vec![(ch(2), Kind::Public)], Mid::new(0, 0), 10);
    assert_eq!(mids(&got), mids(&m));
}

#[test]
fn channel_set_ttl_is_set_once_and_never_refreshed() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let mut c = redis.conn();
    let set = [b"channel:messages:".as_slice(), &ch(1).0].concat();
    let r = vec![(ch(1), Kind::Private)];
    a.publish(vec![draft("1", r.clone())]);
    let _: i64 = redis::cmd("EXPIRE")
        .arg(&set)
        .arg(500)
        .query(&mut c)
        .unwrap();
    a.publish(vec![draft("2", r.clone())]);
    let ttl: i64 = redis::cmd("TTL").arg(&set).query(&mut c).unwrap();
    assert!((490..=500).contains(&ttl), "not refreshed: {ttl}");
    // A set without a TTL (PERSIST by someone) gets one with the next message.
    let _: i64 = redis::cmd("PERSIST").arg(&set).query(&mut c).unwrap();
    a.publish(vec![draft("3", r)]);
    let ttl: i64 = redis::cmd("TTL").arg(&set).query(&mut c).unwrap();
    assert!(ttl > 86000, "{ttl}");
}

#[test]
fn bodies_around_the_varint_boundaries_round_trip() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let mut b = Inst::up(&redis.sock);
    let r = vec![(ch(1), Kind::Private)];
    // Message, IPC message and notification lengths cross 127, 16383 and 2097151.
    let sizes = [
        0usize,
        1,
        60,
        100,
        127,
        128,
        16_300,
        16_383,
        16_384,
        1 << 20,
    ];
    for n in sizes {
        let body = "y".repeat(n);
        let sent = a.publish(vec![draft(&body, r.clone())]);
        let got = b.remote();
        assert_eq!(got.len(), 1, "size {n}");
        assert_eq!(got[0].0.body, sent[0].body, "size {n}");
        assert_eq!(got[0].1, r, "size {n}");
        let back = b.backlog(
            r.clone(),
            Mid::new(sent[0].mid.epoch(), sent[0].mid.counter() - 1),
            1,
        );
        assert_eq!(back[0].body.len(), n);
    }
}

#[test]
fn a_burst_of_mixed_jobs_is_answered_once_each_in_order() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let r = vec![(ch(1), Kind::Private)];
    let mut tokens = Vec::new();
    for i in 0..300u64 {
        let token = a.token();
        let job = match i % 4 {
            0 | 1 => Job::Publish {
                token,
                drafts: vec![draft(&i.to_string(), r.clone())],
            },
            2 => Job::Online {
                token,
                channels: r.clone(),
            },
            _ => Job::Backlog {
                token,
                receivers: r.clone(),
                after: Mid::new(0, 0),
                limit: 1,
                max_bytes: 1 << 20,
            },
        };
        a.store.submit(job).unwrap();
        a.store
            .submit(Job::Touch {
                channels: r.clone(),
            })
            .unwrap();
        tokens.push(token);
    }
    let mut answered = Vec::new();
    let mut published = Vec::new();
    let deadline = Instant::now() + WAIT;
    while answered.len() < tokens.len() && Instant::now() < deadline {
        poll_once(
            &mut a.store,
            &mut a.poll,
            &mut a.events,
            Duration::from_millis(100),
        );
        a.store.drain(&mut a.got);
        for d in a.got.drain(..) {
            match d {
                Done::Published { token, result } => {
                    answered.push(token);
                    published.extend(result.unwrap().iter().map(|m| m.mid));
                }
                Done::Online { token, result } => {
                    answered.push(token);
                    assert_eq!(result.unwrap(), vec![true]);
                }
                Done::Backlog { token, result } => {
                    answered.push(token);
                    result.unwrap();
                }
                _ => {}
            }
        }
    }
    assert_eq!(answered, tokens, "each once, in order");
    assert_eq!(published.len(), 150);
    assert_increasing(&published);
}

/// A pipeline whose write stalls (Redis busy) may have delivered whole commands before the
/// stall, which Redis still runs; sending it again on a new connection would run them twice.
#[test]
fn a_stalled_write_is_not_sent_twice() {
    let redis = Redis::start();
    let mut a = Inst::up(&redis.sock);
    let mut b = Inst::up(&redis.sock);
    let r = vec![(ch(1), Kind::Private)];
    // The two publishes below must go out in one round, which races with the worker waking
    // up; a few attempts make that near certain (a round is seen by its ~1 s write stall).
    for attempt in 0..5 {
        let small = format!("small {attempt}");
        // Redis busy for 1.3 s: longer than the write timeout (twice: a partial write restarts
        // it), shorter than that plus a reconnect, so the reconnect succeeds.
        let mut busy = redis.conn();
        let t = std::thread::spawn(move || {
            let _: redis::RedisResult<()> = redis::cmd("EVAL")
                .arg(
                    "local t0 = redis.call('TIME') repeat local t = redis.call('TIME') \
                     until (t[1] - t0[1]) * 1e6 + (t[2] - t0[2]) > 1300000",
                )
                .arg(0)
                .query(&mut busy);
        });
        std::thread::sleep(Duration::from_millis(100));
        // A small publish, whole in the socket buffer, then one larger than it.
        let (t1, t2) = (a.token(), a.token());
        let big = vec![draft(&"L".repeat(4 << 20), r.clone())];
        let sent = Instant::now();
        for (token, drafts) in [(t1, vec![draft(&small, r.clone())]), (t2, big)] {
            a.store.submit(Job::Publish { token, drafts }).unwrap();
        }
        a.wait("Published", |d| match d {
            Done::Published { token, .. } if *token == t1 => Some(()),
            _ => None,
        });
        let one_round = sent.elapsed() > Duration::from_millis(900);
        t.join().unwrap();
        // Whatever the publisher was told, the small one ran at most once.
        let deadline = Instant::now() + WAIT;
        let marker = loop {
            match a.publish_result(vec![draft("marker", r.clone())]) {
                Ok(m) => break m,
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut heard = 0;
        loop {
            let batch = b.remote();
            heard += batch.iter().filter(|(m, _)| m.body == small).count();
            if batch.iter().any(|(m, _)| m.mid == marker[0].mid) {
                break;
            }
        }
        let stored = a
            .backlog(r.clone(), Mid::new(0, 0), 100)
            .iter()
            .filter(|m| m.body == small)
            .count();
        assert!(
            heard <= 1 && stored <= 1,
            "ran twice: {heard} notifications, {stored} stored"
        );
        if one_round {
            break;
        }
    }
}

/// Sends SIGCONT to a stopped process when dropped, so a failing test never leaves Redis
/// frozen.
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Frozen {
        signal(pid, "-STOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// Takes the publish answers into `sent`; drops the announcements, keeps the rest. Returns
/// how many failed after waiting for a reply (written to Redis, unanswered).
fn absorb(
    a: &mut Inst,
    sent: &mut std::collections::HashMap<u64, (String, Option<bool>, Instant)>,
) -> usize {
    let mut failures = 0;
    a.store.drain(&mut a.got);
    for d in std::mem::take(&mut a.got) {
        match d {
            Done::Published { token, result } => {
                let e = sent.get_mut(&token).expect("a token we sent");
                assert!(e.1.is_none(), "answered twice");
                if result.is_err() && e.2.elapsed() >= Duration::from_millis(450) {
                    failures += 1;
                }
                e.1 = Some(result.is_ok());
            }
            Done::Deliver(_) => {}
            other => a.got.push(other),
        }
    }
    failures
}

/// Redis frozen for 3 s (SIGSTOP) with publishes written to it and unanswered: they are
/// answered with an error after the read timeout, and must not run when Redis resumes (the
/// publish script refuses past its deadline, docs/redis.md "Publish deadline"). A publisher
/// that retries them would otherwise publish each twice. Publishes go on all along, one every
/// few ms; afterwards every one answered OK is stored once and every failed one not at all.
#[test]
fn a_publish_answered_with_an_error_never_runs_later() {
    let redis = Redis::start();
    let pid = redis.pid().expect("redis-server runs");
    let mut cfg = store_cfg(&redis.sock);
    cfg.channel_history = 100_000;
    let mut a = Inst::with_config(&redis.sock, "", cfg);
    a.wait_up();
    let r = vec![(ch(7), Kind::Private)];
    // token -> (body, answer: None while in flight, Some(ok), submitted at)
    let mut sent: std::collections::HashMap<u64, (String, Option<bool>, Instant)> =
        Default::default();
    let mut frozen: Option<Frozen> = None;
    let start = Instant::now();
    let mut written_while_frozen = 0;
    let mut n = 0;
    loop {
        let t = start.elapsed();
        if t > Duration::from_millis(500) && t < Duration::from_millis(3500) && frozen.is_none() {
            frozen = Some(Frozen::new(pid));
        }
        if t >= Duration::from_millis(3500) && frozen.is_some() {
            frozen = None; // SIGCONT
        }
        if t >= Duration::from_millis(6000) {
            break;
        }
        // A few in one round and a few alone.
        for _ in 0..(1 + n % 3) {
            let token = a.token();
            let body = format!("m{n}");
            n += 1;
            a.store
                .submit(Job::Publish {
                    token,
                    drafts: vec![draft(&body, r.clone())],
                })
                .unwrap();
            sent.insert(token, (body, None, Instant::now()));
        }
        // One round of publishes every 5 ms.
        let next = start + Duration::from_millis(5 * (n as u64 / 2 + 1));
        while Instant::now() < next {
            poll_once(
                &mut a.store,
                &mut a.poll,
                &mut a.events,
                next - Instant::now(),
            );
        }
        written_while_frozen += absorb(&mut a, &mut sent);
    }
    drop(frozen);
    // Every publish is answered, then the backlog shows what ran.
    let deadline = Instant::now() + WAIT;
    while sent.values().any(|(_, r, _)| r.is_none()) {
        assert!(Instant::now() < deadline, "publishes left unanswered");
        poll_once(
            &mut a.store,
            &mut a.poll,
            &mut a.events,
            Duration::from_millis(50),
        );
        written_while_frozen += absorb(&mut a, &mut sent);
    }
    let deadline = Instant::now() + WAIT;
    let marker = loop {
        if let Ok(m) = a.publish_result(vec![draft("marker", r.clone())]) {
            break m;
        }
        assert!(Instant::now() < deadline, "Redis did not come back");
        a.wait("Up", |d| matches!(d, Done::Up { .. }).then_some(()));
    };
    let mut stored: std::collections::HashMap<String, usize> = Default::default();
    let mut after = Mid::new(0, 0);
    loop {
        let chunk = a.backlog_chunk(r.clone(), after, 1000, 16 << 20);
        for m in &chunk.msgs {
            *stored
                .entry(String::from_utf8_lossy(&m.body).into_owned())
                .or_default() += 1;
            after = m.mid;
        }
        if !chunk.more {
            break;
        }
    }
    assert_eq!(after, marker[0].mid);
    let (mut ok, mut failed, mut late) = (0, 0, Vec::new());
    for (body, answer, _) in sent.values() {
        let times = stored.get(body).copied().unwrap_or(0);
        match answer {
            Some(true) => {
                ok += 1;
                assert_eq!(times, 1, "{body} answered OK, stored {times} times");
            }
            _ => {
                failed += 1;
                if times > 0 {
                    late.push(body.clone());
                }
            }
        }
    }
    eprintln!("{ok} published, {failed} failed ({written_while_frozen} in flight at the freeze)");
    assert!(
        late.is_empty(),
        "answered as failed, published all the same: {late:?}"
    );
    assert!(ok > 0 && failed > 0, "{ok} ok, {failed} failed");
    assert!(
        written_while_frozen > 0,
        "no publish was in flight at the freeze"
    );
}

/// The publish jobs of a round share one script call (docs/redis.md, "Publishing"): each job
/// still gets its own ids, in job order, and the ids the script writes (digits turned into
/// bytes by arithmetic in Lua) are the ones the answers and the announcements carry, for a
/// counter whose every digit differs.
#[test]
fn publishes_of_one_round_share_a_call_and_keep_their_own_ids() {
    let redis = Redis::start();
    let mut c = redis.conn();
    set_raw(&mut c, b"server:startdate", b"1234567890");
    set_raw(&mut c, b"server:messagecounter", b"1098765432109869");
    let mut a = Inst::up(&redis.sock);
    let r = vec![(ch(7), Kind::Private)];
    let sizes = [2usize, 1, 3];
    let tokens: Vec<u64> = sizes
        .iter()
        .map(|&n| {
            let token = a.token();
            let drafts = (0..n)
                .map(|i| draft(&format!("m{n}.{i}"), r.clone()))
                .collect();
            a.store
                .submit(Job::Publish { token, drafts })
                .expect("queue has room");
            token
        })
        .collect();
    let mut all = Vec::new();
    for (token, n) in tokens.into_iter().zip(sizes) {
        let minted = a.wait("Published", |d| match d {
            Done::Published { token: t, result } if *t == token => {
                Some(result.clone().expect("publish succeeds"))
            }
            _ => None,
        });
        assert_eq!(minted.len(), n);
        all.extend(minted.iter().map(|m| m.mid));
    }
    let want: Vec<Mid> = (1_098_765_432_109_870..1_098_765_432_109_876)
        .map(|c| Mid::new(1_234_567_890, c))
        .collect();
    assert_eq!(all, want, "consecutive ids in job order");
    // One script call announced them all, with the same ids.
    let batch = a.remote_with(all[0]);
    let announced: Vec<Mid> = batch.iter().map(|(m, _)| m.mid).collect();
    assert_eq!(announced, want, "one announcement for the round");
    for m in &want {
        let mut key = b"message:".to_vec();
        key.extend_from_slice(&m.to_binary());
        let n: i64 = redis::cmd("EXISTS").arg(&key).query(&mut c).unwrap();
        assert_eq!(n, 1, "message key of {m:?} written under its binary id");
    }
}
