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

/// Above this many subscribers a channel gets an index and unordered O(1) removal. Without it,
/// a message to a large shared channel that ends every held long poll at once would cost
/// O(n²): each of the n unsubscribes scanning and shifting the whole list. Below it the list
/// keeps subscription order, which the connection cap needs (it applies to per-user channels,
/// far smaller than this).
const INDEX_FROM: usize = 1024;

/// The connections of one channel, in subscription order. Most channels (a user's private
/// one) have a single subscriber, kept inline: a list of its own would be a heap block of
/// 48 bytes per idle subscriber (docs/loop.md, "Idle memory").
enum Conns {
    One(ConnId),
    Many(Vec<ConnId>),
}

impl Default for Conns {
    fn default() -> Self {
        Conns::Many(Vec::new())
    }
}

impl Conns {
    fn as_slice(&self) -> &[ConnId] {
        match self {
            Conns::One(c) => std::slice::from_ref(c),
            Conns::Many(v) => v,
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    fn push(&mut self, id: ConnId) {
        match self {
            Conns::Many(v) if v.is_empty() => *self = Conns::One(id),
            Conns::Many(v) => v.push(id),
            Conns::One(c) => *self = Conns::Many(vec![*c, id]),
        }
    }

    /// The list, made one if it was a single connection.
    fn list(&mut self) -> &mut Vec<ConnId> {
        if let Conns::One(c) = *self {
            *self = Conns::Many(vec![c]);
        }
        match self {
            Conns::Many(v) => v,
            Conns::One(_) => unreachable!("made a list above"),
        }
    }

    /// Back to inline once a single connection is left.
    fn settle(&mut self) {
        if let Conns::Many(v) = self
            && let [c] = v[..]
        {
            *self = Conns::One(c);
        }
    }
}

#[derive(Default)]
struct Entry {
    /// Oldest first while the channel is small (the connection cap evicts from the front);
    /// unordered once it has an index.
    conns: Conns,
    kind: Option<Kind>,
    /// Position of each connection in `conns`, for large channels only. Boxed so that every
    /// other channel entry pays 8 bytes for it, not the 48 of an empty map.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<ConnId, usize>>>,
}

impl Entry {
    fn add(&mut self, id: ConnId) {
        self.conns.push(id);
        match &mut self.index {
            Some(index) => {
                index.insert(id, self.conns.len() - 1);
            }
            None if self.conns.len() > INDEX_FROM => {
                let index = self.conns.as_slice().iter().enumerate();
                self.index = Some(Box::new(index.map(|(i, &c)| (c, i)).collect()));
            }
            None => {}
        }
    }

    fn remove(&mut self, id: ConnId) {
        match &mut self.index {
            Some(index) => {
                let Some(pos) = index.remove(&id) else {
                    return;
                };
                let conns = self.conns.list();
                conns.swap_remove(pos);
                if let Some(&moved) = conns.get(pos) {
                    index.insert(moved, pos);
                }
                if conns.len() < INDEX_FROM / 2 {
                    self.index = None;
                }
            }
            None => match &mut self.conns {
                Conns::One(c) => {
                    if *c == id {
                        self.conns = Conns::default();
                    }
                }
                Conns::Many(v) => {
                    if let Some(pos) = v.iter().position(|&c| c == id) {
                        v.remove(pos);
                        self.conns.settle();
                    }
                }
            },
        }
    }
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
            if e.conns.is_empty() && kind == Kind::Private && ch.as_user().is_none() {
                self.private_channels += 1;
            }
            if e.conns.is_empty() {
                e.kind = Some(kind);
            }
            e.add(id);
        }
    }

    pub fn unsubscribe(&mut self, id: ConnId, receivers: &[(ChannelId, Kind)]) {
        for &(ch, _) in receivers {
            let Some(e) = self.channels.get_mut(&ch) else {
                continue;
            };
            e.remove(id);
            if e.conns.is_empty() {
                if e.kind == Some(Kind::Private) && ch.as_user().is_none() {
                    self.private_channels -= 1;
                }
                self.channels.remove(&ch);
            }
        }
    }

    /// Every channel with a local subscriber, with the kind of its first one.
    pub fn channels(&self) -> impl Iterator<Item = (ChannelId, Kind)> + '_ {
        self.channels
            .iter()
            .filter(|(_, e)| !e.conns.is_empty())
            .map(|(ch, e)| (*ch, e.kind.unwrap_or(Kind::Private)))
    }

    pub fn subscribers(&self, ch: &ChannelId) -> &[ConnId] {
        self.channels.get(ch).map_or(&[], |e| e.conns.as_slice())
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
        assert!(
            matches!(r.channels[&p].conns, Conns::One(_)),
            "one left: inline again"
        );
        assert!(r.subscribers(&q).is_empty());
        r.unsubscribe(b, &recv[..1]);
        assert_eq!(r.private_channels(), 0);
        assert!(r.channels.is_empty());
    }

    #[test]
    fn a_channel_entry_is_small() {
        // Every channel with a subscriber pays it, in a hash table (docs/loop.md, "Idle memory").
        assert!(
            std::mem::size_of::<Entry>() <= 40,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn large_channels_remove_in_constant_time_and_stay_consistent() {
        let mut slab = Slab::default();
        let ids: Vec<ConnId> = (0..3 * INDEX_FROM)
            .map(|_| slab.insert_with(|_| ()))
            .collect();
        let shared = ChannelId([7; 16]);
        let mut r = Registry::default();
        for &id in &ids {
            r.subscribe(id, &[(shared, Kind::Private)]);
        }
        assert!(r.channels[&shared].index.is_some());
        // Remove every other one, then check the list and the index agree.
        for &id in ids.iter().step_by(2) {
            r.unsubscribe(id, &[(shared, Kind::Private)]);
        }
        let e = &r.channels[&shared];
        let mut left: Vec<ConnId> = e.conns.as_slice().to_vec();
        left.sort();
        let mut want: Vec<ConnId> = ids.iter().copied().skip(1).step_by(2).collect();
        want.sort();
        assert_eq!(left, want);
        let index = e.index.as_ref().expect("still large");
        assert_eq!(index.len(), e.conns.len());
        assert!(
            e.conns
                .as_slice()
                .iter()
                .enumerate()
                .all(|(i, c)| index[c] == i)
        );
        // Shrinking far enough drops the index; the rest still unsubscribes cleanly.
        for &id in ids.iter().skip(1).step_by(2) {
            r.unsubscribe(id, &[(shared, Kind::Private)]);
        }
        assert!(r.channels.is_empty());
        assert_eq!(r.private_channels(), 0);
    }
}
