//! The JSON API under `/api/`: what the page draws, and what scripts may use (documented in the
//! README's "Web explorer" section).
//!
//! | endpoint | parameters | answer |
//! |---|---|---|
//! | `/api/symbols` | | `{"symbols": [..]}` |
//! | `/api/coverage` | `symbol`, `collector`? | the coverage model's streams, spans and gaps |
//! | `/api/book` | `symbol`, `at`, `depth`?, `collector`? | the book at an instant, or its gap |
//! | `/api/step` | `symbol`, `collector`, `conn_id`, `seq`, `at`?, `dir`?, `depth`? | the book after the next (previous) message of that stream (`at`: the book's `last_message_at`; it spares a search of the archive's files where the stream was archived) |
//! | `/api/heatmap` | `symbol`, `from`, `to`, `columns`?, `depth`?, `collector`? | books at evenly spaced instants |
//! | `/api/collectors` | | each collector's published state |
//!
//! Every answer is JSON written by `serde_json` (so every string from the database is escaped);
//! a refused parameter is a 400 `{"error","param"}`, an unknown symbol a 404 `{"error"}`, a
//! database failure a 503 `{"error"}`.

use serde::Serialize;
use tokio_postgres::Client;

use super::heatmap::{HeatmapRequest, column_instants, heatmap};
use super::params::{BadRequest, MAX_COLUMNS, MAX_HEATMAP_SECONDS, Params};
use super::{Session, TierError};
use crate::book::BookView;
use crate::history::{Coverage, Source, StreamId};
use crate::readback::{BookAt, BookCursor, ReadbackError, book_at};
use crate::store::book_rows::DUP_SEQ_REACH;
use crate::time::Timestamp;

/// A collector whose row is older than this is shown as not running.
pub const STALE_AFTER_SECONDS: f64 = 15.0;

/// An API answer: status and JSON body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The JSON text.
    pub body: String,
}

impl Answer {
    fn ok(value: &impl Serialize) -> Answer {
        match serde_json::to_string(value) {
            Ok(body) => Answer { status: 200, body },
            Err(e) => Answer::error(500, &format!("cannot encode the answer: {e}")),
        }
    }

    fn error(status: u16, error: &str) -> Answer {
        Answer {
            status,
            body: serde_json::json!({ "error": error }).to_string(),
        }
    }

    fn bad(e: BadRequest) -> Answer {
        Answer {
            status: 400,
            body: serde_json::to_string(&e).unwrap_or_else(|_| "{}".to_owned()),
        }
    }
}

impl From<BadRequest> for Answer {
    fn from(e: BadRequest) -> Self {
        Answer::bad(e)
    }
}

impl From<ReadbackError> for Answer {
    fn from(e: ReadbackError) -> Self {
        match e {
            ReadbackError::NoStart { .. } => Answer::error(404, &e.to_string()),
            ReadbackError::Invalid { .. } => Answer::error(500, &e.to_string()),
            _ => {
                tracing::warn!(error = %e, "serve: a database read failed");
                Answer::error(503, &format!("the database failed: {e}"))
            }
        }
    }
}

impl From<crate::history::HistoryError> for Answer {
    fn from(e: crate::history::HistoryError) -> Self {
        ReadbackError::History(e).into()
    }
}

fn db_failed(e: tokio_postgres::Error) -> Answer {
    tracing::warn!(error = %e, "serve: a database read failed");
    Answer::error(503, &format!("the database failed: {e}"))
}

/// Which endpoint a path names (`None`: no such endpoint).
pub fn endpoint(path: &str) -> Option<&'static str> {
    [
        "symbols",
        "coverage",
        "book",
        "step",
        "heatmap",
        "collectors",
    ]
    .into_iter()
    .find(|e| path.strip_prefix("/api/") == Some(e))
}

/// Answers `endpoint` (from [`endpoint`]) with `query` over `session`.
pub async fn answer(session: &Session, endpoint: &str, query: Option<&str>) -> Answer {
    let client = session.client();
    let result = match endpoint {
        "symbols" => symbols(client, query).await,
        "coverage" => coverage(client, query).await,
        "book" => book(session, query).await,
        "step" => step(session, query).await,
        "heatmap" => heatmap_answer(session, query).await,
        "collectors" => collectors(client, query).await,
        _ => Err(Answer::error(404, "no such endpoint")),
    };
    result.unwrap_or_else(|e| e)
}

async fn symbols(client: &Client, query: Option<&str>) -> Result<Answer, Answer> {
    Params::parse(query, &[])?;
    let symbols = crate::readback::query::recorded_symbols(client).await?;
    Ok(Answer::ok(&serde_json::json!({ "symbols": symbols })))
}

/// `/api/coverage`'s answer: the model's coverage, and the record's bounds.
#[derive(Debug, Serialize)]
struct CoverageAnswer<'a> {
    /// The first frame of any stream of the symbol (receive time).
    first: Option<Timestamp>,
    /// The last frame.
    last: Option<Timestamp>,
    #[serde(flatten)]
    coverage: &'a Coverage,
}

async fn known_coverage(
    client: &Client,
    symbol: &str,
    collector: Option<&str>,
) -> Result<Coverage, Answer> {
    let coverage = Source::Database(client)
        .coverage_of(symbol, collector)
        .await?;
    if coverage.streams.is_empty() {
        return Err(Answer::error(
            404,
            &format!(
                "nothing of {} is recorded{}: see /api/symbols",
                crate::text::printable(symbol),
                if collector.is_some() {
                    " by that collector"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(coverage)
}

async fn coverage(client: &Client, query: Option<&str>) -> Result<Answer, Answer> {
    let p = Params::parse(query, &["symbol", "collector"])?;
    let (symbol, collector) = (p.symbol()?, p.collector()?);
    let coverage = known_coverage(client, &symbol, collector.as_deref()).await?;
    Ok(Answer::ok(&CoverageAnswer {
        first: coverage.streams.iter().map(|s| s.first_received).min(),
        last: coverage.streams.iter().map(|s| s.last_received).max(),
        coverage: &coverage,
    }))
}

/// The book JSON: `BookAt`, with its verdict spelled out.
#[derive(Debug, Serialize)]
struct BookAnswer {
    /// Whether the book is verified (no gap, Kraken's checksum reproduced).
    verified: bool,
    #[serde(flatten)]
    book: BookAt,
}

fn tier_failed(e: TierError) -> Answer {
    tracing::warn!(error = %e, "serve: archived rows could not be read");
    Answer::error(503, &e.to_string())
}

async fn book(session: &Session, query: Option<&str>) -> Result<Answer, Answer> {
    let client = session.client();
    let p = Params::parse(query, &["symbol", "at", "depth", "collector"])?;
    let (symbol, at, depth, collector) =
        (p.symbol()?, p.instant("at")?, p.depth(25)?, p.collector()?);
    known_coverage(client, &symbol, collector.as_deref()).await?;
    session
        .need(&symbol, &[(at, at)])
        .await
        .map_err(tier_failed)?;
    let book = book_at(client, &symbol, at, depth, collector.as_deref()).await?;
    Ok(Answer::ok(&BookAnswer {
        verified: book.is_verified(),
        book,
    }))
}

async fn step(session: &Session, query: Option<&str>) -> Result<Answer, Answer> {
    let p = Params::parse(
        query,
        &[
            "symbol",
            "collector",
            "conn_id",
            "seq",
            "dir",
            "depth",
            "at",
        ],
    )?;
    let symbol = p.symbol()?;
    let collector = p.collector()?.ok_or_else(|| BadRequest {
        param: "collector".into(),
        error: "missing: give the collector of the book being stepped".into(),
    })?;
    let conn_id = p.required_integer("conn_id")?;
    let seq = p.required_integer("seq")?;
    let forward = p.forward()?;
    let depth = p.depth(25)?;
    let at = p.optional_instant("at")?;
    let stream = StreamId { collector, conn_id };
    let book = step_book(session, &symbol, &stream, (seq, at), forward, depth).await?;
    Ok(Answer::ok(&BookAnswer {
        verified: book.is_verified(),
        book,
    }))
}

/// The book message of `symbol` on `stream` next to `seq` (after it when `forward`): its seq and
/// Kraken timestamp. Looked for in seq windows that grow sixteen-fold (the received order has a
/// block-range index, not a btree), up to the collector's last seq.
async fn next_message(
    client: &Client,
    symbol: &str,
    stream: &StreamId,
    seq: i64,
    forward: bool,
) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
    let sql = if forward {
        "SELECT seq, \"timestamp\" FROM krakenbook_copies
          WHERE collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $1)
            AND conn_id = $2 AND symbol = $3 AND seq > $4::bigint AND seq <= $4::bigint + $5::bigint
            AND row_seq > $4::bigint - $6::bigint AND row_seq <= $4::bigint + $5::bigint + $6::bigint
          ORDER BY seq LIMIT 1"
    } else {
        "SELECT seq, \"timestamp\" FROM krakenbook_copies
          WHERE collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $1)
            AND conn_id = $2 AND symbol = $3 AND seq < $4::bigint AND seq >= $4::bigint - $5::bigint
            AND row_seq < $4::bigint + $6::bigint AND row_seq >= $4::bigint - $5::bigint - $6::bigint
          ORDER BY seq DESC LIMIT 1"
    };
    let bounds = client
        .query_one(
            "SELECT coalesce(min(first_seq), 0), coalesce(max(last_seq), 0)
               FROM krakenbook_connections WHERE collector = $1",
            &[&stream.collector],
        )
        .await?;
    let (first, last): (i64, i64) = (bounds.get(0), bounds.get(1));
    let mut window: i64 = 1 << 16;
    loop {
        let row = client
            .query_opt(
                sql,
                &[
                    &stream.collector,
                    &stream.conn_id,
                    &symbol,
                    &seq,
                    &window,
                    &DUP_SEQ_REACH,
                ],
            )
            .await?;
        let exhausted = if forward {
            seq.saturating_add(window) >= last
        } else {
            seq.saturating_sub(window) <= first
        };
        if row.is_some() || exhausted {
            return Ok(row);
        }
        window = window.saturating_mul(16);
    }
}

/// The Kraken timestamp of the book message `seq` of `symbol` on `stream`, as the session reads
/// it now (`None`: not stored, or archived and not loaded).
async fn message_time(
    client: &Client,
    symbol: &str,
    stream: &StreamId,
    seq: i64,
) -> Result<Option<Timestamp>, Answer> {
    let row = client
        .query_opt(
            "SELECT \"timestamp\" FROM krakenbook_copies
              WHERE collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $1)
                AND conn_id = $2 AND symbol = $3 AND seq = $4
                AND row_seq > $4::bigint - $5::bigint AND row_seq <= $4::bigint + $5::bigint
              LIMIT 1",
            &[
                &stream.collector,
                &stream.conn_id,
                &symbol,
                &seq,
                &DUP_SEQ_REACH,
            ],
        )
        .await
        .map_err(db_failed)?;
    Ok(row.map(|r| r.get(0)))
}

/// When `stream`'s connection received its first and last frames (`None`: not recorded).
async fn stream_life(
    client: &Client,
    stream: &StreamId,
) -> Result<Option<(Timestamp, Timestamp)>, Answer> {
    let row = client
        .query_one(
            "SELECT min(first_received_at), max(last_received_at) FROM krakenbook_connections
              WHERE collector = $1 AND conn_id = $2",
            &[&stream.collector, &stream.conn_id],
        )
        .await
        .map_err(db_failed)?;
    Ok(match (row.get(0), row.get(1)) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    })
}

/// How far a message's Kraken timestamp may lie from its receipt (clock skew and latency): a
/// stream's messages (but a quiet pair's first snapshot, which carries its last change's time)
/// lie within its connection's life widened by this.
const CLOCK_SLACK_NS: i64 = 60_000_000_000;

/// Whether `stream`'s connection was open at some time of `[first, last)` (on the receive
/// clock, widened by [`CLOCK_SLACK_NS`]).
async fn stream_overlaps(
    client: &Client,
    stream: &StreamId,
    (first, last): (Timestamp, Timestamp),
) -> Result<bool, Answer> {
    Ok(stream_life(client, stream).await?.is_some_and(|(a, b)| {
        a.add_nanos(-CLOCK_SLACK_NS) < last && b.add_nanos(CLOCK_SLACK_NS) >= first
    }))
}

/// [`next_message`] in a session that reads archived ranges: the rows between the message `seq`
/// (at `t`) and its neighbour are loaded first. Windows from `t` that grow sixteen-fold are
/// loaded until the neighbour found lies inside the loaded window, or the window reaches past
/// every archived range on that side, or past the stream's connection's life widened by
/// [`CLOCK_SLACK_NS`] (then nothing archived lies between). It relies on a stream's messages of
/// a pair being in time order (Kraken's timestamps do not go back on a connection), so that the
/// neighbour by seq is also the neighbour in time.
async fn next_message_archived(
    session: &Session,
    symbol: &str,
    stream: &StreamId,
    (seq, t): (i64, Timestamp),
    forward: bool,
    (first, last): (Timestamp, Timestamp),
) -> Result<Option<tokio_postgres::Row>, Answer> {
    let life = stream_life(session.client(), stream).await?;
    let (first, last) = match life {
        Some((a, b)) => (
            first.max(a.add_nanos(-CLOCK_SLACK_NS)),
            last.min(b.add_nanos(CLOCK_SLACK_NS)),
        ),
        None => (first, last),
    };
    let mut width: i64 = 1_000_000_000;
    loop {
        let (lo, hi) = if forward {
            (t, t.add_nanos(width))
        } else {
            (t.add_nanos(-width), t)
        };
        session
            .need(symbol, &[(lo, hi)])
            .await
            .map_err(tier_failed)?;
        let row = next_message(session.client(), symbol, stream, seq, forward)
            .await
            .map_err(db_failed)?;
        let inside = row.as_ref().is_some_and(|r| {
            let at: Timestamp = r.get(1);
            if forward { at <= hi } else { at >= lo }
        });
        let past = if forward { hi >= last } else { lo <= first };
        if inside || past {
            return Ok(row);
        }
        width = width.saturating_mul(16);
    }
}

/// The book after the book message of `symbol` next to `seq` (after it when `forward`, else
/// before it) on `stream`, rebuilt from that stream's own start within the verified span that
/// holds the message. A message outside every verified span of the stream is answered as
/// `book --at` its instant answers (a gap, or another stream).
///
/// In a session that reads archived ranges, `at` (the Kraken timestamp of message `seq`, the
/// `last_message_at` of the book stepped from) says where to load rows from; without it, the
/// message's time is read from the database, from what the session loaded, or from the
/// archive's files ([`Session::locate`]); a message found nowhere on a stream that was open
/// during an archived range is refused with a 400 that asks for `at`.
pub async fn step_book(
    session: &Session,
    symbol: &str,
    stream: &StreamId,
    (seq, at): (i64, Option<Timestamp>),
    forward: bool,
    depth: usize,
) -> Result<BookAt, Answer> {
    let client = session.client();
    let row = match session.archived_range() {
        None => next_message(client, symbol, stream, seq, forward)
            .await
            .map_err(db_failed)?,
        Some(archived) => {
            if let Some(at) = at {
                session
                    .need(symbol, &[(at, at)])
                    .await
                    .map_err(tier_failed)?;
            }
            let mut t = message_time(client, symbol, stream, seq).await?;
            if t.is_none() && at.is_none() && stream_overlaps(client, stream, archived).await? {
                // Not loaded in this session: found in the archive's files.
                t = session
                    .locate(symbol, &stream.collector, stream.conn_id, seq)
                    .await
                    .map_err(tier_failed)?;
                if let Some(t) = t {
                    session.need(symbol, &[(t, t)]).await.map_err(tier_failed)?;
                }
            }
            match (t, at) {
                (Some(t), Some(at)) if t != at => {
                    return Err(Answer::bad(BadRequest {
                        param: "at".into(),
                        error: format!(
                            "message {seq} of this stream is at {t}, not at {at}: give the book's last_message_at"
                        ),
                    }));
                }
                (Some(t), _) => {
                    next_message_archived(session, symbol, stream, (seq, t), forward, archived)
                        .await?
                }
                (None, _) if stream_overlaps(client, stream, archived).await? => {
                    return Err(Answer::bad(BadRequest {
                        param: "at".into(),
                        error: format!(
                            "message {seq} of this stream is not found{}: this stream was open while a range was archived; give at= the Kraken timestamp of that message (the book's last_message_at)",
                            if at.is_some() { " at that instant" } else { "" }
                        ),
                    }));
                }
                (None, _) => next_message(client, symbol, stream, seq, forward)
                    .await
                    .map_err(db_failed)?,
            }
        }
    };
    let Some(row) = row else {
        return Err(Answer::error(
            404,
            &format!(
                "no book message of this stream {} seq {seq}",
                if forward { "after" } else { "before" }
            ),
        ));
    };
    let (target, at): (i64, Timestamp) = (row.get(0), row.get(1));
    session
        .need(symbol, &[(at, at)])
        .await
        .map_err(tier_failed)?;
    let coverage = known_coverage(client, symbol, Some(&stream.collector)).await?;
    let span = coverage
        .streams
        .iter()
        .find(|s| s.stream == *stream)
        .and_then(|s| {
            s.spans
                .iter()
                .find(|sp| sp.start_seq <= target && target <= sp.last_seq)
        });
    let Some(span) = span else {
        // Past a mismatch, before the first verified snapshot: the instant's answer.
        return Ok(book_at(client, symbol, at, depth, None).await?);
    };
    let start = BookCursor::find_start_in_span(
        client,
        symbol,
        at,
        &stream.collector,
        stream.conn_id,
        span.start_seq,
        target,
    )
    .await?
    .ok_or_else(|| Answer::error(404, "no snapshot or book state before that message"))?;
    let mut cursor = BookCursor::open_bounded(client, symbol, start.clone(), at, target).await?;
    let mut applied = 0u64;
    let mut last = (start.seq, start.timestamp, None, None);
    while let Some(s) = cursor.next().await? {
        applied += 1;
        last = (s.seq, s.timestamp, Some(s.checksum), s.verified);
    }
    let (last_seq, last_at, checksum, verified) = last;
    let checksum = checksum.unwrap_or_else(|| cursor.book().checksum());
    let ok = cursor.is_synced() && verified != Some(false);
    let BookView { bids, asks } = cursor.book().view(depth);
    Ok(BookAt {
        symbol: symbol.to_owned(),
        at,
        bids,
        asks,
        checksum: Some(checksum),
        checksum_ok: Some(ok),
        spread: cursor.book().spread(),
        last_message_at: Some(last_at),
        last_seq: Some(last_seq),
        collector: Some(stream.collector.clone()),
        conn_id: Some(stream.conn_id),
        started_from: Some(
            match start.kind {
                crate::readback::StartKind::Snapshot => "snapshot",
                crate::readback::StartKind::State => "state",
            }
            .to_owned(),
        ),
        started_at: Some(start.timestamp),
        messages_applied: applied,
        gap: None,
    })
}

async fn heatmap_answer(session: &Session, query: Option<&str>) -> Result<Answer, Answer> {
    let client = session.client();
    let p = Params::parse(
        query,
        &["symbol", "from", "to", "columns", "depth", "collector"],
    )?;
    let symbol = p.symbol()?;
    let (from, to) = p.range(MAX_HEATMAP_SECONDS)?;
    // MAX_COLUMNS is small: the casts are exact.
    let columns = p.integer("columns", 300, 1, MAX_COLUMNS as i64)? as usize;
    let depth = p.depth(100)?;
    let collector = p.collector()?;
    known_coverage(client, &symbol, collector.as_deref()).await?;
    // Each column is the book at its instant: those are the windows read.
    let (_, instants) = column_instants(from, to, columns);
    let windows: Vec<(Timestamp, Timestamp)> = instants.iter().map(|&t| (t, t)).collect();
    session.need(&symbol, &windows).await.map_err(tier_failed)?;
    let map = heatmap(
        client,
        &HeatmapRequest {
            symbol,
            collector,
            from,
            to,
            columns,
            depth,
        },
    )
    .await?;
    Ok(Answer::ok(&map))
}

/// One collector as `/api/collectors` shows it.
#[derive(Debug, Serialize)]
struct CollectorRow {
    collector: String,
    /// `running`, `stopped` (it said so when it stopped) or `not_running` (no word for longer
    /// than [`STALE_AFTER_SECONDS`]: killed, crashed, or cut off from the database).
    status: &'static str,
    host: String,
    pid: i32,
    version: String,
    started_at: Timestamp,
    updated_at: Timestamp,
    /// Seconds since `updated_at`, on the database's clock.
    age_seconds: f64,
    frames: i64,
    last_frame_at: Option<Timestamp>,
    /// The last frame the database holds of any of its connections (`krakenbook_connections`).
    last_frame_stored_at: Option<Timestamp>,
    last_verified_at: Option<Timestamp>,
    connections_open: i32,
    symbols: i32,
    streams_live: i32,
    mismatches: i64,
    reconnects: i64,
    lag_records: i64,
    lag_seconds: f64,
    problem: Option<String>,
    detail: serde_json::Value,
}

/// The status of a collector's row from its `running` flag and its age.
pub fn collector_status(running: bool, age_seconds: f64) -> &'static str {
    if !running {
        "stopped"
    } else if age_seconds > STALE_AFTER_SECONDS {
        "not_running"
    } else {
        "running"
    }
}

async fn collectors(client: &Client, query: Option<&str>) -> Result<Answer, Answer> {
    Params::parse(query, &[])?;
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('krakenbook_collector_state') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db_failed)?
        .get(0);
    let rows = if exists {
        client
            .query(
                "SELECT s.collector, s.running, extract(epoch FROM now() - s.updated_at)::float8,
                        s.host, s.pid, s.version, s.started_at, s.updated_at, s.frames,
                        s.last_frame_at, c.last_received_at, s.last_verified_at,
                        s.connections_open, s.symbols, s.streams_live, s.mismatches,
                        s.reconnects, s.lag_records, s.lag_seconds, s.problem, s.detail::text
                   FROM krakenbook_collector_state s
                   LEFT JOIN LATERAL (SELECT max(last_received_at) AS last_received_at
                                        FROM krakenbook_connections k
                                       WHERE k.collector = s.collector) c ON true
                  ORDER BY s.collector",
                &[],
            )
            .await
            .map_err(db_failed)?
    } else {
        Vec::new()
    };
    let now: Timestamp = client
        .query_one("SELECT now()", &[])
        .await
        .map_err(db_failed)?
        .get(0);
    let list: Vec<CollectorRow> = rows
        .iter()
        .map(|r| {
            let age: f64 = r.get(2);
            CollectorRow {
                collector: r.get(0),
                status: collector_status(r.get(1), age),
                age_seconds: age,
                host: r.get(3),
                pid: r.get(4),
                version: r.get(5),
                started_at: r.get(6),
                updated_at: r.get(7),
                frames: r.get(8),
                last_frame_at: r.get(9),
                last_frame_stored_at: r.get(10),
                last_verified_at: r.get(11),
                connections_open: r.get(12),
                symbols: r.get(13),
                streams_live: r.get(14),
                mismatches: r.get(15),
                reconnects: r.get(16),
                lag_records: r.get(17),
                lag_seconds: r.get(18),
                problem: r.get(19),
                detail: serde_json::from_str(r.get::<_, &str>(20))
                    .unwrap_or(serde_json::Value::Null),
            }
        })
        .collect();
    Ok(Answer::ok(&serde_json::json!({
        "now": now,
        "stale_after_seconds": STALE_AFTER_SECONDS,
        "collectors": list,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collector_is_running_only_while_its_row_is_fresh() {
        // (running flag, age in seconds, status)
        let table = [
            (true, 0.5, "running"),
            (true, STALE_AFTER_SECONDS, "running"),
            (true, STALE_AFTER_SECONDS + 0.1, "not_running"),
            (true, 86_400.0, "not_running"),
            (false, 1.0, "stopped"),
            (false, 86_400.0, "stopped"),
        ];
        for (running, age, want) in table {
            assert_eq!(collector_status(running, age), want, "{running} {age}");
        }
    }

    #[test]
    fn only_the_listed_endpoints_exist() {
        assert_eq!(endpoint("/api/book"), Some("book"));
        assert_eq!(endpoint("/api/heatmap"), Some("heatmap"));
        assert_eq!(endpoint("/api/book/"), None);
        assert_eq!(endpoint("/api/"), None);
        assert_eq!(endpoint("/book"), None);
    }
}
