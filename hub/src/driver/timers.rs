//! The timer driver: one ordered map per hub keyed by (deadline, sequence
//! number), so that timers with the same deadline fire in the order they
//! were set. It owns the map and knows nothing of what a timer does (the
//! scheduler's action type `A`) nor of the functions that set them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A timer's key: its deadline, then the order of setting.
pub(crate) type TimerKey = (Instant, u64);

/// The timers of one hub, each with the action `A` it stands for.
pub(crate) struct Timers<A> {
    map: BTreeMap<TimerKey, A>,
    seq: u64,
}

impl<A> Default for Timers<A> {
    fn default() -> Self {
        Timers {
            map: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<A> Timers<A> {
    pub(crate) fn new() -> Timers<A> {
        Timers::default()
    }

    /// Sets a timer; its key removes it.
    #[inline]
    pub(crate) fn insert(&mut self, deadline: Instant, action: A) -> TimerKey {
        self.seq += 1;
        let key = (deadline, self.seq);
        self.map.insert(key, action);
        key
    }

    /// Removes a timer that has not fired.
    #[inline]
    pub(crate) fn remove(&mut self, key: TimerKey) -> Option<A> {
        self.map.remove(&key)
    }

    /// Whether the timer is still set (it has not fired nor been removed).
    #[inline]
    pub(crate) fn contains(&self, key: TimerKey) -> bool {
        self.map.contains_key(&key)
    }

    /// Whether no timer is set.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The earliest deadline.
    #[inline]
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.map.first_key_value().map(|(k, _)| k.0)
    }

    /// Removes the timers whose action `pick` selects and returns their
    /// actions, in deadline order.
    pub(crate) fn take_where(&mut self, mut pick: impl FnMut(&A) -> bool) -> Vec<A> {
        let keys: Vec<TimerKey> = self
            .map
            .iter()
            .filter(|(_, a)| pick(a))
            .map(|(k, _)| *k)
            .collect();
        keys.iter().filter_map(|k| self.map.remove(k)).collect()
    }

    /// Removes and returns the earliest timer if it is due at `now`.
    #[inline]
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<A> {
        match self.map.first_entry() {
            Some(e) if e.key().0 <= now => Some(e.remove()),
            _ => None,
        }
    }
}

/// How long the poller may sleep before `deadline`: rounded up to whole
/// milliseconds (epoll's unit), so that a wait shorter than one never
/// becomes a busy poll of zero.
pub(crate) fn poll_timeout(deadline: Instant, now: Instant) -> Duration {
    let left = deadline.saturating_duration_since(now);
    let ms = left.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(ms.min(u64::MAX as u128) as u64)
}

/// A deadline `d` from now, or none if that is beyond what an `Instant`
/// can hold.
pub(crate) fn deadline_after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}
