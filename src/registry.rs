//! Who listens where: channel id → connections subscribed to it, in subscription order.
//!
//! Invariant: a connection is listed under exactly the channels its own state names (the
//! connection keeps that list and hands it back on unsubscribe), so both directions stay
//! symmetric. Nothing here touches sockets.

use std::collections::HashMap;

use crate::channel::ChannelId;
use crate::slab::ConnId;

/// Whether a receiver id is a private/shared channel or a public id (v4 pairs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Private,
    Public,
}

#[derive(Default)]
struct Entry {
    /// Oldest first: the connection cap evicts from the front.
    conns: Vec<ConnId>,
    kind: Option<Kind>,
}

#[derive(Default)]
pub struct Registry {
    channels: HashMap<ChannelId, Entry>,
    private_channels: usize,
}

impl Registry {
    pub fn subscribe(&mut self, id: ConnId, receivers: &[(ChannelId, Kind)]) {
        for &(ch, kind) in receivers {
            let e = self.channels.entry(ch).or_default();
            if e.conns.is_empty() && kind == Kind::Private {
                self.private_channels += 1;
            }
            if e.conns.is_empty() {
                e.kind = Some(kind);
            }
            e.conns.push(id);
        }
    }

    pub fn unsubscribe(&mut self, id: ConnId, receivers: &[(ChannelId, Kind)]) {
        for &(ch, _) in receivers {
            let Some(e) = self.channels.get_mut(&ch) else {
                continue;
            };
            if let Some(pos) = e.conns.iter().position(|&c| c == id) {
                e.conns.remove(pos);
            }
            if e.conns.is_empty() {
                if e.kind == Some(Kind::Private) {
                    self.private_channels -= 1;
                }
                self.channels.remove(&ch);
            }
        }
    }

    pub fn subscribers(&self, ch: &ChannelId) -> &[ConnId] {
        self.channels.get(ch).map_or(&[], |e| &e.conns)
    }

    /// Distinct private and shared ids with at least one connection (the stats' `channels`).
    pub fn private_channels(&self) -> usize {
        self.private_channels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slab::Slab;

    #[test]
    fn symmetric_subscribe_unsubscribe() {
        let mut slab = Slab::default();
        let a = slab.insert_with(|_| ());
        let b = slab.insert_with(|_| ());
        let p = ChannelId([1; 16]);
        let q = ChannelId([2; 16]);
        let mut r = Registry::default();
        let recv = [(p, Kind::Private), (q, Kind::Public)];
        r.subscribe(a, &recv);
        r.subscribe(b, &recv[..1]);
        assert_eq!(r.subscribers(&p), &[a, b]);
        assert_eq!(r.private_channels(), 1);
        r.unsubscribe(a, &recv);
        assert_eq!(r.subscribers(&p), &[b]);
        assert!(r.subscribers(&q).is_empty());
        r.unsubscribe(b, &recv[..1]);
        assert_eq!(r.private_channels(), 0);
        assert!(r.channels.is_empty());
    }
}
