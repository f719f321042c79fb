//! `krakenbook serve`: the web explorer of a database's recording (coverage, the book at an
//! instant, the heatmap, the collectors' health), read-only, on loopback unless `--public`.
//! Archived ranges are read through [`ArchiveTier`]: a `LazyMount` per database session.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use krakenbook::archive::LazyMount;
use krakenbook::time::Timestamp;
use krakenbook::web::{
    self, Sessions, Tier, TierError, TierFuture, TierSession, check_listen, http::Site,
};

pub(crate) const SERVE_EXAMPLES: &str = "\
Serves a web page and a JSON API under /api/ over the database's recording: per symbol the
coverage (verified spans and gaps with their cause), the book at any instant with its
verification status (step message by message), a price x time heatmap built from verified books
only, and each collector's published state. Read-only: its database sessions cannot write.
Every asset is in the binary; it works offline. Ranges moved to Parquet by `krakenbook archive`
answer as before: each request loads the archived rows it reads into its session, once (a
session is replaced after 2,000,000 such rows); an archive directory moved or deleted is a 503
that names it.

Examples:
  krakenbook serve --database-url postgres://kb@localhost/market          http://127.0.0.1:8080/
  krakenbook serve --listen 127.0.0.1:9000
  krakenbook serve --listen 0.0.0.0:8080 --public                        to the network (no authentication)
  curl 'http://127.0.0.1:8080/api/book?symbol=BTC/USD&at=2026-11-24T10:00:00Z&depth=10'";

/// `krakenbook serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (loopback unless --public).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Allow a non-loopback --listen address (the explorer has no authentication).
    #[arg(long)]
    pub public: bool,
    #[command(flatten)]
    pub db: super::db::DbArgs,
}

/// Runs `krakenbook serve` until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    check_listen(args.listen, args.public)?;
    let url = args.db.url()?;
    // Archived ranges: what coverage reads of them is mounted when a session opens; the rows a
    // request's windows need are loaded into its session as requests come (see `web::Session`).
    let sessions = Sessions::from_target(krakenbook::store::DbTarget::parse(&url)?)
        .with_tier(Arc::new(ArchiveTier), web::SESSION_ROWS);
    // Reach the database once before saying we serve: a wrong URL fails here, not on the page.
    sessions
        .client()
        .await
        .context("cannot open a read-only session")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (choose another --listen address)",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, database = %krakenbook::store::redact(&url), "serve: the explorer is at http://{addr}/");
    eprintln!("krakenbook explorer: http://{addr}/");
    let cancel = CancellationToken::new();
    let server = tokio::spawn(web::serve(
        listener,
        Arc::new(Site {
            sessions,
            public: args.public,
        }),
        cancel.clone(),
    ));
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    cancel.cancel();
    let _ = server.await;
    Ok(ExitCode::SUCCESS)
}

/// The archive as the explorer reads it: a [`LazyMount`] per session.
#[derive(Debug)]
struct ArchiveTier;

/// A session's [`LazyMount`].
#[derive(Debug)]
struct ArchiveSession(LazyMount);

fn tier_error(e: krakenbook::archive::ArchiveError) -> TierError {
    TierError(e.to_string())
}

impl Tier for ArchiveTier {
    fn open<'a>(
        &'a self,
        client: &'a tokio_postgres::Client,
    ) -> TierFuture<'a, Box<dyn TierSession>> {
        Box::pin(async move {
            let mount = LazyMount::open(client).await.map_err(tier_error)?;
            Ok(Box::new(ArchiveSession(mount)) as Box<dyn TierSession>)
        })
    }
}

impl TierSession for ArchiveSession {
    fn archived_range(&self) -> Option<(Timestamp, Timestamp)> {
        self.0.archived_range()
    }

    fn ensure<'a>(
        &'a mut self,
        client: &'a tokio_postgres::Client,
        symbol: &'a str,
        windows: &'a [(Timestamp, Timestamp)],
    ) -> TierFuture<'a, ()> {
        Box::pin(async move {
            let report = self
                .0
                .ensure(client, symbol, windows)
                .await
                .map_err(tier_error)?;
            if report.files > 0 {
                tracing::debug!(?report, symbol, "serve: archived rows loaded");
            }
            Ok(())
        })
    }

    fn locate<'a>(
        &'a self,
        symbol: &'a str,
        collector: &'a str,
        conn_id: i64,
        seq: i64,
    ) -> TierFuture<'a, Option<Timestamp>> {
        Box::pin(async move {
            self.0
                .locate(symbol, collector, conn_id, seq)
                .await
                .map_err(tier_error)
        })
    }

    fn changed<'a>(&'a self, client: &'a tokio_postgres::Client) -> TierFuture<'a, bool> {
        Box::pin(async move { self.0.changed(client).await.map_err(tier_error) })
    }

    fn rows_loaded(&self) -> u64 {
        self.0.rows_loaded()
    }

    fn is_poisoned(&self) -> bool {
        self.0.is_poisoned()
    }
}
