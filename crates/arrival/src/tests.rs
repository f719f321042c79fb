//! The filter on real loopback sockets: it needs `CAP_BPF` (root here; the test says so when it
//! cannot load, and fails when it should have).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

use super::*;

fn may_load_bpf() -> bool {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() }) == 0
}

/// A client socket with the filter attached before it connects to `to`.
fn connect_with_arrivals(to: SocketAddr) -> (TcpStream, Arrivals) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let arrivals = Arrivals::attach(socket.as_raw_fd()).unwrap();
    socket.connect(&to.into()).unwrap();
    (socket.into(), arrivals)
}

#[test]
fn frames_read_late_carry_when_they_arrived() {
    if !may_load_bpf() {
        assert!(Arrivals::attach(TcpListener::bind("127.0.0.1:0").unwrap().as_raw_fd()).is_err());
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut client, mut arrivals) = connect_with_arrivals(listener.local_addr().unwrap());
    let (mut server, _) = listener.accept().unwrap();
    server.set_nodelay(true).unwrap();
    assert!(arrivals.has_origin(), "the peer's SYN-ACK was recorded");

    // Ten 100-byte frames 40 ms apart; the client reads nothing until they are all sent.
    let sender = std::thread::spawn(move || {
        let mut sent = Vec::new();
        for i in 0..10u8 {
            sent.push(SystemTime::now());
            server.write_all(&[i; 100]).unwrap();
            std::thread::sleep(Duration::from_millis(40));
        }
        (server, sent)
    });
    let (_server, sent) = sender.join().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut got = vec![0u8; 1000];
    client.read_exact(&mut got).unwrap();
    let read_at = SystemTime::now();
    for (i, at) in sent.iter().enumerate() {
        assert!(got[i * 100..(i + 1) * 100].iter().all(|&b| b == i as u8));
        let arrived = arrivals
            .arrived((i as u64 + 1) * 100)
            .expect("a known time");
        let after_send = arrived
            .duration_since(*at)
            .unwrap_or_else(|e| panic!("frame {i} arrived {:?} before it was sent", e.duration()));
        // Loopback delivers within microseconds; allow a busy machine its scheduling.
        assert!(
            after_send < Duration::from_millis(15),
            "frame {i}: {after_send:?} after its send"
        );
        // And not when it was read: the first frame waited 500 ms in the socket.
        let before_read = read_at.duration_since(arrived).unwrap();
        assert!(
            before_read >= Duration::from_millis(100 + 40 * (9 - i as u64)),
            "frame {i}: {before_read:?} before the read"
        );
    }
    assert_eq!(arrivals.unknown(), 0);
}

#[test]
fn the_filter_passes_every_byte_in_order() {
    if !may_load_bpf() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut client, mut arrivals) = connect_with_arrivals(listener.local_addr().unwrap());
    let (mut server, _) = listener.accept().unwrap();
    let total = 8 << 20;
    let pattern = |i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    let sender = std::thread::spawn(move || {
        let data: Vec<u8> = (0..total).map(pattern).collect();
        // Writes of every size, small to large.
        let mut at = 0;
        let mut size = 1;
        while at < total {
            let n = size.min(total - at);
            server.write_all(&data[at..at + n]).unwrap();
            at += n;
            size = size * 3 % 70_001 + 1;
        }
    });
    let mut got = Vec::with_capacity(total);
    let mut buf = vec![0u8; 50_000];
    let mut last = None;
    while got.len() < total {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
        // A reader that looks up as it goes: times never go back.
        let at = arrivals.arrived(got.len() as u64);
        if let (Some(prev), Some(now)) = (last, at) {
            assert!(now >= prev);
        }
        last = at.or(last);
    }
    sender.join().unwrap();
    assert!(
        got.iter().enumerate().all(|(i, &b)| b == pattern(i)),
        "a byte changed"
    );
    // The ring (64 KiB) may overflow at this pace: what it lost is unknown, never wrong.
    assert!(last.is_some());
}

#[test]
fn a_socket_attached_after_it_connected_knows_nothing() {
    if !may_load_bpf() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let mut arrivals = Arrivals::attach(client.as_raw_fd()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    server.write_all(&[7; 100]).unwrap();
    let mut got = [0u8; 100];
    client.read_exact(&mut got).unwrap();
    assert_eq!(arrivals.arrived(100), None);
    assert!(!arrivals.has_origin());
}
