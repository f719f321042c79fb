//! Archived ranges mounted into a reader's session, so that every reader's SQL sees archive and
//! database as one.
//!
//! A mount creates temporary tables shaped like `krakenbook_book`, `krakenbook_other`,
//! `kraken_book_states` and `kraken_feed_events` (`CREATE TEMP TABLE … (LIKE public.…)`), fills
//! them from the archive's files with binary `COPY`, indexes and analyzes them, and creates
//! temporary views with the tables' own names, each `public.<table> UNION ALL` its temporary
//! table. PostgreSQL resolves an unqualified table name in `pg_temp` first, so `krakenbook_book`
//! in any reader's query is then the view. The views over the book table
//! (`kraken_orderbook_messages`, `kraken_orderbook_entries`, `krakenbook_copies`) are bound to
//! the tables they were created on, so they are created again, as temporary views, from their
//! own definitions (`pg_get_viewdef`, read before anything is shadowed): they then read the
//! temporary views. `krakenbook_connections` and `krakenbook_collectors` are never archived away
//! (see [`crate::archive`]) and are not mounted.
//!
//! What is loaded, for the symbols asked (every symbol when none is named):
//! - for every archived part: its feed events (all: disconnections and damage are read for every
//!   symbol), its book states and its `marks/` rows: what the coverage model reads of a symbol's
//!   whole history (verified snapshots, mismatches and the verified message before each, each
//!   stream's last verified message), so coverage is the same before and after archiving;
//! - the book and other rows of the window `[start, to]`, where `start` is `from` moved back to
//!   where the books of `from` start: for every stream whose connection was open at `from`, its
//!   latest verified snapshot or book state at or before `from`, and for every collector with
//!   such a stream its latest snapshot or state (where `replay --verify` restarts). A book at
//!   any instant of the window is then rebuilt from rows all present.
//!
//! What must always hold: a mounted row is the row the database held (the files are checked
//! when written, the records copied column for column); no row is there twice (a part's marks
//! are not loaded again with its window's rows); a failed mount leaves the session as it was
//! (one transaction). Cost: the files of the small datasets of every part are read on every
//! mount, and the window's rows are copied into the session (a wide window over a long archive
//! copies a lot: the tier keeps the disk small, not wide reads fast).

use std::collections::{HashMap, HashSet};

use tokio_postgres::Client;

use crate::ArchiveError;
use crate::catalog::{self, ArchivedPart, FileEntry};
use crate::columns::for_each_row;
use crate::location::Location;
use crate::naming::Dataset;
use crate::records::{BookRec, CopyRecord, EventRec, OtherRec, Record, StateRec, copy_into};
use crate::store::{SessionSetup, StoreError};
use crate::time::Timestamp;

/// The views defined over the book table, created again over the mounted tables.
const DERIVED_VIEWS: [&str; 3] = [
    "kraken_orderbook_messages",
    "kraken_orderbook_entries",
    "krakenbook_copies",
];

/// The base tables mounted: (table, temporary table, time column).
const MOUNTED: [(&str, &str, &str); 4] = [
    (
        "krakenbook_book",
        "krakenbook_archived_book",
        "\"timestamp\"",
    ),
    (
        "krakenbook_other",
        "krakenbook_archived_other",
        "\"timestamp\"",
    ),
    (
        "kraken_book_states",
        "krakenbook_archived_states",
        "\"timestamp\"",
    ),
    ("kraken_feed_events", "krakenbook_archived_events", "time"),
];

const INDEXES: &str = "
CREATE INDEX ON pg_temp.krakenbook_archived_book (\"timestamp\");
CREATE INDEX ON pg_temp.krakenbook_archived_book (symbol, \"timestamp\");
CREATE INDEX ON pg_temp.krakenbook_archived_book (symbol, \"timestamp\") WHERE kind = 's';
CREATE INDEX ON pg_temp.krakenbook_archived_book (symbol, \"timestamp\")
    WHERE CASE kind WHEN 's' THEN 'snapshot' ELSE 'update' END = 'snapshot';
CREATE INDEX ON pg_temp.krakenbook_archived_book (collector_id, seq);
CREATE INDEX ON pg_temp.krakenbook_archived_other (\"timestamp\");
CREATE INDEX ON pg_temp.krakenbook_archived_other (symbol, \"timestamp\");
CREATE INDEX ON pg_temp.krakenbook_archived_other (collector, seq);
CREATE INDEX ON pg_temp.krakenbook_archived_states (symbol, \"timestamp\");
CREATE INDEX ON pg_temp.krakenbook_archived_events (collector, seq);
CREATE INDEX ON pg_temp.krakenbook_archived_events (symbol, time);
CREATE INDEX ON pg_temp.krakenbook_archived_events (time);
ANALYZE pg_temp.krakenbook_archived_book, pg_temp.krakenbook_archived_other,
        pg_temp.krakenbook_archived_states, pg_temp.krakenbook_archived_events;";

/// What a reader's sessions mount: the installable form of [`mount`] (see
/// `DbTarget::with_session_setup`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mount {
    /// The symbols read (every symbol when empty).
    pub symbols: Vec<String>,
    /// The window's start (its earliest when `None`).
    pub from: Option<Timestamp>,
    /// The window's end, inclusive (its latest when `None`).
    pub to: Option<Timestamp>,
    /// Whether the window's book and other rows are loaded (false: only what coverage reads).
    pub rows: bool,
}

impl Mount {
    /// The rows of `[from, to]` of `symbols` (all when empty), and what coverage reads.
    pub fn window(symbols: &[String], from: Option<Timestamp>, to: Option<Timestamp>) -> Mount {
        Mount {
            symbols: symbols.to_vec(),
            from,
            to,
            rows: true,
        }
    }

    /// Only what the coverage model reads of `symbols` (all when empty).
    pub fn coverage(symbols: &[String]) -> Mount {
        Mount {
            symbols: symbols.to_vec(),
            from: None,
            to: None,
            rows: false,
        }
    }
}

impl SessionSetup for Mount {
    fn setup<'a>(
        &'a self,
        client: &'a Client,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + 'a>>
    {
        Box::pin(async move {
            let report = if self.rows {
                mount(client, &self.symbols, self.from, self.to).await?
            } else {
                mount_coverage(client, &self.symbols).await?
            };
            if report.parts > 0 {
                tracing::debug!(?report, "archived ranges mounted");
            }
            Ok(())
        })
    }
}

/// What a mount loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountReport {
    /// Archived parts known.
    pub parts: usize,
    /// Book rows of the window.
    pub book_rows: u64,
    /// Marked book rows (coverage).
    pub marks: u64,
    /// Other rows.
    pub other_rows: u64,
    /// Book states.
    pub states: u64,
    /// Feed events.
    pub events: u64,
}

/// One part's files, for a plan.
#[derive(Clone, Debug)]
pub(crate) struct PlanPart {
    pub location: Location,
    pub range_start: Timestamp,
    pub range_end: Timestamp,
    pub files: Vec<FileEntry>,
    /// Appended to every path (the archive verifies files under their temporary names).
    pub suffix: &'static str,
}

impl PlanPart {
    pub fn archived(p: ArchivedPart) -> Result<PlanPart, ArchiveError> {
        Ok(PlanPart {
            location: Location::open(&p.location)?,
            range_start: p.range_start,
            range_end: p.range_end,
            files: p.files,
            suffix: "",
        })
    }
}

/// What to mount.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub symbols: Vec<String>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    /// Load the window's book and other rows.
    pub rows: bool,
    /// Archived parts (their marks, states and events always; their rows in the window).
    pub parts: Vec<PlanPart>,
    /// Parts loaded whole (every row of every file).
    pub whole: Vec<PlanPart>,
    /// A range whose rows in the database are hidden (the files of `whole` stand in for them).
    pub hide: Option<(Timestamp, Timestamp)>,
}

/// Mounts the archived rows of `symbols` (all when empty) in `[from, to]` (open ends when
/// `None`) and what coverage reads of them into the session; nothing when no range is archived.
/// Mounting again replaces the previous mount.
pub async fn mount(
    client: &Client,
    symbols: &[String],
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Result<MountReport, ArchiveError> {
    mount_with(client, symbols, from, to, true).await
}

/// Mounts only what coverage reads of `symbols` (all when empty).
pub async fn mount_coverage(
    client: &Client,
    symbols: &[String],
) -> Result<MountReport, ArchiveError> {
    mount_with(client, symbols, None, None, false).await
}

async fn mount_with(
    client: &Client,
    symbols: &[String],
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    rows: bool,
) -> Result<MountReport, ArchiveError> {
    let parts = catalog::archived_overlapping(client, None, None).await?;
    if parts.is_empty() {
        return Ok(MountReport::default());
    }
    let plan = Plan {
        symbols: symbols.to_vec(),
        from,
        to,
        rows,
        parts: parts
            .into_iter()
            .map(PlanPart::archived)
            .collect::<Result<_, _>>()?,
        whole: Vec::new(),
        hide: None,
    };
    mount_plan(client, &plan).await
}

pub(crate) fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> ArchiveError {
    let context = context.into();
    move |source| ArchiveError::Db { context, source }
}

/// Mounts `plan` in one transaction.
pub(crate) async fn mount_plan(client: &Client, plan: &Plan) -> Result<MountReport, ArchiveError> {
    Ok(mount_plan_keeping(client, plan).await?.report)
}

/// What a mount leaves for loading more rows later (see [`crate::lazy`]).
#[derive(Debug)]
pub(crate) struct Mounted {
    pub report: MountReport,
    /// The keys `(collector, seq)` of each part's marks, loaded already (in `plan.parts` order).
    pub marks_by_part: Vec<HashSet<(String, i64)>>,
    /// Collector ids by name.
    pub ids: HashMap<String, i16>,
}

/// [`mount_plan`], keeping what a later load needs.
pub(crate) async fn mount_plan_keeping(
    client: &Client,
    plan: &Plan,
) -> Result<Mounted, ArchiveError> {
    client
        .batch_execute("BEGIN")
        .await
        .map_err(db("starting the mount"))?;
    let result = mount_inner(client, plan).await;
    match &result {
        Ok(_) => client
            .batch_execute("COMMIT")
            .await
            .map_err(db("committing the mount"))?,
        Err(_) => {
            let _ = client.batch_execute("ROLLBACK").await;
        }
    }
    result
}

/// Reads the records of a file of a part that `keep` keeps, checking the whole file against the
/// digest the catalog recorded.
pub(crate) async fn read_records_where<R: Record>(
    part: &PlanPart,
    f: &FileEntry,
    mut keep: impl FnMut(&R) -> bool,
) -> Result<Vec<R>, ArchiveError> {
    let rel = format!("{}{}", f.path, part.suffix);
    let bytes = part.location.get_archived(&rel).await?;
    let mut out = Vec::new();
    let mut bad: Option<String> = None;
    let (digest, _) = for_each_row(bytes, R::COLUMNS, |cells| {
        match R::from_cells(cells) {
            Ok(r) if keep(&r) => out.push(r),
            Ok(_) => {}
            Err(reason) => {
                bad.get_or_insert(reason);
            }
        }
        Ok(())
    })
    .map_err(|source| ArchiveError::File {
        path: rel.clone(),
        source,
    })?;
    if digest.hex() != f.digest {
        return Err(ArchiveError::Mismatch {
            path: rel,
            detail: format!(
                "digest {} read, {} recorded in the catalog: the file was changed after it was archived",
                digest.hex(),
                f.digest
            ),
        });
    }
    if let Some(reason) = bad {
        return Err(ArchiveError::Invalid {
            what: format!("row of {rel}"),
            reason,
        });
    }
    Ok(out)
}

/// Reads every record of a file of a part.
async fn read_records<R: Record>(part: &PlanPart, f: &FileEntry) -> Result<Vec<R>, ArchiveError> {
    read_records_where(part, f, |_| true).await
}

/// Copies records into their temporary table.
pub(crate) async fn load<R: CopyRecord>(
    client: &Client,
    records: &[R],
    ids: &HashMap<String, i16>,
) -> Result<u64, ArchiveError> {
    copy_into(client, records, ids).await?;
    Ok(records.len() as u64)
}

async fn mount_inner(client: &Client, plan: &Plan) -> Result<Mounted, ArchiveError> {
    let mut report = MountReport {
        parts: plan.parts.len() + plan.whole.len(),
        ..MountReport::default()
    };
    // A mount replaces the one before.
    let mut drop = String::from("SET LOCAL client_min_messages = warning;");
    for v in DERIVED_VIEWS {
        drop.push_str(&format!("DROP VIEW IF EXISTS pg_temp.{v};"));
    }
    for (table, temp, _) in MOUNTED {
        drop.push_str(&format!(
            "DROP VIEW IF EXISTS pg_temp.{table}; DROP TABLE IF EXISTS pg_temp.{temp};"
        ));
    }
    client
        .batch_execute(&drop)
        .await
        .map_err(db("removing an earlier mount"))?;
    let mut definitions = Vec::new();
    for v in DERIVED_VIEWS {
        let def: Option<String> = client
            .query_one("SELECT pg_get_viewdef(to_regclass('public.' || $1))", &[&v])
            .await
            .map_err(db(format!("reading the definition of {v}")))?
            .get(0);
        if let Some(def) = def {
            definitions.push((v, def));
        }
    }
    let mut create = String::new();
    for (table, temp, _) in MOUNTED {
        create.push_str(&format!("CREATE TEMP TABLE {temp} (LIKE public.{table});"));
    }
    client
        .batch_execute(&create)
        .await
        .map_err(db("creating the session's archive tables"))?;
    let ids: HashMap<String, i16> = client
        .query("SELECT name, id FROM krakenbook_collectors", &[])
        .await
        .map_err(db("reading the collectors"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let wanted = |symbol: Option<&str>| {
        plan.symbols.is_empty() || symbol.is_some_and(|s| plan.symbols.iter().any(|w| w == s))
    };

    // What coverage reads, of every archived part; and the parts loaded whole.
    let mut marks_by_part: Vec<HashSet<(String, i64)>> = Vec::new();
    for part in &plan.parts {
        let mut keys = HashSet::new();
        for f in &part.files {
            match f.dataset {
                Dataset::Events => {
                    report.events +=
                        load(client, &read_records::<EventRec>(part, f).await?, &ids).await?;
                }
                Dataset::States if wanted(f.symbol.as_deref()) => {
                    report.states +=
                        load(client, &read_records::<StateRec>(part, f).await?, &ids).await?;
                }
                Dataset::Marks if wanted(f.symbol.as_deref()) => {
                    let rows = read_records::<BookRec>(part, f).await?;
                    keys.extend(rows.iter().map(|r| (r.collector.clone(), r.seq)));
                    report.marks += load(client, &rows, &ids).await?;
                }
                _ => {}
            }
        }
        marks_by_part.push(keys);
    }
    for part in &plan.whole {
        for f in &part.files {
            match f.dataset {
                Dataset::Events => {
                    report.events +=
                        load(client, &read_records::<EventRec>(part, f).await?, &ids).await?;
                }
                Dataset::States => {
                    report.states +=
                        load(client, &read_records::<StateRec>(part, f).await?, &ids).await?;
                }
                Dataset::Book => {
                    report.book_rows +=
                        load(client, &read_records::<BookRec>(part, f).await?, &ids).await?;
                }
                Dataset::Other => {
                    report.other_rows +=
                        load(client, &read_records::<OtherRec>(part, f).await?, &ids).await?;
                }
                Dataset::Marks | Dataset::Connections => {}
            }
        }
    }

    // The views.
    let mut views = String::new();
    for (table, temp, time) in MOUNTED {
        let hidden = match plan.hide {
            Some(_) => format!(" WHERE NOT ({time} >= $1 AND {time} < $2)"),
            None => String::new(),
        };
        views.push_str(&format!(
            "CREATE TEMP VIEW {table} AS SELECT * FROM public.{table}{hidden} \
             UNION ALL SELECT * FROM pg_temp.{temp};"
        ));
    }
    if let Some((from, to)) = plan.hide {
        // Views cannot take parameters: the range is written as literals of the server's own
        // timestamp text.
        let lit = |t: Timestamp| format!("'{}'::timestamptz", t);
        views = views.replace("$1", &lit(from)).replace("$2", &lit(to));
    }
    for (v, def) in &definitions {
        views.push_str(&format!("CREATE TEMP VIEW {v} AS {def}"));
        if !def.trim_end().ends_with(';') {
            views.push(';');
        }
    }
    client
        .batch_execute(&views)
        .await
        .map_err(db("creating the session's views over archive and database"))?;

    // The window's rows.
    if plan.rows {
        let symbols: Vec<String> = if plan.symbols.is_empty() {
            let mut all: Vec<String> = plan
                .parts
                .iter()
                .flat_map(|p| p.files.iter())
                .filter(|f| f.dataset == Dataset::Book)
                .filter_map(|f| f.symbol.clone())
                .collect();
            all.sort();
            all.dedup();
            all
        } else {
            plan.symbols.clone()
        };
        let mut earliest: Option<Timestamp> = plan.from;
        for symbol in &symbols {
            let start = window_start(client, symbol, plan.from).await?;
            earliest = match (earliest, start) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (_, None) => None,
                (None, _) => None,
            };
            let in_window =
                |t: Timestamp| start.is_none_or(|s| t >= s) && plan.to.is_none_or(|e| t <= e);
            for (part, keys) in plan.parts.iter().zip(&marks_by_part) {
                let overlaps = start.is_none_or(|s| part.range_end > s)
                    && plan.to.is_none_or(|e| part.range_start <= e);
                if !overlaps {
                    continue;
                }
                for f in part.files.iter().filter(|f| {
                    f.dataset == Dataset::Book && f.symbol.as_deref() == Some(symbol.as_str())
                }) {
                    let rows: Vec<BookRec> = read_records_where(part, f, |r: &BookRec| {
                        in_window(r.timestamp) && !keys.contains(&(r.collector.clone(), r.seq))
                    })
                    .await?;
                    report.book_rows += load(client, &rows, &ids).await?;
                }
            }
        }
        // Other frames of the window: the symbols' and those without a symbol.
        for part in &plan.parts {
            let overlaps = earliest.is_none_or(|s| part.range_end > s)
                && plan.to.is_none_or(|e| part.range_start <= e);
            if !overlaps {
                continue;
            }
            for f in part.files.iter().filter(|f| {
                f.dataset == Dataset::Other && (f.symbol.is_none() || wanted(f.symbol.as_deref()))
            }) {
                let rows: Vec<OtherRec> = read_records_where(part, f, |r: &OtherRec| {
                    earliest.is_none_or(|s| r.timestamp >= s)
                        && plan.to.is_none_or(|e| r.timestamp <= e)
                })
                .await?;
                report.other_rows += load(client, &rows, &ids).await?;
            }
        }
    }
    client
        .batch_execute(INDEXES)
        .await
        .map_err(db("indexing the session's archive tables"))?;
    Ok(Mounted {
        report,
        marks_by_part,
        ids,
    })
}

/// Where the books of `symbol` at `from` start (see the module doc); `None`: from the first
/// record (no `from`).
pub(crate) async fn window_start(
    client: &Client,
    symbol: &str,
    from: Option<Timestamp>,
) -> Result<Option<Timestamp>, ArchiveError> {
    let Some(from) = from else {
        return Ok(None);
    };
    let row = client
        .query_one(
            "WITH alive AS (
               SELECT collector, conn_id FROM krakenbook_connections
                WHERE first_received_at <= $2 AND last_received_at >= $2),
             per_stream AS (
               SELECT greatest(
                 (SELECT max(c.\"timestamp\") FROM krakenbook_copies c
                    JOIN krakenbook_collectors k ON k.id = c.collector_id
                   WHERE c.symbol = $1 AND c.kind = 's' AND c.checksum_ok
                     AND k.name = a.collector AND c.conn_id = a.conn_id AND c.\"timestamp\" <= $2),
                 (SELECT max(s.\"timestamp\") FROM kraken_book_states s
                   WHERE s.symbol = $1 AND s.collector = a.collector AND s.conn_id = a.conn_id
                     AND s.\"timestamp\" <= $2)) AS t
                 FROM alive a),
             per_collector AS (
               SELECT greatest(
                 (SELECT max(b.\"timestamp\") FROM krakenbook_book b
                   WHERE b.symbol = $1 AND b.kind = 's' AND b.collector_id = k.id
                     AND b.\"timestamp\" <= $2),
                 (SELECT max(s.\"timestamp\") FROM kraken_book_states s
                   WHERE s.symbol = $1 AND s.collector = k.name AND s.\"timestamp\" <= $2)) AS t
                 FROM krakenbook_collectors k
                WHERE k.name IN (SELECT collector FROM alive))
             SELECT least((SELECT min(t) FROM per_stream), (SELECT min(t) FROM per_collector),
                          $2::timestamptz)",
            &[&symbol, &from],
        )
        .await
        .map_err(db(format!("finding where the books of {symbol} start")))?;
    Ok(Some(row.get(0)))
}

/// [`window_start`] of each of `froms`, in one query (planned once: a heatmap asks for hundreds).
pub(crate) async fn window_starts(
    client: &Client,
    symbol: &str,
    froms: &[Timestamp],
) -> Result<Vec<Timestamp>, ArchiveError> {
    if froms.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT least(
               (SELECT min(greatest(
                  (SELECT max(c.\"timestamp\") FROM krakenbook_copies c
                     JOIN krakenbook_collectors k ON k.id = c.collector_id
                    WHERE c.symbol = $1 AND c.kind = 's' AND c.checksum_ok
                      AND k.name = a.collector AND c.conn_id = a.conn_id AND c.\"timestamp\" <= f.t),
                  (SELECT max(s.\"timestamp\") FROM kraken_book_states s
                    WHERE s.symbol = $1 AND s.collector = a.collector AND s.conn_id = a.conn_id
                      AND s.\"timestamp\" <= f.t)))
                  FROM krakenbook_connections a
                 WHERE a.first_received_at <= f.t AND a.last_received_at >= f.t),
               (SELECT min(greatest(
                  (SELECT max(b.\"timestamp\") FROM krakenbook_book b
                    WHERE b.symbol = $1 AND b.kind = 's' AND b.collector_id = k.id
                      AND b.\"timestamp\" <= f.t),
                  (SELECT max(s.\"timestamp\") FROM kraken_book_states s
                    WHERE s.symbol = $1 AND s.collector = k.name AND s.\"timestamp\" <= f.t)))
                  FROM krakenbook_collectors k
                 WHERE k.name IN (SELECT a.collector FROM krakenbook_connections a
                                   WHERE a.first_received_at <= f.t AND a.last_received_at >= f.t)),
               f.t)
             FROM unnest($2::timestamptz[]) WITH ORDINALITY AS f(t, i)
             ORDER BY f.i",
            &[&symbol, &froms],
        )
        .await
        .map_err(db(format!("finding where the books of {symbol} start")))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
