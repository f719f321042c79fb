//! The filter on real loopback sockets: it needs `CAP_BPF` (root here; the test says so when it
//! cannot load, and fails when it should have).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

use super::*;

/// Whether this process holds what loading the filter needs: `CAP_BPF` (39) or `CAP_SYS_ADMIN`
/// (21) in its effective set (root on a machine, not root in a container that drops them).
/// With them the tests require the filter to work; without, that it is refused.
fn may_load_bpf() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap_or(0);
    effective & (1 << 39 | 1 << 21) != 0
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

/// The 16-bit ones' complement sum of `bytes` (odd lengths padded with a zero), folded in.
fn ones_complement_sum(mut sum: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    sum
}

/// Sends one TCP segment from `from` to `to` through a raw socket (root), as a hostile network
/// could: `seq`, `flags`, no ACK number, `payload`; its checksum right, or not.
fn inject(
    from: SocketAddr,
    to: SocketAddr,
    seq: u32,
    flags: u8,
    payload: &[u8],
    checksum_ok: bool,
) {
    let (SocketAddr::V4(from), SocketAddr::V4(to)) = (from, to) else {
        panic!("IPv4 only");
    };
    let mut segment = Vec::new();
    segment.extend(from.port().to_be_bytes());
    segment.extend(to.port().to_be_bytes());
    segment.extend(seq.to_be_bytes());
    segment.extend(0u32.to_be_bytes());
    segment.extend([5 << 4, flags]);
    segment.extend(65_535u16.to_be_bytes());
    segment.extend([0; 4]);
    segment.extend_from_slice(payload);
    let mut sum = ones_complement_sum(0, &from.ip().octets());
    sum = ones_complement_sum(sum, &to.ip().octets());
    sum = ones_complement_sum(sum, &[0, 6]);
    sum = ones_complement_sum(sum, &(segment.len() as u16).to_be_bytes());
    sum = ones_complement_sum(sum, &segment);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut checksum = !(sum as u16);
    if !checksum_ok {
        checksum ^= 0x5555;
    }
    segment[16..18].copy_from_slice(&checksum.to_be_bytes());
    let raw = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::from(libc::SOCK_RAW),
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    raw.send_to(&segment, &SocketAddr::V4(to).into()).unwrap();
}

/// A connection, a segment TCP discards injected at the next byte it expects, then the real
/// bytes 100 ms later: when the reader's bytes could first be read, against when they were sent.
fn stamp_after_a_discarded_segment(
    flags: u8,
    checksum_ok: bool,
) -> (SystemTime, Option<SystemTime>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut client, mut arrivals) = connect_with_arrivals(listener.local_addr().unwrap());
    let (mut server, _) = listener.accept().unwrap();
    let mut records = Vec::new();
    arrivals.filter.drain(|s| records.push(s));
    let syn = records
        .iter()
        .find(|s| s.flags & 0x02 != 0)
        .expect("the SYN-ACK");
    let next = syn.seq.wrapping_add(1);
    for s in records {
        arrivals.timeline.segment(s);
    }
    inject(
        server.local_addr().unwrap(),
        client.local_addr().unwrap(),
        next,
        flags,
        &[0xee; 200],
        checksum_ok,
    );
    std::thread::sleep(Duration::from_millis(100));
    let sent = SystemTime::now();
    server.write_all(&[1; 200]).unwrap();
    let mut got = [0u8; 200];
    client.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|&b| b == 1), "the stream changed");
    (sent, arrivals.arrived(200))
}

#[test]
fn a_segment_tcp_drops_for_its_flags_does_not_stamp_the_bytes_that_come_after() {
    if !may_load_bpf() {
        return;
    }
    // No ACK flag (PSH alone): TCP drops it in an established connection.
    let (sent, arrived) = stamp_after_a_discarded_segment(0x08, true);
    if let Some(arrived) = arrived {
        // The wall clock's offset is kept while it moves less than 20 µs: allow a millisecond.
        assert!(
            arrived + Duration::from_millis(1) >= sent,
            "stamped {:?} before the bytes were sent",
            sent.duration_since(arrived).unwrap()
        );
    }
}

/// TCP judges a segment's checksum (for segments over 76 bytes) and its ACK number after the
/// filter has recorded it (as it drops a copy for receive memory, backlog, a pruned out-of-order
/// queue, out of window): the copy TCP keeps comes later, and the bytes take its time, not the
/// dropped copy's (each case here was stamped 100 ms early when a second copy changed nothing).
#[test]
fn a_segment_tcp_drops_after_the_filter_does_not_stamp_the_bytes_that_come_after() {
    if !may_load_bpf() {
        return;
    }
    // An ACK of nothing sent (0); a bad checksum.
    for (flags, checksum_ok) in [(0x18, true), (0x18, false)] {
        let (sent, arrived) = stamp_after_a_discarded_segment(flags, checksum_ok);
        if let Some(arrived) = arrived {
            assert!(
                arrived + Duration::from_millis(1) >= sent,
                "checksum ok {checksum_ok}: stamped {:?} before the bytes were sent",
                sent.duration_since(arrived).unwrap()
            );
        }
    }
}

/// The thread paused between its two readings of the clocks (preempted, or its virtual CPU
/// stolen), 5 ms: the offset it takes must not make a time earlier than the true one.
#[test]
fn a_pause_between_the_clock_readings_never_makes_a_time_earlier() {
    // The true clocks: wall = monotonic + OFFSET.
    const OFFSET: i128 = 1_700_000_000_000_000_000;
    const NOW: u64 = 10_000_000_000;
    let reads = std::cell::Cell::new(0u64);
    // The first reading is at NOW, the second 5 ms later, whichever clock each reads.
    let read = || {
        let pause = if reads.get() == 0 { 0 } else { 5_000_000 };
        reads.set(reads.get() + 1);
        NOW + pause
    };
    let arrived = NOW - 1_000_000;
    let truth =
        SystemTime::UNIX_EPOCH + Duration::from_nanos((i128::from(arrived) + OFFSET) as u64);
    let mut clock = WallClock::default();
    let at = clock.wall_time_with(arrived, read, || i128::from(read()) + OFFSET);
    assert!(
        at >= truth,
        "{:?} earlier than it arrived",
        truth.duration_since(at).unwrap()
    );
}

/// Urgent data: TCP takes the urgent byte out of the stream the reader reads (without
/// `SO_OOBINLINE`), so the reader's offsets fall behind the sequence numbers. A peer sends 100
/// bytes, the last urgent, then one more byte 100 ms later: the reader's 100th byte is that one.
#[test]
fn urgent_data_does_not_stamp_a_byte_with_an_earlier_segment() {
    if !may_load_bpf() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut client, mut arrivals) = connect_with_arrivals(listener.local_addr().unwrap());
    let (mut server, _) = listener.accept().unwrap();
    server.set_nodelay(true).unwrap();
    let urgent = [5u8; 100];
    // SAFETY: a live socket and a buffer of the length given.
    let sent = unsafe {
        libc::send(
            server.as_raw_fd(),
            urgent.as_ptr().cast(),
            urgent.len(),
            libc::MSG_OOB,
        )
    };
    assert_eq!(sent, 100);
    std::thread::sleep(Duration::from_millis(100));
    let sent = SystemTime::now();
    server.write_all(&[6]).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let mut got = Vec::new();
    let mut buf = [0u8; 200];
    while got.len() < 100 {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got.len(), 100, "the urgent byte is not in the stream");
    assert_eq!(got[99], 6);
    if let Some(arrived) = arrivals.arrived(100) {
        assert!(
            arrived + Duration::from_millis(1) >= sent,
            "stamped {:?} before the byte was sent",
            sent.duration_since(arrived).unwrap()
        );
    }
}
