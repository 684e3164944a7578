//! `push-bench`: a load tool for push-server (and any server speaking the same v3 protocol).
//!
//! It opens thousands of subscriber connections from one or two mio threads, publishes over one
//! (or `--pub-conns N`) pipelined keep-alive connections to the trusted listener, and reads the server's RSS
//! (`/proc/<pid>/status`) and CPU time (`/proc/<pid>/task/*/schedstat`, nanoseconds; `stat`
//! ticks where schedstat is missing). Scenarios:
//!
//! * `idle`: N WebSocket (or long-poll) subscribers on distinct channels; server RSS per
//!   connection (and kernel TCP socket memory for TCP).
//! * `fanout`: N WebSocket subscribers on one channel, M messages `{"seq":k}`; deliveries/s,
//!   server CPU per delivery; checks that every subscriber got every message once, in order
//!   (with `--pub-conns` > 1: in the same order everywhere and with increasing mids, since
//!   concurrent publishes of one channel may be answered out of publish order).
//! * `latency`: N subscribers on their own channels, publishes `{"t":<unix ns>}` at a fixed
//!   rate to random ones; publish→deliver percentiles and losses.
//! * `churn`: N subscribers, one replaced at a fixed rate while publishing slowly; errors and
//!   server RSS drift.
//!
//! `--target nchan` (or `nchan-redis`) runs the same scenarios against the nchan peer of
//! `bench/nchan.conf.in`: subscribers `GET /sub/<id>` (ws or long poll), publishes
//! `POST /pub/<id>` (`/rsub/`, `/rpub/` for the Redis store), plain channel ids and raw message
//! bodies; its RSS and CPU are those of the nginx worker process (a master pid or `nginx.pid`
//! given to `--pid`/`--pidfile` is resolved to its worker; the JSON says which under
//! `server_process`).
//!
//! `fanout` and `latency` also report `others_cpu_pct`: the share of the whole machine that
//! processes other than the server and push-bench used during the run (on a shared machine the
//! main source of latency tails).
//!
//! Every run is bounded (`--timeout`, default 120 s; exit 3 when hit), prints a progress line
//! to stderr every 2 s and ends with one JSON line on stdout. Exit 1 on failed checks, 2 on bad
//! arguments. Addresses are Unix socket paths (anything containing '/') or loopback `host:port`.
//! Each connection is one file descriptor: with a 20 000 fd limit, N ≤ 9 000 per process fits
//! with a wide margin (the limit is checked up front).

mod floor;
mod net;
mod procfs;
mod proto;
mod publisher;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use push_server::signature::{Algo, Signer};
use serde_json::{Map, Value, json};

use net::Addr;
use proto::Target;
use worker::{Mode, Plan, Report, Shared};

const USAGE: &str = "usage: push-bench <idle|fanout|latency|churn> [options]
       push-bench floor --sub PATH --pub PATH   (the minimal fan-out server, floor.rs)
  --target T              push (default), nchan or nchan-redis (the peer of
                          bench/nchan.conf.in: /sub/ + /pub/, or /rsub/ + /rpub/)
  --sub PATH|host:port    subscriber listener (default /tmp/push-server/sub.sock)
  --pub PATH|host:port    trusted publish listener (default /tmp/push-server/pub.sock)
  --key KEY               signature key (default $SECURITY_KEY, else \"secret\")
  --algo sha1|sha256      signature algorithm (default sha1)
  --pid N | --pidfile F   server process for RSS/CPU (required by idle and churn); for
                          nchan an nginx master (nginx.pid) is resolved to its worker
  --conns N               subscribers (default 1000)
  --messages M            fanout: messages (default 100)
  --rate R                latency: publishes/s (default 1000); churn: reconnects/s (default 100)
  --pub-rate R            churn: publishes/s (default 20)
  --duration S            latency, churn: seconds (default 10)
  --transport ws|lp       idle only may use lp (default ws)
  --size BYTES            pad message bodies to this size (default: minimal)
  --cookie BYTES          add a Cookie header line of BYTES bytes to every subscribe
                          request, as browsers send a portal's cookies (default: none)
  --threads 1|2           subscriber threads (default 1)
  --inflight N            handshakes in flight at most (default 256)
  --gap-ms N              fanout: publish one message every N ms (paced, as portals do)
                          instead of a pipelined burst
  --pub-conns N           fanout, latency, churn: publisher keep-alive connections
                          (default 1, at most 256); each request goes to the one with the
                          fewest unanswered requests, each stays pipelined and in order.
                          N > 1 models many concurrent PHP publishers. fanout with N > 1:
                          messages of the one channel may be answered and delivered out of
                          publish order, so the check is then: mids increasing, every
                          subscriber got every message once and all saw the same order
                          (`reordered` counts out-of-publish-order arrivals, not a failure)
  --timeout S             hard limit for the whole run (default 120)";

/// Publisher connections at most (each is a reader thread).
const MAX_PUB_CONNS: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Idle,
    Fanout,
    Latency,
    Churn,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Fanout => "fanout",
            Scenario::Latency => "latency",
            Scenario::Churn => "churn",
        }
    }
}

struct Args {
    scenario: Scenario,
    target: Target,
    sub: Addr,
    publ: Addr,
    key: String,
    algo: Algo,
    pid: Option<u32>,
    conns: usize,
    messages: u64,
    rate: f64,
    pub_rate: f64,
    duration: f64,
    lp: bool,
    size: usize,
    cookie: usize,
    threads: usize,
    inflight: usize,
    timeout: f64,
    pub_conns: usize,
    /// fanout: milliseconds between publishes (paced); `None` publishes a burst.
    gap_ms: Option<u64>,
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut it = argv.iter();
    let scenario = match it.next().map(String::as_str) {
        Some("idle") => Scenario::Idle,
        Some("fanout") => Scenario::Fanout,
        Some("latency") => Scenario::Latency,
        Some("churn") => Scenario::Churn,
        Some("-h" | "--help") | None => return Err(String::new()),
        Some(other) => return Err(format!("unknown scenario {other:?}")),
    };
    let mut a = Args {
        scenario,
        target: Target::Push,
        sub: Addr::Unix("/tmp/push-server/sub.sock".into()),
        publ: Addr::Unix("/tmp/push-server/pub.sock".into()),
        key: std::env::var("SECURITY_KEY")
            .ok()
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "secret".into()),
        algo: Algo::Sha1,
        pid: None,
        conns: 1000,
        messages: 100,
        rate: if scenario == Scenario::Churn {
            100.0
        } else {
            1000.0
        },
        pub_rate: 20.0,
        duration: 10.0,
        lp: false,
        size: 0,
        cookie: 0,
        threads: 1,
        inflight: 256,
        timeout: 120.0,
        pub_conns: 1,
        gap_ms: None,
    };
    let mut pidfile = None;
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let v = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .as_str();
        match flag.as_str() {
            "--target" => {
                a.target = Target::parse(v)
                    .ok_or_else(|| format!("bad --target {v:?} (push, nchan or nchan-redis)"))?
            }
            "--sub" => a.sub = Addr::parse(v)?,
            "--pub" => a.publ = Addr::parse(v)?,
            "--key" => a.key = v.to_string(),
            "--algo" => a.algo = Algo::parse(v).ok_or_else(|| format!("bad --algo {v:?}"))?,
            "--pid" => a.pid = Some(num(flag, v)?),
            "--pidfile" => pidfile = Some(v.to_string()),
            "--conns" => a.conns = num(flag, v)?,
            "--messages" => a.messages = num(flag, v)?,
            "--rate" => a.rate = num(flag, v)?,
            "--pub-rate" => a.pub_rate = num(flag, v)?,
            "--duration" => a.duration = num(flag, v)?,
            "--transport" => {
                a.lp = match v {
                    "ws" => false,
                    "lp" => true,
                    _ => return Err(format!("bad --transport {v:?} (ws or lp)")),
                }
            }
            "--size" => a.size = num(flag, v)?,
            "--cookie" => a.cookie = num(flag, v)?,
            "--threads" => a.threads = num(flag, v)?,
            "--inflight" => a.inflight = num(flag, v)?,
            "--timeout" => a.timeout = num(flag, v)?,
            "--pub-conns" => a.pub_conns = num(flag, v)?,
            "--gap-ms" => a.gap_ms = Some(num(flag, v)?),
            _ => return Err(format!("unknown option {flag:?}")),
        }
    }
    if let Some(f) = pidfile {
        a.pid = Some(procfs::read_pidfile(&f)?);
    }
    if a.target.is_nchan()
        && let Some(pid) = a.pid
    {
        a.pid = Some(procfs::nginx_worker(pid)?);
    }
    if a.key.is_empty() {
        return Err("--key must not be empty".into());
    }
    if !(1..=2).contains(&a.threads) {
        return Err("--threads must be 1 or 2".into());
    }
    if a.conns == 0 || a.inflight == 0 {
        return Err("--conns and --inflight must be at least 1".into());
    }
    if !(1..=MAX_PUB_CONNS).contains(&a.pub_conns) {
        return Err(format!("--pub-conns must be 1 to {MAX_PUB_CONNS}"));
    }
    if a.pub_conns > 1 && scenario == Scenario::Idle {
        return Err(
            "--pub-conns is for the scenarios that publish (fanout, latency, churn)".into(),
        );
    }
    if a.lp && scenario != Scenario::Idle {
        return Err("--transport lp is supported by the idle scenario only".into());
    }
    if !(a.rate > 0.0 && a.pub_rate > 0.0 && a.duration > 0.0 && a.timeout > 0.0) {
        return Err("--rate, --pub-rate, --duration and --timeout must be positive".into());
    }
    if a.gap_ms.is_some() && scenario != Scenario::Fanout {
        return Err("--gap-ms is for the fanout scenario".into());
    }
    if a.gap_ms == Some(0) {
        return Err("--gap-ms must be at least 1 (leave it out for a burst)".into());
    }
    if scenario == Scenario::Fanout && a.messages == 0 {
        return Err("--messages must be at least 1".into());
    }
    if matches!(scenario, Scenario::Idle | Scenario::Churn) && a.pid.is_none() {
        return Err(format!("{} needs --pid or --pidfile", scenario.name()));
    }
    if let Some(limit) = net::fd_limit() {
        let need = (a.conns + a.pub_conns) as u64 + 64;
        if need > limit {
            return Err(format!(
                "--conns {} needs about {need} file descriptors but this process may open {limit} \
                 (ulimit -n); use fewer connections (N <= 9000 fits a 20000 limit)",
                a.conns
            ));
        }
    }
    Ok(a)
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag}: bad number {v:?}"))
}

/// Why a run stopped early.
enum Failure {
    /// Exit 1: a check failed or something broke.
    Failed(String),
    /// Exit 3: `--timeout` hit.
    Timeout(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Failure {
        Failure::Failed(s)
    }
}

/// State shared by the scenario drivers.
struct Run {
    a: Args,
    items: Arc<Vec<String>>,
    ids: Vec<String>,
    shared: Arc<Shared>,
    started: Instant,
    deadline: Instant,
    last_progress: Instant,
    workers: Vec<std::thread::JoinHandle<Result<Report, String>>>,
}

impl Run {
    fn new(a: Args) -> Run {
        let signer = Signer::new(a.algo, a.key.as_bytes());
        let salt = (worker::unix_ns() as u32) ^ std::process::id().rotate_left(16);
        let n = match a.scenario {
            Scenario::Fanout => 1,
            _ => a.conns,
        };
        let ids: Vec<String> = (0..n).map(|k| format!("{salt:08x}{k:024x}")).collect();
        let items = ids
            .iter()
            .map(|id| {
                if a.target.is_nchan() {
                    id.clone()
                } else {
                    format!("{id}.{}", signer.sign_hex(id.as_bytes()))
                }
            })
            .collect();
        let now = Instant::now();
        Run {
            deadline: now + Duration::from_secs_f64(a.timeout),
            a,
            items: Arc::new(items),
            ids,
            shared: Arc::new(Shared::default()),
            started: now,
            last_progress: now,
            workers: Vec::new(),
        }
    }

    /// Starts the subscriber threads; `own[i]` is the item of subscriber i.
    fn spawn(&mut self, mode: Mode, own: Vec<usize>) -> Result<(), String> {
        let t = self.a.threads;
        let extra_headers: Arc<str> = proto::cookie_header(self.a.cookie).into();
        for w in 0..t {
            let plan = Plan {
                mode,
                addr: self.a.sub.clone(),
                target: self.a.target,
                websocket: !self.a.lp,
                extra_headers: extra_headers.clone(),
                items: self.items.clone(),
                own: own.iter().skip(w).step_by(t).copied().collect(),
                inflight: self.a.inflight.div_ceil(t),
                churn_rate: self.a.rate / t as f64,
            };
            let shared = self.shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("subscribers-{w}"))
                .spawn(move || worker::run(plan, shared))
                .map_err(|e| format!("spawn: {e}"))?;
            self.workers.push(h);
        }
        Ok(())
    }

    /// Stops the subscriber threads and merges their reports.
    fn join(&mut self) -> Result<Report, String> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut total = Report::default();
        for h in self.workers.drain(..) {
            let r = h
                .join()
                .map_err(|_| "subscriber thread panicked".to_string())??;
            total.delivered += r.delivered;
            total.last_delivery = total.last_delivery.max(r.last_delivery);
            total.latencies_ns.extend(r.latencies_ns);
            total.lost += r.lost;
            total.duplicates += r.duplicates;
            total.reordered += r.reordered;
            total.mid_regressions += r.mid_regressions;
            total.order_hashes.extend(r.order_hashes);
            total.malformed += r.malformed;
            total.churn_closed += r.churn_closed;
            total.lp_answers += r.lp_answers;
            for p in r.problems {
                if total.problems.len() < 20 {
                    total.problems.push(p);
                }
            }
        }
        Ok(total)
    }

    /// Publishes bodies carrying their send time (ns) to random ids of the run on `sched`,
    /// showing `what` as progress until the schedule ends. Returns the publisher's outcome and
    /// the wait's (a fatal worker error or the deadline stops the publisher too).
    fn publish_timestamped(
        &mut self,
        sched: publisher::Schedule,
        what: &str,
    ) -> (Result<publisher::Outcome, String>, Result<(), Failure>) {
        let ids = self.ids.clone();
        let publ = self.a.publ.clone();
        let (target, size, pub_conns) = (self.a.target, self.a.size, self.a.pub_conns);
        let stop = AtomicBool::new(false);
        let mut rng = Rng::new();
        std::thread::scope(|s| {
            let p = s.spawn(|| {
                publisher::run(
                    &publ,
                    sched,
                    &stop,
                    target.requests_per_conn(),
                    pub_conns,
                    |_, out| {
                        let ch = &ids[rng.below(ids.len())];
                        let body = proto::body("{\"t\":", worker::unix_ns(), size);
                        proto::publish_request(target, ch, &body, out);
                    },
                )
            });
            let waited = self.wait(what, |_| p.is_finished());
            stop.store(true, Ordering::Relaxed);
            let out = p
                .join()
                .unwrap_or_else(|_| Err("publisher thread panicked".into()));
            (out, waited)
        })
    }

    /// Sleeps in small steps until `done()`; fails on a fatal worker error or the deadline.
    fn wait(&mut self, what: &str, mut done: impl FnMut(&Run) -> bool) -> Result<(), Failure> {
        loop {
            if done(self) {
                return Ok(());
            }
            if let Some(f) = self.shared.fatal() {
                return Err(Failure::Failed(f));
            }
            if Instant::now() >= self.deadline {
                return Err(Failure::Timeout(format!(
                    "timeout after {:.0} s while {what}",
                    self.a.timeout
                )));
            }
            self.progress(what);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn sleep(&mut self, what: &str, d: Duration) -> Result<(), Failure> {
        let until = Instant::now() + d;
        self.wait(what, |_| Instant::now() >= until)
    }

    fn progress(&mut self, what: &str) {
        if self.last_progress.elapsed() >= Duration::from_secs(2) {
            self.last_progress = Instant::now();
            let s = &self.shared;
            eprintln!(
                "[push-bench {} {:.1}s] {what}: opened={} connect_errors={} lost_conns={} delivered={}",
                self.a.scenario.name(),
                self.started.elapsed().as_secs_f64(),
                s.opened.load(Ordering::Relaxed),
                s.connect_errors.load(Ordering::Relaxed),
                s.lost_conns.load(Ordering::Relaxed),
                s.delivered.load(Ordering::Relaxed),
            );
        }
    }

    /// Waits for `n` subscribers to be open; fails on connect errors.
    fn wait_open(&mut self, n: u64) -> Result<f64, Failure> {
        let t0 = Instant::now();
        self.wait("opening subscribers", |r| {
            r.shared.opened.load(Ordering::Relaxed) >= n
                || r.shared.connect_errors.load(Ordering::Relaxed) > 0
        })?;
        let errors = self.shared.connect_errors.load(Ordering::Relaxed);
        if errors > 0 {
            // Let the threads record their problems, then report them.
            std::thread::sleep(Duration::from_millis(200));
            let rep = self.join()?;
            return Err(Failure::Failed(format!(
                "{errors} subscribers failed to connect; first: {}",
                rep.problems.first().map_or("-", String::as_str)
            )));
        }
        Ok(t0.elapsed().as_secs_f64())
    }

    fn rss(&self) -> Result<Option<u64>, String> {
        self.a.pid.map(procfs::rss_kb).transpose()
    }

    /// Server CPU time in nanoseconds.
    fn cpu(&self) -> Result<Option<u64>, String> {
        self.a.pid.map(procfs::cpu_ns).transpose()
    }

    fn base(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("scenario".into(), json!(self.a.scenario.name()));
        m.insert("target".into(), json!(self.a.target.name()));
        m.insert(
            "server_process".into(),
            json!(self.a.pid.map(|p| if self.a.target.is_nchan() {
                format!("nginx worker process {p} (RSS and CPU of the worker)")
            } else {
                format!("push-server {p}")
            })),
        );
        m.insert(
            "transport".into(),
            json!(if self.a.lp { "lp" } else { "ws" }),
        );
        m.insert("sub".into(), json!(self.a.sub.to_string()));
        m.insert("conns".into(), json!(self.a.conns));
        m.insert("threads".into(), json!(self.a.threads));
        if self.a.scenario != Scenario::Idle {
            m.insert("pub_conns".into(), json!(self.a.pub_conns));
        }
        m.insert("pid".into(), json!(self.a.pid));
        m
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("floor") {
        // `floor --sub PATH --pub PATH`: the minimal fan-out server (floor.rs).
        let path = |flag: &str| {
            argv.windows(2)
                .find(|w| w[0] == flag)
                .map(|w| std::path::PathBuf::from(&w[1]))
        };
        let (Some(sub), Some(publ)) = (path("--sub"), path("--pub")) else {
            eprintln!("push-bench: floor needs --sub PATH and --pub PATH");
            std::process::exit(2);
        };
        if let Err(e) = floor::run(&sub, &publ) {
            eprintln!("push-bench floor: {e}");
            std::process::exit(1);
        }
        return;
    }
    let a = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("push-bench: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let scenario = a.scenario;
    let mut run = Run::new(a);
    let result = match scenario {
        Scenario::Idle => idle(&mut run),
        Scenario::Fanout => fanout(&mut run),
        Scenario::Latency => latency(&mut run),
        Scenario::Churn => churn(&mut run),
    };
    let code = match result {
        Ok((mut m, ok)) => {
            m.insert("ok".into(), json!(ok));
            m.insert(
                "elapsed_s".into(),
                json!(round3(run.started.elapsed().as_secs_f64())),
            );
            println!("{}", Value::Object(m));
            if ok { 0 } else { 1 }
        }
        Err(f) => {
            let (msg, code) = match f {
                Failure::Failed(m) => (m, 1),
                Failure::Timeout(m) => (m, 3),
            };
            // Stop the threads; their problems add detail.
            let problems = run.join().map(|r| r.problems).unwrap_or_default();
            eprintln!("push-bench: {msg}");
            for p in &problems {
                eprintln!("  {p}");
            }
            let mut m = run.base();
            m.insert("ok".into(), json!(false));
            m.insert("error".into(), json!(msg));
            m.insert("problems".into(), json!(problems));
            println!("{}", Value::Object(m));
            code
        }
    };
    std::process::exit(code);
}

type Outcome = Result<(Map<String, Value>, bool), Failure>;

fn idle(run: &mut Run) -> Outcome {
    let n = run.a.conns;
    let tcp = run.a.sub.is_tcp();
    let target = run.a.target;
    let stat0 = publisher::server_stat(&run.a.publ, target);
    if run.a.lp {
        stat0.as_ref().map_err(|e| {
            format!(
                "long-poll idle needs the server's counters on --pub to confirm subscriptions: {e}"
            )
        })?;
    }
    // The server's count of held subscribers: push-server counts WebSockets and polls apart,
    // nchan counts both as subscribers.
    let count_key = match (target.is_nchan(), run.a.lp) {
        (true, _) => "subscribers",
        (false, true) => "pollings",
        (false, false) => "websockets",
    };
    let rss_before = run.rss()?;
    let anon_before = run.a.pid.map(procfs::rss_anon_kb).transpose()?;
    let tcp_before = if tcp { procfs::tcp_mem_pages() } else { None };
    run.spawn(Mode::Idle, (0..n).collect())?;
    let open_s = run.wait_open(n as u64)?;
    let field = |v: &Result<Value, String>, k: &str| -> Option<u64> {
        v.as_ref()
            .ok()
            .and_then(|v| v.get(k))
            .and_then(Value::as_u64)
    };
    if stat0.is_ok() {
        // Wait until the server itself counts every subscriber (a long poll is "open" on our
        // side once its request is out; a WebSocket once the 101 is in).
        let want = field(&stat0, count_key).unwrap_or(0) + n as u64;
        let publ = run.a.publ.clone();
        let mut last_check = Instant::now() - Duration::from_secs(1);
        let mut err = None;
        run.wait("waiting for the server to count every subscriber", |_| {
            if last_check.elapsed() < Duration::from_millis(100) {
                return false;
            }
            last_check = Instant::now();
            match publisher::server_stat(&publ, target) {
                Ok(v) => v.get(count_key).and_then(Value::as_u64).unwrap_or(0) >= want,
                Err(e) => {
                    err = Some(e);
                    true
                }
            }
        })?;
        if let Some(e) = err {
            return Err(Failure::Failed(e));
        }
    }
    run.sleep("letting RSS settle", Duration::from_secs(1))?;
    let rss_after = run.rss()?;
    let anon_after = run.a.pid.map(procfs::rss_anon_kb).transpose()?;
    let tcp_after = if tcp { procfs::tcp_mem_pages() } else { None };
    let stat1 = publisher::server_stat(&run.a.publ, target);
    let lost = run.shared.lost_conns.load(Ordering::Relaxed);
    let rep = run.join()?;
    let page_kb = procfs::getconf("PAGESIZE", 4096) / 1024;
    let mut m = run.base();
    let delta = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some(a as i64 - b as i64),
        _ => None,
    };
    m.insert("rss_before_kb".into(), json!(rss_before));
    m.insert("rss_after_kb".into(), json!(rss_after));
    m.insert("rss_delta_kb".into(), json!(delta));
    m.insert(
        "bytes_per_conn".into(),
        json!(delta.map(|d| (d * 1024) as f64 / n as f64).map(round1)),
    );
    let kernel = match (tcp_before, tcp_after) {
        (Some(b), Some(a)) => Some((a as i64 - b as i64) * page_kb as i64),
        _ => None,
    };
    m.insert("kernel_tcp_mem_delta_kb".into(), json!(kernel));
    m.insert(
        "kernel_tcp_bytes_per_conn".into(),
        json!(kernel.map(|k| round1((k * 1024) as f64 / n as f64))),
    );
    m.insert(
        "kernel_mem_note".into(),
        json!(if tcp {
            "sockstat TCP mem delta, both ends of every connection"
        } else {
            "not measurable for Unix sockets"
        }),
    );
    m.insert("open_s".into(), json!(round3(open_s)));
    m.insert(
        "rss_anon_bytes_per_conn".into(),
        json!(match (anon_before, anon_after) {
            (Some(b), Some(a)) => Some(round1((a as f64 - b as f64) * 1024.0 / n as f64)),
            _ => None,
        }),
    );
    if target.is_nchan() {
        m.insert(
            "server_subscribers".into(),
            json!(field(&stat1, "subscribers")),
        );
    } else {
        m.insert(
            "server_websockets".into(),
            json!(field(&stat1, "websockets")),
        );
        m.insert("server_pollings".into(), json!(field(&stat1, "pollings")));
    }
    m.insert("lost_conns".into(), json!(lost));
    m.insert("lp_answers".into(), json!(rep.lp_answers));
    m.insert("problems".into(), json!(rep.problems));
    Ok((m, lost == 0 && rep.problems.is_empty()))
}

fn fanout(run: &mut Run) -> Outcome {
    let n = run.a.conns as u64;
    let msgs = run.a.messages;
    // One publisher connection answers in publish order, so deliveries are ascending; with
    // several, only the server's order (the same on every subscriber) can be checked.
    let ordered = run.a.pub_conns == 1;
    run.spawn(
        Mode::Fanout {
            messages: msgs,
            ordered,
        },
        vec![0; n as usize],
    )?;
    let open_s = run.wait_open(n)?;
    let want = n * msgs;
    let cpu0 = run.cpu()?;
    let switches0 = run.a.pid.and_then(|p| procfs::voluntary_switches(p).ok());
    let host0 = procfs::HostSample::take(run.a.pid);
    let rss0 = run.rss()?;
    let id = run.ids[0].clone();
    let size = run.a.size;
    let publ = run.a.publ.clone();
    let pub_conns = run.a.pub_conns;
    let target = run.a.target;
    let gap_ms = run.a.gap_ms;
    let stop = AtomicBool::new(false);
    let mut cpu1 = None;
    let mut switches1 = None;
    let (pub_out, waited) = std::thread::scope(|s| {
        let p = s.spawn(|| {
            // Paced (`--gap-ms`): one publish at a time, as PHP sends them; else a burst.
            let sched = publisher::Schedule {
                rate: gap_ms.map(|g| 1000.0 / g as f64),
                count: Some(msgs),
                duration: None,
            };
            publisher::run(
                &publ,
                sched,
                &stop,
                target.requests_per_conn(),
                pub_conns,
                |k, out| {
                    proto::publish_request(target, &id, &proto::body("{\"seq\":", k, size), out);
                },
            )
        });
        let mut last = (0u64, Instant::now());
        let waited = run.wait("fanning out", |r| {
            let d = r.shared.delivered.load(Ordering::Relaxed);
            if d >= want {
                cpu1 = r.cpu().ok().flatten();
                switches1 = r.a.pid.and_then(|p| procfs::voluntary_switches(p).ok());
                return true;
            }
            if d != last.0 {
                last = (d, Instant::now());
            }
            // Publishing done and nothing arrives for 3 s: count the rest as lost.
            p.is_finished() && last.1.elapsed() > Duration::from_secs(3)
        });
        stop.store(true, Ordering::Relaxed);
        let out = p
            .join()
            .unwrap_or_else(|_| Err("publisher thread panicked".into()));
        (out, waited)
    });
    if cpu1.is_none() {
        cpu1 = run.cpu()?;
    }
    let host1 = procfs::HostSample::take(run.a.pid);
    waited?;
    let po = pub_out?;
    let rss1 = run.rss()?;
    let lost_conns = run.shared.lost_conns.load(Ordering::Relaxed);
    let rep = run.join()?;
    let elapsed = match (po.first_send, rep.last_delivery) {
        (Some(f), Some(l)) if l > f => (l - f).as_secs_f64(),
        _ => 0.0,
    };
    let cpu_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some((b.saturating_sub(a)) as f64 / 1e3),
        _ => None,
    };
    let mut m = run.base();
    m.insert("messages".into(), json!(msgs));
    m.insert("gap_ms".into(), json!(gap_ms));
    m.insert("size".into(), json!(size));
    m.insert("published_ok".into(), json!(po.ok));
    m.insert("publish_errors".into(), json!(po.failed));
    m.insert("publish_first_error".into(), json!(po.first_error));
    m.insert("expected_deliveries".into(), json!(want));
    m.insert("delivered".into(), json!(rep.delivered));
    m.insert("elapsed_fanout_s".into(), json!(round6(elapsed)));
    m.insert(
        "deliveries_per_sec".into(),
        json!((elapsed > 0.0).then(|| round1(rep.delivered as f64 / elapsed))),
    );
    m.insert(
        "server_cpu_ms".into(),
        json!(cpu_us.map(|c| round3(c / 1e3))),
    );
    m.insert(
        "cpu_us_per_delivery".into(),
        json!(cpu_us.and_then(|c| (rep.delivered > 0).then(|| round6(c / rep.delivered as f64)))),
    );
    m.insert(
        "deliveries_per_cpu_sec".into(),
        json!(cpu_us.and_then(|c| (c > 0.0).then(|| round1(rep.delivered as f64 * 1e6 / c)))),
    );
    m.insert(
        "server_voluntary_switches".into(),
        json!(switches0.zip(switches1).map(|(a, b)| b.saturating_sub(a))),
    );
    m.insert("others_cpu_pct".into(), json!(others_pct(&host0, &host1)));
    m.insert("rss_before_kb".into(), json!(rss0));
    m.insert("rss_after_kb".into(), json!(rss1));
    m.insert("open_s".into(), json!(round3(open_s)));
    m.insert("lost".into(), json!(rep.lost));
    m.insert("duplicates".into(), json!(rep.duplicates));
    let order_mismatches = order_mismatches(&rep.order_hashes);
    m.insert("publish_order_checked".into(), json!(ordered));
    m.insert("reordered".into(), json!(rep.reordered));
    m.insert("order_mismatches".into(), json!(order_mismatches));
    m.insert("mid_regressions".into(), json!(rep.mid_regressions));
    m.insert("malformed".into(), json!(rep.malformed));
    m.insert("lost_conns".into(), json!(lost_conns));
    m.insert("problems".into(), json!(rep.problems));
    let ok = rep.lost == 0
        && rep.duplicates == 0
        && (rep.reordered == 0 || !ordered)
        && order_mismatches == 0
        && rep.mid_regressions == 0
        && rep.malformed == 0
        && lost_conns == 0
        && po.failed == 0
        && rep.delivered == want;
    if !ok {
        report_problems("fanout check failed", &rep);
    }
    Ok((m, ok))
}

fn latency(run: &mut Run) -> Outcome {
    let n = run.a.conns;
    run.spawn(Mode::Latency, (0..n).collect())?;
    let open_s = run.wait_open(n as u64)?;
    let sched = publisher::Schedule {
        rate: Some(run.a.rate),
        count: None,
        duration: Some(Duration::from_secs_f64(run.a.duration)),
    };
    let cpu0 = run.cpu()?;
    let host0 = procfs::HostSample::take(run.a.pid);
    let (pub_out, waited) = run.publish_timestamped(sched, "publishing");
    waited?;
    let po = pub_out?;
    // Drain: wait up to 2 s for the last deliveries.
    let drain_until = Instant::now() + Duration::from_secs(2);
    run.wait("draining", |r| {
        r.shared.delivered.load(Ordering::Relaxed) >= po.ok || Instant::now() >= drain_until
    })?;
    let cpu1 = run.cpu()?;
    let host1 = procfs::HostSample::take(run.a.pid);
    let lost_conns = run.shared.lost_conns.load(Ordering::Relaxed);
    let mut rep = run.join()?;
    rep.latencies_ns.sort_unstable();
    let pct = |q: f64| -> Option<f64> {
        let l = &rep.latencies_ns;
        if l.is_empty() {
            return None;
        }
        let i = ((q * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1;
        Some(round1(l[i] as f64 / 1e3))
    };
    let sent_span = match (po.first_send, po.last_send) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    let lost = po.ok.saturating_sub(rep.delivered);
    let mut m = run.base();
    m.insert("rate".into(), json!(run.a.rate));
    m.insert("duration_s".into(), json!(run.a.duration));
    m.insert("size".into(), json!(run.a.size));
    m.insert("published_ok".into(), json!(po.ok));
    m.insert("publish_errors".into(), json!(po.failed));
    m.insert("publish_first_error".into(), json!(po.first_error));
    m.insert(
        "achieved_rate".into(),
        json!((sent_span > 0.0).then(|| round1(po.sent.saturating_sub(1) as f64 / sent_span))),
    );
    // The send rate above counts requests written; these count what the server did with them
    // (answers read, messages delivered) from the first send on.
    let since_first = |t: Option<Instant>| match (po.first_send, t) {
        (Some(f), Some(t)) if t > f => (t - f).as_secs_f64(),
        _ => 0.0,
    };
    let answer_span = since_first(po.last_answer);
    m.insert(
        "answered_rate".into(),
        json!((answer_span > 0.0).then(|| round1((po.ok + po.failed) as f64 / answer_span))),
    );
    let delivery_span = since_first(rep.last_delivery);
    m.insert(
        "delivered_rate".into(),
        json!((delivery_span > 0.0).then(|| round1(rep.delivered as f64 / delivery_span))),
    );
    m.insert("publisher_max_lag_us".into(), json!(po.max_lag_us));
    m.insert("delivered".into(), json!(rep.delivered));
    m.insert("lost".into(), json!(lost));
    m.insert("p50_us".into(), json!(pct(0.5)));
    m.insert("p99_us".into(), json!(pct(0.99)));
    m.insert("p999_us".into(), json!(pct(0.999)));
    m.insert("max_us".into(), json!(pct(1.0)));
    m.insert(
        "server_cpu_ms".into(),
        json!(match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some(round3(b.saturating_sub(a) as f64 / 1e6)),
            _ => None,
        }),
    );
    m.insert("others_cpu_pct".into(), json!(others_pct(&host0, &host1)));
    m.insert("open_s".into(), json!(round3(open_s)));
    m.insert("mid_regressions".into(), json!(rep.mid_regressions));
    m.insert("malformed".into(), json!(rep.malformed));
    m.insert("lost_conns".into(), json!(lost_conns));
    m.insert("problems".into(), json!(rep.problems));
    let ok = lost == 0
        && po.failed == 0
        && rep.malformed == 0
        && rep.mid_regressions == 0
        && lost_conns == 0
        && rep.delivered == po.ok;
    if !ok {
        report_problems("latency check failed", &rep);
    }
    Ok((m, ok))
}

fn churn(run: &mut Run) -> Outcome {
    let n = run.a.conns;
    let rss_before = run.rss()?;
    run.spawn(Mode::Churn, (0..n).collect())?;
    let open_s = run.wait_open(n as u64)?;
    run.sleep("letting RSS settle", Duration::from_secs(1))?;
    let rss_start = run.rss()?;
    let sched = publisher::Schedule {
        rate: Some(run.a.pub_rate),
        count: None,
        duration: Some(Duration::from_secs_f64(run.a.duration)),
    };
    run.shared.churning.store(true, Ordering::Relaxed);
    let opened0 = run.shared.opened.load(Ordering::Relaxed);
    let churn_t0 = Instant::now();
    let (pub_out, waited) = run.publish_timestamped(sched, "churning");
    run.shared.churning.store(false, Ordering::Relaxed);
    let churn_s = churn_t0.elapsed().as_secs_f64();
    waited?;
    let po = pub_out?;
    run.sleep("letting RSS settle", Duration::from_secs(1))?;
    let rss_end = run.rss()?;
    let opened = run.shared.opened.load(Ordering::Relaxed) - opened0;
    let connect_errors = run.shared.connect_errors.load(Ordering::Relaxed);
    let lost_conns = run.shared.lost_conns.load(Ordering::Relaxed);
    let rep = run.join()?;
    run.sleep(
        "letting the server drop the closed connections",
        Duration::from_secs(1),
    )?;
    let rss_closed = run.rss()?;
    let drift = match (rss_start, rss_end) {
        (Some(s), Some(e)) if s > 0 => Some(round3((e as f64 - s as f64) * 100.0 / s as f64)),
        _ => None,
    };
    let mut m = run.base();
    m.insert("rate".into(), json!(run.a.rate));
    m.insert("pub_rate".into(), json!(run.a.pub_rate));
    m.insert("duration_s".into(), json!(run.a.duration));
    m.insert("churn_s".into(), json!(round3(churn_s)));
    m.insert("reconnects".into(), json!(opened));
    m.insert("closed_by_client".into(), json!(rep.churn_closed));
    m.insert("connect_errors".into(), json!(connect_errors));
    m.insert("lost_conns".into(), json!(lost_conns));
    m.insert("published_ok".into(), json!(po.ok));
    m.insert("publish_errors".into(), json!(po.failed));
    m.insert("publish_first_error".into(), json!(po.first_error));
    m.insert("delivered".into(), json!(rep.delivered));
    m.insert("rss_before_kb".into(), json!(rss_before));
    m.insert("rss_start_kb".into(), json!(rss_start));
    m.insert("rss_end_kb".into(), json!(rss_end));
    m.insert("rss_drift_pct".into(), json!(drift));
    m.insert("rss_after_close_kb".into(), json!(rss_closed));
    m.insert("open_s".into(), json!(round3(open_s)));
    m.insert("malformed".into(), json!(rep.malformed));
    m.insert("problems".into(), json!(rep.problems));
    let ok = connect_errors == 0 && po.failed == 0 && rep.malformed == 0 && lost_conns == 0;
    if !ok {
        report_problems("churn saw errors", &rep);
    }
    Ok((m, ok))
}

/// Subscribers (among those that got every message) whose delivery order differs from the
/// most common one.
fn order_mismatches(hashes: &[u64]) -> u64 {
    let mut counts: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for &h in hashes {
        *counts.entry(h).or_default() += 1;
    }
    let common = counts.values().copied().max().unwrap_or(0);
    hashes.len() as u64 - common
}

fn report_problems(what: &str, rep: &Report) {
    eprintln!("push-bench: {what}");
    for p in &rep.problems {
        eprintln!("  {p}");
    }
}

/// A small xorshift generator (no `rand` dependency).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        Rng(worker::unix_ns() | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// Percent of the machine other processes used between two samples (a noise indicator).
fn others_pct(a: &Option<procfs::HostSample>, b: &Option<procfs::HostSample>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => a.others_pct(b).map(round1),
        _ => None,
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}
