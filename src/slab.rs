//! Connection storage: a slab of slots addressed by a generation-tagged [`ConnId`].
//!
//! Invariant: removing a value bumps its slot's generation, so a stale id (a late event, an old
//! timer entry) never reaches a newer connection that reused the slot (nginx's "instance bit").

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

pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Option<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: None,
            len: 0,
        }
    }
}

impl<T> Slab<T> {
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
                let slot = &mut self.slots[index as usize];
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
                let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 connections");
                let id = ConnId {
                    index,
                    generation: 0,
                };
                self.slots.push(Slot::Occupied(0, make(id)));
                self.len += 1;
                id
            }
        }
    }

    pub fn get(&self, id: ConnId) -> Option<&T> {
        match self.slots.get(id.index as usize) {
            Some(Slot::Occupied(g, v)) if *g == id.generation => Some(v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        match self.slots.get_mut(id.index as usize) {
            Some(Slot::Occupied(g, v)) if *g == id.generation => Some(v),
            _ => None,
        }
    }

    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        match slot {
            Slot::Occupied(g, _) if *g == id.generation => {
                let next_gen = g.wrapping_add(1);
                let old = std::mem::replace(slot, Slot::Vacant(next_gen, self.free));
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
        self.slots
            .iter()
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
}
