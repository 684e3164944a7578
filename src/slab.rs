//! Connection storage: a slab of slots addressed by a generation-tagged [`ConnId`].
//!
//! Invariant: removing a value bumps its slot's generation, so a stale id (a late event, an old
//! timer entry) never reaches a newer connection that reused the slot (nginx's "instance bit").
//!
//! Slots live in fixed chunks that are never moved: one growing vector would copy every slot at
//! each doubling and, once glibc serves it from the heap rather than its own mapping, leave the
//! old copy behind as touched free memory (about one slot per connection, docs/loop.md
//! "Idle memory").

use mio::Token;

/// Tokens below this value belong to listeners, the waker and the signal pipe.
pub const FIRST_CONN_TOKEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    pub fn token(self) -> Token {
        Token(((self.generation as usize) << 32) | (self.index as usize + FIRST_CONN_TOKEN))
    }

    pub fn from_token(token: Token) -> Option<ConnId> {
        let low = token.0 & 0xffff_ffff;
        if low < FIRST_CONN_TOKEN {
            return None;
        }
        Some(ConnId {
            index: (low - FIRST_CONN_TOKEN) as u32,
            generation: (token.0 >> 32) as u32,
        })
    }

    /// Short number for log lines.
    pub fn number(self) -> u32 {
        self.index
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn {}", self.index)
    }
}

enum Slot<T> {
    Occupied(u32, T),
    Vacant(u32, Option<u32>),
}

/// Slots per chunk: with a connection's 160 bytes, a chunk is 160 KiB, of which only the
/// pages of slots in use are ever touched.
const CHUNK: usize = 1024;

pub struct Slab<T> {
    /// Each of capacity [`CHUNK`], full except the last.
    chunks: Vec<Vec<Slot<T>>>,
    free: Option<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            chunks: Vec::new(),
            free: None,
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    fn slot(&self, index: u32) -> Option<&Slot<T>> {
        let i = index as usize;
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    fn slot_mut(&mut self, index: u32) -> Option<&mut Slot<T>> {
        let i = index as usize;
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value`, giving it an id; `make` sees the id before the value exists so that the
    /// value can embed it (e.g. to register its token).
    pub fn insert_with(&mut self, make: impl FnOnce(ConnId) -> T) -> ConnId {
        match self.free {
            Some(index) => {
                let slot = self
                    .slot_mut(index)
                    .expect("the free list points at a slot");
                let (generation, next) = match slot {
                    Slot::Vacant(g, next) => (*g, *next),
                    Slot::Occupied(..) => unreachable!("free list points at an occupied slot"),
                };
                let id = ConnId { index, generation };
                *slot = Slot::Occupied(generation, make(id));
                self.free = next;
                self.len += 1;
                id
            }
            None => {
                if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                let full = (self.chunks.len() - 1) * CHUNK;
                let chunk = self.chunks.last_mut().expect("pushed above");
                let index = u32::try_from(full + chunk.len()).expect("fewer than 2^32 connections");
                let id = ConnId {
                    index,
                    generation: 0,
                };
                chunk.push(Slot::Occupied(0, make(id)));
                self.len += 1;
                id
            }
        }
    }

    pub fn get(&self, id: ConnId) -> Option<&T> {
        match self.slot(id.index) {
            Some(Slot::Occupied(g, v)) if *g == id.generation => Some(v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        match self.slot_mut(id.index) {
            Some(Slot::Occupied(g, v)) if *g == id.generation => Some(v),
            _ => None,
        }
    }

    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        let free = self.free;
        let slot = self.slot_mut(id.index)?;
        match slot {
            Slot::Occupied(g, _) if *g == id.generation => {
                let next_gen = g.wrapping_add(1);
                let old = std::mem::replace(slot, Slot::Vacant(next_gen, free));
                self.free = Some(id.index);
                self.len -= 1;
                match old {
                    Slot::Occupied(_, v) => Some(v),
                    Slot::Vacant(..) => None,
                }
            }
            _ => None,
        }
    }

    /// Ids of every live value (used at shutdown; not on hot paths).
    pub fn ids(&self) -> Vec<ConnId> {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Occupied(g, _) => Some(ConnId {
                    index: i as u32,
                    generation: *g,
                }),
                Slot::Vacant(..) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_id_misses_reused_slot() {
        let mut slab = Slab::default();
        let a = slab.insert_with(|_| "a");
        assert_eq!(slab.remove(a), Some("a"));
        let b = slab.insert_with(|_| "b");
        assert_eq!(a.index, b.index);
        assert!(slab.get(a).is_none());
        assert_eq!(slab.get(b), Some(&"b"));
        assert_eq!(ConnId::from_token(b.token()), Some(b));
        assert_eq!(ConnId::from_token(Token(3)), None);
        assert_eq!(slab.len(), 1);
    }

    #[test]
    fn ids_span_chunks() {
        let mut slab = Slab::default();
        let ids: Vec<ConnId> = (0..2 * CHUNK + 3)
            .map(|i| slab.insert_with(|_| i))
            .collect();
        assert_eq!(slab.chunks.len(), 3);
        assert!(
            ids.iter()
                .enumerate()
                .all(|(i, &id)| slab.get(id) == Some(&i))
        );
        let last = ids[2 * CHUNK + 2];
        assert_eq!(slab.remove(last), Some(2 * CHUNK + 2));
        assert_eq!(slab.ids(), ids[..2 * CHUNK + 2]);
        // The freed slot is reused before a new one is taken.
        let again = slab.insert_with(|_| 7);
        assert_eq!(again.index, last.index);
        assert_eq!(slab.get(again), Some(&7));
    }
}
