//! The stream under a connection's WebSocket: TCP ([`PolledTcp`]), or TLS over it for `wss://`.
//!
//! TLS is set up here rather than by tokio-tungstenite for one reason: with arrival stamps
//! ([`krakenbook_arrival`]) what tungstenite has read must end where the message it hands out
//! ends. tokio-rustls fills a reader's buffer with every record it can get (tungstenite asks for
//! 4 KiB at a time), so the stream under TLS would have been read a tick's worth of records
//! ahead. So reads of the plaintext stop at the end of each WebSocket frame ([`Units`], from the
//! buffered plaintext: no extra read), and reads of the socket at the end of each TLS record
//! ([`PolledTcp`]): rustls then decrypts a record only when the plaintext before it was taken,
//! and the socket's bytes read end with the record that completed the frame. Without stamps,
//! both read as much as they are asked.
//!
//! The TLS settings are tokio-tungstenite's own (the web's root certificates, webpki-roots),
//! unless the feed's configuration gives others (tests).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::client::TlsStream;

use super::framing::{Framing, Units};
use super::polled::PolledTcp;

/// TCP, or TLS over it. One per connection, so the variants' sizes do not matter (the TLS
/// state is boxed only because it is the larger).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Wire {
    Plain(PolledTcp),
    Tls {
        stream: Box<TlsStream<PolledTcp>>,
        /// Where the plaintext's WebSocket frames end (with arrival stamps only).
        units: Option<Units>,
    },
}

impl Wire {
    /// TLS over `tcp` to `host` (a name, or an address without brackets), with `config` (none:
    /// the web's root certificates). Errors as tokio-tungstenite gave them, so that they are
    /// told apart the same way ([`super::error::ConnectError::from_handshake`]).
    pub async fn tls(
        tcp: PolledTcp,
        host: &str,
        config: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Wire, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::error::{Error, TlsError};
        let config = config.unwrap_or_else(web_roots);
        let name = rustls::pki_types::ServerName::try_from(host)
            .map_err(|_| Error::Tls(TlsError::InvalidDnsName))?
            .to_owned();
        let units = tcp.has_arrivals().then(|| Units::new(Framing::WebSocket));
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(Error::Io)?;
        Ok(Wire::Tls {
            stream: Box::new(stream),
            units,
        })
    }

    /// The TCP stream under it.
    pub fn tcp(&mut self) -> &mut PolledTcp {
        match self {
            Wire::Plain(tcp) => tcp,
            Wire::Tls { stream, .. } => stream.get_mut().0,
        }
    }
}

/// The TLS settings tokio-tungstenite uses by default: the web's root certificates.
fn web_roots() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Wire::Tls {
                stream,
                units: None,
            } => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Wire::Tls {
                stream,
                units: Some(units),
            } => {
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                // What is decrypted already (a record read when there is none); empty at the
                // end of the stream.
                let plain = ready!(Pin::new(stream.as_mut()).poll_fill_buf(cx))?;
                let n = units.take(plain, buf.remaining());
                buf.put_slice(&plain[..n]);
                Pin::new(stream.as_mut()).consume(n);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Wire::Plain(tcp) => Pin::new(tcp).poll_write(cx, data),
            Wire::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Wire::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Wire::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
