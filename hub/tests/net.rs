//! Sockets on the hub: the example echo server and client, 1,000
//! concurrent connections, kills and hostile peers, deadlines, UDP,
//! foreign descriptors, `SO_REUSEPORT` over two hubs, and `accept` out of
//! descriptors (in a child process).

mod util;

#[path = "../examples/echo_client.rs"]
mod echo_client;
#[path = "../examples/echo_server.rs"]
mod echo_server;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use corostack_hub as hub;
use corostack_hub::net::{TcpListener, TcpStream, UdpSocket};
use util::DropCounter;

/// A listener on a free loopback port.
fn listen() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Bounds a test's waits: a hung socket fails the test instead of hanging.
const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn the_echo_client_prints_what_the_echo_server_sends_back() {
    let lines = hub::run(|| {
        let (l, addr) = listen();
        hub::spawn(move || echo_server::serve(l));
        let mut input = vec!["hello\n".to_string(), "corostack hub\n".to_string()].into_iter();
        let out = Rc::new(RefCell::new(Vec::new()));
        let o = out.clone();
        echo_client::run(
            &addr.to_string(),
            || input.next(),
            move |l| o.borrow_mut().push(l),
        )
        .unwrap();
        out.take()
    });
    assert_eq!(lines, ["hello\n", "corostack hub\n"]);
}

#[test]
fn a_thousand_concurrent_loopback_connections() {
    let n = util::scaled(1000, 100);
    let rounds = 5;
    let (max_live, echoed) = hub::run(move || {
        let (l, addr) = listen();
        let live = Rc::new(Cell::new(0usize));
        let max_live = Rc::new(Cell::new(0usize));
        let (lv, mx) = (live.clone(), max_live.clone());
        hub::spawn(move || {
            loop {
                let (conn, _) = l.accept().unwrap();
                let (lv, mx) = (lv.clone(), mx.clone());
                lv.set(lv.get() + 1);
                mx.set(mx.get().max(lv.get()));
                hub::spawn(move || {
                    let _ = echo_server::handle(conn);
                    lv.set(lv.get() - 1);
                });
            }
        });
        let connected = Rc::new(Cell::new(0usize));
        let clients: Vec<_> = (0..n)
            .map(|i| {
                let connected = connected.clone();
                hub::spawn(move || {
                    let mut c = TcpStream::connect(addr).unwrap();
                    connected.set(connected.get() + 1);
                    // Everyone connects before anyone talks: n live at once.
                    while connected.get() < n {
                        hub::sleep(Duration::from_millis(1));
                    }
                    let mut total = 0;
                    for r in 0..rounds {
                        let msg = format!("{i:>6}:{r:>3}:").repeat(6); // 66 bytes
                        c.write_all(msg.as_bytes()).unwrap();
                        let mut back = vec![0; msg.len()];
                        c.read_exact(&mut back).unwrap();
                        assert_eq!(back, msg.as_bytes());
                        total += back.len();
                    }
                    total
                })
            })
            .collect();
        let r = hub::timeout(LIMIT, || hub::join_all(clients)).expect("the clients finished");
        let echoed: usize = r.into_iter().map(Result::unwrap).sum();
        (max_live.get(), echoed)
    });
    assert_eq!(max_live, n, "every connection was live at once");
    assert_eq!(echoed, n * rounds * 66);
}

#[test]
fn killing_a_coroutine_blocked_in_read_closes_its_socket() {
    hub::run(|| {
        let (l, addr) = listen();
        let drops = DropCounter::default();
        let g = drops.guard();
        let reader = hub::spawn(move || {
            let (mut conn, _) = l.accept().unwrap();
            let _g = g;
            let mut buf = [0; 16];
            let _ = conn.read(&mut buf); // never returns: the peer is silent
            unreachable!("killed while reading");
        });
        let mut client = TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(LIMIT)).unwrap();
        while reader.state() != hub::TaskState::Suspended {
            hub::sleep(Duration::from_millis(1));
        }
        hub::sleep(Duration::from_millis(5));
        reader.kill();
        assert_eq!(drops.get(), 1, "the reader's stack unwound");
        let mut buf = [0; 16];
        assert_eq!(client.read(&mut buf).unwrap(), 0, "the peer sees EOF");
        assert!(reader.join().unwrap_err().is_killed());
    });
}

#[test]
fn a_peer_that_resets_fails_only_its_own_connection() {
    hub::run(|| {
        let (l, addr) = listen();
        let results = Rc::new(RefCell::new(Vec::new()));
        let r = results.clone();
        hub::spawn(move || {
            loop {
                let (conn, _) = l.accept().unwrap();
                let r = r.clone();
                hub::spawn(move || {
                    let res = echo_server::handle(conn).map_err(|e| e.kind());
                    r.borrow_mut().push(res);
                });
            }
        });
        // A peer that sends, then resets (SO_LINGER 0) without reading.
        let rude = std::net::TcpStream::connect(addr).unwrap();
        (&rude).write_all(b"data the peer never reads").unwrap();
        socket2::SockRef::from(&rude)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        hub::sleep(Duration::from_millis(20));
        drop(rude);
        let start = Instant::now();
        while results.borrow().is_empty() && start.elapsed() < LIMIT {
            hub::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            *results.borrow(),
            [Err(io::ErrorKind::ConnectionReset)],
            "the reset reached the handler as an error"
        );
        // The server goes on serving.
        let mut ok = TcpStream::connect(addr).unwrap();
        ok.write_all(b"still here").unwrap();
        let mut back = [0; 10];
        ok.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"still here");
    });
}

#[test]
fn a_half_closed_peer_still_gets_every_byte_back() {
    hub::run(|| {
        let (l, addr) = listen();
        hub::spawn(move || echo_server::serve(l));
        let c = Rc::new(TcpStream::connect(addr).unwrap());
        c.set_read_timeout(Some(LIMIT)).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        // Write everything while another coroutine reads: the echo fills
        // the buffers both ways, so one coroutine could not do both.
        let w = c.clone();
        let sent = data.clone();
        let writer = hub::spawn(move || {
            (&*w).write_all(&sent).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        (&*c).read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data);
    });
}

/// Reads a connection to its end, 64 bytes a `read` at most, after
/// `pause`, while the peer writes `chunks` 20 ms apart and then shuts its
/// side down; returns what each read got.
fn reads_of(pause: Duration, chunks: &[&'static [u8]]) -> Vec<Vec<u8>> {
    let chunks = chunks.to_vec();
    hub::run(move || {
        let (l, addr) = listen();
        let server = hub::spawn(move || {
            let (c, _) = l.accept().unwrap();
            c.set_read_timeout(Some(LIMIT)).unwrap();
            hub::sleep(pause);
            let mut buf = [0u8; 64];
            let mut got = Vec::new();
            loop {
                match (&c).read(&mut buf).unwrap() {
                    0 => break got,
                    n => got.push(buf[..n].to_vec()),
                }
            }
        });
        let mut s = TcpStream::connect(addr).unwrap();
        for (i, chunk) in chunks.iter().enumerate() {
            if i > 0 {
                hub::sleep(Duration::from_millis(20));
            }
            s.write_all(chunk).unwrap();
        }
        s.shutdown(Shutdown::Write).unwrap();
        server.join().unwrap()
    })
}

/// A read that fills less than its buffer marks the socket drained: the
/// next read parks without trying. Data that comes later must still wake
/// it, and an end of stream already in must still be read.
#[test]
fn reads_after_a_short_read_see_later_data_and_the_end_of_stream() {
    let got = reads_of(Duration::ZERO, &[b"ab", b"cd", b"ef"]);
    assert_eq!(got, [b"ab".to_vec(), b"cd".to_vec(), b"ef".to_vec()]);
    // The data and the end of stream are both in before the first read.
    let got = reads_of(Duration::from_millis(20), &[b"xyz"]);
    assert_eq!(got, [b"xyz".to_vec()]);
}

#[test]
fn a_peer_that_never_reads_meets_the_write_timeout() {
    hub::run(|| {
        let (l, addr) = listen();
        let writer = hub::spawn(move || {
            let (conn, _) = l.accept().unwrap();
            conn.set_write_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let chunk = vec![7u8; 64 * 1024];
            let mut written = 0usize;
            loop {
                match (&conn).write(&chunk) {
                    Ok(n) => written += n,
                    Err(e) => return (written, e.kind()),
                }
            }
        });
        let _silent = TcpStream::connect(addr).unwrap();
        let (written, kind) = hub::timeout(LIMIT, || writer.join().unwrap()).unwrap();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert!(written > 0, "the buffers took some data first");
    });
}

#[test]
fn killing_a_writer_stuck_on_a_peer_that_never_reads_frees_the_peer() {
    hub::run(|| {
        let (l, addr) = listen();
        let writer = hub::spawn(move || {
            let (mut conn, _) = l.accept().unwrap();
            let chunk = vec![7u8; 64 * 1024];
            loop {
                conn.write_all(&chunk).unwrap();
            }
        });
        let mut peer = TcpStream::connect(addr).unwrap();
        peer.set_read_timeout(Some(LIMIT)).unwrap();
        // Let the writer fill the buffers and park.
        hub::sleep(Duration::from_millis(30));
        assert_eq!(writer.state(), hub::TaskState::Suspended);
        writer.kill();
        // The peer reads what was buffered, then EOF: the socket closed.
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert!(!got.is_empty() && got.iter().all(|&b| b == 7));
        assert!(writer.join().unwrap_err().is_killed());
    });
}

#[test]
fn a_panicking_connection_leaves_the_others_running() {
    hub::run(|| {
        let (l, addr) = listen();
        let failures = Rc::new(Cell::new(0));
        let f = failures.clone();
        hub::spawn(move || {
            loop {
                let (mut conn, _) = l.accept().unwrap();
                let f = f.clone();
                let h = hub::spawn(move || {
                    let mut buf = [0; 4];
                    loop {
                        conn.read_exact(&mut buf).unwrap();
                        if &buf == b"boom" {
                            panic!("a handler failed");
                        }
                        conn.write_all(&buf).unwrap();
                    }
                });
                // A supervisor per connection notes failures.
                hub::spawn(move || {
                    if h.join().is_err_and(|e| e.is_panic()) {
                        f.set(f.get() + 1);
                    }
                });
            }
        });
        let mut a = TcpStream::connect(addr).unwrap();
        let mut b = TcpStream::connect(addr).unwrap();
        a.set_read_timeout(Some(LIMIT)).unwrap();
        b.set_read_timeout(Some(LIMIT)).unwrap();
        for _ in 0..3 {
            a.write_all(b"ping").unwrap();
            let mut back = [0; 4];
            a.read_exact(&mut back).unwrap();
        }
        b.write_all(b"boom").unwrap();
        let mut buf = [0; 4];
        assert_eq!(
            b.read(&mut buf).unwrap(),
            0,
            "the failed handler's socket closed"
        );
        assert_eq!(failures.get(), 1);
        a.write_all(b"pong").unwrap();
        a.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
    });
}

#[test]
fn read_timeout_and_connect_errors() {
    hub::run(|| {
        let (l, addr) = listen();
        let _keep = hub::spawn(move || {
            let (_conn, _) = l.accept().unwrap();
            hub::sleep(Duration::from_secs(3600));
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        assert_eq!(c.read_timeout().unwrap(), Some(Duration::from_millis(20)));
        let start = Instant::now();
        let err = c.read(&mut [0; 8]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert_eq!(c.peer_addr().unwrap(), addr);
        assert_eq!(c.local_addr().unwrap().ip(), addr.ip());
        c.set_nodelay(true).unwrap();
        assert!(c.nodelay().unwrap());
        // A port with no listener refuses.
        let closed = {
            let (l, a) = listen();
            drop(l);
            a
        };
        let err = TcpStream::connect(closed).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let err = TcpStream::connect_timeout(&closed, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_ok());
    });
}

#[test]
fn udp_datagrams_round_trip() {
    hub::run(|| {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let saddr = server.local_addr().unwrap();
        let echo = hub::spawn(move || {
            let mut buf = [0; 64];
            for _ in 0..3 {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                server.send_to(&buf[..n], from).unwrap();
            }
        });
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(saddr).unwrap();
        assert_eq!(client.peer_addr().unwrap(), saddr);
        for word in ["one", "two", "three"] {
            client.send(word.as_bytes()).unwrap();
            let mut buf = [0; 64];
            let n = client.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], word.as_bytes());
        }
        echo.join().unwrap();
    });
}

#[test]
fn wait_readable_and_writable_on_foreign_descriptors() {
    use std::os::unix::net::UnixStream;
    hub::run(|| {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let order = Rc::new(RefCell::new(Vec::new()));
        let o = order.clone();
        let writer = hub::spawn(move || {
            o.borrow_mut().push("writer");
            hub::wait_writable(&a).unwrap();
            a.write_all(b"x").unwrap();
            a
        });
        hub::wait_readable(&b).unwrap();
        order.borrow_mut().push("reader woke");
        let mut buf = [0; 1];
        (&b).read_exact(&mut buf).unwrap();
        assert_eq!(*order.borrow(), ["writer", "reader woke"]);
        // Already readable: returns at once (EOF counts).
        drop(writer.join().unwrap());
        hub::wait_readable(&b).unwrap();
        assert_eq!((&b).read(&mut buf).unwrap(), 0);
        // A descriptor the hub already watches is refused, not hung on.
        let (l, _) = listen();
        assert_eq!(
            hub::wait_readable(&l).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
    });
}

#[test]
fn two_hubs_share_a_port_with_reuseport() {
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    let rx = std::sync::Mutex::new(rx);
    let both_bound = std::sync::Barrier::new(2);
    let n = util::scaled(64, 16);
    let accepted = hub::Builder::new().threads(2).run_on_threads(move |i| {
        let listener = if i == 0 {
            let l = TcpListener::bind_reuseport("127.0.0.1:0").unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            l
        } else {
            TcpListener::bind_reuseport(rx.lock().unwrap().recv().unwrap()).unwrap()
        };
        // Nothing runs on either hub yet: a plain barrier is harmless.
        both_bound.wait();
        let addr = listener.local_addr().unwrap();
        let count = Rc::new(Cell::new(0usize));
        let c = count.clone();
        hub::spawn(move || {
            loop {
                let (conn, _) = listener.accept().unwrap();
                c.set(c.get() + 1);
                hub::spawn(move || echo_server::handle(conn));
            }
        });
        if i == 0 {
            let clients: Vec<_> = (0..n)
                .map(|_| {
                    hub::spawn(move || {
                        let mut s = TcpStream::connect(addr).unwrap();
                        s.write_all(b"hi").unwrap();
                        let mut b = [0; 2];
                        s.read_exact(&mut b).unwrap();
                        b == *b"hi"
                    })
                })
                .collect();
            assert!(hub::join_all(clients).into_iter().all(|r| r.unwrap()));
        }
        // Let the other hub serve its share, then stop.
        hub::sleep(Duration::from_millis(300));
        count.get()
    });
    assert!(accepted.iter().sum::<usize>() >= n, "{accepted:?}");
    assert!(
        accepted.iter().all(|&c| c > 0),
        "both hubs accepted: {accepted:?}"
    );
}

/// The number of descriptors this process has open.
fn open_fds() -> usize {
    // Minus the one read_dir itself holds.
    std::fs::read_dir("/proc/self/fd").unwrap().count() - 1
}

/// User plus system CPU time of this process.
fn cpu_time() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the buffer we own.
    let ru = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()), 0);
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The child's side: with room for 8 clients and 4 accepted connections
/// only, `accept` runs out of descriptors, waits without spinning, and
/// accepts the rest once clients leave.
fn emfile_child() {
    hub::run(|| {
        let (l, addr) = listen();
        let room = 8 + 4;
        let limit = (open_fds() + room) as libc::rlim_t;
        let rl = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit reads the struct we pass.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) }, 0);
        let mut clients: Vec<_> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let accepted = Rc::new(Cell::new(0));
        let a = accepted.clone();
        hub::spawn(move || {
            loop {
                let (conn, _) = l.accept().expect("accept never fails for EMFILE");
                a.set(a.get() + 1);
                hub::spawn(move || echo_server::handle(conn));
            }
        });
        hub::sleep(Duration::from_millis(50));
        let before = accepted.get();
        let (cpu0, wall0) = (cpu_time(), Instant::now());
        hub::sleep(Duration::from_millis(400));
        let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
        assert_eq!(accepted.get(), before, "nothing more could be accepted");
        assert!(before < 8, "the limit was hit ({before} accepted)");
        assert!(
            cpu * 4 < wall,
            "accept must not spin while out of descriptors: {cpu:?} CPU in {wall:?}"
        );
        // Clients leave: their connections close, descriptors free up, and
        // the waiting connections are accepted and served.
        let rest = clients.split_off(before);
        drop(clients);
        for mut c in rest {
            c.set_read_timeout(Some(LIMIT)).unwrap();
            c.write_all(b"back").unwrap();
            let mut b = [0; 4];
            c.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"back");
        }
        assert_eq!(accepted.get(), 8);
        println!("EMFILE-OK accepted {before} before recovering, {cpu:?} CPU in {wall:?}");
    });
}

#[test]
fn accept_out_of_descriptors_backs_off_and_recovers() {
    if util::child_role().as_deref() == Some("emfile") {
        emfile_child();
        return;
    }
    let out = util::run_child("accept_out_of_descriptors_backs_off_and_recovers", "emfile");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("EMFILE-OK"),
        "child failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
}
