//! The explorer's HTTP/1.1 server: the page, its assets, and the API, over hyper.
//!
//! The protections are the metrics server's, its accept loop shared
//! ([`crate::metrics::server::accept_loop`]): a connection slot is
//! taken before each accept (at most [`Limits::max_connections`] open; more wait in the kernel's
//! backlog and cost no descriptor), the request head must arrive within the header timeout,
//! the whole exchange must end within the connection deadline (longer here: a day's heatmap
//! takes seconds), heads are bounded, bodies refused, accept errors paced and their log
//! rate-limited. One request per connection (`Connection: close`).
//!
//! Every response carries `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
//! `X-Frame-Options: DENY`, and a Content-Security-Policy that allows only the binary's own
//! script, style and API (`default-src 'self'`, no inline script). Bound to a loopback address,
//! the server answers only requests whose `Host` is a loopback name (`localhost`, `127.x.y.z`,
//! `[::1]`): a web page whose host name an attacker re-points at 127.0.0.1 (DNS rebinding) gets
//! a 403, not the API.

use std::convert::Infallible;
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
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::Sessions;
use super::api::{self, Answer};
use crate::metrics::server::{Accept, accept_loop};

/// What one client may take from the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time from the accept to the end of the request head.
    pub header_timeout: Duration,
    /// Time from the accept to the end of the response.
    pub connection_deadline: Duration,
    /// Bytes of a request head.
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            connection_deadline: Duration::from_secs(120),
            max_request_bytes: 16 * 1024,
        }
    }
}

/// The smallest read buffer hyper accepts.
const MIN_BUFFER: usize = 8192;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the server knows of itself.
#[derive(Debug)]
pub struct Site {
    /// The database sessions.
    pub sessions: Sessions,
    /// Whether any host name is answered (`--public`); else only loopback names.
    pub public: bool,
}

/// Serves the explorer on `listener` with the default [`Limits`] until `cancel`.
pub async fn serve(listener: TcpListener, site: Arc<Site>, cancel: CancellationToken) {
    serve_on(listener, site, Limits::default(), cancel).await
}

/// Serves connections from `listener` within `limits` until `cancel`.
pub async fn serve_on<L: Accept>(
    listener: L,
    site: Arc<Site>,
    limits: Limits,
    cancel: CancellationToken,
) {
    let serve = move |io, slot| serve_connection(io, Arc::clone(&site), limits, slot);
    accept_loop(listener, limits.max_connections, "serve", cancel, serve).await;
}

async fn serve_connection<I>(io: I, site: Arc<Site>, limits: Limits, _slot: OwnedSemaphorePermit)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let site = Arc::clone(&site);
        async move { Ok::<_, Infallible>(respond(&site, &request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .max_header_size(limits.max_request_bytes)
        .max_buf_size(limits.max_request_bytes.max(MIN_BUFFER));
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let _ = tokio::time::timeout(limits.connection_deadline, connection).await;
}

/// What a request asks for, decided from its method, path, host and body (no I/O).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A file of the page.
    Asset(&'static str, &'static str),
    /// An API endpoint.
    Api(&'static str),
    /// Nothing here.
    NotFound,
    /// Not GET or HEAD.
    MethodNotAllowed,
    /// A request with a body.
    BodyRefused,
    /// A host name this server does not answer to.
    WrongHost,
}

/// Whether `host` (a `Host` header's value) names the loopback interface.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [::1]:8080
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Route {
    /// Decides the route.
    pub fn of(
        method: &Method,
        path: &str,
        host: Option<&str>,
        public: bool,
        has_body: bool,
    ) -> Route {
        if !public && !host.is_some_and(is_loopback_host) {
            return Route::WrongHost;
        }
        if has_body {
            return Route::BodyRefused;
        }
        if method != Method::GET && method != Method::HEAD {
            return Route::MethodNotAllowed;
        }
        match path {
            "/" | "/index.html" => Route::Asset("text/html; charset=utf-8", INDEX_HTML),
            "/app.js" => Route::Asset("text/javascript; charset=utf-8", APP_JS),
            "/app.css" => Route::Asset("text/css; charset=utf-8", APP_CSS),
            _ => api::endpoint(path).map_or(Route::NotFound, Route::Api),
        }
    }
}

async fn respond(site: &Site, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let route = Route::of(
        request.method(),
        request.uri().path(),
        host,
        site.public,
        !request.body().is_end_stream(),
    );
    let json = "application/json";
    let (status, content_type, body): (u16, &str, Bytes) = match route {
        Route::Asset(kind, text) => (200, kind, Bytes::from_static(text.as_bytes())),
        Route::Api(endpoint) => {
            let answer = match site.sessions.client().await {
                Ok(client) => api::answer(&client, endpoint, request.uri().query()).await,
                Err(e) => {
                    tracing::warn!(error = %e, "serve: cannot open a database session");
                    Answer {
                        status: 503,
                        body: serde_json::json!({
                            "error": format!("cannot open a database session: {e}")
                        })
                        .to_string(),
                    }
                }
            };
            (answer.status, json, Bytes::from(answer.body))
        }
        Route::NotFound => (
            404,
            json,
            Bytes::from_static(b"{\"error\":\"not found: the page is at /, the API under /api/\"}"),
        ),
        Route::MethodNotAllowed => (
            405,
            json,
            Bytes::from_static(b"{\"error\":\"only GET and HEAD\"}"),
        ),
        Route::BodyRefused => (
            413,
            json,
            Bytes::from_static(b"{\"error\":\"requests here carry no body\"}"),
        ),
        Route::WrongHost => (
            403,
            json,
            Bytes::from_static(
                b"{\"error\":\"this explorer listens on loopback and answers only to localhost, 127.0.0.1 or [::1]; serve it with --public to use another name\"}",
            ),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if route == Route::MethodNotAllowed {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_method_path_host_and_body() {
        let get = Method::GET;
        let local = Some("127.0.0.1:8080");
        // (method, path, host, public, has body, route)
        let table = [
            (&get, "/", local, false, false, "asset"),
            (
                &get,
                "/app.js",
                Some("localhost:8080"),
                false,
                false,
                "asset",
            ),
            (&get, "/app.css", Some("[::1]:8080"), false, false, "asset"),
            (&get, "/api/book", local, false, false, "api"),
            (&get, "/api/nope", local, false, false, "not found"),
            (&get, "/../etc/passwd", local, false, false, "not found"),
            (&Method::POST, "/api/book", local, false, false, "method"),
            (&get, "/api/book", local, false, true, "body"),
            (&get, "/", Some("evil.example:8080"), false, false, "host"),
            (
                &get,
                "/",
                Some("127.0.0.1.evil.example"),
                false,
                false,
                "host",
            ),
            (&get, "/", None, false, false, "host"),
            (&get, "/", Some("explorer.lan:8080"), true, false, "asset"),
        ];
        for (method, path, host, public, body, want) in table {
            let got = match Route::of(method, path, host, public, body) {
                Route::Asset(..) => "asset",
                Route::Api(_) => "api",
                Route::NotFound => "not found",
                Route::MethodNotAllowed => "method",
                Route::BodyRefused => "body",
                Route::WrongHost => "host",
            };
            assert_eq!(got, want, "{method} {path} {host:?} {public}");
        }
    }
}
