//! Database URLs, TLS and connections.
//!
//! [`DbTarget::parse`] reads a libpq-style connection string (a `postgres://` URL or `key=value`
//! pairs) into a connection configuration, and [`DbTarget::connect`] opens a connection over TLS
//! when the URL asks for it (`sslmode`), with rustls and Mozilla's root certificates (or the
//! `sslrootcert` file).
//!
//! What must always hold:
//! - a password never appears in a log line or an error: everything printed about a target goes
//!   through [`redact`], and errors carry the redacted form only;
//! - `sslmode` means what it means to libpq: `disable` no TLS; `prefer` (the default) TLS when the
//!   server offers it, unverified; `require` TLS, unverified unless `sslrootcert` is given;
//!   `verify-ca` TLS with the certificate chain verified; `verify-full` chain and host name verified.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// How long a connection attempt may take before it counts as failed (and, for the writer, is
/// retried).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a database is, and how to reach it.
#[derive(Clone)]
pub struct DbTarget {
    config: Config,
    verify: Verify,
    root_cert: Option<String>,
    redacted: String,
}

impl std::fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbTarget")
            .field("url", &self.redacted)
            .field("verify", &self.verify)
            .finish()
    }
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verify {
    /// Encrypted, certificate not checked (libpq's `prefer` and `require`).
    Nothing,
    /// The chain up to a trusted root (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

impl DbTarget {
    /// Parses a connection string: `postgres://user:pass@host:port/db?sslmode=require` or
    /// `host=... user=... dbname=...`. Errors name what to fix, with the password redacted.
    pub fn parse(url: &str) -> Result<DbTarget, StoreError> {
        let redacted = redact(url);
        let bad = |reason: String| StoreError::Url {
            url: redacted.clone(),
            reason,
        };
        let url = url.trim();
        if url.is_empty() {
            return Err(bad("it is empty".to_owned()));
        }
        let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !is_url && !url.contains('=') {
            return Err(bad(
                "expected postgres://user:password@host:port/database or key=value pairs".into(),
            ));
        }
        // sslmode verify-ca/verify-full and sslrootcert are libpq's; tokio-postgres knows neither,
        // so they are taken out here and applied to the TLS configuration.
        let mut verify = None;
        let mut root_cert = None;
        let passed = if is_url {
            let (base, query) = url.split_once('?').unwrap_or((url, ""));
            let mut kept = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let value = percent_decode(v);
                match (k, value.as_str()) {
                    ("sslmode", "verify-ca") => verify = Some(Verify::Chain),
                    ("sslmode", "verify-full") => verify = Some(Verify::Full),
                    ("sslrootcert", _) => root_cert = Some(value),
                    _ => kept.push(pair),
                }
            }
            if verify.is_some() {
                kept.push("sslmode=require");
            }
            if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        } else {
            let mut kept = Vec::new();
            for token in split_key_values(url) {
                let (k, v) = token.split_once('=').unwrap_or((token.as_str(), ""));
                let value = v.trim().trim_matches('\'').to_owned();
                match (k.trim(), value.as_str()) {
                    ("sslmode", "verify-ca") => verify = Some(Verify::Chain),
                    ("sslmode", "verify-full") => verify = Some(Verify::Full),
                    ("sslrootcert", _) => root_cert = Some(value),
                    _ => kept.push(token),
                }
            }
            if verify.is_some() {
                kept.push("sslmode=require".to_owned());
            }
            kept.join(" ")
        };
        let config: Config = passed.parse().map_err(|e: tokio_postgres::Error| {
            let detail = std::error::Error::source(&e)
                .map(ToString::to_string)
                .unwrap_or_else(|| e.to_string());
            bad(format!("{detail} (check the URL's syntax)"))
        })?;
        if config.get_hosts().is_empty() {
            return Err(bad("it names no host (add @host:port)".into()));
        }
        let verify = verify.unwrap_or(if root_cert.is_some() {
            // libpq: `require` with a root certificate verifies the chain.
            Verify::Chain
        } else {
            Verify::Nothing
        });
        Ok(DbTarget {
            config,
            verify,
            root_cert,
            redacted,
        })
    }

    /// The connection string with its password replaced by `***`: safe to print.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The database name (`postgres`'s default: the user name).
    pub fn dbname(&self) -> &str {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres")
    }

    /// The same server, another database.
    pub fn with_dbname(&self, dbname: &str) -> DbTarget {
        let mut t = self.clone();
        t.config.dbname(dbname);
        t.redacted = format!("{} (database {dbname})", self.redacted);
        t
    }

    /// The underlying tokio-postgres configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Connects, naming the session `application_name` on the server (visible in
    /// `pg_stat_activity`). The connection runs on a spawned task that ends with the client.
    pub async fn connect(&self, application_name: &str) -> Result<Client, StoreError> {
        let mut config = self.config.clone();
        config.application_name(application_name);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives_idle(Duration::from_secs(30));
        let connect = async {
            if config.get_ssl_mode() == SslMode::Disable {
                let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(drive(conn));
                Ok(client)
            } else {
                let tls = MakeRustlsConnect::new(self.tls_config()?);
                let (client, conn) = config.connect(tls).await?;
                tokio::spawn(drive(conn));
                Ok(client)
            }
        };
        let connect_err = |source| StoreError::Connect {
            target: self.redacted.clone(),
            source,
        };
        match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(ConnectFailure::Pg(e))) => Err(connect_err(e)),
            Ok(Err(ConnectFailure::Store(e))) => Err(e),
            Err(_) => Err(StoreError::Timeout {
                what: format!("connecting to {}", self.redacted),
                after: CONNECT_TIMEOUT,
            }),
        }
    }

    fn tls_config(&self) -> Result<ClientConfig, ConnectFailure> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_err = |reason: String| {
            ConnectFailure::Store(StoreError::Tls {
                target: self.redacted.clone(),
                reason,
            })
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(e.to_string()))?;
        let config = match self.verify {
            Verify::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth(),
            Verify::Chain | Verify::Full => {
                let mut roots = RootCertStore::empty();
                match &self.root_cert {
                    Some(path) => {
                        let certs = CertificateDer::pem_file_iter(path)
                            .map_err(|e| tls_err(format!("cannot read sslrootcert {path}: {e}")))?;
                        for cert in certs {
                            let cert = cert.map_err(|e| {
                                tls_err(format!("cannot read sslrootcert {path}: {e}"))
                            })?;
                            roots.add(cert).map_err(|e| {
                                tls_err(format!("bad certificate in sslrootcert {path}: {e}"))
                            })?;
                        }
                        if roots.is_empty() {
                            return Err(tls_err(format!(
                                "sslrootcert {path} holds no certificate"
                            )));
                        }
                    }
                    None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                }
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| tls_err(e.to_string()))?;
                if self.verify == Verify::Full {
                    builder.with_webpki_verifier(webpki).with_no_client_auth()
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                        .with_no_client_auth()
                }
            }
        };
        Ok(config)
    }
}

enum ConnectFailure {
    Pg(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for ConnectFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        ConnectFailure::Pg(e)
    }
}

async fn drive<S, T>(conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Errors surface on the client's next request; here they are only worth a debug line.
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "database connection ended");
    }
}

/// libpq's `sslmode=require`: encrypted, certificate not checked (signatures still are).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// libpq's `sslmode=verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The connection string with any password replaced by `***` (URL user info, a `password`
/// query parameter, or a `password=` pair).
pub fn redact(url: &str) -> String {
    let url = url.trim();
    if let Some(scheme_end) = url.find("://") {
        let rest_start = scheme_end + 3;
        let rest = &url[rest_start..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let mut out = String::with_capacity(url.len());
        out.push_str(&url[..rest_start]);
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        let tail = &rest[authority_end..];
        match tail.split_once('?') {
            Some((path, query)) => {
                out.push_str(path);
                out.push('?');
                let pairs: Vec<String> = query
                    .split('&')
                    .map(|p| match p.split_once('=') {
                        Some(("password", _)) => "password=***".to_owned(),
                        _ => p.to_owned(),
                    })
                    .collect();
                out.push_str(&pairs.join("&"));
            }
            None => out.push_str(tail),
        }
        out
    } else {
        split_key_values(url)
            .into_iter()
            .map(|t| match t.split_once('=') {
                Some((k, _)) if k.trim() == "password" => "password=***".to_owned(),
                _ => t,
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `key=value` tokens separated by spaces, where a value may be quoted with `'` (and hold
/// spaces and `\'`).
fn split_key_values(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '\'' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    // `key = value` with spaces around `=`: join the pieces back.
    let mut joined: Vec<String> = Vec::new();
    for t in out {
        match joined.last_mut() {
            Some(last) if last.ends_with('=') || t.starts_with('=') => last.push_str(&t),
            _ => joined.push(t),
        }
    }
    joined
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_every_form_of_password() {
        // (connection string, redacted)
        let cases = [
            (
                "postgres://kb:s3cret@db.example:5432/market?sslmode=require",
                "postgres://kb:***@db.example:5432/market?sslmode=require",
            ),
            (
                "postgresql://kb:p%40ss@host/db",
                "postgresql://kb:***@host/db",
            ),
            ("postgres://kb@host/db", "postgres://kb@host/db"),
            (
                "postgres://host/db?user=kb&password=hunter2",
                "postgres://host/db?user=kb&password=***",
            ),
            (
                "host=localhost user=kb password=hunter2 dbname=m",
                "host=localhost user=kb password=*** dbname=m",
            ),
            (
                "host=localhost password='a b\\' c' dbname=m",
                "host=localhost password=*** dbname=m",
            ),
            ("postgres://u:p@h:1,h2:2/db", "postgres://u:***@h:1,h2:2/db"),
        ];
        for (url, want) in cases {
            assert_eq!(redact(url), want, "{url}");
        }
    }

    #[test]
    fn parse_errors_name_the_fix_and_never_the_password() {
        for url in [
            "",
            "localhost:5432",
            "postgres://kb:s3cret@host:notaport/db",
            "postgres://kb:s3cret@host/db?sslmode=sometimes",
            "postgres://kb:s3cret@host/db?bogus=1",
        ] {
            let e = DbTarget::parse(url).expect_err(url).to_string();
            assert!(!e.contains("s3cret"), "{url}: {e}");
            assert!(e.contains("database URL"), "{url}: {e}");
        }
    }

    #[test]
    fn libpq_ssl_modes_map_to_verification() {
        // (URL, verification, root certificate)
        let cases = [
            ("postgres://h/db", Verify::Nothing, None),
            ("postgres://h/db?sslmode=require", Verify::Nothing, None),
            ("postgres://h/db?sslmode=verify-ca", Verify::Chain, None),
            (
                "postgres://h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
                Verify::Full,
                Some("/etc/ca.pem"),
            ),
            (
                "postgres://h/db?sslmode=require&sslrootcert=/etc/ca.pem",
                Verify::Chain,
                Some("/etc/ca.pem"),
            ),
            (
                "host=h dbname=db sslmode=verify-full sslrootcert='/etc/ca.pem'",
                Verify::Full,
                Some("/etc/ca.pem"),
            ),
        ];
        for (url, verify, root) in cases {
            let t = DbTarget::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(t.verify, verify, "{url}");
            assert_eq!(t.root_cert.as_deref(), root, "{url}");
            if verify != Verify::Nothing {
                assert_eq!(t.config.get_ssl_mode(), SslMode::Require, "{url}");
            }
        }
    }
}
