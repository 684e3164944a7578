//! Several push-server instances sharing one private redis-server (issue 4): cross-instance
//! delivery, backlog resume, online and stats for the whole group, monotonic ids when Redis
//! loses its counter, a Redis outage in the middle of a test, and v5 presence shared by
//! the instances (docs/redis.md, "v5 presence").

mod common;

use common::redis_server::RedisTcp;
use common::*;
use std::time::{Duration, Instant};

fn cid(id: &str) -> String {
    format!("CHANNEL_ID={}", enc(&signed(id)))
}

fn instances(redis: &Redis, n: usize) -> Vec<Server> {
    (0..n)
        .map(|_| Server::builder().redis(redis).start())
        .collect()
}

/// Pattern subscribers connected to Redis (`PUBSUB NUMPAT` counts distinct patterns, and
/// every instance uses the same one).
fn pattern_subscribers(redis: &Redis) -> usize {
    redis
        .cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|l| l.split(' ').any(|f| f == "psub=1"))
        .count()
}

/// Waits until every instance is subscribed to Redis pub/sub (one pattern subscription each),
/// so a publish cannot race an instance that is still connecting.
fn wait_subscribed(redis: &Redis, n: usize) {
    let ok = wait_until(WAIT, || pattern_subscribers(redis) == n);
    assert!(
        ok,
        "expected {n} pattern subscribers (one per instance), found {}",
        pattern_subscribers(redis)
    );
}

fn publish_mid(s: &Server, ch: &str, body: &str) -> String {
    s.publish_ok(ch, body, Some(86400));
    // The mid comes back through a resume from the oldest id.
    let r = s.lp(&format!("{}&mid={OLD_MID}", cid(ch)));
    assert_eq!(r.status, 200, "{:?}", r.body_str());
    let frames = r.frames();
    frames.last().expect("at least one frame").mid.clone()
}

/// A replica connects on its once-a-second cron and then takes a full sync (a fork of the
/// master): on a loaded machine that takes longer than the usual test wait.
const REPLICA_SYNC: Duration = Duration::from_secs(30);

#[test]
fn publish_on_one_instance_reaches_ws_and_lp_on_the_others() {
    let redis = Redis::start();
    let s = instances(&redis, 3);
    wait_subscribed(&redis, 3);
    let ch = new_id();
    let mut ws = s[1].ws(&cid(&ch));
    let mut lp = s[2].lp_begin(&cid(&ch));
    s[2].wait_online(&ch);
    let body = r#"{"module_id":"im","command":"x","params":{"n":1}}"#;
    s[0].publish_ok(&ch, body, Some(86400));
    let f = ws.frames(1, WAIT);
    assert_eq!(f[0].text, body);
    let r = lp.read_response();
    assert_eq!(r.status, 200, "{:?}", r.body_str());
    let lf = r.frames();
    assert_eq!(lf.len(), 1);
    assert_eq!(lf[0].text, body);
    assert_eq!(
        lf[0].mid, f[0].mid,
        "one message has one id on every instance"
    );
    assert_eq!(lf[0].time, f[0].time);
    assert_eq!(lf[0].tag, f[0].tag);
    // Only once, even though the publishing instance also sees its own announcement.
    ws.expect_silence(Duration::from_millis(300));
}

#[test]
fn ids_from_several_instances_strictly_increase() {
    let redis = Redis::start();
    let s = instances(&redis, 2);
    wait_subscribed(&redis, 2);
    let ch = new_id();
    let mut ws = s[0].ws(&cid(&ch));
    for i in 0..10 {
        s[i % 2].publish_ok(&ch, &format!("{{\"n\":{i}}}"), Some(86400));
    }
    let frames = ws.frames(10, WAIT);
    let texts: Vec<String> = frames.iter().map(|f| f.text.clone()).collect();
    let want: Vec<String> = (0..10).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_eq!(texts, want, "publish order");
    assert!(
        frames.windows(2).all(|w| w[0].mid < w[1].mid),
        "mids must increase: {:?}",
        frames.iter().map(|f| &f.mid).collect::<Vec<_>>()
    );
}

#[test]
fn backlog_resume_across_instances() {
    let redis = Redis::start();
    let s = instances(&redis, 3);
    let ch = new_id();
    let first = publish_mid(&s[0], &ch, "\"m0\"");
    let sent: Vec<String> = (1..=5).map(|i| format!("\"m{i}\"")).collect();
    for b in &sent {
        s[0].publish_ok(&ch, b, Some(86400));
    }
    let r = s[1].lp(&format!("{}&mid={first}", cid(&ch)));
    assert_eq!(r.status, 200, "{:?}", r.body_str());
    let texts: Vec<String> = r.frames().iter().map(|f| f.text.clone()).collect();
    assert_eq!(
        texts, sent,
        "long poll on another instance resumes after mid"
    );
    let mut ws = s[2].ws(&format!("{}&mid={first}", cid(&ch)));
    let texts: Vec<String> = ws.frames(5, WAIT).iter().map(|f| f.text.clone()).collect();
    assert_eq!(
        texts, sent,
        "WebSocket on another instance resumes after mid"
    );
}

#[test]
fn online_query_and_stats_answer_for_the_group() {
    let redis = Redis::start();
    let s = instances(&redis, 2);
    let (a, b) = (new_id(), new_id());
    let _ws = s[1].ws(&cid(&a));
    let ok = wait_until(WAIT, || s[0].online(&[&a, &b]).body_str().contains(&a));
    assert!(
        ok,
        "a WebSocket on instance 2 must be online for instance 1: {:?}",
        s[0].online(&[&a, &b]).body_str()
    );
    assert!(!s[0].online(&[&b]).body_str().contains(&b));
    let ok = wait_until(WAIT, || {
        s[0].server_stat().as_array().map(Vec::len) == Some(2)
    });
    let stat = s[0].server_stat();
    assert!(ok, "server-stat must list both instances: {stat}");
    let arr = stat.as_array().expect("array");
    assert!(arr.iter().all(|e| e["clusterMode"] == true), "{stat}");
    let ids: Vec<&str> = arr
        .iter()
        .map(|e| e["processUniqueId"].as_str().unwrap_or(""))
        .collect();
    assert_ne!(ids[0], ids[1], "instances need distinct processUniqueId");
}

#[test]
fn ids_keep_increasing_when_redis_loses_the_counter() {
    let redis = Redis::start();
    let s = instances(&redis, 2);
    wait_subscribed(&redis, 2);
    let ch = new_id();
    let mut ws = s[0].ws(&cid(&ch));
    let mut last = String::new();
    let mut publish_and_check = |server: &Server, what: &str| {
        server.publish_ok(&ch, &format!("\"{what}\""), Some(86400));
        let f = ws.frames(1, WAIT).remove(0);
        assert!(
            f.mid > last,
            "{what}: mid {} must exceed the previous {last}",
            f.mid
        );
        last = f.mid;
    };
    publish_and_check(&s[0], "before");
    publish_and_check(&s[1], "before-2");
    let keys = redis.cli(&["KEYS", "server:*"]);
    assert!(
        keys.contains("server:messagecounter"),
        "2.0 key layout: {keys}"
    );
    redis.cli(&["DEL", "server:messagecounter"]);
    publish_and_check(&s[1], "after-del-counter");
    // The instance that started the epoch says so: Node processes need a restart then.
    assert!(wait_until(WAIT, || s[1]
        .stderr_text()
        .contains("started a new message id epoch")));
    publish_and_check(&s[0], "after-del-counter-2");
    redis.cli(&["FLUSHALL"]);
    wait_subscribed(&redis, 2);
    publish_and_check(&s[0], "after-flushall");
    publish_and_check(&s[1], "after-flushall-2");
}

#[test]
fn redis_outage_keeps_subscribers_refuses_publishes_and_recovers() {
    let mut redis = Redis::start();
    let s = instances(&redis, 2);
    wait_subscribed(&redis, 2);
    let ch = new_id();
    let mut ws = s[1].ws(&cid(&ch));
    s[0].publish_ok(&ch, "\"before\"", Some(86400));
    let before = ws.frames(1, WAIT).remove(0);

    redis.stop();
    // Publishes are refused with a clear 503, quickly (PHP's read timeout is 1 s).
    let ok = wait_until(WAIT, || {
        s[0].publish(&ch, "\"x\"", Some(86400)).status == 503
    });
    assert!(ok, "a publish during the outage must answer 503");
    for _ in 0..5 {
        let t = Instant::now();
        let r = s[0].publish(&ch, "\"during\"", Some(86400));
        assert_eq!(r.status, 503, "{:?}", r.body_str());
        assert!(!r.body.is_empty(), "503 carries a reason");
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
    }
    let h = s[0].pub_request(b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(
        h.status,
        503,
        "health while Redis is down: {:?}",
        h.body_str()
    );
    // Subscribers stay connected; a long poll can still begin.
    ws.expect_silence(Duration::from_millis(300));
    let mut lp = s[1].lp_begin(&format!("{}&mid={}", cid(&ch), before.mid));

    redis.restart();
    let ok = wait_until(Duration::from_secs(15), || {
        s[0].publish(&ch, "\"after\"", Some(86400)).status == 200
    });
    assert!(ok, "publishing resumes after Redis is back");
    wait_subscribed(&redis, 2);
    s[0].publish_ok(&ch, "\"after-2\"", Some(86400));
    let texts: Vec<String> = ws
        .frames_until("\"after-2\"", Duration::from_secs(10))
        .iter()
        .map(|f| f.text.clone())
        .collect();
    assert!(
        texts.contains(&"\"after-2\"".to_owned()),
        "the open WebSocket receives after the outage: {texts:?}"
    );
    assert!(
        !texts.iter().any(|t| t == "\"during\"" || t == "\"x\""),
        "refused publishes must not be delivered: {texts:?}"
    );
    let r = lp.read_response();
    assert_eq!(r.status, 200, "{:?}", r.body_str());
    for srv in &s {
        let log = srv.stderr_text();
        let downs = log.matches("store unavailable").count();
        assert!(
            downs <= 2,
            "the outage is logged once per state change, not per request ({downs}x):\n{log}"
        );
    }
}

#[test]
fn starts_without_redis_and_connects_when_it_appears() {
    let mut redis = Redis::start();
    redis.stop();
    let s = Server::builder().redis(&redis).start();
    let h = s.pub_request(b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(h.status, 503, "not ready without Redis: {:?}", h.body_str());
    let ch = new_id();
    assert_eq!(s.publish(&ch, "\"x\"", Some(86400)).status, 503);
    redis.restart();
    let ok = wait_until(Duration::from_secs(15), || {
        s.pub_request(b"GET /health HTTP/1.0\r\n\r\n").status == 200
    });
    assert!(ok, "health turns ready once Redis is up");
    let mut ws = s.ws(&cid(&ch));
    s.publish_ok(&ch, "\"hello\"", Some(86400));
    assert_eq!(ws.frames(1, WAIT)[0].text, "\"hello\"");
}

#[test]
fn resume_by_mid_after_redis_restart_gets_what_redis_kept() {
    let mut redis = Redis::start();
    let s = instances(&redis, 2);
    wait_subscribed(&redis, 2);
    let ch = new_id();
    let first = publish_mid(&s[0], &ch, "\"m0\"");
    let kept: Vec<String> = (1..=3).map(|i| format!("\"kept{i}\"")).collect();
    for b in &kept {
        s[0].publish_ok(&ch, b, Some(86400));
    }
    // A Redis with persistence: SHUTDOWN SAVE, then start again on the same dump.
    redis.shutdown_saving();
    assert_eq!(s[0].publish(&ch, "\"refused\"", Some(86400)).status, 503);
    redis.restart();
    let ok = wait_until(Duration::from_secs(15), || {
        s[1].pub_request(b"GET /health HTTP/1.0\r\n\r\n").status == 200
    });
    assert!(ok, "instance 2 sees Redis again");
    let r = s[1].lp(&format!("{}&mid={first}", cid(&ch)));
    assert_eq!(r.status, 200, "{:?}", r.body_str());
    let texts: Vec<String> = r.frames().iter().map(|f| f.text.clone()).collect();
    assert_eq!(
        texts, kept,
        "every message Redis kept, and not the refused one"
    );
    s[1].publish_ok(&ch, "\"new\"", Some(86400));
    let r = s[1].lp(&format!("{}&mid={}", cid(&ch), r.frames()[2].mid));
    let f = r.frames();
    assert_eq!(f.len(), 1, "{:?}", r.body_str());
    assert_eq!(f[0].text, "\"new\"");
}

#[test]
fn concurrent_publishes_on_two_instances_arrive_in_id_order_everywhere() {
    // Local delivery follows the order Redis ran the publish scripts in, for an instance's own
    // messages too: otherwise a subscriber could get its instance's newer id before another
    // instance's older one, and a long poll resuming from the newer id would skip the older.
    let redis = Redis::start();
    let s = instances(&redis, 2);
    wait_subscribed(&redis, 2);
    let ch = new_id();
    let mut ws: Vec<Ws> = s.iter().map(|srv| srv.ws(&cid(&ch))).collect();
    let n = 150;
    std::thread::scope(|scope| {
        for (k, srv) in s.iter().enumerate() {
            let ch = ch.clone();
            scope.spawn(move || {
                let mut c = srv.pub_conn();
                for i in 0..n {
                    let body = format!("{{\"k\":{k},\"i\":{i}}}");
                    c.send(&publish_request(&ch, body.as_bytes(), Some(86400)));
                    let r = c.read_response();
                    assert_eq!(r.status, 200, "{:?}", r.body_str());
                    c = srv.pub_conn();
                }
            });
        }
    });
    for (k, w) in ws.iter_mut().enumerate() {
        let frames = w.frames(2 * n, WAIT);
        let bad = frames.windows(2).find(|p| p[0].mid >= p[1].mid);
        assert!(
            bad.is_none(),
            "instance {k}: id {} arrived before {}",
            bad.map_or("", |p| p[0].mid.as_str()),
            bad.map_or("", |p| p[1].mid.as_str())
        );
    }
}

/// After a Redis restart the instances subscribe again at different moments. Messages
/// published through the first one back in that window must still reach the WebSocket
/// subscribers of the other, which stay connected and so never resume by `mid`: the instance
/// catches them up from the store (docs/redis.md, "Catch-up after a pub/sub gap"). Instance B
/// comes back 1.5 s after A (a test-only delay); a publisher hammers A throughout. Every
/// acknowledged message reaches every subscriber on both instances once, in id order.
#[test]
fn no_message_is_lost_in_the_resubscribe_gap_after_a_redis_restart() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut redis = Redis::start();
    let a = Server::builder().redis(&redis).start();
    let b = Server::builder()
        .redis(&redis)
        .env("PUSH_TEST_RESUBSCRIBE_DELAY_MS", "1500")
        .start();
    wait_subscribed(&redis, 2);
    let chs: Vec<String> = (0..6).map(|_| new_id()).collect();
    let mut subs: Vec<(usize, &str, Ws)> = Vec::new();
    for (k, ch) in chs.iter().enumerate() {
        subs.push((k, "A", a.ws(&cid(ch))));
        subs.push((k, "B", b.ws(&cid(ch))));
    }
    for ch in &chs {
        a.wait_online(ch);
        b.wait_online(ch);
    }
    let stop = AtomicBool::new(false);
    // (channel, body, acknowledged, when)
    let log: Mutex<Vec<(usize, String, bool, Instant)>> = Mutex::new(Vec::new());
    let acked = |log: &Mutex<Vec<(usize, String, bool, Instant)>>| {
        log.lock().unwrap().iter().filter(|e| e.2).count()
    };
    let (restarted, b_back) = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let k = i % chs.len();
                let body = format!("{{\"i\":{i}}}");
                let status = a.publish(&chs[k], &body, Some(86400)).status;
                log.lock()
                    .unwrap()
                    .push((k, body, status == 200, Instant::now()));
                if status != 200 {
                    // Refused while Redis is away: the publisher goes on (pacing only).
                    std::thread::sleep(Duration::from_millis(20));
                }
                i += 1;
            }
        });
        assert!(wait_until(WAIT, || acked(&log) >= 100), "publishing works");
        redis.shutdown_saving();
        redis.restart();
        let restarted = Instant::now();
        assert!(
            wait_until(Duration::from_secs(20), || pattern_subscribers(&redis) == 2),
            "both instances subscribe again"
        );
        let b_back = Instant::now();
        let n = acked(&log);
        assert!(
            wait_until(WAIT, || acked(&log) >= n + 100),
            "publishing goes on"
        );
        stop.store(true, Ordering::Relaxed);
        (restarted, b_back)
    });
    let log = log.into_inner().unwrap();
    let in_gap = log
        .iter()
        .filter(|e| e.2 && e.3 > restarted && e.3 < b_back)
        .count();
    assert!(
        in_gap >= 10,
        "only {in_gap} publishes acknowledged while B was not subscribed"
    );
    let refused: std::collections::HashSet<&str> =
        log.iter().filter(|e| !e.2).map(|e| e.1.as_str()).collect();
    for (k, inst, ws) in subs.iter_mut() {
        let want: Vec<&str> = log
            .iter()
            .filter(|e| e.0 == *k && e.2)
            .map(|e| e.1.as_str())
            .collect();
        let last = want.last().expect("messages for every channel");
        let got = ws.frames_until(last, Duration::from_secs(15));
        ws.expect_silence(Duration::from_millis(300));
        let bad = got.windows(2).find(|p| p[0].mid >= p[1].mid);
        assert!(
            bad.is_none(),
            "{inst} channel {k}: id {} before {}",
            bad.map_or("", |p| p[0].mid.as_str()),
            bad.map_or("", |p| p[1].mid.as_str())
        );
        // A refused publish is never delivered (the publish deadline); none may be missing.
        let texts: Vec<&str> = got.iter().map(|f| f.text.as_str()).collect();
        let extra: Vec<&&str> = texts.iter().filter(|t| refused.contains(**t)).collect();
        assert!(
            extra.is_empty(),
            "{inst} channel {k}: refused ones delivered: {extra:?}"
        );
        let lost = want.iter().filter(|w| !texts.contains(w)).count();
        assert_eq!(
            (lost, texts.len()),
            (0, want.len()),
            "{inst} channel {k}: {lost} lost; got {} for {} acknowledged\n{}",
            texts.len(),
            want.len(),
            b.stderr_text()
        );
    }
    eprintln!(
        "{} acknowledged, {} refused, {in_gap} in B's gap",
        log.iter().filter(|e| e.2).count(),
        refused.len()
    );
}

fn metric(s: &Server, name: &str) -> u64 {
    let r = s.pub_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    r.body_str()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_owned))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// The `message:*` keys of a Redis (the stored messages).
fn stored_messages(r: &RedisTcp) -> usize {
    r.cli(&["--scan", "--pattern", "message:*"]).lines().count()
}

/// REDIS_WAIT_REPLICAS=1 with one replica: every publish answered 200 is on the replica
/// already. REDIS_WAIT_REPLICAS=2 with one replica: WAIT times out, the publish still answers
/// 200 (it is published), within the 250 ms timeout plus a little, and the timeout is logged
/// and counted in /metrics.
#[test]
fn wait_replicas_acknowledges_after_the_replica_and_times_out_to_200() {
    let master = RedisTcp::start(&[]);
    let replica = RedisTcp::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    assert!(
        wait_until(REPLICA_SYNC, || replica.replication("master_link_status")
            == "up"),
        "replica in sync"
    );
    let url = format!("redis://{}", master.addr());
    let one = Server::builder()
        .env("REDIS_URL", &url)
        .env("REDIS_WAIT_REPLICAS", "1")
        .start();
    one.wait_store_up();
    let ch = new_id();
    for i in 1..=20 {
        one.publish_ok(&ch, &format!("{{\"n\":{i}}}"), Some(86400));
        // WAIT 1 returned: the replica has every message answered so far.
        assert_eq!(stored_messages(&replica), i, "after publish {i}");
    }
    assert_eq!(metric(&one, "push_redis_wait_timeouts_total"), 0);

    let two = Server::builder()
        .env("REDIS_URL", &url)
        .env("REDIS_WAIT_REPLICAS", "2")
        .start();
    two.wait_store_up();
    for i in 0..3 {
        let t = Instant::now();
        two.publish_ok(&ch, &format!("{{\"late\":{i}}}"), Some(86400));
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(240) && took < Duration::from_millis(900),
            "publish with a WAIT that times out took {took:?}"
        );
    }
    assert_eq!(metric(&two, "push_redis_wait_timeouts_total"), 3);
    assert_eq!(
        stored_messages(&master),
        23,
        "the timed-out ones are published"
    );
    let log = two.stderr_text();
    assert_eq!(
        log.matches("WAIT for REDIS_WAIT_REPLICAS=2 timed out")
            .count(),
        1,
        "warned once (rate-limited):\n{log}"
    );
}

/// A field of `SENTINEL master <name>` (a flat list of names and values).
fn sentinel_field(s: &RedisTcp, name: &str, field: &str) -> String {
    let out = s.try_cli(&["SENTINEL", "master", name]).unwrap_or_default();
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .find(|p| p[0] == field)
        .and_then(|p| p.get(1))
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// Redis Sentinel: a master, a replica and three Sentinels on loopback TCP, two instances
/// finding the master through the Sentinels. The master is killed while a publisher hammers
/// instance A. Publishes work again within 10 s of the promotion, ids never go backwards on
/// any subscriber, the WebSocket subscribers on both instances stay connected, and they get
/// every message acknowledged after the master died.
#[test]
fn sentinel_failover_under_load() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    const NAME: &str = "pushmaster";
    let mut master = RedisTcp::start(&[]);
    let replica = RedisTcp::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    assert!(
        wait_until(REPLICA_SYNC, || replica.replication("master_link_status")
            == "up"),
        "replica in sync"
    );
    let sentinels: Vec<RedisTcp> = (0..3)
        .map(|_| RedisTcp::sentinel(NAME, master.port))
        .collect();
    let ready = wait_until(Duration::from_secs(20), || {
        sentinels.iter().all(|s| {
            sentinel_field(s, NAME, "num-slaves") == "1"
                && sentinel_field(s, NAME, "num-other-sentinels") == "2"
        })
    });
    assert!(ready, "the Sentinels know the replica and each other");
    let list: Vec<String> = sentinels.iter().map(RedisTcp::addr).collect();
    let start = || {
        let s = Server::builder()
            .env("REDIS_SENTINELS", list.join(","))
            .env("REDIS_MASTER_NAME", NAME)
            .start();
        s.wait_store_up();
        s
    };
    let (a, b) = (start(), start());
    let psubs = |r: &RedisTcp| {
        r.try_cli(&["CLIENT", "LIST"])
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').any(|f| f == "psub=1"))
            .count()
    };
    assert!(wait_until(WAIT, || psubs(&master) == 2), "both subscribed");
    let chs: Vec<String> = (0..3).map(|_| new_id()).collect();
    let mut subs: Vec<(usize, &str, Ws)> = Vec::new();
    for (k, ch) in chs.iter().enumerate() {
        subs.push((k, "A", a.ws(&cid(ch))));
        subs.push((k, "B", b.ws(&cid(ch))));
    }
    for ch in &chs {
        a.wait_online(ch);
        b.wait_online(ch);
    }
    let stop = AtomicBool::new(false);
    let log: Mutex<Vec<(usize, String, bool, Instant)>> = Mutex::new(Vec::new());
    let acked_after = |log: &Mutex<Vec<(usize, String, bool, Instant)>>, t: Instant| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|e| e.2 && e.3 > t)
            .count()
    };
    let t0 = Instant::now();
    let (killed, promoted, first_ok) = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let k = i % chs.len();
                let body = format!("{{\"i\":{i}}}");
                let status = a.publish(&chs[k], &body, Some(86400)).status;
                log.lock()
                    .unwrap()
                    .push((k, body, status == 200, Instant::now()));
                if status != 200 {
                    std::thread::sleep(Duration::from_millis(20));
                }
                i += 1;
            }
        });
        assert!(
            wait_until(WAIT, || acked_after(&log, t0) >= 100),
            "publishing works"
        );
        master.kill();
        let killed = Instant::now();
        let new_port = replica.port.to_string();
        let promoted = wait_until(Duration::from_secs(30), || {
            sentinels[0]
                .try_cli(&["SENTINEL", "get-master-addr-by-name", NAME])
                .is_some_and(|o| o.lines().nth(1) == Some(new_port.as_str()))
        });
        assert!(promoted, "the replica is promoted");
        let promoted = Instant::now();
        let resumed = wait_until(Duration::from_secs(10), || acked_after(&log, promoted) > 0);
        assert!(
            resumed,
            "no publish acknowledged within 10 s of the promotion\n{}",
            a.stderr_text()
        );
        let first_ok = Instant::now();
        assert!(
            wait_until(WAIT, || acked_after(&log, first_ok) >= 100),
            "publishing goes on"
        );
        stop.store(true, Ordering::Relaxed);
        (killed, promoted, first_ok)
    });
    let log = log.into_inner().unwrap();
    for (k, inst, ws) in subs.iter_mut() {
        let after: Vec<&str> = log
            .iter()
            .filter(|e| e.0 == *k && e.2 && e.3 > killed)
            .map(|e| e.1.as_str())
            .collect();
        let last = after.last().expect("messages after the failover");
        let got = ws.frames_until(last, Duration::from_secs(15));
        let bad = got.windows(2).find(|p| p[0].mid >= p[1].mid);
        assert!(
            bad.is_none(),
            "{inst} channel {k}: id {} before {}",
            bad.map_or("", |p| p[0].mid.as_str()),
            bad.map_or("", |p| p[1].mid.as_str())
        );
        let texts: Vec<&str> = got.iter().map(|f| f.text.as_str()).collect();
        let lost: Vec<&&str> = after.iter().filter(|w| !texts.contains(w)).collect();
        assert!(
            lost.is_empty(),
            "{inst} channel {k}: lost after the failover: {lost:?}"
        );
    }
    eprintln!(
        "promotion {:?} after the kill; first publish {:?} after the promotion; {} acknowledged",
        promoted - killed,
        first_ok - promoted,
        log.iter().filter(|e| e.2).count()
    );
}

// ---- v5 presence shared through Redis (docs/redis.md, "v5 presence") ----

const V5_SHARED: &str = "ad0234829205b9033196ba818f7a872b";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn v5_ws(s: &Server, user: u64) -> Ws {
    s.ws(&v5_query(user))
}

fn v5_query(user: u64) -> String {
    let claims = serde_json::json!({
        "iss": "host1", "iat": unix_now(), "exp": unix_now() + 43200,
        "sub": user.to_string(), "chan": V5_SHARED,
    });
    let token = push_server::jwt::sign(&claims.to_string(), KEY.as_bytes());
    format!("token={}&jsonRpc=true&revision=19", enc(&token))
}

fn v5_backend(s: &Server, body: &serde_json::Value) -> serde_json::Value {
    let body = body.to_string();
    let raw = format!(
        "POST /bitrix/api/?hostId=host1&signature={}&hostname=portal HTTP/1.1\r\nHost: portal\r\nContent-Type: application/x-www-form-urlencoded\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        sign(&body),
        body.len()
    );
    let r = s.pub_request(raw.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body_str());
    serde_json::from_slice(&r.body).unwrap()
}

/// `getUsersLastSeen` on `s`'s backend endpoint: user → seconds (absent when unknown).
fn last_seen(s: &Server, users: &[u64]) -> serde_json::Value {
    let q = serde_json::json!({"jsonrpc":"2.0","method":"getUsersLastSeen","params":{"userList":users}});
    v5_backend(s, &q)["result"].clone()
}

/// Next JSON text on a v5 WebSocket that is not `ping`, within `within`.
fn v5_next(ws: &mut Ws, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let t = ws.next_text(deadline.saturating_duration_since(Instant::now()));
        if t != "ping" {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// The next `userStatusChange` params on a watcher's socket.
fn status_change(ws: &mut Ws, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let v = v5_next(ws, deadline.saturating_duration_since(Instant::now()));
        if v["method"] == "incoming.message" {
            assert_eq!(v["params"]["body"]["command"], "userStatusChange", "{v}");
            return v["params"]["body"]["params"].clone();
        }
    }
}

/// How many instances have a watch list in Redis (`v5:watch:<instance>`, docs/redis.md).
fn watch_keys(redis: &Redis) -> usize {
    redis
        .cli(&["KEYS", "*v5:watch:*"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn watch(ws: &mut Ws, user: u64) {
    let q = format!(
        r#"{{"jsonrpc":"2.0","method":"subscribeStatusChange","params":{{"userId":{user}}},"id":7}}"#
    );
    ws.send_text(&q).unwrap();
    assert_eq!(v5_next(ws, WAIT)["id"], 7);
}

#[test]
fn v5_presence_and_status_pushes_are_shared_across_instances() {
    let redis = Redis::start();
    let s: Vec<Server> = (0..2)
        .map(|_| {
            Server::builder()
                .redis(&redis)
                .env("ONLINE_TTL", "1")
                .start()
        })
        .collect();
    wait_subscribed(&redis, 2);
    // User 1 watches user 2 from both instances; user 2 connects to the first only.
    let mut on_a = v5_ws(&s[0], 1);
    let mut on_b = v5_ws(&s[1], 1);
    watch(&mut on_a, 2);
    watch(&mut on_b, 2);
    let _flush = wait_until(WAIT, || watch_keys(&redis) == 2);
    let two = v5_ws(&s[0], 2);
    // Each watching socket hears it once, though two instances watch.
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(
            status_change(ws, WAIT),
            serde_json::json!({"user_id": 2, "online": true})
        );
    }
    on_a.expect_silence(Duration::from_millis(300));
    on_b.expect_silence(Duration::from_millis(300));
    // Connected on A, seen connected on B: by the backend and by a client request.
    assert_eq!(last_seen(&s[1], &[2])["2"], 0);
    on_b.send_text(
        r#"{"jsonrpc":"2.0","method":"getUsersLastSeen","params":{"userList":[2,99]},"id":8}"#,
    )
    .unwrap();
    let a = v5_next(&mut on_b, WAIT);
    assert_eq!(
        a,
        serde_json::json!({"jsonrpc":"2.0","id":8,"result":{"2":0}})
    );

    // updateUsersLastSeen fills in only where nothing newer is known.
    let t = unix_now();
    let up = |s: &Server, m: serde_json::Value| {
        let q = serde_json::json!({"jsonrpc":"2.0","method":"updateUsersLastSeen","params":m});
        assert_eq!(v5_backend(s, &q)["result"], serde_json::json!({}));
    };
    up(&s[0], serde_json::json!({"3": t - 300, "2": t - 1000}));
    up(&s[1], serde_json::json!({"3": t - 5000}));
    // Each instance writes its updates to Redis in its own time (a job of its loop): the
    // newer time is seen everywhere once both writes are in.
    let mut r = serde_json::Value::Null;
    let newer_wins = wait_until(WAIT, || {
        r = last_seen(&s[1], &[2, 3, 4]);
        r["3"].as_u64().is_some_and(|ago| (300..320).contains(&ago))
    });
    assert!(newer_wins, "{r}");
    assert_eq!(r["2"], 0, "{r}");
    assert!(r.get("4").is_none(), "{r}");
    assert_eq!(
        last_seen(&s[0], &[3])["3"].as_u64().map(|a| a >= 300),
        Some(true)
    );

    // A held long poll on B counts as connected on A, and ONLINE_TTL (and a sweep) after.
    let poll = s[1].lp_begin(&v5_query(6));
    assert!(wait_until(WAIT, || last_seen(&s[0], &[6])["6"] == 0));
    drop(poll);
    assert!(wait_until(Duration::from_secs(15), || {
        last_seen(&s[0], &[6])["6"].as_u64().is_some_and(|a| a > 0)
    }));

    // The last connection goes: offline for every watcher after ONLINE_TTL (and a sweep).
    drop(two);
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(
            status_change(ws, Duration::from_secs(15)),
            serde_json::json!({"user_id": 2, "online": false})
        );
    }
    let r = last_seen(&s[1], &[2]);
    let ago = r["2"].as_u64().unwrap();
    assert!(
        (1..60).contains(&ago),
        "last seen when its connection closed: {r}"
    );

    // Every presence key is under v5:, which Node 0.4.0 processes never read.
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(
        keys.contains("v5:online") && keys.contains("v5:lastseen"),
        "{keys}"
    );
    for k in keys.lines().filter(|k| k.contains("v5:")) {
        assert!(k.starts_with("v5:"), "{k}");
    }
}

#[test]
fn v5_users_of_a_killed_instance_age_out() {
    let redis = Redis::start();
    let s: Vec<Server> = (0..2)
        .map(|_| {
            Server::builder()
                .redis(&redis)
                .env("ONLINE_TTL", "1")
                .start()
        })
        .collect();
    wait_subscribed(&redis, 2);
    let mut watcher = v5_ws(&s[1], 1);
    watch(&mut watcher, 5);
    // The watch reaches Redis at the end of the watching instance's loop pass; a join
    // announced before that has no watcher to tell (docs/v5.md, "Limits").
    assert!(wait_until(WAIT, || watch_keys(&redis) >= 1));
    let _five = v5_ws(&s[0], 5);
    assert_eq!(
        status_change(&mut watcher, WAIT),
        serde_json::json!({"user_id": 5, "online": true})
    );
    assert_eq!(last_seen(&s[1], &[5])["5"], 0);
    s[0].signal("KILL");
    // Its entry stops counting ONLINE_TTL + 20 s after its last renewal (every 5 s); the
    // next sweep of the other instance announces it.
    let t0 = Instant::now();
    assert_eq!(
        status_change(&mut watcher, Duration::from_secs(45)),
        serde_json::json!({"user_id": 5, "online": false})
    );
    eprintln!("aged out after {:?}", t0.elapsed());
    let r = last_seen(&s[1], &[5]);
    assert!(r["5"].as_u64().is_some_and(|a| a > 0), "{r}");
    // Its keys are gone with it.
    assert!(wait_until(WAIT, || redis
        .cli(&["ZCARD", "v5:instances"])
        .trim()
        == "1"));
}

#[test]
fn v5_presence_comes_back_after_redis_loses_it() {
    let redis = Redis::start();
    let s: Vec<Server> = (0..2)
        .map(|_| Server::builder().redis(&redis).start())
        .collect();
    wait_subscribed(&redis, 2);
    let _seven = v5_ws(&s[0], 7);
    assert!(wait_until(WAIT, || last_seen(&s[1], &[7])["7"] == 0));
    redis.cli(&["FLUSHALL"]);
    // The next renewal of the first instance finds its state gone and sends it whole.
    assert!(wait_until(Duration::from_secs(15), || last_seen(
        &s[1],
        &[7]
    )["7"]
        == 0));
}
