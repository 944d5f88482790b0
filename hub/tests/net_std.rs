//! The hub's sockets as std's: their descriptors handed over and taken
//! back (`IntoRawFd`, `FromRawFd`, `OwnedFd` both ways), `try_clone`,
//! `incoming`, and timeouts that refuse a zero duration as std does.

#[path = "util/hub.rs"]
mod hub_util;
mod util;

use std::io::{self, Read, Write};
use std::iter::FusedIterator;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use corostack_hub as hub;
use corostack_hub::net::{TcpListener, TcpStream, UdpSocket};
use hub_util::passes_in_child;

/// Bounds a test's waits: a hung socket fails the test instead of hanging.
const LIMIT: Duration = Duration::from_secs(30);

/// A listener on a free loopback port.
fn listen() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// A connected pair: (the client's end, the server's end).
fn pair() -> (TcpStream, TcpStream) {
    let (l, addr) = listen();
    let c = TcpStream::connect(addr).unwrap();
    let (s, _) = l.accept().unwrap();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    (c, s)
}

/// Whether `fd` is an open descriptor.
fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD reads the descriptor's flags, nothing else.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Sends `msg` one way and reads it back on the other end.
fn round_trip(mut a: &TcpStream, mut b: &TcpStream, msg: &[u8]) {
    a.write_all(msg).unwrap();
    let mut buf = vec![0; msg.len()];
    b.read_exact(&mut buf).unwrap();
    assert_eq!(buf, msg);
}

#[test]
fn a_stream_handed_over_as_an_owned_fd_leaves_the_poller_and_comes_back() {
    hub::run(|| {
        let (c, s) = pair();
        let fd = c.as_raw_fd();
        let owned: OwnedFd = c.into();
        assert_eq!(owned.as_raw_fd(), fd);
        assert!(is_open(fd), "handed over, not closed");
        // Out of the poller: taking it back registers it again in the same
        // hub (the poller refuses a descriptor it has already).
        let c = TcpStream::from(owned);
        round_trip(&s, &c, b"back");
        round_trip(&c, &s, b"and forth");
        // A raw descriptor, the same way.
        let raw = c.into_raw_fd();
        assert!(is_open(raw));
        // SAFETY: `raw` is open and ours: `into_raw_fd` handed it over.
        let c = unsafe { TcpStream::from_raw_fd(raw) };
        round_trip(&s, &c, b"raw");
        // To a std stream, which works on its own (non-blocking, as said).
        let std_c = std::net::TcpStream::from(OwnedFd::from(c));
        std_c.set_nonblocking(false).unwrap();
        (&std_c).write_all(b"std").unwrap();
        let mut buf = [0; 3];
        (&s).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"std");
        // And from one.
        let c = TcpStream::from(OwnedFd::from(std_c));
        round_trip(&c, &s, b"hub again");
    });
}

#[test]
fn a_listener_and_a_udp_socket_are_handed_over_and_taken_back() {
    hub::run(|| {
        let (l, addr) = listen();
        // SAFETY: the descriptor is ours, handed over by `into_raw_fd`.
        let l = unsafe { TcpListener::from_raw_fd(l.into_raw_fd()) };
        let l = TcpListener::from(OwnedFd::from(l));
        let client = hub::spawn(move || TcpStream::connect(addr).unwrap());
        let (s, _) = l.accept().unwrap();
        round_trip(&client.join().unwrap(), &s, b"accepted");

        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = b.local_addr().unwrap();
        // SAFETY: the descriptor is ours, handed over by `into_raw_fd`.
        let b = unsafe { UdpSocket::from_raw_fd(b.into_raw_fd()) };
        let b = UdpSocket::from(OwnedFd::from(b));
        b.set_read_timeout(Some(LIMIT)).unwrap();
        let receiver = hub::spawn(move || {
            let mut buf = [0; 8];
            let n = b.recv(&mut buf).unwrap();
            buf[..n].to_vec()
        });
        hub::yield_now(); // the receiver waits, registered anew
        a.send_to(b"dgram", to).unwrap();
        assert_eq!(receiver.join().unwrap(), b"dgram");
        let std_a = std::net::UdpSocket::from(OwnedFd::from(a));
        let a = UdpSocket::from_std(std_a).unwrap();
        assert!(a.local_addr().is_ok());
    });
}

#[test]
fn taking_over_a_descriptor_the_hub_watches_already_panics_by_name() {
    // In a child process: the attack closes a descriptor under its owner,
    // which another test's thread could reuse meanwhile.
    passes_in_child(
        "taking_over_a_descriptor_the_hub_watches_already_panics_by_name",
        || {
            hub::run(|| {
                let (c, _s) = pair();
                let raw = c.as_raw_fd();
                // What `FromRawFd`'s contract forbids: a second owner of a
                // descriptor that a hub socket owns (and the poller
                // watches). The poller refuses it, and the conversion
                // panics saying so.
                let p = std::panic::catch_unwind(|| {
                    // SAFETY: none: the attack `from_raw_fd`'s contract forbids.
                    drop(unsafe { TcpStream::from_raw_fd(raw) })
                })
                .expect_err("the poller refuses a descriptor it has already");
                let m = p.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(m.contains("TcpStream::from(OwnedFd)"), "{m}");
                // The failed conversion closed the descriptor it was
                // handed, as an owner does: `c` owns nothing now, so it is
                // forgotten rather than closed twice (which std's OwnedFd
                // reports as an I/O safety violation).
                assert!(!is_open(raw));
                std::mem::forget(c);
            });
        },
    );
}

#[test]
fn a_cloned_stream_reads_while_the_original_writes_and_outlives_it() {
    hub::run(|| {
        let (c, s) = pair();
        c.set_write_timeout(Some(LIMIT)).unwrap();
        let reader = c.try_clone().unwrap();
        assert_ne!(reader.as_raw_fd(), c.as_raw_fd());
        assert_eq!(reader.peer_addr().unwrap(), c.peer_addr().unwrap());
        // Its timeouts start as the original's, and are its own after.
        assert_eq!(reader.read_timeout().unwrap(), Some(LIMIT));
        assert_eq!(reader.write_timeout().unwrap(), Some(LIMIT));
        reader.set_read_timeout(None).unwrap();
        assert_eq!(c.read_timeout().unwrap(), Some(LIMIT));
        // The clone waits on its own registration while the original
        // writes: both are woken by their own readiness.
        let r = hub::spawn(move || {
            let mut buf = [0; 5];
            (&reader).read_exact(&mut buf).unwrap();
            (reader, buf)
        });
        hub::yield_now();
        round_trip(&c, &s, b"ping!");
        (&s).write_all(b"pong!").unwrap();
        let (reader, buf) = r.join().unwrap();
        assert_eq!(&buf, b"pong!");
        // Dropping the original closes its descriptor only.
        drop(c);
        round_trip(&s, &reader, b"still here");
        round_trip(&reader, &s, b"both ways");
        // Once the clone is gone too, the peer reads the end.
        drop(reader);
        assert_eq!((&s).read(&mut [0; 4]).unwrap(), 0);
    });
}

#[test]
fn a_clone_made_in_one_hub_works_in_the_next() {
    let (clone, s) = hub::run(|| {
        let (c, s) = pair();
        let clone = c.try_clone().unwrap();
        round_trip(&clone, &s, b"first hub");
        drop(c);
        (clone, s)
    });
    hub::run(move || {
        let r = hub::spawn(move || {
            let mut buf = [0; 10];
            (&clone).read_exact(&mut buf).unwrap();
            buf
        });
        hub::yield_now(); // the clone waits in this hub's poller
        (&s).write_all(b"second hub").unwrap();
        assert_eq!(&r.join().unwrap(), b"second hub");
    });
}

#[test]
fn a_cloned_listener_and_udp_socket_share_their_socket() {
    hub::run(|| {
        let (l, addr) = listen();
        let l2 = l.try_clone().unwrap();
        drop(l);
        let client = hub::spawn(move || TcpStream::connect(addr).unwrap());
        let (s, _) = l2.accept().unwrap();
        round_trip(&client.join().unwrap(), &s, b"via the clone");

        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(LIMIT)).unwrap();
        let b2 = b.try_clone().unwrap();
        assert_eq!(b2.read_timeout().unwrap(), Some(LIMIT));
        assert_eq!(b2.local_addr().unwrap(), b.local_addr().unwrap());
        let to = b.local_addr().unwrap();
        drop(b);
        a.send_to(b"one", to).unwrap();
        let mut buf = [0; 8];
        assert_eq!(b2.recv(&mut buf).unwrap(), 3);
    });
}

#[test]
fn incoming_accepts_each_connection_and_is_fused() {
    fn fused<I: FusedIterator>(_: &I) {}
    hub::run(|| {
        let (l, addr) = listen();
        for i in 0..3u8 {
            hub::spawn(move || TcpStream::connect(addr).unwrap().write_all(&[i]).unwrap());
        }
        let mut incoming = l.incoming();
        fused(&incoming);
        assert_eq!(incoming.size_hint(), (usize::MAX, None));
        let mut got: Vec<u8> = incoming
            .by_ref()
            .take(3)
            .map(|s| {
                let mut b = [0];
                s.unwrap().read_exact(&mut b).unwrap();
                b[0]
            })
            .collect();
        got.sort();
        assert_eq!(got, [0, 1, 2]);
        // It goes on: a later connection is its next item.
        hub::spawn(move || TcpStream::connect(addr).unwrap());
        assert!(incoming.next().unwrap().is_ok());
    });
}

#[test]
fn timeouts_refuse_a_zero_duration_as_std_does() {
    let std_err = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        c.set_read_timeout(Some(Duration::ZERO)).unwrap_err()
    };
    hub::run(move || {
        let (c, _s) = pair();
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ms = Some(Duration::from_millis(5));
        let zero = Some(Duration::ZERO);
        type Set<'a> = Box<dyn Fn(Option<Duration>) -> io::Result<()> + 'a>;
        type Get<'a> = Box<dyn Fn() -> io::Result<Option<Duration>> + 'a>;
        let setters: [(&str, Set, Get); 4] = [
            (
                "tcp read",
                Box::new(|t| c.set_read_timeout(t)),
                Box::new(|| c.read_timeout()),
            ),
            (
                "tcp write",
                Box::new(|t| c.set_write_timeout(t)),
                Box::new(|| c.write_timeout()),
            ),
            (
                "udp read",
                Box::new(|t| u.set_read_timeout(t)),
                Box::new(|| u.read_timeout()),
            ),
            (
                "udp write",
                Box::new(|t| u.set_write_timeout(t)),
                Box::new(|| u.write_timeout()),
            ),
        ];
        for (what, set, get) in setters {
            set(ms).unwrap();
            let err = set(zero).expect_err(what);
            assert_eq!(err.kind(), std_err.kind(), "{what}");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{what}");
            assert_eq!(err.to_string(), std_err.to_string(), "{what}");
            assert_eq!(get().unwrap(), ms, "{what}: unchanged");
            set(None).unwrap();
            assert_eq!(get().unwrap(), None, "{what}");
        }
        // A tiny timeout is one: the read gives up.
        c.set_read_timeout(Some(Duration::from_nanos(1))).unwrap();
        let err = (&c).read(&mut [0; 4]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    });
}

#[test]
fn a_udp_receive_gives_up_after_its_read_timeout() {
    hub::run(|| {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let err = u.recv_from(&mut [0; 8]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let err = u.recv(&mut [0; 8]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    });
}

#[test]
fn write_all_sends_a_buffer_larger_than_the_socket_takes_whole_and_in_order() {
    hub::run(|| {
        let (c, s) = pair();
        let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let sent = data.clone();
        // Through `TcpStream` and through `&TcpStream`: both take it all,
        // parking whenever the send buffer is full.
        let w = hub::spawn(move || {
            let mut c = c;
            c.write_all(&sent[..sent.len() / 2]).unwrap();
            (&c).write_all(&sent[sent.len() / 2..]).unwrap();
            (&c).write_all(&[]).unwrap();
        });
        let mut got = vec![0; data.len()];
        (&s).read_exact(&mut got).unwrap();
        w.join().unwrap();
        assert!(got == data, "the bytes arrived whole and in order");
    });
}

#[test]
fn a_stream_and_its_clone_both_move_to_a_later_hub_and_work_at_once() {
    let (c, c2, s) = hub::run(|| {
        let (c, s) = pair();
        let c2 = c.try_clone().unwrap();
        (c, c2, s)
    });
    // The first hub has ended; both handles rehome to this one, each with
    // its own descriptor, one reading while the other writes.
    hub::run(move || {
        let reader = hub::spawn(move || {
            let mut buf = [0; 4];
            (&c2).read_exact(&mut buf).unwrap();
            buf
        });
        round_trip(&c, &s, b"both");
        (&s).write_all(b"back").unwrap();
        assert_eq!(&reader.join().unwrap(), b"back");
    });
}

#[test]
fn a_stream_handed_over_after_its_hub_ended_works_as_a_std_stream() {
    let (c, s) = hub::run(pair);
    // No hub runs here: the hand-over needs none.
    let c = std::net::TcpStream::from(OwnedFd::from(c));
    let s = std::net::TcpStream::from(OwnedFd::from(s));
    for end in [&c, &s] {
        end.set_nonblocking(false).unwrap();
        end.set_read_timeout(Some(LIMIT)).unwrap();
    }
    (&c).write_all(b"std").unwrap();
    let mut buf = [0; 3];
    (&s).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"std");
    // try_clone needs a hub to register the clone with: it says so.
    let hub_c = hub::run(move || TcpStream::from_std(c).unwrap());
    let p =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hub_c.try_clone())).unwrap_err();
    let m = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(m.contains("hub::run"), "{m}");
}

#[test]
fn a_timeout_too_long_for_a_deadline_means_no_deadline() {
    hub::run(|| {
        let (c, s) = pair();
        c.set_read_timeout(Some(Duration::MAX)).unwrap();
        assert_eq!(c.read_timeout().unwrap(), Some(Duration::MAX));
        let r = hub::spawn(move || {
            let mut buf = [0; 2];
            (&c).read_exact(&mut buf).unwrap();
            buf
        });
        hub::sleep(Duration::from_millis(5));
        (&s).write_all(b"ok").unwrap();
        assert_eq!(&r.join().unwrap(), b"ok");
    });
}
