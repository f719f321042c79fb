//! `/metrics` and `/health` over HTTP/1.1 on `--metrics-listen`, built so that no client, however
//! many, idle, slow or large, can hurt recording.
//!
//! hyper 1.x serves each connection. It is used directly rather than through axum: two fixed
//! routes need no router, and the protections below live in the accept loop and in hyper's
//! connection builder, which axum's `serve` hides (it has no bound on connections).
//!
//! What must always hold (each has a test, here or in `tests/e2e/metrics.rs`):
//! - **Bounded connections.** At most [`Limits::max_connections`] are open at once. The loop
//!   takes a slot *before* it accepts, so further connections wait in the kernel's listen backlog
//!   (128, the standard library's; past it the kernel drops their SYNs and clients retry), where
//!   they cost the process no file descriptor (1,100 idle connections once took every descriptor
//!   and stopped the journal: issue 9, item 5).
//! - **Bounded time.** The request head must arrive within [`Limits::header_timeout`] of the
//!   accept (an idle or slowloris client is cut), and the whole exchange must end within
//!   [`Limits::connection_deadline`] (a client that never reads its response is cut). One request
//!   per connection: every response says `Connection: close`, so no connection idles between
//!   requests (a scraper's interval is longer than any keep-alive worth a slot).
//! - **Bounded size.** A request head over [`Limits::max_request_bytes`] is refused (431); a body
//!   is never read (413).
//! - **Accept errors are paced**, never retried in a tight loop, and logged at most once per
//!   10 s with a count of the rest ([`super::accept`]).
//! - Routes: `GET`/`HEAD` `/metrics` (200, Prometheus text), `/health` (200 `{"status":"ok"}`,
//!   or 503 `{"status":"unhealthy","reason":"…"}`), anything else 404; other methods 405.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use super::accept::{AcceptBackoff, ErrorLog};
use super::exposition::CONTENT_TYPE;

/// What one client may take from the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time from the accept to the end of the request head.
    pub header_timeout: Duration,
    /// Time from the accept to the end of the response.
    pub connection_deadline: Duration,
    /// Bytes of a request head (request line and headers); at least 8 KiB is buffered.
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 32,
            header_timeout: Duration::from_secs(5),
            connection_deadline: Duration::from_secs(15),
            max_request_bytes: 8 * 1024,
        }
    }
}

/// The smallest read buffer hyper accepts (it panics below it).
const MIN_BUFFER: usize = 8192;

/// Binds the metrics listener. The caller names the address in its error
/// (`collect::CollectError::Metrics` says which address and what to do).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, io::Error> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics` and `/health` on `listener` with the default [`Limits`] until `cancel`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, cancel: CancellationToken) {
    serve_on(listener, metrics, Limits::default(), cancel).await
}

/// Where connections come from: a TCP listener, or in tests a listener that fails on demand.
pub trait Accept: Send {
    /// One accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection, or why none could be accepted.
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;

    async fn accept(&mut self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// Serves connections from `listener` within `limits` until `cancel`, then drops the
/// connections still open.
pub async fn serve_on<L: Accept>(
    listener: L,
    metrics: Arc<Metrics>,
    limits: Limits,
    cancel: CancellationToken,
) {
    let serve = move |io, slot| serve_connection(io, Arc::clone(&metrics), limits, slot);
    accept_loop(listener, limits.max_connections, "metrics", cancel, serve).await;
}

/// The hardened accept loop, shared by this server and the web explorer's (`krakenbook-web`):
/// a connection slot (of `max_connections`) is taken before each accept, so more connections wait
/// in the kernel's backlog and cost no descriptor; each accepted connection is handed to `serve`
/// with its slot, which frees it when the connection ends; accept errors (descriptors exhausted)
/// pause with [`AcceptBackoff`] and are logged at most once per 10 s, naming `what`. On `cancel`
/// it stops accepting and aborts the connections still open.
pub async fn accept_loop<L, F, Fut>(
    mut listener: L,
    max_connections: usize,
    what: &'static str,
    cancel: CancellationToken,
    mut serve: F,
) where
    L: Accept,
    F: FnMut(L::Io, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut connections = JoinSet::new();
    let mut backoff = AcceptBackoff::default();
    let mut errors = ErrorLog::default();
    loop {
        while connections.try_join_next().is_some() {}
        // A slot first: without one, the next connection stays in the kernel's backlog.
        let slot = tokio::select! {
            _ = cancel.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(io) => {
                backoff.on_success();
                if let Some(unlogged) = errors.on_success(Instant::now()) {
                    tracing::info!(unlogged, "{what}: accepting connections again");
                }
                connections.spawn(serve(io, slot));
            }
            Err(error) => {
                drop(slot);
                let pause = backoff.on_error();
                if let Some(unlogged) = errors.on_error(Instant::now()) {
                    tracing::warn!(
                        %error,
                        unlogged,
                        pause_ms = pause.as_millis() as u64,
                        "{what}: accept failed; pausing (at most one such line per 10 s)"
                    );
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    connections.shutdown().await;
}

/// Serves one request on `io` within `limits`; `_slot` is given back when it ends.
async fn serve_connection<I>(
    io: I,
    metrics: Arc<Metrics>,
    limits: Limits,
    _slot: OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let route = Route::of(
            request.method(),
            request.uri().path(),
            !request.body().is_end_stream(),
        );
        let response = route.respond(&metrics);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .max_header_size(limits.max_request_bytes)
        .max_buf_size(limits.max_request_bytes.max(MIN_BUFFER));
    let connection = builder.serve_connection(TokioIo::new(io), service);
    // Errors (timeouts, malformed or oversized requests, resets) are the client's; hyper has
    // answered what deserved an answer, and logging them would let any client fill the log.
    let _ = tokio::time::timeout(limits.connection_deadline, connection).await;
}

/// What a request asks for, decided from its method, path and whether it has a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Health,
    NotFound,
    MethodNotAllowed,
    BodyRefused,
}

impl Route {
    fn of(method: &Method, path: &str, has_body: bool) -> Route {
        if has_body {
            Route::BodyRefused
        } else if method != Method::GET && method != Method::HEAD {
            Route::MethodNotAllowed
        } else {
            match path {
                "/metrics" => Route::Metrics,
                "/health" => Route::Health,
                _ => Route::NotFound,
            }
        }
    }

    fn respond(self, metrics: &Metrics) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match self {
            Route::Metrics => (StatusCode::OK, CONTENT_TYPE, metrics.render()),
            Route::Health => match metrics.health() {
                Ok(()) => (
                    StatusCode::OK,
                    "application/json",
                    "{\"status\":\"ok\"}\n".to_owned(),
                ),
                Err(reason) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    format!(
                        "{{\"status\":\"unhealthy\",\"reason\":{}}}\n",
                        serde_json::Value::from(reason)
                    ),
                ),
            },
            Route::NotFound => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "try /metrics or /health\n".to_owned(),
            ),
            Route::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "only GET and HEAD\n".to_owned(),
            ),
            Route::BodyRefused => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                "requests here carry no body\n".to_owned(),
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if self == Route::MethodNotAllowed {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::sync::Notify;

    use super::*;

    #[test]
    fn routes_follow_method_path_and_body() {
        // (method, path, has a body, route)
        let table = [
            (Method::GET, "/metrics", false, Route::Metrics),
            (Method::HEAD, "/metrics", false, Route::Metrics),
            (Method::GET, "/health", false, Route::Health),
            (Method::GET, "/", false, Route::NotFound),
            (Method::GET, "/metrics/", false, Route::NotFound),
            (Method::GET, "/HEALTH", false, Route::NotFound),
            (Method::POST, "/metrics", false, Route::MethodNotAllowed),
            (Method::DELETE, "/nope", false, Route::MethodNotAllowed),
            (Method::GET, "/metrics", true, Route::BodyRefused),
            (Method::POST, "/health", true, Route::BodyRefused),
        ];
        for (method, path, body, want) in table {
            assert_eq!(
                Route::of(&method, path, body),
                want,
                "{method} {path} {body}"
            );
        }
    }

    async fn start(limits: Limits) -> (SocketAddr, Arc<Metrics>, CancellationToken) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        let cancel = CancellationToken::new();
        tokio::spawn(serve_on(
            listener,
            Arc::clone(&metrics),
            limits,
            cancel.clone(),
        ));
        (addr, metrics, cancel)
    }

    /// Sends `request` and reads until the server closes (every response closes).
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await
    }

    #[tokio::test]
    async fn serves_metrics_and_health_over_http_and_closes_after_each_response() {
        let (addr, metrics, cancel) = start(Limits::default()).await;
        metrics.frames.store(7, Ordering::Relaxed);
        let body = get(addr, "/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(
            body.contains("krakenbook_frames_received_total 7\n"),
            "{body}"
        );
        assert!(body.to_lowercase().contains("connection: close"), "{body}");
        assert!(
            body.contains("content-type: text/plain; version=0.0.4"),
            "{body}"
        );
        let health = get(addr, "/health").await;
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        assert!(
            health.ends_with(
                "{\"status\":\"unhealthy\",\"reason\":\"no connection to the exchange is open\"}\n"
            ),
            "{health}"
        );
        metrics.connections_open.store(2, Ordering::Relaxed);
        let health = get(addr, "/health").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(
            health.ends_with("\r\n\r\n{\"status\":\"ok\"}\n"),
            "{health}"
        );
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        let post = exchange(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let head = exchange(addr, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!head.contains("krakenbook_"), "HEAD has no body: {head}");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_beyond_the_bound_wait_and_a_request_is_served_once_slots_free() {
        let limits = Limits {
            max_connections: 4,
            ..Limits::default()
        };
        let (addr, _metrics, cancel) = start(limits).await;
        let started = Instant::now();
        // Four idle connections take every slot; ten more wait in the backlog.
        let mut idle = Vec::new();
        for _ in 0..limits.max_connections + 10 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let body = tokio::time::timeout(Duration::from_secs(60), get(addr, "/metrics"))
            .await
            .expect("served within a minute: idle connections must be cut");
        let waited = started.elapsed();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        // Served only after three rounds of idle connections were cut by the header timeout
        // (4 at once: at 0 s, 5 s and 10 s), never beside them.
        assert!(
            waited >= 3 * limits.header_timeout,
            "served after {waited:?}: the bound did not hold"
        );
        assert!(
            waited < 5 * limits.header_timeout,
            "served after {waited:?}"
        );
        // Every idle connection was cut: each reads end-of-file, none an answer.
        for mut s in idle {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            assert!(
                !String::from_utf8_lossy(&buf).contains("200 OK"),
                "an idle connection got an answer"
            );
        }
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slowloris_client_sending_one_header_byte_per_second_is_cut() {
        let limits = Limits::default();
        let (addr, _metrics, cancel) = start(limits).await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let sent = Arc::new(AtomicU64::new(0));
        let sent_by_writer = Arc::clone(&sent);
        let started = Instant::now();
        tokio::spawn(async move {
            let head =
                b"GET /metrics HTTP/1.1\r\nHost: slow.example\r\nX-Pad: aaaaaaaaaaaa\r\n\r\n";
            for byte in head {
                if writer.write_all(&[*byte]).await.is_err() {
                    return;
                }
                sent_by_writer.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out).await;
        let cut_after = started.elapsed();
        assert!(
            !String::from_utf8_lossy(&out).contains("200 OK"),
            "the slow request was served"
        );
        assert!(
            cut_after >= limits.header_timeout
                && cut_after < limits.header_timeout + Duration::from_secs(2),
            "cut after {cut_after:?}"
        );
        assert!(sent.load(Ordering::Relaxed) <= 7, "{sent:?} bytes sent");
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_one_megabyte_request_is_refused_and_the_server_goes_on() {
        let (addr, _metrics, cancel) = start(Limits::default()).await;
        let huge = "a".repeat(1 << 20);
        // A 1 MB header and a 1 MB body: neither is read whole, neither is served.
        for request in [
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n"),
            format!(
                "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{huge}",
                huge.len()
            ),
        ] {
            let s = TcpStream::connect(addr).await.unwrap();
            let (mut reader, mut writer) = s.into_split();
            let write = tokio::spawn(async move {
                let _ = writer.write_all(request.as_bytes()).await;
                writer
            });
            let mut out = Vec::new();
            let _ = reader.read_to_end(&mut out).await;
            let answer = String::from_utf8_lossy(&out);
            assert!(
                answer.is_empty()
                    || answer.starts_with("HTTP/1.1 431")
                    || answer.starts_with("HTTP/1.1 413"),
                "{}",
                &answer[..answer.len().min(200)]
            );
            drop(write.await);
        }
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200"));
        cancel.cancel();
    }

    /// A listener that fails with `EMFILE` a number of times, then hands out one connection.
    struct ExhaustedListener {
        errors_left: u64,
        calls: Arc<AtomicU64>,
        then: Option<DuplexStream>,
        exhausted: Arc<Notify>,
    }

    impl Accept for ExhaustedListener {
        type Io = DuplexStream;

        fn accept(&mut self) -> impl Future<Output = io::Result<DuplexStream>> + Send {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let next = if self.errors_left > 0 {
                self.errors_left -= 1;
                // EMFILE on Linux: "Too many open files".
                Some(Err(io::Error::from_raw_os_error(24)))
            } else {
                self.exhausted.notify_one();
                self.then.take().map(Ok)
            };
            async move {
                match next {
                    Some(result) => result,
                    None => std::future::pending().await,
                }
            }
        }
    }

    /// Counts the warnings about accept errors.
    #[derive(Clone, Default)]
    struct AcceptWarnings(Arc<AtomicU64>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AcceptWarnings {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if *event.metadata().level() == tracing::Level::WARN {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_emfile_accept_errors_are_paced_and_logged_a_few_times() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let warnings = AcceptWarnings::default();
        let _log =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
        let (client, server) = tokio::io::duplex(64 * 1024);
        let calls = Arc::new(AtomicU64::new(0));
        let exhausted = Arc::new(Notify::new());
        let listener = ExhaustedListener {
            errors_left: 10_000,
            calls: Arc::clone(&calls),
            then: Some(server),
            exhausted: Arc::clone(&exhausted),
        };
        let metrics = Arc::new(Metrics::default());
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let server = tokio::spawn(serve_on(
            listener,
            metrics,
            Limits::default(),
            cancel.clone(),
        ));
        exhausted.notified().await;
        let elapsed = started.elapsed();
        // 10,000 errors, the connection, and perhaps the next accept, waiting.
        let calls = calls.load(Ordering::Relaxed);
        assert!((10_001..=10_002).contains(&calls), "{calls} accepts");
        // No spinning: every error paid its pause, 1 s once the backoff is at its cap.
        assert!(
            elapsed >= Duration::from_secs(9_990),
            "10,000 errors in {elapsed:?}"
        );
        // At most one line per 10 s.
        let lines = warnings.0.load(Ordering::Relaxed);
        assert!(
            lines >= 1 && lines <= 1 + elapsed.as_secs() / 10,
            "{lines} warnings in {elapsed:?}"
        );
        // Once descriptors are back, the next connection is served at once.
        let mut client = client;
        client
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert!(out.starts_with(b"HTTP/1.1 503"), "{out:?}");
        cancel.cancel();
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_its_response_is_cut_at_the_deadline() {
        let limits = Limits::default();
        let (addr, metrics, cancel) = start(limits).await;
        // A response far larger than the socket buffers.
        for i in 0..100_000 {
            metrics.symbol(&format!("SYM{i}/USD"));
        }
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        // Read nothing until past the deadline, then drain: the server must have given up.
        tokio::time::sleep(limits.connection_deadline + Duration::from_secs(1)).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        assert!(started.elapsed() < limits.connection_deadline + Duration::from_secs(2));
        let whole = metrics.render().len();
        assert!(
            out.len() < whole,
            "the whole {whole} bytes were written to a client that did not read"
        );
        cancel.cancel();
    }
}
