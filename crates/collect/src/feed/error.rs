//! Why a connection could not be opened ([`ConnectError`]) or ended ([`Lost`]), and how soon to
//! try again after each ([`Pace`]).
//!
//! The classification lives here, on the error types, so that the connection loop and its tests
//! ask one place: a rate limit (HTTP 429 at the handshake; Kraken's "rate limit" / "Exceeded msg
//! rate" texts in an ack or a close frame) is [`Pace::RateLimited`], a long pause to stay clear
//! of a ban; a TLS or certificate failure (and a URL that cannot work) is [`Pace::Broken`],
//! permanent until someone fixes it; a DNS failure, a refused or timed-out connect and an HTTP
//! error are [`Pace::Normal`]; an open connection that was reset, reached EOF, was closed, went
//! silent or carried an oversized frame is [`Pace::Prompt`].
//!
//! Every text here that came from the peer (a close reason, an ack's error, tungstenite's
//! description of what it received) is escaped with [`crate::text::printable`] when displayed.

use std::time::Duration;

use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};

use super::backoff::Pace;
use crate::text::printable;

/// Why a connection could not be opened. Nothing was connected, so nothing was lost.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL cannot be connected to (no host, or a scheme other than `ws`/`wss`).
    #[error("cannot connect to {url}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Dns {
        /// The host name.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// No TCP connection to any of the host's addresses (refused, unreachable, reset).
    #[error("cannot reach {host}:{port}: {source}")]
    Tcp {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The last address's error.
        source: std::io::Error,
    },
    /// The whole attempt (DNS, TCP, TLS, WebSocket upgrade) took longer than allowed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed: an untrusted or expired certificate, a name mismatch, a server
    /// that does not speak TLS.
    #[error("TLS failure with {host}: {}", printable(reason))]
    Tls {
        /// The host.
        host: String,
        /// rustls' description.
        reason: String,
    },
    /// The server answered the upgrade with HTTP 429 Too Many Requests.
    #[error("the server answered HTTP 429 Too Many Requests: rate-limited")]
    RateLimited,
    /// The server answered the upgrade with another HTTP status.
    #[error("the server answered HTTP {status} instead of upgrading to WebSocket")]
    Http {
        /// The status code.
        status: u16,
    },
    /// The connection broke during the TLS or WebSocket handshake.
    #[error("the connection broke during the handshake: {0}")]
    Io(#[source] std::io::Error),
    /// The WebSocket handshake failed otherwise (a bad answer).
    #[error("the WebSocket handshake failed: {}", printable(.0))]
    Handshake(String),
}

impl ConnectError {
    /// The error of a TLS + WebSocket handshake, classified.
    pub fn from_handshake(host: &str, error: tungstenite::Error) -> Self {
        match error {
            tungstenite::Error::Http(response) if response.status().as_u16() == 429 => {
                ConnectError::RateLimited
            }
            tungstenite::Error::Http(response) => ConnectError::Http {
                status: response.status().as_u16(),
            },
            tungstenite::Error::Tls(e) => ConnectError::Tls {
                host: host.to_owned(),
                reason: e.to_string(),
            },
            tungstenite::Error::Io(e) => match tls_cause(&e) {
                Some(reason) => ConnectError::Tls {
                    host: host.to_owned(),
                    reason,
                },
                None => ConnectError::Io(e),
            },
            tungstenite::Error::Url(e) => ConnectError::Handshake(e.to_string()),
            other => ConnectError::Handshake(other.to_string()),
        }
    }

    /// How soon to try again.
    pub fn pace(&self) -> Pace {
        match self {
            ConnectError::RateLimited => Pace::RateLimited,
            ConnectError::Tls { .. } | ConnectError::Url { .. } => Pace::Broken,
            ConnectError::Dns { .. }
            | ConnectError::Tcp { .. }
            | ConnectError::Timeout(_)
            | ConnectError::Http { .. }
            | ConnectError::Io(_)
            | ConnectError::Handshake(_) => Pace::Normal,
        }
    }
}

/// The rustls error inside an I/O error, if that is what it is (tokio-rustls reports handshake
/// failures as `InvalidData` I/O errors wrapping rustls' error).
fn tls_cause(e: &std::io::Error) -> Option<String> {
    let inner = e.get_ref()?;
    inner
        .downcast_ref::<rustls::Error>()
        .map(ToString::to_string)
}

/// Why an open connection ended.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    /// No Kraken frame (heartbeats included; WebSocket pings are not Kraken frames) for the
    /// silence timeout.
    #[error("no frame for {0:?} (heartbeats included)")]
    Silent(Duration),
    /// A frame larger than the frame-size cap arrived (it was not read whole).
    #[error("a frame of {size} bytes or more, over the {max}-byte frame-size cap")]
    FrameTooLarge {
        /// The size tungstenite reported (the frame's declared length, or what a fragmented
        /// message had reached).
        size: usize,
        /// The cap.
        max: usize,
    },
    /// The server closed the connection without a close frame (EOF, or a reset without the
    /// closing handshake).
    #[error("the server closed the connection")]
    Eof,
    /// The server sent a close frame.
    #[error("the server closed the connection ({code} {})", printable(reason))]
    Closed {
        /// The close code.
        code: u16,
        /// The close reason, as sent.
        reason: String,
    },
    /// The exchange answered a request with a rate-limit error.
    #[error("the exchange is rate-limiting this connection: {}", printable(.0))]
    RateLimited(String),
    /// The socket failed (reset, broken pipe).
    #[error("connection error: {0}")]
    Io(#[source] std::io::Error),
    /// The peer broke the WebSocket protocol.
    #[error("WebSocket protocol error: {}", printable(.0))]
    Protocol(String),
}

impl Lost {
    /// How soon to reconnect.
    pub fn pace(&self) -> Pace {
        match self {
            Lost::RateLimited(_) => Pace::RateLimited,
            Lost::Closed { reason, .. } if is_rate_limit_text(reason) => Pace::RateLimited,
            Lost::Silent(_)
            | Lost::FrameTooLarge { .. }
            | Lost::Eof
            | Lost::Closed { .. }
            | Lost::Io(_)
            | Lost::Protocol(_) => Pace::Prompt,
        }
    }
}

impl From<tungstenite::Error> for Lost {
    fn from(error: tungstenite::Error) -> Self {
        match error {
            tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed
            | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                Lost::Eof
            }
            tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                Lost::FrameTooLarge {
                    size,
                    max: max_size,
                }
            }
            tungstenite::Error::Io(e) => Lost::Io(e),
            other => Lost::Protocol(other.to_string()),
        }
    }
}

/// Whether an error text from the exchange says we send too much (Kraken: "Exceeded msg rate",
/// "Rate limit exceeded"; an HTTP-style "Too many requests").
pub fn is_rate_limit_text(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "rate limit",
        "ratelimit",
        "exceeded msg rate",
        "too many requests",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

#[cfg(test)]
mod tests {
    use std::io;

    use tokio_tungstenite::tungstenite::http;

    use super::*;

    fn http_error(status: u16) -> tungstenite::Error {
        let response = http::Response::builder().status(status).body(None).unwrap();
        tungstenite::Error::Http(Box::new(response))
    }

    fn rustls_io(error: rustls::Error) -> tungstenite::Error {
        tungstenite::Error::Io(io::Error::new(io::ErrorKind::InvalidData, error))
    }

    /// Each handshake failure the socket layer can report, and the pace it gets.
    #[test]
    fn handshake_failures_are_classified_by_what_they_need() {
        let cases: Vec<(&str, tungstenite::Error, Pace, &str)> = vec![
            (
                "HTTP 429 at the upgrade",
                http_error(429),
                Pace::RateLimited,
                "429",
            ),
            (
                "HTTP 503 at the upgrade",
                http_error(503),
                Pace::Normal,
                "HTTP 503",
            ),
            (
                "HTTP 403 at the upgrade",
                http_error(403),
                Pace::Normal,
                "HTTP 403",
            ),
            (
                "an untrusted certificate",
                rustls_io(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                )),
                Pace::Broken,
                "TLS failure",
            ),
            (
                "an expired certificate",
                rustls_io(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Expired,
                )),
                Pace::Broken,
                "TLS failure",
            ),
            (
                "a server that does not speak TLS",
                rustls_io(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                Pace::Broken,
                "TLS failure",
            ),
            (
                "a name the certificate library refuses",
                tungstenite::Error::Tls(tungstenite::error::TlsError::InvalidDnsName),
                Pace::Broken,
                "TLS failure",
            ),
            (
                "a reset during the handshake",
                tungstenite::Error::Io(io::Error::from(io::ErrorKind::ConnectionReset)),
                Pace::Normal,
                "broke during the handshake",
            ),
            (
                "a bad upgrade answer",
                tungstenite::Error::Protocol(ProtocolError::SecWebSocketAcceptKeyMismatch),
                Pace::Normal,
                "handshake failed",
            ),
        ];
        for (what, error, pace, text) in cases {
            let classified = ConnectError::from_handshake("ws.kraken.com", error);
            assert_eq!(classified.pace(), pace, "{what}: {classified:?}");
            assert!(
                classified.to_string().contains(text),
                "{what}: {classified}"
            );
        }
        let dns = ConnectError::Dns {
            host: "ws.kraken.invalid".into(),
            source: io::Error::other("failed to lookup address information"),
        };
        assert_eq!(dns.pace(), Pace::Normal, "a DNS failure backs off normally");
        let refused = ConnectError::Tcp {
            host: "127.0.0.1".into(),
            port: 1,
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(refused.pace(), Pace::Normal);
        assert_eq!(
            ConnectError::Timeout(Duration::from_secs(10)).pace(),
            Pace::Normal
        );
        let url = ConnectError::Url {
            url: "http://x".into(),
            reason: "not ws or wss",
        };
        assert_eq!(url.pace(), Pace::Broken, "a URL that cannot work is broken");
    }

    /// How each end of an open connection is classified.
    #[test]
    fn ends_of_open_connections_are_classified_by_what_they_need() {
        let cases: Vec<(&str, Lost, Pace)> = vec![
            (
                "a reset",
                tungstenite::Error::Io(io::Error::from(io::ErrorKind::ConnectionReset)).into(),
                Pace::Prompt,
            ),
            (
                "EOF",
                tungstenite::Error::ConnectionClosed.into(),
                Pace::Prompt,
            ),
            (
                "EOF without a closing handshake",
                tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake).into(),
                Pace::Prompt,
            ),
            (
                "a close frame",
                Lost::Closed {
                    code: 1001,
                    reason: "going away".into(),
                },
                Pace::Prompt,
            ),
            (
                "a close frame citing a rate limit",
                Lost::Closed {
                    code: 1008,
                    reason: "Rate limit exceeded".into(),
                },
                Pace::RateLimited,
            ),
            (
                "an ack citing the message rate",
                Lost::RateLimited("Exceeded msg rate".into()),
                Pace::RateLimited,
            ),
            (
                "silence",
                Lost::Silent(Duration::from_secs(5)),
                Pace::Prompt,
            ),
            (
                "an oversized frame",
                tungstenite::Error::Capacity(CapacityError::MessageTooLong {
                    size: 20 << 20,
                    max_size: 16 << 20,
                })
                .into(),
                Pace::Prompt,
            ),
        ];
        for (what, lost, pace) in cases {
            assert_eq!(lost.pace(), pace, "{what}: {lost:?}");
        }
    }

    #[test]
    fn rate_limit_texts_are_recognised_and_others_are_not() {
        for text in [
            "Exceeded msg rate",
            "EGeneral:Rate limit exceeded",
            "ratelimit",
            "Too Many Requests",
        ] {
            assert!(is_rate_limit_text(text), "{text}");
        }
        for text in [
            "Currency pair not supported XBT/USD",
            "Subscription depth not supported",
            "going away",
            "",
        ] {
            assert!(!is_rate_limit_text(text), "{text}");
        }
    }

    #[test]
    fn peer_text_in_errors_is_escaped() {
        let lost = Lost::Closed {
            code: 1000,
            reason: "bye\n\u{1b}[2J".into(),
        };
        assert_eq!(
            lost.to_string(),
            "the server closed the connection (1000 bye\\n\\u{1b}[2J)"
        );
        let tls = ConnectError::Tls {
            host: "h".into(),
            reason: "x\ry".into(),
        };
        assert!(tls.to_string().ends_with("x\\ry"), "{tls}");
    }
}
