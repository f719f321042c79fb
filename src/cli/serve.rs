//! `krakenbook serve`: the web explorer of a database's recording (coverage, the book at an
//! instant, the heatmap, the collectors' health), read-only, on loopback unless `--public`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use krakenbook::web::{self, Sessions, check_listen, http::Site};

pub(crate) const SERVE_EXAMPLES: &str = "\
Serves a web page and a JSON API under /api/ over the database's recording: per symbol the
coverage (verified spans and gaps with their cause), the book at any instant with its
verification status (step message by message), a price x time heatmap built from verified books
only, and each collector's published state. Read-only: its database sessions cannot write.
Every asset is in the binary; it works offline.

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
    // Archived ranges: what coverage reads of them is mounted in every session (the explorer's
    // windows are not known up front, so their book rows are not).
    let sessions = Sessions::from_target(super::archive::reading(
        krakenbook::store::DbTarget::parse(&url)?,
        krakenbook::archive::Mount::coverage(&[]),
    ));
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
