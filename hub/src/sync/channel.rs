//! Channels between the coroutines of a hub, bounded or unbounded, with
//! any number of senders and receivers.
//!
//! ```
//! use corostack_hub::{self as hub, sync::channel};
//!
//! let got = hub::run(|| {
//!     let (tx, rx) = channel::bounded(2);
//!     let producer = hub::spawn(move || {
//!         for i in 0..5 {
//!             tx.send(i).unwrap(); // parks while 2 values wait
//!         }
//!     });
//!     let got: Vec<i32> = rx.iter().collect(); // ends when the sender is gone
//!     producer.join().unwrap();
//!     got
//! });
//! assert_eq!(got, [0, 1, 2, 3, 4]);
//! ```

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::iter::FusedIterator;
use std::rc::Rc;

use super::WaitQueue;

struct Chan<T> {
    buf: RefCell<VecDeque<T>>,
    cap: Option<usize>,
    senders: Cell<usize>,
    receivers: Cell<usize>,
    /// Receivers waiting for a value.
    recv_q: WaitQueue,
    /// Senders waiting for room.
    send_q: WaitQueue,
}

fn new<T>(cap: Option<usize>) -> (Sender<T>, Receiver<T>) {
    let chan = Rc::new(Chan {
        buf: RefCell::new(VecDeque::new()),
        cap,
        senders: Cell::new(1),
        receivers: Cell::new(1),
        recv_q: WaitQueue::default(),
        send_q: WaitQueue::default(),
    });
    (Sender(chan.clone()), Receiver(chan))
}

/// A channel that holds any number of values: `send` never waits.
///
/// ```
/// use corostack_hub::sync::channel;
///
/// // Outside a hub too, as long as nothing waits.
/// let (tx, rx) = channel::unbounded();
/// (0..1000).for_each(|i| tx.send(i).unwrap());
/// drop(tx);
/// assert_eq!(rx.iter().sum::<i32>(), 499_500);
/// ```
#[must_use]
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    new(None)
}

/// A channel that holds up to `capacity` values: `send` waits while it is
/// full.
///
/// ```
/// use corostack_hub::sync::channel::{self, TrySendError};
///
/// let (tx, rx) = channel::bounded(1);
/// tx.try_send('a').unwrap();
/// assert_eq!(tx.try_send('b'), Err(TrySendError::Full('b'))); // the value comes back
/// assert_eq!(rx.try_recv(), Ok('a'));
/// ```
///
/// # Panics
/// When `capacity` is 0 (a rendezvous channel is not provided).
#[must_use]
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    assert!(
        capacity > 0,
        "corostack_hub::sync::channel::bounded: the capacity must be at least 1"
    );
    new(Some(capacity))
}

/// The sending side; clone it for more senders. When the last one is
/// dropped, receivers get the values left and then [`RecvError`].
///
/// ```
/// use corostack_hub::{self as hub, sync::channel};
///
/// let sum = hub::run(|| {
///     let (tx, rx) = channel::unbounded();
///     for i in 1..=3 {
///         let tx = tx.clone();
///         hub::spawn(move || tx.send(i * 10).unwrap());
///     }
///     drop(tx); // the receiver ends once the three clones are gone too
///     rx.iter().sum::<u32>()
/// });
/// assert_eq!(sum, 60);
/// ```
pub struct Sender<T>(Rc<Chan<T>>);

/// The receiving side; clone it for more receivers (each value goes to
/// one). When the last one is dropped, `send` fails with [`SendError`].
///
/// ```
/// use corostack_hub::sync::channel::{self, SendError, TryRecvError};
///
/// let (tx, rx) = channel::unbounded::<u8>();
/// assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
/// drop(rx);
/// assert_eq!(tx.send(7), Err(SendError(7)));
/// ```
pub struct Receiver<T>(Rc<Chan<T>>);

/// `send` failed: every receiver is gone. The value comes back.
///
/// ```
/// use corostack_hub::{self as hub, sync::channel::{self, SendError}};
///
/// hub::run(|| {
///     let (tx, rx) = channel::unbounded();
///     drop(rx);
///     assert_eq!(tx.send("lost"), Err(SendError("lost")));
/// });
/// ```
#[derive(PartialEq, Eq, Clone, Copy)]
pub struct SendError<T>(pub T);

/// `recv` failed: the channel is empty and every sender is gone.
///
/// ```
/// use corostack_hub::{self as hub, sync::channel::{self, RecvError}};
///
/// hub::run(|| {
///     let (tx, rx) = channel::unbounded();
///     tx.send(1).unwrap();
///     drop(tx);
///     assert_eq!(rx.recv(), Ok(1)); // what was sent still comes
///     assert_eq!(rx.recv(), Err(RecvError));
/// });
/// ```
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct RecvError;

/// Why [`Sender::try_send`] failed; the value comes back.
///
/// ```
/// use corostack_hub::{self as hub, sync::channel::{self, TrySendError}};
///
/// hub::run(|| {
///     let (tx, rx) = channel::bounded(1);
///     tx.try_send('a').unwrap();
///     assert_eq!(tx.try_send('b'), Err(TrySendError::Full('b')));
///     drop(rx);
///     assert_eq!(tx.try_send('c'), Err(TrySendError::Disconnected('c')));
/// });
/// ```
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum TrySendError<T> {
    /// The channel is full.
    Full(T),
    /// Every receiver is gone.
    Disconnected(T),
}

/// Why [`Receiver::try_recv`] failed.
///
/// ```
/// use corostack_hub::{self as hub, sync::channel::{self, TryRecvError}};
///
/// hub::run(|| {
///     let (tx, rx) = channel::unbounded::<u8>();
///     assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
///     drop(tx);
///     assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
/// });
/// ```
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum TryRecvError {
    /// No value is waiting.
    Empty,
    /// No value is waiting and every sender is gone.
    Disconnected,
}

impl<T> Sender<T> {
    /// Sends `value`, waiting (cooperatively) while a bounded channel is
    /// full.
    ///
    /// ```
    /// use corostack_hub::{self as hub, sync::channel};
    ///
    /// hub::run(|| {
    ///     let (tx, rx) = channel::bounded(1);
    ///     let producer = hub::spawn(move || {
    ///         for i in 0..3 {
    ///             tx.send(i).unwrap(); // waits while the one slot is taken
    ///         }
    ///     });
    ///     assert_eq!(rx.iter().collect::<Vec<_>>(), [0, 1, 2]);
    ///     producer.join().unwrap();
    /// });
    /// ```
    ///
    /// # Errors
    /// [`SendError`] with the value when every receiver is gone.
    ///
    /// # Panics
    /// Outside a hub's coroutine, when it must wait: on a thread that runs no hub, and
    /// from the hub's loop (a destructor or callback that it runs); [Outside a
    /// hub](crate#outside-a-hub) has both messages.
    #[track_caller]
    pub fn send(&self, mut value: T) -> Result<(), SendError<T>> {
        loop {
            match self.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(v)) => return Err(SendError(v)),
                Err(TrySendError::Full(v)) => {
                    value = v;
                    self.0.send_q.wait("Sender::send");
                }
            }
        }
    }

    /// Sends `value` if there is room now (never waits, so it works
    /// outside a coroutine too: from a destructor the hub's loop runs, a
    /// `call_later`).
    ///
    /// ```
    /// use corostack_hub::{self as hub, sync::channel};
    ///
    /// hub::run(|| {
    ///     let (tx, rx) = channel::bounded(2);
    ///     assert!(tx.try_send(1).is_ok() && tx.try_send(2).is_ok());
    ///     assert!(tx.try_send(3).is_err()); // full
    ///     assert_eq!((tx.len(), tx.capacity()), (2, Some(2)));
    ///     assert_eq!(rx.try_recv(), Ok(1));
    /// });
    /// ```
    ///
    /// # Errors
    /// [`TrySendError::Full`] or [`TrySendError::Disconnected`], with the
    /// value.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let c = &self.0;
        if c.receivers.get() == 0 {
            return Err(TrySendError::Disconnected(value));
        }
        {
            let mut buf = c.buf.borrow_mut();
            if c.cap.is_some_and(|cap| buf.len() >= cap) {
                return Err(TrySendError::Full(value));
            }
            buf.push_back(value);
        }
        c.recv_q.wake_one();
        Ok(())
    }

    /// How many values wait in the channel.
    ///
    /// ```
    /// use corostack_hub::sync::channel;
    ///
    /// let (tx, rx) = channel::unbounded();
    /// tx.try_send(()).unwrap(); // no hub needed: nothing waits
    /// assert_eq!((tx.len(), rx.len()), (1, 1));
    /// assert!(!tx.is_empty());
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.buf.borrow().len()
    }

    /// Whether no value waits in the channel.
    ///
    /// ```
    /// let (tx, _rx) = corostack_hub::sync::channel::unbounded::<u8>();
    /// assert!(tx.is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The capacity of a bounded channel.
    ///
    /// ```
    /// use corostack_hub::sync::channel;
    ///
    /// assert_eq!(channel::bounded::<u8>(4).0.capacity(), Some(4));
    /// assert_eq!(channel::unbounded::<u8>().0.capacity(), None);
    /// ```
    #[must_use]
    pub fn capacity(&self) -> Option<usize> {
        self.0.cap
    }

    /// Whether every receiver is gone.
    ///
    /// ```
    /// let (tx, rx) = corostack_hub::sync::channel::unbounded::<u8>();
    /// assert!(!tx.is_closed());
    /// drop(rx);
    /// assert!(tx.is_closed());
    /// ```
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.0.receivers.get() == 0
    }
}

impl<T> Receiver<T> {
    /// Takes the oldest value, waiting (cooperatively) while there is
    /// none.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corostack_hub::{self as hub, sync::channel};
    ///
    /// hub::run(|| {
    ///     let (tx, rx) = channel::unbounded();
    ///     hub::spawn(move || {
    ///         hub::sleep(Duration::from_millis(1));
    ///         tx.send("late").unwrap();
    ///     });
    ///     assert_eq!(rx.recv(), Ok("late")); // waits for the sleeper
    /// });
    /// ```
    ///
    /// # Errors
    /// [`RecvError`] when the channel is empty and every sender is gone.
    ///
    /// # Panics
    /// Outside a hub's coroutine, when it must wait: on a thread that runs no hub, and
    /// from the hub's loop (a destructor or callback that it runs); [Outside a
    /// hub](crate#outside-a-hub) has both messages.
    #[track_caller]
    pub fn recv(&self) -> Result<T, RecvError> {
        loop {
            match self.try_recv() {
                Ok(v) => return Ok(v),
                Err(TryRecvError::Disconnected) => return Err(RecvError),
                Err(TryRecvError::Empty) => self.0.recv_q.wait("Receiver::recv"),
            }
        }
    }

    /// Takes the oldest value if there is one (never waits).
    ///
    /// ```
    /// let (tx, rx) = corostack_hub::sync::channel::unbounded();
    /// tx.try_send(7).unwrap();
    /// assert_eq!(rx.try_recv(), Ok(7));
    /// assert!(rx.try_recv().is_err());
    /// ```
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] or [`TryRecvError::Disconnected`].
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let c = &self.0;
        let v = c.buf.borrow_mut().pop_front();
        match v {
            Some(v) => {
                if c.cap.is_some() {
                    c.send_q.wake_one();
                }
                Ok(v)
            }
            None if c.senders.get() == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// An iterator that receives until the channel is empty and closed.
    ///
    /// ```
    /// use corostack_hub::{self as hub, sync::channel};
    ///
    /// hub::run(|| {
    ///     let (tx, rx) = channel::unbounded();
    ///     hub::spawn(move || (1..=3).for_each(|i| tx.send(i).unwrap()));
    ///     assert_eq!(rx.iter().sum::<i32>(), 6); // ends once the sender is gone
    /// });
    /// ```
    #[must_use]
    pub fn iter(&self) -> Iter<'_, T> {
        Iter(self)
    }

    /// How many values wait in the channel.
    ///
    /// ```
    /// let (tx, rx) = corostack_hub::sync::channel::unbounded();
    /// tx.try_send('x').unwrap();
    /// assert_eq!(rx.len(), 1);
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.buf.borrow().len()
    }

    /// Whether no value waits in the channel.
    ///
    /// ```
    /// let (_tx, rx) = corostack_hub::sync::channel::unbounded::<u8>();
    /// assert!(rx.is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Receives until the channel is empty and every sender is gone; from
/// [`Receiver::iter`] (or `for v in &receiver`). Fused: once it ends, no
/// sender can come back.
///
/// ```
/// use corostack_hub::{self as hub, sync::channel};
///
/// hub::run(|| {
///     let (tx, rx) = channel::bounded(8);
///     for word in ["a", "b"] {
///         tx.send(word).unwrap();
///     }
///     drop(tx);
///     let mut words = Vec::new();
///     for w in &rx {
///         words.push(w);
///     }
///     assert_eq!(words, ["a", "b"]);
/// });
/// ```
#[derive(Debug)]
pub struct Iter<'a, T>(&'a Receiver<T>);

impl<T> Iterator for Iter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.0.recv().ok()
    }
}

/// `None` comes once the channel is empty and every sender is gone, and no
/// sender can come back (a new one is only a clone of a live one).
impl<T> FusedIterator for Iter<'_, T> {}

impl<'a, T> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

/// One more handle: a count that would overflow (handles cloned and
/// forgotten `usize::MAX` times) panics rather than wrap.
#[inline]
#[track_caller]
fn count_one_more(n: usize, what: &str) -> usize {
    match n.checked_add(1) {
        Some(n) => n,
        None => panic!("corostack_hub::sync::channel: too many clones of a {what}"),
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0
            .senders
            .set(count_one_more(self.0.senders.get(), "Sender"));
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let n = self.0.senders.get() - 1;
        self.0.senders.set(n);
        if n == 0 {
            self.0.recv_q.wake_all();
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.0
            .receivers
            .set(count_one_more(self.0.receivers.get(), "Receiver"));
        Receiver(self.0.clone())
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let n = self.0.receivers.get() - 1;
        self.0.receivers.set(n);
        if n == 0 {
            self.0.send_q.wake_all();
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("len", &self.len())
            .field("capacity", &self.0.cap)
            .finish()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("len", &self.len())
            .field("capacity", &self.0.cap)
            .finish()
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sending on a channel whose receivers are gone")
    }
}

impl<T> std::error::Error for SendError<T> {}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("receiving on an empty channel whose senders are gone")
    }
}

impl std::error::Error for RecvError {}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Disconnected(_) => f.write_str("Disconnected(..)"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("the channel is full"),
            TrySendError::Disconnected(_) => f.write_str("the channel's receivers are gone"),
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("the channel is empty"),
            TryRecvError::Disconnected => f.write_str("the channel is empty and closed"),
        }
    }
}

impl std::error::Error for TryRecvError {}
