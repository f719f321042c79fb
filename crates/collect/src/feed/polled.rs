//! A connection's TCP socket, read on the feed's read tick instead of on every arrival.
//!
//! Why: on this kind of machine a wake-up of the feed's thread costs tens of microseconds
//! (`epoll_wait`, the context switch, the timer bookkeeping), several times the work on a frame.
//! A socket registered with tokio's reactor wakes the thread for every packet that arrives, so
//! at a few hundred frames a second the feed woke about once per frame. A [`PolledTcp`] is
//! registered with the reactor only while the connection opens (TCP, TLS and the WebSocket
//! handshake, which wait on readiness as usual); then [`PolledTcp::poll_on_tick`] takes it out
//! of the reactor and it is read with plain non-blocking reads when the connection's read tick
//! comes ([`super::FeedConfig::read_every`]): one wake-up of the thread reads what every
//! connection received since the last tick.
//!
//! What must hold:
//! - nothing is lost or reordered: only the moment a frame is read changes (a frame is stamped
//!   when it is read, at most one read period after it arrived);
//! - a read that finds nothing returns `Pending` without arranging a wake-up: the reader (the
//!   connection's loop) must come back on its own tick ([`PolledTcp::rearm`]); after a read
//!   that came back short (the kernel had no more), reads answer `Pending` without a system
//!   call until then, so a tick costs one read per connection, not two. Everything else behaves as a normal
//!   stream: data, end of stream and errors are returned as they are;
//! - a write the kernel cannot take now is retried every [`WRITE_RETRY`] (a timer), never in a
//!   busy loop.
//!
//! The stream reads the kernel [`READ_AHEAD`] bytes at a time into a buffer of its own, and the
//! reader above it (tungstenite, or rustls under it) takes from that buffer. Why: tungstenite
//! zero-fills the free space of its read buffer before every read it makes (its
//! `read_buffer_size`, which the connection sets small for that reason, [`READ_CHUNK`]), at least
//! twice a tick per connection (the read that finds data, and the one that finds none); with 16
//! KiB that was a twentieth of the feed thread over a whole market (`perf`). Our buffer is
//! zeroed once, when it is made; a small read of tungstenite's is then a copy of what is there,
//! and the kernel is still asked once a tick for up to [`READ_AHEAD`] bytes.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::framing::{Framing, Units};

/// How often a write the kernel refused (its send buffer full) is tried again.
pub const WRITE_RETRY: Duration = Duration::from_millis(1);

/// How much one read of the kernel takes at most (half a socket's default receive buffer).
pub const READ_AHEAD: usize = 64 * 1024;

/// What tungstenite asks of the stream at most a read (its `read_buffer_size`): the free space
/// it zero-fills before each read (see the module doc). Frames larger than this still arrive
/// whole: tungstenite's buffer grows to the frame.
pub const READ_CHUNK: usize = 4 * 1024;

/// A TCP stream read through the reactor until [`PolledTcp::poll_on_tick`], then on the
/// connection's read tick (see the module doc).
#[derive(Debug)]
pub struct PolledTcp {
    inner: Inner,
    /// While a write waits for room in the send buffer: when to try again.
    write_retry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A read since the last [`PolledTcp::rearm`] came back short (or empty): the kernel had
    /// nothing more, so reads answer `Pending` without asking it again until the next tick.
    drained: bool,
    /// What the last read of the kernel brought that the reader has not taken yet.
    ahead: Ahead,
    /// Bytes of the stream the reader has taken.
    given: u64,
    /// The kernel's arrival stamps of the stream, and where its units end (reads stop there, so
    /// that what the reader took ends where the message it hands out does): see
    /// [`super::framing`].
    arrivals: Option<(krakenbook_arrival::Arrivals, Units)>,
}

/// The read-ahead buffer: `buf[taken..filled]` is what the reader has not taken yet.
#[derive(Debug, Default)]
struct Ahead {
    /// Empty until the first read, then [`READ_AHEAD`] bytes, zeroed once.
    buf: Vec<u8>,
    taken: usize,
    filled: usize,
}

impl Ahead {
    /// Gives the reader as much of what is left as `out` holds (not past the end of a unit,
    /// with `units`): `false` when nothing is left. Adds what it gave to `given`.
    fn give(&mut self, out: &mut ReadBuf<'_>, units: Option<&mut Units>, given: &mut u64) -> bool {
        if self.taken == self.filled {
            return false;
        }
        let next = &self.buf[self.taken..self.filled];
        let n = match units {
            Some(units) => units.take(next, out.remaining()),
            None => out.remaining().min(next.len()),
        };
        out.put_slice(&next[..n]);
        self.taken += n;
        *given += n as u64;
        true
    }

    /// The whole buffer, to read the kernel into (nothing left in it).
    fn space(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = vec![0; READ_AHEAD];
        }
        self.taken = 0;
        self.filled = 0;
        &mut self.buf
    }
}

#[derive(Debug)]
enum Inner {
    Registered(tokio::net::TcpStream),
    Polled(std::net::TcpStream),
    /// Taking the stream out of the reactor failed: it is gone.
    Gone,
}

impl PolledTcp {
    /// A stream read through the reactor (as a plain `TcpStream`) until
    /// [`PolledTcp::poll_on_tick`].
    pub fn new(tcp: tokio::net::TcpStream) -> Self {
        PolledTcp {
            inner: Inner::Registered(tcp),
            write_retry: None,
            drained: false,
            ahead: Ahead::default(),
            given: 0,
            arrivals: None,
        }
    }

    /// A stream whose frames are stamped with when they arrived: `arrivals` was attached to the
    /// socket before it connected, and the stream carries `framing`.
    pub fn with_arrivals(
        tcp: tokio::net::TcpStream,
        arrivals: krakenbook_arrival::Arrivals,
        framing: Framing,
    ) -> Self {
        let mut stream = PolledTcp::new(tcp);
        stream.arrivals = Some((arrivals, Units::new(framing)));
        stream
    }

    /// Whether frames are stamped with their arrival (the filter is on the socket).
    pub fn has_arrivals(&self) -> bool {
        self.arrivals.is_some()
    }

    /// When everything the reader has taken had first all arrived (the kernel's stamp of the last
    /// byte taken, on the wall clock); `None` without stamps or when the kernel's records do not
    /// say (see [`krakenbook_arrival`]).
    pub fn arrived(&mut self) -> Option<std::time::SystemTime> {
        let given = self.given;
        let (arrivals, _) = self.arrivals.as_mut()?;
        arrivals.arrived(given)
    }

    /// Takes the stream out of the reactor: from now on a read returns what the kernel holds,
    /// or `Pending` without a wake-up (the caller reads again on its tick). Does nothing when
    /// already done.
    pub fn poll_on_tick(&mut self) -> io::Result<()> {
        if !matches!(self.inner, Inner::Registered(_)) {
            return Ok(());
        }
        let Inner::Registered(tcp) = std::mem::replace(&mut self.inner, Inner::Gone) else {
            return Ok(());
        };
        // `into_std` leaves the socket non-blocking.
        self.inner = Inner::Polled(tcp.into_std()?);
        Ok(())
    }

    /// The read tick came: reads ask the kernel again (see `drained`).
    pub fn rearm(&mut self) {
        self.drained = false;
    }

    /// Whether the stream is read on the tick (not through the reactor).
    #[cfg(test)]
    pub fn is_polled(&self) -> bool {
        matches!(self.inner, Inner::Polled(_))
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the socket could not be taken out of the reactor",
    )
}

impl AsyncRead for PolledTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let units = this.arrivals.as_mut().map(|(_, units)| units);
        if buf.remaining() == 0 || this.ahead.give(buf, units, &mut this.given) {
            return Poll::Ready(Ok(()));
        }
        // Nothing read ahead: read the kernel into the buffer of our own, which the reader then
        // takes from.
        let read = match &mut this.inner {
            Inner::Registered(tcp) => {
                let mut ahead = ReadBuf::new(this.ahead.space());
                match Pin::new(tcp).poll_read(cx, &mut ahead) {
                    Poll::Ready(Ok(())) => Ok(ahead.filled().len()),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // The kernel had no more a moment ago: what came since waits for the next tick (one
            // system call per connection and tick saved, nothing lost).
            Inner::Polled(_) if this.drained => return Poll::Pending,
            Inner::Polled(tcp) => loop {
                match tcp.read(this.ahead.space()) {
                    Ok(n) => {
                        // A short read took all the kernel held.
                        this.drained = n > 0 && n < READ_AHEAD;
                        break Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // Nothing yet: the connection's read tick comes back for it.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        this.drained = true;
                        return Poll::Pending;
                    }
                    Err(e) => break Err(e),
                }
            },
            Inner::Gone => Err(gone()),
        };
        // 0 bytes is the end of the stream, returned as it is.
        this.ahead.filled = read?;
        let units = this.arrivals.as_mut().map(|(_, units)| units);
        this.ahead.give(buf, units, &mut this.given);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PolledTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Registered(tcp) => Pin::new(tcp).poll_write(cx, data),
            Inner::Polled(tcp) => loop {
                if let Some(retry) = &mut this.write_retry {
                    if retry.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.write_retry = None;
                }
                match tcp.write(data) {
                    Ok(n) => return Poll::Ready(Ok(n)),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // The send buffer is full: try again shortly (the timer wakes us).
                        this.write_retry = Some(Box::pin(tokio::time::sleep(WRITE_RETRY)));
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            Inner::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Registered(tcp) => Pin::new(tcp).poll_flush(cx),
            // A TCP socket has nothing of its own to flush.
            Inner::Polled(_) => Poll::Ready(Ok(())),
            Inner::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Registered(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Inner::Polled(tcp) => Poll::Ready(match tcp.shutdown(std::net::Shutdown::Write) {
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                other => other,
            }),
            Inner::Gone => Poll::Ready(Err(gone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (PolledTcp, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), async {
            listener.accept().await.unwrap().0
        });
        (PolledTcp::new(client.unwrap()), server)
    }

    /// Reads what the kernel holds without waiting (as the read tick does).
    fn read_now(stream: &mut PolledTcp) -> Option<Vec<u8>> {
        stream.rearm();
        read_again(stream)
    }

    /// Reads on a tick until something comes (at most half a second: loopback delivers at once,
    /// but a busy machine may take a moment).
    async fn read_soon(stream: &mut PolledTcp) -> Option<Vec<u8>> {
        for _ in 0..100 {
            if let Some(got) = read_now(stream) {
                return Some(got);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// Reads again within the same tick (no rearm).
    fn read_again(stream: &mut PolledTcp) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 64];
        match stream.read(&mut buf).now_or_never() {
            None => None,
            Some(n) => {
                let n = n.unwrap();
                buf.truncate(n);
                Some(buf)
            }
        }
    }

    #[tokio::test]
    async fn a_polled_stream_reads_what_arrived_in_order_and_is_pending_when_empty() {
        let (mut client, mut server) = pair().await;
        // Through the reactor first (the handshake's way).
        server.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        client.poll_on_tick().unwrap();
        assert!(client.is_polled());
        assert_eq!(read_now(&mut client), None, "nothing arrived: pending");
        server.write_all(b"one ").await.unwrap();
        server.write_all(b"two").await.unwrap();
        let mut all = Vec::new();
        // Loopback delivers at once, but give it a moment on a busy machine.
        for _ in 0..100 {
            if let Some(part) = read_now(&mut client) {
                all.extend(part);
            }
            if all.len() == 7 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(all, b"one two");
        // Writes go out; the peer's end of stream reads as such.
        client.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        server.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        drop(server);
        assert_eq!(
            read_soon(&mut client).await,
            Some(Vec::new()),
            "end of stream: a read of 0 bytes"
        );
    }

    #[tokio::test]
    async fn after_a_short_read_what_arrives_waits_for_the_next_tick() {
        let (mut client, mut server) = pair().await;
        client.poll_on_tick().unwrap();
        server.write_all(b"first").await.unwrap();
        let first = read_soon(&mut client).await;
        assert_eq!(
            first.as_deref(),
            Some(&b"first"[..]),
            "a short read (5 of 64 bytes)"
        );
        server.write_all(b"second").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            read_again(&mut client),
            None,
            "within the tick: not asked again"
        );
        assert_eq!(
            read_now(&mut client).as_deref(),
            Some(&b"second"[..]),
            "the next tick"
        );
        // A full read (64 of 64 bytes) may leave more: the same tick reads on.
        server.write_all(&[7u8; 100]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(read_now(&mut client).map(|b| b.len()), Some(64));
        assert_eq!(read_again(&mut client).map(|b| b.len()), Some(36));
    }

    /// Bytes no two runs of which repeat soon: a slip of order or a lost run shows.
    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Reads `want` bytes in reads of `chunk` bytes, a tick (rearm) whenever a read is pending.
    async fn read_all(stream: &mut PolledTcp, want: usize, chunk: usize) -> Vec<u8> {
        let mut all = Vec::new();
        for _ in 0..2000 {
            let mut buf = vec![0u8; chunk];
            match stream.read(&mut buf).now_or_never() {
                Some(n) => {
                    let n = n.unwrap();
                    assert!(n > 0, "end of stream after {} bytes", all.len());
                    all.extend_from_slice(&buf[..n]);
                    if all.len() >= want {
                        break;
                    }
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    stream.rearm();
                }
            }
        }
        all
    }

    /// Through its read-ahead buffer the stream gives everything that arrived, in order, to
    /// reads of any size, through the reactor and on the tick alike, frames larger than the
    /// buffer included; the end of the stream comes after the last byte.
    #[tokio::test]
    async fn reads_of_any_size_take_everything_in_order_through_the_read_ahead() {
        for (polled, chunk) in [
            (false, 1000),
            (true, 1000),
            (true, READ_CHUNK),
            (true, 100_000),
        ] {
            let (mut client, mut server) = pair().await;
            if polled {
                client.poll_on_tick().unwrap();
            }
            let sent = pattern(3 * READ_AHEAD + 12_345);
            let writer = tokio::spawn(async move {
                server.write_all(&sent).await.unwrap();
                server
            });
            let got = read_all(&mut client, 3 * READ_AHEAD + 12_345, chunk).await;
            assert_eq!(
                got.len(),
                3 * READ_AHEAD + 12_345,
                "polled {polled}, chunk {chunk}"
            );
            assert!(
                got == pattern(got.len()),
                "polled {polled}, chunk {chunk}: order"
            );
            drop(writer.await.unwrap());
            assert_eq!(
                read_soon(&mut client).await,
                Some(Vec::new()),
                "end of stream: a read of 0 bytes"
            );
        }
    }

    /// One read of the kernel a tick: what it brought is given out in the reader's sizes within
    /// the tick, and what arrived after it waits for the next tick.
    #[tokio::test]
    async fn what_one_read_of_the_kernel_brought_is_given_out_within_the_tick() {
        let (mut client, mut server) = pair().await;
        client.poll_on_tick().unwrap();
        server.write_all(&pattern(5000)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let first = read_now(&mut client).expect("5000 bytes arrived");
        assert_eq!(first.len(), 64, "the reader's size");
        server.write_all(b"later").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut tick = first;
        while let Some(part) = read_again(&mut client) {
            tick.extend(part);
        }
        assert_eq!(
            tick,
            pattern(5000),
            "the first read's bytes, and no more, in this tick"
        );
        assert_eq!(
            read_now(&mut client).as_deref(),
            Some(&b"later"[..]),
            "the next tick"
        );
    }
}
