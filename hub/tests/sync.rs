//! Channels, events and semaphores between a hub's coroutines, and random
//! interleavings of producers, consumers and kills (proptest).

mod util;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use corostack_hub as hub;
use corostack_hub::sync::channel::{self, RecvError, TryRecvError, TrySendError};
use corostack_hub::sync::{Event, Semaphore};
use proptest::prelude::*;

#[test]
fn a_bounded_channel_parks_the_sender_while_full() {
    hub::run(|| {
        let (tx, rx) = channel::bounded(2);
        let log = Rc::new(RefCell::new(Vec::new()));
        let l = log.clone();
        let producer = hub::spawn(move || {
            for i in 0..4 {
                tx.send(i).unwrap();
                l.borrow_mut().push(format!("sent {i}"));
            }
        });
        hub::yield_now();
        // Two fit; the third send parks.
        assert_eq!(*log.borrow(), ["sent 0", "sent 1"]);
        assert_eq!(rx.len(), 2);
        assert_eq!(rx.recv(), Ok(0));
        hub::yield_now();
        assert_eq!(log.borrow().len(), 3);
        assert_eq!(rx.iter().collect::<Vec<_>>(), [1, 2, 3]);
        producer.join().unwrap();
        assert_eq!(rx.recv(), Err(RecvError));
    });
}

#[test]
fn try_operations_and_disconnection() {
    hub::run(|| {
        let (tx, rx) = channel::bounded::<u8>(1);
        assert_eq!(tx.capacity(), Some(1));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        tx.try_send(1).unwrap();
        assert!(matches!(tx.try_send(2), Err(TrySendError::Full(2))));
        let tx2 = tx.clone();
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "a sender remains");
        drop(tx2);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
        let (tx, rx) = channel::unbounded::<u8>();
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send(9).unwrap_err().0, 9);
    });
}

#[test]
fn dropping_the_last_sender_wakes_parked_receivers() {
    hub::run(|| {
        let (tx, rx) = channel::unbounded::<u8>();
        let receivers: Vec<_> = (0..3)
            .map(|_| {
                let rx = rx.clone();
                hub::spawn(move || rx.recv())
            })
            .collect();
        hub::yield_now();
        drop(tx);
        for r in hub::join_all(receivers) {
            assert_eq!(r.unwrap(), Err(RecvError));
        }
    });
}

#[test]
fn dropping_the_last_receiver_wakes_parked_senders() {
    hub::run(|| {
        let (tx, rx) = channel::bounded::<u8>(1);
        tx.send(0).unwrap();
        let sender = hub::spawn(move || tx.send(1));
        hub::yield_now();
        drop(rx);
        assert_eq!(sender.join().unwrap().unwrap_err().0, 1);
    });
}

#[test]
#[should_panic(expected = "at least 1")]
fn a_zero_capacity_channel_is_refused() {
    let _ = channel::bounded::<u8>(0);
}

#[test]
fn a_receiver_that_times_out_passes_the_value_on() {
    hub::run(|| {
        let (tx, rx) = channel::unbounded::<u32>();
        let impatient = {
            let rx = rx.clone();
            hub::spawn(move || hub::timeout(Duration::from_millis(5), || rx.recv()))
        };
        let patient = {
            let rx = rx.clone();
            hub::spawn(move || rx.recv())
        };
        hub::sleep(Duration::from_millis(20));
        assert!(impatient.join().unwrap().is_err());
        tx.send(7).unwrap();
        assert_eq!(patient.join().unwrap(), Ok(7));
    });
}

#[test]
fn an_event_releases_every_waiter_and_can_be_cleared() {
    hub::run(|| {
        let ev = Event::new();
        let released = Rc::new(Cell::new(0));
        let hs: Vec<_> = (0..5)
            .map(|_| {
                let (ev, r) = (ev.clone(), released.clone());
                hub::spawn(move || {
                    ev.wait();
                    r.set(r.get() + 1);
                })
            })
            .collect();
        hub::sleep(Duration::from_millis(2));
        assert_eq!(released.get(), 0);
        assert!(!ev.is_set());
        ev.set();
        hub::join_all(hs);
        assert_eq!(released.get(), 5);
        ev.wait(); // set: returns at once
        ev.clear();
        let e = ev.clone();
        let late = hub::spawn(move || e.wait());
        hub::sleep(Duration::from_millis(2));
        assert!(!late.done());
        ev.set();
        late.join().unwrap();
    });
}

#[test]
fn a_semaphore_bounds_concurrency_and_returns_permits() {
    hub::run(|| {
        let sem = Semaphore::new(3);
        let (inside, most) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let hs: Vec<_> = (0..20)
            .map(|i| {
                let (sem, inside, most) = (sem.clone(), inside.clone(), most.clone());
                hub::spawn(move || {
                    let _p = sem.acquire();
                    inside.set(inside.get() + 1);
                    most.set(most.get().max(inside.get()));
                    hub::sleep(Duration::from_micros(100 * (i % 3)));
                    inside.set(inside.get() - 1);
                })
            })
            .collect();
        hub::join_all(hs);
        assert_eq!(most.get(), 3);
        assert_eq!(sem.available(), 3);
        let p = sem.try_acquire().unwrap();
        sem.add_permits(1);
        assert_eq!(sem.available(), 3);
        drop(p);
        assert_eq!(sem.available(), 4);
    });
}

/// One step of a coroutine in the random schedule.
#[derive(Debug, Clone, Copy)]
enum Pause {
    None,
    Yield,
    Sleep(u8),
}

fn pause(p: Pause) {
    match p {
        Pause::None => {}
        Pause::Yield => hub::yield_now(),
        Pause::Sleep(us) => hub::sleep(Duration::from_micros(us as u64 * 50)),
    }
}

fn pause_strategy() -> impl Strategy<Value = Pause> {
    prop_oneof![
        Just(Pause::None),
        Just(Pause::Yield),
        (0u8..10).prop_map(Pause::Sleep)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if util::emulated() { 10 } else { 48 }))]

    /// Producers and consumers with random pauses, on a bounded or an
    /// unbounded channel, some consumers killed on the way: every value
    /// arrives exactly once, each producer's values in order, and a
    /// bounded channel never holds more than its capacity.
    #[test]
    fn channels_under_random_interleavings(
        cap in prop_oneof![Just(None), (1usize..4).prop_map(Some)],
        producers in proptest::collection::vec(proptest::collection::vec(pause_strategy(), 0..20), 1..4),
        consumers in proptest::collection::vec(proptest::collection::vec(pause_strategy(), 1..8), 1..4),
        kill_after in proptest::collection::vec(0u8..6, 0..3),
    ) {
        let lens: Vec<usize> = producers.iter().map(Vec::len).collect();
        let (got, overfull) = hub::run(move || {
            let (tx, rx) = match cap {
                Some(c) => channel::bounded::<(usize, usize)>(c),
                None => channel::unbounded(),
            };
            let overfull = Rc::new(Cell::new(false));
            let got = Rc::new(RefCell::new(Vec::new()));
            let prods: Vec<_> = producers.iter().cloned().enumerate().map(|(p, pauses)| {
                let (tx, overfull) = (tx.clone(), overfull.clone());
                hub::spawn(move || {
                    for (i, &ps) in pauses.iter().enumerate() {
                        tx.send((p, i)).unwrap();
                        if cap.is_some_and(|c| tx.len() > c) {
                            overfull.set(true);
                        }
                        pause(ps);
                    }
                })
            }).collect();
            drop(tx);
            // One consumer is never killed; the others may be.
            let cons: Vec<_> = consumers.iter().cloned().enumerate().map(|(c, pauses)| {
                let (rx, got) = (rx.clone(), got.clone());
                hub::spawn(move || {
                    let mut k = 0;
                    while let Ok(v) = rx.recv() {
                        got.borrow_mut().push((c, v));
                        pause(pauses[k % pauses.len()]);
                        k += 1;
                    }
                })
            }).collect();
            drop(rx);
            for (i, &after) in kill_after.iter().enumerate() {
                for _ in 0..after {
                    hub::yield_now();
                }
                if let Some(h) = cons.get(i + 1) {
                    h.kill();
                }
            }
            hub::join_all(prods);
            hub::join_all(cons);
            (got.take(), overfull.get())
        });
        prop_assert!(!overfull);
        let mut per_producer: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut per_consumer: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for &(c, (p, i)) in &got {
            per_producer.entry(p).or_default().push(i);
            per_consumer.entry((c, p)).or_default().push(i);
        }
        for (p, &len) in lens.iter().enumerate() {
            let mut seen = per_producer.remove(&p).unwrap_or_default();
            seen.sort();
            prop_assert_eq!(seen, (0..len).collect::<Vec<_>>(), "producer {}", p);
        }
        for (k, seq) in per_consumer {
            prop_assert!(seq.windows(2).all(|w| w[0] < w[1]), "{:?} out of order: {:?}", k, seq);
        }
    }
}

#[test]
fn a_receivers_iterator_is_fused() {
    fn fused<I: std::iter::FusedIterator>(_: &I) {}
    let (tx, rx) = channel::unbounded();
    tx.send(1).unwrap();
    drop(tx);
    let mut it = rx.iter();
    fused(&it);
    assert_eq!((it.next(), it.next(), it.next()), (Some(1), None, None));
}
