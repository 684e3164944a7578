//! push-server: a drop-in replacement for the 1C-Bitrix Push server.
//!
//! One thread runs a mio event loop ([`server`]). Each pass: poll with the nearest timer as the
//! timeout, read and parse ready connections ([`conn`], [`http`], [`websocket`]), act on
//! complete requests (route, publish, subscribe), expire timers, then flush connections that
//! got output. A publish is validated and handed to the [`store`] as a job; when the store has
//! given it an id and kept it, the publisher gets its `200` and the message is fanned out
//! through the [`registry`] (with Redis, when its notification comes back, in the global id
//! order): its v3 frame and its v4 protobuf form ([`v4`]) are each encoded once and the same
//! bytes are queued to every subscriber, which gets them in one write at the end of the pass.

pub mod activation;
pub mod channel;
pub mod config;
pub mod conn;
pub mod error;
pub mod http;
pub mod jwt;
pub mod listener;
pub mod logger;
pub mod message;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod preflight;
pub mod proto;
pub mod publish;
pub mod query;
pub mod registry;
pub mod response;
pub mod route;
pub mod selfcheck;
pub mod server;
pub mod signature;
pub mod slab;
pub mod stats;
pub mod store;
pub mod subscription;
pub mod timers;
pub mod v4;
pub mod v5;
pub mod websocket;

/// Helpers shared by the unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    /// Bytes from hex digits; whitespace is ignored, so test vectors can be grouped as in
    /// docs/protocol.md#worked-examples.
    pub fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digits"))
            .collect()
    }
}
