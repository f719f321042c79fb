//! Database URLs, TLS and connections.
//!
//! [`DbTarget::parse`] reads a libpq-style connection string (a `postgres://` URL or `key=value`
//! pairs) into a connection configuration, and [`DbTarget::connect`] opens a connection over TLS
//! when the URL asks for it (`sslmode`), with rustls and Mozilla's root certificates (or the
//! `sslrootcert` file).
//!
//! A password need not be on the command line (where `ps` shows it): when the connection string
//! has none, [`DbTarget::connect`] looks where libpq looks, in its order: the `PGPASSWORD`
//! environment variable, then the password file (`PGPASSFILE`, else `~/.pgpass`; lines
//! `host:port:database:user:password`, `*` matching anything, `\` escaping `:` and `\`, the
//! first matching line winning). Like libpq, a password file that is not a regular file or that
//! its group or others may read is ignored, with a warning.
//!
//! What must always hold:
//! - a password never appears in a log line or an error: everything printed about a target goes
//!   through [`redact`] (every form of connection string, see its doc), and errors carry the
//!   redacted form only;
//! - `sslmode` means what it means to libpq: `disable` no TLS; `prefer` (the default) TLS when the
//!   server offers it, unverified; `require` TLS, unverified unless `sslrootcert` is given;
//!   `verify-ca` TLS with the certificate chain verified; `verify-full` chain and host name verified.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// How long a connection attempt may take before it counts as failed (and, for the writer, is
/// retried).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Work done on every session a [`DbTarget`] opens, right after it connects (the archive tier
/// mounts the archived ranges a reader needs this way: see `krakenbook-archive`).
pub trait SessionSetup: std::fmt::Debug + Send + Sync {
    /// Prepares the new session.
    fn setup<'a>(
        &'a self,
        client: &'a Client,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + 'a>>;
}

/// Where a database is, and how to reach it.
#[derive(Clone)]
pub struct DbTarget {
    config: Config,
    verify: Verify,
    root_cert: Option<String>,
    redacted: String,
    setup: Option<Arc<dyn SessionSetup>>,
}

impl std::fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbTarget")
            .field("url", &self.redacted)
            .field("verify", &self.verify)
            .field("setup", &self.setup)
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
        // The driver's messages name unknown keys: only ever give it a real `key=value` form, so
        // that a URL without a scheme (whose "key" would be `user:password`) is never echoed.
        if !is_url && !is_key_value_form(url) {
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
            setup: None,
        })
    }

    /// The same target, running `setup` on every session it opens (after any set before).
    pub fn with_session_setup(mut self, setup: Arc<dyn SessionSetup>) -> DbTarget {
        self.setup = Some(setup);
        self
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

    /// What a password file line is matched against for this target (its first host).
    pub fn pass_key(&self) -> PassKey {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) if !h.is_empty() => h.clone(),
            Some(Host::Unix(path)) if !DEFAULT_SOCKET_DIRS.iter().any(|d| path == Path::new(d)) => {
                path.display().to_string()
            }
            _ => "localhost".to_owned(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or_default().to_owned();
        let dbname = self.config.get_dbname().unwrap_or(&user).to_owned();
        PassKey {
            host,
            port: port.to_string(),
            dbname,
            user,
        }
    }

    /// Connects, naming the session `application_name` on the server (visible in
    /// `pg_stat_activity`). The connection runs on a spawned task that ends with the client.
    pub async fn connect(&self, application_name: &str) -> Result<Client, StoreError> {
        let mut config = self.config.clone();
        config.application_name(application_name);
        if config.get_password().is_none()
            && let Some(password) = PasswordSources::from_env().password_for(&self.pass_key())
        {
            config.password(password);
        }
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
            Ok(Ok(client)) => {
                if let Some(setup) = &self.setup {
                    setup.setup(&client).await?;
                }
                Ok(client)
            }
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

/// Unix-socket directories libpq treats as its default (matched as `localhost` in a password file).
const DEFAULT_SOCKET_DIRS: [&str; 3] = ["/var/run/postgresql", "/run/postgresql", "/tmp"];

/// What a password file line is matched against: host (`localhost` for the default Unix
/// socket), port, database and user, as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassKey {
    /// The host name or address (or a non-default socket directory).
    pub host: String,
    /// The port.
    pub port: String,
    /// The database (the user name when none is given).
    pub dbname: String,
    /// The user.
    pub user: String,
}

/// Where a password comes from when the connection string holds none, in libpq's order.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PasswordSources {
    /// `PGPASSWORD` (ignored when empty).
    pub pgpassword: Option<String>,
    /// The password file: `PGPASSFILE`, else `~/.pgpass`.
    pub passfile: Option<PathBuf>,
}

impl std::fmt::Debug for PasswordSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordSources")
            .field("pgpassword", &self.pgpassword.as_ref().map(|_| "***"))
            .field("passfile", &self.passfile)
            .finish()
    }
}

impl PasswordSources {
    /// The sources this process's environment gives.
    pub fn from_env() -> PasswordSources {
        let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        PasswordSources {
            pgpassword: non_empty("PGPASSWORD").map(|v| v.to_string_lossy().into_owned()),
            passfile: non_empty("PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| non_empty("HOME").map(|h| PathBuf::from(h).join(".pgpass"))),
        }
    }

    /// The password for `key`: `PGPASSWORD`, else the first matching line of the password file
    /// (a file its group or others may read is ignored with a warning, as libpq does).
    pub fn password_for(&self, key: &PassKey) -> Option<String> {
        if let Some(p) = &self.pgpassword {
            return Some(p.clone());
        }
        let path = self.passfile.as_ref()?;
        let text = read_passfile(path)?;
        pgpass_lookup(&text, key)
    }
}

/// The password of the first line of a password file (`host:port:database:user:password`)
/// that matches `key`: each of the first four fields is `*` (anything) or the value itself,
/// with `\:` and `\\` escaped; lines starting with `#` are comments.
pub fn pgpass_lookup(text: &str, key: &PassKey) -> Option<String> {
    let wanted = [
        key.host.as_str(),
        key.port.as_str(),
        key.dbname.as_str(),
        key.user.as_str(),
    ];
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_pgpass_line(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = fields[..4]
            .iter()
            .zip(wanted)
            .all(|((text, star), want)| *star || text == want);
        if matches {
            // The password is the rest of the line, colons included (de-escaped).
            return Some(
                fields[4..]
                    .iter()
                    .map(|(t, _)| t.as_str())
                    .collect::<Vec<_>>()
                    .join(":"),
            );
        }
    }
    None
}

/// A password file line's fields, de-escaped, each with whether it was a bare `*`.
fn split_pgpass_line(line: &str) -> Vec<(String, bool)> {
    let mut fields = Vec::with_capacity(5);
    let mut cur = String::new();
    let mut escaped_any = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                escaped_any = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' if fields.len() < 4 => {
                let star = cur == "*" && !escaped_any;
                fields.push((std::mem::take(&mut cur), star));
                escaped_any = false;
            }
            c => cur.push(c),
        }
    }
    fields.push((cur, false));
    fields
}

/// The text of the password file at `path`, or `None` (missing, unreadable, or refused because
/// it is not a regular file or its group or others may read it, each said once per file).
fn read_passfile(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn_once(
                path,
                &format!("cannot read password file {}: {e}", path.display()),
            );
            return None;
        }
    };
    if !meta.is_file() {
        warn_once(
            path,
            &format!(
                "password file {} is not a plain file; ignored",
                path.display()
            ),
        );
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        warn_once(
            path,
            &format!(
                "password file {} has group or world access; permissions should be u=rw (0600) or less; ignored",
                path.display()
            ),
        );
        return None;
    }
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            warn_once(
                path,
                &format!("cannot read password file {}: {e}", path.display()),
            );
            None
        }
    }
}

/// Logs `message` at warn level the first time it is said about `path` in this process (a
/// collector reconnecting through an outage would otherwise repeat it on every attempt).
fn warn_once(path: &Path, message: &str) {
    static SAID: OnceLock<Mutex<BTreeSet<(PathBuf, String)>>> = OnceLock::new();
    let said = SAID.get_or_init(|| Mutex::new(BTreeSet::new()));
    let first = said
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert((path.to_path_buf(), message.to_owned()));
    if first {
        tracing::warn!("{message}");
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

/// The connection string with any password replaced by `***`, whatever its form: a URL
/// (`postgres://`, `postgresql://`, or none: `user:password@host/db`; the password
/// percent-encoded or not, containing `@`, `/` or `:`), a `password` query parameter (its name
/// percent-encoded or not), `key=value` pairs (`password=...`, quoted or not, spaces around `=`),
/// and a `dbname` that is itself a connection string, as libpq allows.
pub fn redact(url: &str) -> String {
    let url = url.trim();
    if is_key_value_form(url) {
        redact_key_values(url)
    } else {
        redact_url(url)
    }
}

/// Whether `s` is libpq's `key=value` form: it starts with a keyword and `=` (a URL's first `=`
/// comes after its scheme, user and host).
fn is_key_value_form(s: &str) -> bool {
    match s.find('=') {
        Some(eq) => {
            let key = s[..eq].trim();
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    // The user info ends at the last `@` before the query: a password holding an unencoded `@`
    // or `/` is still all hidden.
    match main.rfind('@') {
        Some(at) => {
            let userinfo = &main[..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&main[at..]);
        }
        None => out.push_str(main),
    }
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if is_secret_key(&percent_decode(k)) => format!("{k}=***"),
                Some((k, v)) if percent_decode(k) == "dbname" => {
                    let inner = percent_decode(v);
                    if holds_connection_string(&inner) {
                        format!("{k}={}", redact(&inner))
                    } else {
                        p.to_owned()
                    }
                }
                _ => p.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

fn redact_key_values(s: &str) -> String {
    split_key_values(s)
        .into_iter()
        .map(|t| match t.split_once('=') {
            Some((k, _)) if is_secret_key(k.trim()) => format!("{}=***", k.trim()),
            Some((k, v)) if k.trim() == "dbname" => {
                let inner = unquote(v.trim());
                if holds_connection_string(&inner) {
                    format!(
                        "dbname='{}'",
                        redact(&inner).replace('\\', "\\\\").replace('\'', "\\'")
                    )
                } else {
                    t
                }
            }
            _ => t,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Option names whose value is a secret (case-insensitive, to be safe with typos).
fn is_secret_key(key: &str) -> bool {
    key.eq_ignore_ascii_case("password")
}

/// Whether a `dbname` value is itself a connection string (libpq expands those).
fn holds_connection_string(value: &str) -> bool {
    value.contains("://") || value.contains('=') || value.contains('@')
}

/// A `key=value` value without its quotes and backslash escapes.
fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) else {
        return v.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
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
                "postgresql://kb:s3cret@host/db",
                "postgresql://kb:***@host/db",
            ),
            // Percent-encoded password.
            (
                "postgresql://kb:p%40ss%2Fw%3Ard@host/db",
                "postgresql://kb:***@host/db",
            ),
            // Unencoded `@`, `/` and `:` in the password: all of it hidden.
            ("postgres://kb:p@s/s:w@host/db", "postgres://kb:***@host/db"),
            ("postgres://kb@host/db", "postgres://kb@host/db"),
            ("postgres://:s3cret@host/db", "postgres://:***@host/db"),
            // No scheme (libpq refuses it; it used to be echoed as given).
            ("kb:s3cret@host/db", "kb:***@host/db"),
            ("kb:s3=cr=et@host:5432/db", "kb:***@host:5432/db"),
            // Query parameters, the name percent-encoded or not.
            (
                "postgres://host/db?user=kb&password=hunter2",
                "postgres://host/db?user=kb&password=***",
            ),
            (
                "postgres://host/db?pass%77ord=hunter2&sslmode=disable",
                "postgres://host/db?pass%77ord=***&sslmode=disable",
            ),
            // key=value pairs: plain, quoted with spaces and escapes, spaces around `=`.
            (
                "host=localhost user=kb password=hunter2 dbname=m",
                "host=localhost user=kb password=*** dbname=m",
            ),
            (
                "host=localhost password='a b\\' c' dbname=m",
                "host=localhost password=*** dbname=m",
            ),
            (
                "host=localhost password = hunter2 dbname=m",
                "host=localhost password=*** dbname=m",
            ),
            // A dbname that is itself a connection string (libpq expands it).
            (
                "dbname=postgres://kb:hunter2@h/db",
                "dbname='postgres://kb:***@h/db'",
            ),
            (
                "postgres://h/?dbname=postgres%3A%2F%2Fkb%3Ahunter2%40h%2Fdb",
                "postgres://h/?dbname=postgres://kb:***@h/db",
            ),
            ("postgres://u:p@h:1,h2:2/db", "postgres://u:***@h:1,h2:2/db"),
        ];
        for (url, want) in cases {
            let got = redact(url);
            assert_eq!(got, want, "{url}");
            for secret in ["s3cret", "hunter2", "p%40ss", "s3=cr", "p@s/s"] {
                assert!(!got.contains(secret), "{url} -> {got}");
            }
        }
    }

    #[test]
    fn parse_errors_of_every_form_never_show_the_password() {
        for url in [
            "kb:s3cret@host/db",
            "kb:s3cret=x@host/db",
            "postgres://kb:s3cret@host:99999/db",
            "host=h port=notaport password=s3cret",
            "host=h password='s3cret",
        ] {
            if let Err(e) = DbTarget::parse(url) {
                let text = e.to_string();
                assert!(!text.contains("s3cret"), "{url}: {text}");
            }
        }
    }

    fn key(host: &str, port: &str, dbname: &str, user: &str) -> PassKey {
        PassKey {
            host: host.into(),
            port: port.into(),
            dbname: dbname.into(),
            user: user.into(),
        }
    }

    #[test]
    fn pgpass_lines_match_as_libpq_matches_them() {
        let file = "\
# comments and blank lines are skipped

db.example:5432:market:kb:first
*:*:market:kb:second
h\\:x:5432:*:kb:escaped\\:colon
*:*:*:admin:pa:ss:with:colons
*:*:*:back\\\\slash:bs
\\*:*:*:star:literal-star
localhost:5433:*:*:local
";
        // (key, password)
        let cases = [
            (key("db.example", "5432", "market", "kb"), Some("first")),
            (key("db.example", "5433", "market", "kb"), Some("second")),
            (key("other", "1", "market", "kb"), Some("second")),
            (key("other", "1", "archive", "kb"), None),
            (key("h:x", "5432", "any", "kb"), Some("escaped:colon")),
            (key("h", "5432", "any", "admin"), Some("pa:ss:with:colons")),
            (key("h", "5432", "any", "back\\slash"), Some("bs")),
            // `\*` is a literal star, not a wildcard.
            (key("h", "5432", "any", "star"), None),
            (key("*", "5432", "any", "star"), Some("literal-star")),
            (key("localhost", "5433", "m", "anyone"), Some("local")),
            (key("localhost", "5432", "m", "anyone"), None),
        ];
        for (k, want) in cases {
            assert_eq!(pgpass_lookup(file, &k).as_deref(), want, "{k:?}");
        }
    }

    #[test]
    fn pgpassword_comes_before_the_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:*:from-file\n").unwrap();
        set_mode(&path, 0o600);
        let k = key("h", "5432", "db", "kb");
        let both = PasswordSources {
            pgpassword: Some("from-env".into()),
            passfile: Some(path.clone()),
        };
        assert_eq!(both.password_for(&k).as_deref(), Some("from-env"));
        let file_only = PasswordSources {
            pgpassword: None,
            passfile: Some(path),
        };
        assert_eq!(file_only.password_for(&k).as_deref(), Some("from-file"));
        assert!(!format!("{both:?}").contains("from-env"));
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_password_file_others_may_read_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:*:secret\n").unwrap();
        let sources = PasswordSources {
            pgpassword: None,
            passfile: Some(path.clone()),
        };
        let k = key("h", "5432", "db", "kb");
        // (mode, used)
        for (mode, used) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o660, false),
            (0o644, false),
        ] {
            set_mode(&path, mode);
            assert_eq!(sources.password_for(&k).is_some(), used, "mode {mode:o}");
        }
        // A directory is not a password file; a missing file is no password.
        let not_a_file = PasswordSources {
            pgpassword: None,
            passfile: Some(dir.path().to_path_buf()),
        };
        assert_eq!(not_a_file.password_for(&k), None);
        let missing = PasswordSources {
            pgpassword: None,
            passfile: Some(dir.path().join("missing")),
        };
        assert_eq!(missing.password_for(&k), None);
    }

    #[test]
    fn a_target_is_matched_by_its_first_host_port_database_and_user() {
        // (connection string, key)
        let cases = [
            (
                "postgres://kb@db.example:6432/market",
                key("db.example", "6432", "market", "kb"),
            ),
            (
                "postgres://kb@db.example",
                key("db.example", "5432", "kb", "kb"),
            ),
            (
                "host=/var/run/postgresql user=kb dbname=m",
                key("localhost", "5432", "m", "kb"),
            ),
            (
                "host=/srv/pg user=kb dbname=m port=5433",
                key("/srv/pg", "5433", "m", "kb"),
            ),
        ];
        for (url, want) in cases {
            assert_eq!(DbTarget::parse(url).unwrap().pass_key(), want, "{url}");
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
