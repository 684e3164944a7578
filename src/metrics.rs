//! Prometheus text exposition for `/metrics` on the pub listener: counters kept by the server
//! plus gauges read at scrape time. Hand-written: the format is small and stable.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::store::StoreStats;

/// Upper bounds (seconds) of the store latency histogram buckets.
const STORE_BUCKETS: [f64; 8] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.1,
];

#[derive(Default)]
pub struct Metrics {
    pub messages_published: u64,
    pub messages_delivered: u64,
    /// Deliveries lost to a connection that failed or was cut as a slow consumer.
    pub messages_dropped: u64,
    pub publish_errors: BTreeMap<String, u64>,
    pub slow_consumer_disconnects: u64,
    pub signature_failures: u64,
    /// v5 backend calls (`/bitrix/api/` requests), docs/v5.md.
    pub v5_backend_requests: u64,
    /// v5 client requests over WebSocket.
    pub v5_client_requests: u64,
    /// v5 calls answered with an error (JSON-RPC error or 4026).
    pub v5_errors: u64,
    pub connections_accepted: u64,
    store_buckets: [u64; STORE_BUCKETS.len()],
    store_count: u64,
    store_sum: f64,
}

/// Gauges sampled when scraped.
pub struct Gauges {
    pub websockets: usize,
    pub long_polls: usize,
    pub channels: usize,
    /// What the store holds, when this instance can count it (the embedded store; a shared
    /// Redis is counted by Redis itself, not by each instance).
    pub stored: Option<StoreStats>,
    /// Store jobs refused because its queue was full.
    pub store_rejected_jobs: u64,
    /// Redis only: publishes refused past their deadline, and `WAIT`s that timed out
    /// (docs/redis.md).
    pub store_late_publishes: u64,
    pub store_wait_timeouts: u64,
    pub store_kind: &'static str,
    pub store_up: bool,
}

impl Metrics {
    pub fn count_publish_error(&mut self, code: &str) {
        *self.publish_errors.entry(code.to_owned()).or_default() += 1;
    }

    pub fn observe_store(&mut self, took: Duration) {
        let s = took.as_secs_f64();
        for (i, bound) in STORE_BUCKETS.iter().enumerate() {
            if s <= *bound {
                self.store_buckets[i] += 1;
            }
        }
        self.store_count += 1;
        self.store_sum += s;
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut o = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(o, "{name}{labels} {value}");
            }
        };
        let one = |v: String| vec![(String::new(), v)];
        metric(
            "push_connections",
            "gauge",
            "Open subscriber connections by transport and protocol.",
            &[
                (
                    "{transport=\"websocket\",protocol=\"v3\"}".into(),
                    g.websockets.to_string(),
                ),
                (
                    "{transport=\"longpoll\",protocol=\"v3\"}".into(),
                    g.long_polls.to_string(),
                ),
            ],
        );
        metric(
            "push_long_polls_held",
            "gauge",
            "Long polls currently held.",
            &one(g.long_polls.to_string()),
        );
        metric(
            "push_channels",
            "gauge",
            "Private and shared channels with at least one local connection.",
            &one(g.channels.to_string()),
        );
        metric(
            "push_connections_accepted_total",
            "counter",
            "Connections accepted on all listeners.",
            &one(self.connections_accepted.to_string()),
        );
        metric(
            "push_messages_published_total",
            "counter",
            "Messages published.",
            &one(self.messages_published.to_string()),
        );
        metric(
            "push_messages_delivered_total",
            "counter",
            "Message deliveries to subscriber connections.",
            &one(self.messages_delivered.to_string()),
        );
        metric(
            "push_messages_dropped_total",
            "counter",
            "Deliveries lost to failed or slow connections (clients resume by mid).",
            &one(self.messages_dropped.to_string()),
        );
        let errors: Vec<(String, String)> = self
            .publish_errors
            .iter()
            .map(|(code, n)| (format!("{{code=\"{code}\"}}"), n.to_string()))
            .collect();
        metric(
            "push_publish_errors_total",
            "counter",
            "Rejected publish requests by error code.",
            &errors,
        );
        metric(
            "push_slow_consumer_disconnects_total",
            "counter",
            "Connections closed because they could not keep up.",
            &one(self.slow_consumer_disconnects.to_string()),
        );
        metric(
            "push_signature_failures_total",
            "counter",
            "Subscriptions refused for a bad channel signature (often a SECURITY_KEY mismatch).",
            &one(self.signature_failures.to_string()),
        );
        let v5 = vec![
            (
                "{source=\"backend\"}".to_string(),
                self.v5_backend_requests.to_string(),
            ),
            (
                "{source=\"client\"}".to_string(),
                self.v5_client_requests.to_string(),
            ),
        ];
        metric(
            "push_v5_requests_total",
            "counter",
            "Protocol v5 requests: backend calls to the JSON-RPC endpoint and client requests (docs/v5.md).",
            &v5,
        );
        metric(
            "push_v5_errors_total",
            "counter",
            "Protocol v5 calls answered with an error.",
            &one(self.v5_errors.to_string()),
        );
        if let Some(st) = &g.stored {
            metric(
                "push_store_messages",
                "gauge",
                "Messages kept for resume.",
                &one(st.messages.to_string()),
            );
            metric(
                "push_store_bytes",
                "gauge",
                "Bytes the stored messages can hold: bodies, every wire encoding, bookkeeping (docs/memory.md).",
                &one(st.bytes.to_string()),
            );
            metric(
                "push_store_evictions_total",
                "counter",
                "Messages dropped from history before expiry by the caps.",
                &one(st.evicted.to_string()),
            );
        }
        metric(
            "push_store_rejected_jobs_total",
            "counter",
            "Store jobs refused because the queue to the store was full.",
            &one(g.store_rejected_jobs.to_string()),
        );
        if g.store_kind == "redis" {
            metric(
                "push_redis_late_publishes_total",
                "counter",
                "Publishes Redis reached after their deadline; answered 503, nothing published.",
                &one(g.store_late_publishes.to_string()),
            );
            metric(
                "push_redis_wait_timeouts_total",
                "counter",
                "Publishes answered 200 whose WAIT for REDIS_WAIT_REPLICAS replicas timed out.",
                &one(g.store_wait_timeouts.to_string()),
            );
        }
        metric(
            "push_store_up",
            "gauge",
            "1 when the store is reachable.",
            &[(
                format!("{{store=\"{}\"}}", g.store_kind),
                u8::from(g.store_up).to_string(),
            )],
        );
        let mut hist: Vec<(String, String)> = STORE_BUCKETS
            .iter()
            .zip(self.store_buckets)
            .map(|(b, n)| (format!("_bucket{{le=\"{b}\"}}"), n.to_string()))
            .collect();
        hist.push(("_bucket{le=\"+Inf\"}".into(), self.store_count.to_string()));
        hist.push(("_sum".into(), format!("{:.9}", self.store_sum)));
        hist.push(("_count".into(), self.store_count.to_string()));
        metric(
            "push_store_roundtrip_seconds",
            "histogram",
            "Time of store operations (save, backlog).",
            &hist,
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let mut m = Metrics {
            messages_published: 3,
            ..Metrics::default()
        };
        m.count_publish_error("4017");
        m.observe_store(Duration::from_micros(20));
        let text = m.render(&Gauges {
            websockets: 2,
            long_polls: 1,
            channels: 3,
            stored: Some(StoreStats {
                messages: 3,
                bytes: 10,
                ..StoreStats::default()
            }),
            store_rejected_jobs: 0,
            store_late_publishes: 0,
            store_wait_timeouts: 0,
            store_kind: "memory",
            store_up: true,
        });
        assert!(text.contains(
            "# TYPE push_messages_published_total counter\npush_messages_published_total 3\n"
        ));
        assert!(text.contains("push_publish_errors_total{code=\"4017\"} 1\n"));
        assert!(text.contains("push_connections{transport=\"websocket\",protocol=\"v3\"} 2\n"));
        assert!(text.contains("push_store_roundtrip_seconds_bucket{le=\"0.00005\"} 1\n"));
        assert!(text.contains("push_store_roundtrip_seconds_bucket{le=\"0.00001\"} 0\n"));
        assert!(text.contains("push_store_roundtrip_seconds_count 1\n"));
    }
}
