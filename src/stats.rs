//! Server statistics for `GET /server-stat/` (docs/protocol.md#server-stats): live connection counts and the
//! daily request/message counters, reset at midnight UTC.

use std::collections::BTreeMap;

use serde_json::json;

use crate::config::Limits;

#[derive(Default)]
pub struct Stats {
    pub websockets: usize,
    pub pollings: usize,
    day: u64,
    requests: BTreeMap<&'static str, u64>,
    messages: BTreeMap<String, u64>,
}

/// Message types count under their own name only when they look like `<module>_<command>`.
fn type_key(kind: Option<&str>) -> &str {
    match kind {
        Some(k)
            if (1..=32).contains(&k.len())
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_*-".contains(&b)) =>
        {
            k
        }
        _ => "unknown",
    }
}

impl Stats {
    fn roll(&mut self, now_ms: u64) {
        let day = now_ms / 86_400_000;
        if day != self.day {
            self.day = day;
            self.requests.clear();
            self.messages.clear();
        }
    }

    pub fn count_request(&mut self, command: &'static str, now_ms: u64) {
        self.roll(now_ms);
        *self.requests.entry(command).or_default() += 1;
    }

    pub fn count_message(&mut self, kind: Option<&str>, now_ms: u64) {
        self.roll(now_ms);
        let key = type_key(kind);
        match self.messages.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                self.messages.insert(key.to_owned(), 1);
            }
        }
    }

    /// This process's entry of the `/server-stat/` array; with a shared store the other
    /// instances' entries come from the store and are appended by [`render_array`].
    pub fn entry(
        &mut self,
        process_id: &str,
        channels: usize,
        limits: &Limits,
        cluster_mode: bool,
        now_ms: u64,
    ) -> String {
        self.roll(now_ms);
        json!({
            "pid": std::process::id(),
            "date": now_ms,
            "processUniqueId": process_id,
            "channels": channels,
            "limits": {
                "maxPayload": limits.max_payload,
                "maxConnPerChannel": limits.max_conn_per_channel,
                "maxMessagesPerRequest": limits.max_messages_per_request,
                "maxChannelsPerRequest": limits.max_channels_per_request,
            },
            "clusterMode": cluster_mode,
            "websockets": self.websockets,
            "pollings": self.pollings,
            "daily": { "requests": self.requests, "messages": self.messages },
        })
        .to_string()
    }
}

/// The `/server-stat/` body: a JSON array of this entry and the others that parse as JSON
/// objects (an entry written by a broken peer is skipped, not passed on).
pub fn render_array(own: &str, others: &[String]) -> String {
    let mut out = String::with_capacity(own.len() * (1 + others.len()) + 2);
    out.push('[');
    out.push_str(own);
    for o in others {
        if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(o).is_ok() {
            out.push(',');
            out.push_str(o);
        }
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names() {
        assert_eq!(type_key(Some("im_message")), "im_message");
        assert_eq!(type_key(Some("bad type")), "unknown");
        assert_eq!(type_key(None), "unknown");
        let mut s = Stats::default();
        s.count_message(None, 1000);
        s.count_message(None, 2000);
        s.count_request("channelStats", 2000);
        let limits = Limits {
            max_payload: 1,
            max_conn_per_channel: 2,
            max_messages_per_request: 3,
            max_channels_per_request: 4,
            max_header_size: 5,
            outbox_limit: 6,
            max_connections: 7,
        };
        let own = s.entry("p", 0, &limits, true, 2000);
        let body = render_array(&own, &["{\"pid\":2}".into(), "garbage".into()]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(v[0]["clusterMode"], true);
        assert_eq!(v[0]["daily"]["messages"]["unknown"], 2);
        assert_eq!(s.messages["unknown"], 2);
        s.count_request("channelStats", 86_400_000 + 1);
        assert_eq!(s.requests["channelStats"], 1, "reset at midnight");
    }
}
