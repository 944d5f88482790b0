//! A minimal slab: values in a `Vec` of slots, reached by index, with a free
//! list so that indices are reused. Tasks and I/O sources live in one.

/// A slot: a value, or the index of the next free slot.
enum Slot<T> {
    Full(T),
    Free(usize),
}

/// Values addressed by a small integer that stays valid until removed.
pub(crate) struct Slab<T> {
    slots: Vec<Slot<T>>,
    /// The first free slot, or `slots.len()` when none is free.
    free: usize,
    /// How many slots are full.
    len: usize,
}

impl<T> Slab<T> {
    /// An empty slab.
    pub(crate) const fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: 0,
            len: 0,
        }
    }

    /// Stores `value` and returns its index.
    pub(crate) fn insert(&mut self, value: T) -> usize {
        let key = self.free;
        if key == self.slots.len() {
            self.slots.push(Slot::Full(value));
            self.free = key + 1;
        } else {
            match std::mem::replace(&mut self.slots[key], Slot::Full(value)) {
                Slot::Free(next) => self.free = next,
                Slot::Full(_) => unreachable!("the free list named a full slot"),
            }
        }
        self.len += 1;
        key
    }

    /// The value at `key`, if any.
    pub(crate) fn get(&self, key: usize) -> Option<&T> {
        match self.slots.get(key) {
            Some(Slot::Full(v)) => Some(v),
            _ => None,
        }
    }

    /// Removes and returns the value at `key`, if any.
    pub(crate) fn remove(&mut self, key: usize) -> Option<T> {
        match self.slots.get_mut(key) {
            Some(slot @ Slot::Full(_)) => {
                let Slot::Full(v) = std::mem::replace(slot, Slot::Free(self.free)) else {
                    unreachable!()
                };
                self.free = key;
                self.len -= 1;
                Some(v)
            }
            _ => None,
        }
    }

    /// How many values are stored.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The stored values, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(|s| match s {
            Slot::Full(v) => Some(v),
            Slot::Free(_) => None,
        })
    }

    /// Whether no value is stored.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes every value, in index order.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        let slots = std::mem::take(&mut self.slots);
        self.free = 0;
        self.len = 0;
        slots
            .into_iter()
            .filter_map(|s| match s {
                Slot::Full(v) => Some(v),
                Slot::Free(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

    #[test]
    fn keys_are_reused_and_values_kept() {
        let mut s = Slab::new();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!((a, b), (0, 1));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.insert("c"), a);
        assert_eq!(s.get(b), Some(&"b"));
        assert!(!s.is_empty());
        assert_eq!(s.drain(), ["c", "b"]);
        assert!(s.is_empty());
        assert_eq!(s.drain(), Vec::<&str>::new());
    }
}
