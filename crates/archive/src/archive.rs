//! `krakenbook archive`: closed chunks moved to the cold tier, one part (a chunk of the book
//! table and the same range of the other tables) at a time.
//!
//! For each chunk of `krakenbook_book` whose range ended before the cut-off (`now() -
//! older_than`, the database's clock), oldest first:
//! 1. **write**: the range's rows are read in one `REPEATABLE READ` snapshot and written as
//!    Parquet files under temporary names (`….parquet.tmp`): `book/` and `marks/` per pair,
//!    `other/` and `states/` per pair, `events/` and `connections/` for the range
//!    ([`crate::naming`]). Each file's rows and cell digest are kept;
//! 2. **verify**: every file is read back from the store and must give the same rows and digest;
//!    then the range's checksums are replayed twice with the project's database replay
//!    (`krakenbook_read::replay::verify_database`): once over the database's rows, once in a
//!    session where the range's rows come from the files just written (the database's rows of
//!    the range hidden, see [`crate::mount`]). The two reports must be equal: every recomputed
//!    CRC32, verdict and stored copy agrees the same way;
//! 3. **rename** the files to their final names;
//! 4. **drop**, in one transaction: lock the tables against writers, count the range's rows again
//!    (they must be the rows archived), drop the chunk, delete the range's rows of
//!    `krakenbook_other`, `kraken_book_states` and `kraken_feed_events`, record the part in
//!    `krakenbook_archive`, commit. `krakenbook_connections` stays (a few rows per connection,
//!    which a live collector updates); its rows overlapping the range are archived as a copy.
//!
//! An interruption before 4 commits leaves the database as it was and no catalog row: files of
//! the part may exist under either name, and are never read (readers follow the catalog); a
//! rerun writes them again. A failed check stops before anything is dropped.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::{Client, GenericClient, IsolationLevel};

use crate::ArchiveError;
use crate::catalog::{self, ArchivedPart, FileEntry};
use crate::columns::{TableWriter, for_each_row};
use crate::location::Location;
use crate::marks::Marker;
use crate::mount::{self, Plan, PlanPart};
use crate::naming::{Dataset, TEMP_SUFFIX, file_path, utc_date};
use crate::records::{BookRec, ConnRec, DbRecord, EventRec, OtherRec, Record, StateRec};
use crate::store::DbTarget;
use crate::time::Timestamp;

use futures_util::TryStreamExt;

/// Where a test may stop a run (to prove an interruption leaves the database whole).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The files are written under their temporary names.
    Written,
    /// They are read back and the replays agree.
    Verified,
    /// They carry their final names (the database not yet changed).
    Renamed,
}

/// What to archive.
#[derive(Clone, Debug)]
pub struct ArchiveOptions {
    /// Chunks whose range ended at least this long ago.
    pub older_than: Duration,
    /// Where the files go.
    pub location: Location,
    /// At most this many parts (all when `None`).
    pub limit: Option<usize>,
    /// Stop with [`ArchiveError::Injected`] after this stage of the first part (tests).
    pub fail_after: Option<Stage>,
}

/// One archived part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartReport {
    /// The chunk.
    pub chunk: String,
    /// Range start.
    pub range_start: Timestamp,
    /// Range end.
    pub range_end: Timestamp,
    /// Book messages.
    pub messages: u64,
    /// Files.
    pub files: usize,
    /// Bytes, all files.
    pub bytes: u64,
    /// Bytes per dataset.
    pub bytes_by_dataset: BTreeMap<Dataset, u64>,
    /// Rows per dataset.
    pub rows_by_dataset: BTreeMap<Dataset, u64>,
    /// Book messages the checksum replay verified (checksum recomputed and matching).
    pub replay_ok: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    /// The parts archived, oldest first.
    pub parts: Vec<PartReport>,
    /// Closed chunks left for a later run (`limit`).
    pub left: usize,
}

impl ArchiveReport {
    /// Book messages archived.
    pub fn messages(&self) -> u64 {
        self.parts.iter().map(|p| p.messages).sum()
    }

    /// Bytes written.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }
}

fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> ArchiveError {
    let context = context.into();
    move |source| ArchiveError::Db { context, source }
}

/// A closed chunk of the book table.
#[derive(Clone, Debug)]
struct Chunk {
    name: String,
    start: Timestamp,
    end: Timestamp,
}

async fn closed_chunks(client: &Client, older_than: Duration) -> Result<Vec<Chunk>, ArchiveError> {
    let rows = client
        .query(
            "SELECT c.chunk_name, c.range_start, c.range_end
               FROM timescaledb_information.chunks c
              WHERE c.hypertable_schema = 'public' AND c.hypertable_name = 'krakenbook_book'
                AND c.range_end <= now() - make_interval(secs => $1::double precision)
                AND NOT EXISTS (SELECT 1 FROM krakenbook_archive a WHERE a.chunk = c.chunk_name)
              ORDER BY c.range_start",
            &[&older_than.as_secs_f64()],
        )
        .await
        .map_err(db("listing the closed chunks of krakenbook_book"))?;
    Ok(rows
        .iter()
        .map(|r| Chunk {
            name: r.get(0),
            start: r.get(1),
            end: r.get(2),
        })
        .collect())
}

/// Archives every closed chunk older than `options.older_than`; `progress` is called after each
/// part.
pub async fn archive(
    target: &DbTarget,
    options: &ArchiveOptions,
    mut progress: impl FnMut(&PartReport, usize, usize),
) -> Result<ArchiveReport, ArchiveError> {
    let mut client = target.connect("krakenbook archive").await?;
    if !catalog::exists(&client).await? {
        return Err(ArchiveError::NoCatalog);
    }
    let chunks = closed_chunks(&client, options.older_than).await?;
    let take = options.limit.unwrap_or(usize::MAX).min(chunks.len());
    let mut report = ArchiveReport {
        left: chunks.len() - take,
        ..ArchiveReport::default()
    };
    for (i, chunk) in chunks.iter().take(take).enumerate() {
        let part = archive_part(target, &mut client, options, chunk).await?;
        progress(&part, i + 1, take);
        report.parts.push(part);
    }
    Ok(report)
}

/// A file written under its temporary name, and what it holds.
struct Written {
    entry: FileEntry,
}

fn metadata(dataset: Dataset, chunk: &Chunk, symbol: Option<&str>) -> Vec<(String, String)> {
    let mut kv = vec![
        ("krakenbook.format".to_owned(), "1".to_owned()),
        ("krakenbook.dataset".to_owned(), dataset.dir().to_owned()),
        ("krakenbook.chunk".to_owned(), chunk.name.clone()),
        ("krakenbook.range_start".to_owned(), chunk.start.to_string()),
        ("krakenbook.range_end".to_owned(), chunk.end.to_string()),
    ];
    if let Some(s) = symbol {
        kv.push(("krakenbook.symbol".to_owned(), s.to_owned()));
    }
    if matches!(dataset, Dataset::Book | Dataset::Marks) {
        kv.push((
            "krakenbook.levels".to_owned(),
            "dec64: each value is mantissa * 32 + scale (scale 0..31, mantissa < 2^58), exact: \
             decimal = (v >> 5) * 10^-(v & 31) written with (v & 31) decimals; prices and \
             quantities interleaved in wire order (price, qty, price, qty, ...), the first \
             n_bids pairs bids, the rest asks; null when the frame is in raw"
                .to_owned(),
        ));
        kv.push((
            "krakenbook.dups".to_owned(),
            "further copies on this collector's other connections, 64 bits each: connection - \
             conn_id (bits 63..48, signed), seq - seq (bits 47..26, signed), verdict (bits \
             25..24: 0 none, 1 ok, 2 mismatch), received_at - received_at in microseconds \
             (bits 23..0, signed)"
                .to_owned(),
        ));
        kv.push((
            "krakenbook.checksum".to_owned(),
            "Kraken's CRC32 (unsigned); checksum_ok: the collector's verdict on the first copy"
                .to_owned(),
        ));
    }
    kv
}

/// Groups a dataset's rows by symbol into files (one file when the dataset is not by pair).
struct Files<'a> {
    loc: &'a Location,
    dataset: Dataset,
    chunk: &'a Chunk,
    date: String,
    current: Option<(Option<String>, TableWriter)>,
    written: Vec<Written>,
}

impl<'a> Files<'a> {
    fn new(loc: &'a Location, dataset: Dataset, chunk: &'a Chunk) -> Files<'a> {
        Files {
            loc,
            dataset,
            chunk,
            date: utc_date(chunk.start),
            current: None,
            written: Vec::new(),
        }
    }

    async fn push<R: Record>(&mut self, r: &R) -> Result<(), ArchiveError> {
        let symbol = if self.dataset.by_pair() {
            r.symbol().map(str::to_owned)
        } else {
            None
        };
        if self.current.as_ref().is_some_and(|(s, _)| *s != symbol) {
            self.close().await?;
        }
        if self.current.is_none() {
            let w = TableWriter::new(
                R::COLUMNS,
                metadata(self.dataset, self.chunk, symbol.as_deref()),
            )
            .map_err(|source| ArchiveError::File {
                path: self.dataset.dir().to_owned(),
                source,
            })?;
            self.current = Some((symbol, w));
        }
        if let Some((_, w)) = &mut self.current {
            w.push(&r.cells()).map_err(|source| ArchiveError::File {
                path: self.dataset.dir().to_owned(),
                source,
            })?;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), ArchiveError> {
        let Some((symbol, w)) = self.current.take() else {
            return Ok(());
        };
        let path = file_path(
            self.dataset,
            symbol.as_deref(),
            &self.date,
            &self.chunk.name,
        );
        let (bytes, rows, digest) = w.finish().map_err(|source| ArchiveError::File {
            path: path.clone(),
            source,
        })?;
        let len = bytes.len() as u64;
        self.loc.put(&format!("{path}{TEMP_SUFFIX}"), bytes).await?;
        self.written.push(Written {
            entry: FileEntry {
                dataset: self.dataset,
                symbol,
                path,
                rows,
                bytes: len,
                digest: digest.hex(),
            },
        });
        Ok(())
    }

    async fn finish(mut self) -> Result<Vec<Written>, ArchiveError> {
        self.close().await?;
        Ok(self.written)
    }
}

/// Streams `R`'s rows of the range into files.
async fn write_dataset<R: DbRecord>(
    tx: &impl GenericClient,
    loc: &Location,
    chunk: &Chunk,
    mut book_marks: Option<&mut Files<'_>>,
) -> Result<Vec<Written>, ArchiveError> {
    let mut files = Files::new(loc, R::DATASET, chunk);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&chunk.start, &chunk.end];
    let context = format!("reading the {} rows of {}", R::DATASET.dir(), chunk.name);
    let rows = tx
        .query_raw(R::SQL, params.iter().copied())
        .await
        .map_err(db(context.clone()))?;
    let mut rows = std::pin::pin!(rows);
    // Marks are per symbol: the marker of the symbol being written.
    let mut marker: Option<(String, Marker)> = None;
    while let Some(row) = rows.try_next().await.map_err(db(context.clone()))? {
        let r = R::from_db(&row).map_err(db(context.clone()))?;
        if let Some(marks) = book_marks.as_deref_mut() {
            let book = as_book(&r);
            if let Some(b) = book {
                if marker.as_ref().is_some_and(|(s, _)| *s != b.symbol)
                    && let Some((_, m)) = marker.take()
                {
                    for row in m.finish() {
                        marks.push(&row).await?;
                    }
                }
                marker
                    .get_or_insert_with(|| (b.symbol.clone(), Marker::new()))
                    .1
                    .see(b);
            }
        }
        files.push(&r).await?;
    }
    if let (Some(marks), Some((_, m))) = (book_marks, marker) {
        for row in m.finish() {
            marks.push(&row).await?;
        }
    }
    files.finish().await
}

/// The record as a book row, when it is one.
fn as_book<R: Record>(r: &R) -> Option<&BookRec> {
    (r as &dyn std::any::Any).downcast_ref::<BookRec>()
}

/// Reads a file back and checks it against what was written.
async fn check_file(loc: &Location, w: &FileEntry, rel: &str) -> Result<(), ArchiveError> {
    let bytes = loc.get(rel).await?;
    let mismatch = |detail: String| ArchiveError::Mismatch {
        path: rel.to_owned(),
        detail,
    };
    if bytes.len() as u64 != w.bytes {
        return Err(mismatch(format!(
            "{} bytes, {} written",
            bytes.len(),
            w.bytes
        )));
    }
    let cols = match w.dataset {
        Dataset::Book | Dataset::Marks => BookRec::COLUMNS,
        Dataset::Other => OtherRec::COLUMNS,
        Dataset::States => StateRec::COLUMNS,
        Dataset::Events => EventRec::COLUMNS,
        Dataset::Connections => ConnRec::COLUMNS,
    };
    let mut rows = 0u64;
    let mut bad_row: Option<String> = None;
    let (digest, _) = for_each_row(bytes, cols, |row| {
        // Every row decodes into its record.
        let decoded = match w.dataset {
            Dataset::Book | Dataset::Marks => BookRec::from_cells(row).map(|_| ()),
            Dataset::Other => OtherRec::from_cells(row).map(|_| ()),
            Dataset::States => StateRec::from_cells(row).map(|_| ()),
            Dataset::Events => EventRec::from_cells(row).map(|_| ()),
            Dataset::Connections => ConnRec::from_cells(row).map(|_| ()),
        };
        if let Err(e) = decoded
            && bad_row.is_none()
        {
            bad_row = Some(format!("row {rows}: {e}"));
        }
        rows += 1;
        Ok(())
    })
    .map_err(|source| ArchiveError::File {
        path: rel.to_owned(),
        source,
    })?;
    if let Some(detail) = bad_row {
        return Err(mismatch(detail));
    }
    if rows != w.rows {
        return Err(mismatch(format!("{rows} rows, {} written", w.rows)));
    }
    if digest.hex() != w.digest {
        return Err(mismatch(format!(
            "digest {} of the rows read, {} of the rows written",
            digest.hex(),
            w.digest
        )));
    }
    Ok(())
}

/// Counts of the range's rows: book, other, states, events.
async fn range_counts(
    client: &impl GenericClient,
    chunk: &Chunk,
) -> Result<[i64; 4], ArchiveError> {
    let r = client
        .query_one(
            "SELECT (SELECT count(*) FROM krakenbook_book WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2),
                    (SELECT count(*) FROM krakenbook_other WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2),
                    (SELECT count(*) FROM kraken_book_states WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2),
                    (SELECT count(*) FROM kraken_feed_events WHERE time >= $1 AND time < $2)",
            &[&chunk.start, &chunk.end],
        )
        .await
        .map_err(db(format!("counting the rows of {}", chunk.name)))?;
    Ok([r.get(0), r.get(1), r.get(2), r.get(3)])
}

async fn archive_part(
    target: &DbTarget,
    client: &mut Client,
    options: &ArchiveOptions,
    chunk: &Chunk,
) -> Result<PartReport, ArchiveError> {
    let loc = &options.location;
    tracing::info!(chunk = %chunk.name, from = %chunk.start, to = %chunk.end, "archiving");
    // 1. Write, from one snapshot.
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db("starting the archive's read"))?;
    let mut marks = Files::new(loc, Dataset::Marks, chunk);
    let mut written = write_dataset::<BookRec>(&tx, loc, chunk, Some(&mut marks)).await?;
    written.extend(marks.finish().await?);
    written.extend(write_dataset::<OtherRec>(&tx, loc, chunk, None).await?);
    written.extend(write_dataset::<StateRec>(&tx, loc, chunk, None).await?);
    written.extend(write_dataset::<EventRec>(&tx, loc, chunk, None).await?);
    written.extend(write_dataset::<ConnRec>(&tx, loc, chunk, None).await?);
    let counts = range_counts(&tx, chunk).await?;
    tx.rollback()
        .await
        .map_err(db("ending the archive's read"))?;
    let entries: Vec<FileEntry> = written.into_iter().map(|w| w.entry).collect();
    let rows_of = |d: Dataset| -> u64 {
        entries
            .iter()
            .filter(|e| e.dataset == d)
            .map(|e| e.rows)
            .sum()
    };
    let archived = [
        rows_of(Dataset::Book),
        rows_of(Dataset::Other),
        rows_of(Dataset::States),
        rows_of(Dataset::Events),
    ];
    if archived.iter().zip(&counts).any(|(a, c)| *a as i64 != *c) {
        return Err(ArchiveError::Mismatch {
            path: chunk.name.clone(),
            detail: format!(
                "rows written (book, other, states, events) {archived:?}, counted {counts:?}"
            ),
        });
    }
    if options.fail_after == Some(Stage::Written) {
        return Err(ArchiveError::Injected(Stage::Written));
    }

    // 2. Verify: every file read back, then the checksum replay from the files.
    for e in &entries {
        check_file(loc, e, &format!("{}{TEMP_SUFFIX}", e.path)).await?;
    }
    let replay_ok = replay_agrees(target, loc, chunk, &entries).await?;
    if options.fail_after == Some(Stage::Verified) {
        return Err(ArchiveError::Injected(Stage::Verified));
    }

    // 3. Final names.
    for e in &entries {
        loc.rename(&format!("{}{TEMP_SUFFIX}", e.path), &e.path)
            .await?;
    }
    if options.fail_after == Some(Stage::Renamed) {
        return Err(ArchiveError::Injected(Stage::Renamed));
    }

    // 4. Drop and record, in one transaction.
    let part = ArchivedPart {
        chunk: chunk.name.clone(),
        range_start: chunk.start,
        range_end: chunk.end,
        location: loc.as_str().to_owned(),
        messages: archived[0] as i64,
        bytes: entries.iter().map(|e| e.bytes as i64).sum(),
        files: entries.clone(),
    };
    drop_and_record(client, chunk, &part, archived).await?;

    let mut bytes_by_dataset = BTreeMap::new();
    let mut rows_by_dataset = BTreeMap::new();
    for e in &entries {
        *bytes_by_dataset.entry(e.dataset).or_insert(0) += e.bytes;
        *rows_by_dataset.entry(e.dataset).or_insert(0) += e.rows;
    }
    Ok(PartReport {
        chunk: chunk.name.clone(),
        range_start: chunk.start,
        range_end: chunk.end,
        messages: archived[0],
        files: entries.len(),
        bytes: part.bytes as u64,
        bytes_by_dataset,
        rows_by_dataset,
        replay_ok,
    })
}

/// Replays the range's checksums over the database's rows and over the archived ones (a session
/// where the files stand in for the range): the reports must be equal, disagreements included
/// (an archive neither hides nor adds one). Returns the messages verified ok.
async fn replay_agrees(
    target: &DbTarget,
    loc: &Location,
    chunk: &Chunk,
    entries: &[FileEntry],
) -> Result<u64, ArchiveError> {
    use krakenbook_read::replay::{DbScope, verify_database};
    let scope = DbScope {
        from: Some(chunk.start),
        to: Some(chunk.end),
        symbols: Vec::new(),
        collector: None,
    };
    let replay_err = |e: krakenbook_history::readback::ReadbackError| ArchiveError::Invalid {
        what: format!("checksum replay of {}", chunk.name),
        reason: e.to_string(),
    };
    // The database as readers see it (earlier archived parts mounted for the books' starts)...
    let mut reader = target.connect("krakenbook archive").await?;
    mount::mount(&reader, &[], Some(chunk.start), Some(chunk.end)).await?;
    let from_db = verify_database(&mut reader, &scope, |_| {})
        .await
        .map_err(replay_err)?;
    drop(reader);
    // ... and the same with the range's rows taken from the files just written.
    let mut mounted = target.connect("krakenbook archive").await?;
    let catalog_parts = catalog::archived_overlapping(&mounted, None, None).await?;
    let plan = Plan {
        symbols: Vec::new(),
        from: Some(chunk.start),
        to: Some(chunk.end),
        rows: true,
        parts: catalog_parts
            .into_iter()
            .map(PlanPart::archived)
            .collect::<Result<_, _>>()?,
        whole: vec![PlanPart {
            location: loc.clone(),
            range_start: chunk.start,
            range_end: chunk.end,
            files: entries.to_vec(),
            suffix: TEMP_SUFFIX,
        }],
        hide: Some((chunk.start, chunk.end)),
    };
    mount::mount_plan(&mounted, &plan).await?;
    let from_files = verify_database(&mut mounted, &scope, |_| {})
        .await
        .map_err(replay_err)?;
    if from_db != from_files {
        let show = |r: &krakenbook_read::replay::ReplayReport| {
            serde_json::to_string(&(&r.symbols, r.disagreement_count, r.disagreements.first()))
                .unwrap_or_default()
        };
        return Err(ArchiveError::ReplayDiffers {
            from: chunk.start,
            to: chunk.end,
            detail: format!(
                "database: {}; archive: {}",
                show(&from_db),
                show(&from_files)
            ),
        });
    }
    Ok(from_files.symbols.values().map(|s| s.ok).sum())
}

async fn drop_and_record(
    client: &Client,
    chunk: &Chunk,
    part: &ArchivedPart,
    archived: [u64; 4],
) -> Result<(), ArchiveError> {
    let result = async {
        client
            .batch_execute(
                "BEGIN; SET LOCAL lock_timeout = '60s';
                 LOCK TABLE krakenbook_book, krakenbook_other, kraken_book_states, kraken_feed_events
                   IN SHARE ROW EXCLUSIVE MODE",
            )
            .await
            .map_err(db("locking the tables to drop the archived range"))?;
        let counts = range_counts(client, chunk).await?;
        if archived.iter().zip(&counts).any(|(a, c)| *a as i64 != *c) {
            return Err(ArchiveError::Changed {
                from: chunk.start,
                to: chunk.end,
                detail: format!(
                    "rows archived (book, other, states, events) {archived:?}, in the database now {counts:?}"
                ),
            });
        }
        let dropped: Vec<String> = client
            .query(
                "SELECT drop_chunks('krakenbook_book', older_than => $2::timestamptz,
                                    newer_than => $1::timestamptz)::text",
                &[&chunk.start, &chunk.end],
            )
            .await
            .map_err(db(format!("dropping chunk {}", chunk.name)))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if dropped.len() != 1 || !dropped[0].ends_with(&chunk.name) {
            return Err(ArchiveError::Changed {
                from: chunk.start,
                to: chunk.end,
                detail: format!("dropping the range would drop chunks {dropped:?}"),
            });
        }
        for (table, column, n) in [
            ("krakenbook_other", "\"timestamp\"", archived[1]),
            ("kraken_book_states", "\"timestamp\"", archived[2]),
            ("kraken_feed_events", "time", archived[3]),
        ] {
            let deleted = client
                .execute(
                    &format!("DELETE FROM {table} WHERE {column} >= $1 AND {column} < $2"),
                    &[&chunk.start, &chunk.end],
                )
                .await
                .map_err(db(format!("deleting the archived rows of {table}")))?;
            if deleted != n {
                return Err(ArchiveError::Changed {
                    from: chunk.start,
                    to: chunk.end,
                    detail: format!("{table}: {deleted} rows deleted, {n} archived"),
                });
            }
        }
        catalog::record(client, part).await?;
        client
            .batch_execute("COMMIT")
            .await
            .map_err(db("committing the archived range"))?;
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}
