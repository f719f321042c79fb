//! The journal-to-database pipeline in-process, against a real journal on disk and a real
//! TimescaleDB: power cuts, poison frames, damaged journals, environment errors, outages, two
//! journals under one identity, per-connection liveness, and passwords off the command line.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use krakenbook::collect::{DbPipeline, PipelineConfig, Preflight, preflight};
use krakenbook::journal::{
    self, Entry, HeaderParse, JournalConfig, JournalHandle, JournalReader, JournalWriter,
    SegmentHeader, encoded_len, spawn_journal,
};
use krakenbook::metrics::{Metrics, StoreProgress};
use krakenbook::record::{FrameRecord, Record, RecordBody};
use krakenbook::store::BatchConfig;
use krakenbook::time::Timestamp;

use crate::db::{connect, fixture_records, fresh_db, migrated_db, own_cluster};
use crate::support::krakenbook;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Journal settings for these tests: one large plain segment, synced only when asked (so that
/// whatever the database holds was synced because the pipeline asked for it).
fn journal_config(dir: &Path) -> JournalConfig {
    JournalConfig {
        segment_bytes: 1 << 30,
        sync_interval: Duration::from_secs(3600),
        compression_level: 0,
        ..JournalConfig::new(dir)
    }
}

/// The frames of the real captures (heartbeats included), as entries of connection `conn_id`
/// received from `start` on, 1 ms apart.
fn fixture_entries(conn_id: u64, start: Timestamp) -> Vec<Entry> {
    fixture_records()
        .into_iter()
        .filter(|r| matches!(r.body, RecordBody::Frame(_)))
        .enumerate()
        .map(|(i, r)| Entry {
            received_at: start.add_nanos(i as i64 * 1_000_000),
            conn_id,
            conn_seq: i as u64 + 1,
            body: r.body,
        })
        .collect()
}

fn frame_entry(conn_id: u64, conn_seq: u64, received_at: Timestamp, text: &str) -> Entry {
    Entry {
        received_at,
        conn_id,
        conn_seq,
        body: RecordBody::Frame(FrameRecord {
            bytes: text.as_bytes().to_vec(),
            checksum_ok: None,
            best_bid: None,
            best_ask: None,
        }),
    }
}

fn t0() -> Timestamp {
    Timestamp::parse("2026-08-18T10:00:00Z").unwrap()
}

/// A running journal and what a pipeline needs of it.
struct Journal {
    handle: Option<JournalHandle>,
    cancel: CancellationToken,
}

impl Journal {
    fn open(dir: &Path) -> Journal {
        let cancel = CancellationToken::new();
        let handle = spawn_journal(journal_config(dir), 8192, None, cancel.clone()).unwrap();
        Journal {
            handle: Some(handle),
            cancel,
        }
    }

    fn handle(&self) -> &JournalHandle {
        self.handle.as_ref().unwrap()
    }

    /// Appends `entries` and waits until they are flushed; returns the last seq.
    async fn append(&self, entries: Vec<Entry>) -> u64 {
        let h = self.handle();
        let want = *h.flushed.borrow() + entries.len() as u64;
        for e in entries {
            h.sender.send(e).await.unwrap();
        }
        let mut flushed = h.flushed.clone();
        tokio::time::timeout(Duration::from_secs(30), flushed.wait_for(|f| *f >= want))
            .await
            .expect("the journal flushes")
            .unwrap();
        want
    }

    /// Closes the journal (drained and synced).
    async fn close(mut self) {
        self.cancel.cancel();
        if let Some(h) = self.handle.take() {
            h.join().await.unwrap();
        }
    }
}

/// A pipeline running on a task, with its metrics.
struct Running {
    task: JoinHandle<()>,
    cancel: CancellationToken,
    progress: Arc<StoreProgress>,
    metrics: Arc<Metrics>,
    _done: watch::Sender<Option<u64>>,
}

impl Running {
    fn start(journal: &Journal, config: PipelineConfig) -> Running {
        let metrics = Arc::new(Metrics::default());
        // /health also wants an open feed connection: pretend one, so it shows the database's.
        metrics.connections_open.store(1, Ordering::Relaxed);
        metrics.attach_journal(Arc::clone(&journal.handle().stats));
        let pipeline = DbPipeline::new(
            config,
            journal.handle().flushed.clone(),
            Some(journal.handle().syncer()),
            Arc::clone(&metrics),
        );
        let progress = pipeline.progress();
        let cancel = CancellationToken::new();
        let (done_tx, done_rx) = watch::channel(None);
        let task = tokio::spawn(pipeline.run(cancel.clone(), done_rx));
        Running {
            task,
            cancel,
            progress,
            metrics,
            _done: done_tx,
        }
    }

    fn checkpoint(&self) -> u64 {
        self.progress.checkpoint_seq.load(Ordering::Acquire)
    }

    async fn wait_checkpoint(&self, seq: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.checkpoint() < seq {
            assert!(
                tokio::time::Instant::now() < deadline,
                "checkpoint {} never reached {seq}; health: {:?}",
                self.checkpoint(),
                self.metrics.health()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for(&self, what: &str, within: Duration, mut cond: impl FnMut(&Running) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        while !cond(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: never happened; health {:?}, checkpoint {}",
                self.metrics.health(),
                self.checkpoint()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops it as a SIGKILL would: no drain, no last batch.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

fn config(dir: &Path, collector: &str, url: &str) -> PipelineConfig {
    PipelineConfig {
        journal_instance: Some(journal::instance(dir).unwrap()),
        batch: BatchConfig {
            max_records: 500,
            ..BatchConfig::default()
        },
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        ..PipelineConfig::new(dir, collector, url)
    }
}

/// Log lines written while it is alive (on this thread: the tests run on a current-thread
/// runtime, so the pipeline's task logs here too).
struct Logs {
    buf: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> Logs {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .finish();
        Logs {
            buf,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

async fn one<T>(client: &Client, sql: &str) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Every record of the journal in `dir`.
fn journal_records(dir: &Path) -> Vec<Record> {
    let mut reader = JournalReader::open(dir, 0).unwrap();
    let mut out = Vec::new();
    while let Some(r) = reader.next_record().unwrap() {
        out.push(r);
    }
    out
}

fn is_heartbeat(r: &Record) -> bool {
    r.frame_text()
        .is_some_and(|t| t.contains(r#""channel":"heartbeat""#))
}

/// The database holds exactly the journal's records of `collector`: every frame but heartbeats
/// as a stored copy (a book row's copy or an other-frame row) with its connection, nothing else;
/// every event; and the checkpoint at the journal's end.
async fn assert_database_equals_journal(client: &Client, dir: &Path, collector: &str) {
    let records = journal_records(dir);
    let want: BTreeSet<(i64, i64)> = records
        .iter()
        .filter(|r| matches!(r.body, RecordBody::Frame(_)) && !is_heartbeat(r))
        .map(|r| (r.seq as i64, r.conn_id as i64))
        .collect();
    let got: Vec<(i64, i64)> = client
        .query(
            "SELECT c.seq, c.conn_id FROM krakenbook_copies c
               JOIN krakenbook_collectors k ON k.id = c.collector_id WHERE k.name = $1
             UNION ALL
             SELECT seq, conn_id FROM krakenbook_other WHERE collector = $1",
            &[&collector],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let got_set: BTreeSet<(i64, i64)> = got.iter().copied().collect();
    assert_eq!(got.len(), got_set.len(), "no record twice");
    let missing: Vec<_> = want.difference(&got_set).take(5).collect();
    let extra: Vec<_> = got_set.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "database differs from the journal: missing {missing:?}, not in the journal {extra:?}"
    );
    let last = records.last().map_or(0, |r| r.seq) as i64;
    let checkpoint: i64 = client
        .query_one(
            "SELECT seq FROM krakenbook_checkpoints WHERE collector = $1",
            &[&collector],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(checkpoint, last);
}

/// Waits until no writer session of `collector` is left on the server.
async fn writer_gone(client: &Client, collector: &str) {
    for _ in 0..200 {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1",
                &[&format!("krakenbook writer {collector} %")],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the killed writer's session never ended");
}

// ---------------------------------------------------------------------------------------------
// Durability: the database takes only synced records.

#[tokio::test]
async fn a_power_cut_that_reuses_seqs_no_longer_loses_frames() {
    let (db, client) = migrated_db().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    journal::identity(&dir, Some("powercut")).unwrap();
    let journal = Journal::open(&dir);
    let running = Running::start(
        &journal,
        PipelineConfig {
            batch: BatchConfig {
                max_records: 200,
                ..BatchConfig::default()
            },
            ..config(&dir, "powercut", &db.url)
        },
    );
    let mut entries = Vec::new();
    for round in 0..2 {
        entries.extend(fixture_entries(1, t0().add_nanos(round * 10_000_000_000)));
    }
    let written = journal.append(entries).await;
    assert!(written > 8000, "{written}");
    // The power goes out while the database is catching up, with frames still arriving.
    running
        .wait_checkpoint(written / 3, Duration::from_secs(60))
        .await;
    running.kill().await;
    let written = journal
        .append(fixture_entries(1, t0().add_nanos(20_000_000_000)))
        .await;
    writer_gone(&client, "powercut").await;
    let committed: i64 = one(
        &client,
        "SELECT seq FROM krakenbook_checkpoints WHERE collector = 'powercut'",
    )
    .await;
    let synced = *journal.handle().synced.borrow();
    assert!(
        (committed as u64) <= synced,
        "the database holds seq {committed}, the journal had synced only {synced}"
    );
    assert!(
        synced < written,
        "some records were not synced yet: {synced} of {written}"
    );
    // What a power cut leaves: the active segment cut back to its synced length.
    journal.close().await;
    let segments = journal::list_segments(&dir).unwrap();
    assert_eq!(segments.len(), 1);
    let header = match SegmentHeader::decode(&std::fs::read(&segments[0].path).unwrap()) {
        HeaderParse::Header(_, len) => len as u64,
        other => panic!("the segment's header does not parse: {other:?}"),
    };
    let synced_len: u64 = header
        + journal_records(&dir)
            .iter()
            .filter(|r| r.seq <= synced)
            .map(encoded_len)
            .sum::<u64>();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segments[0].path)
        .unwrap()
        .set_len(synced_len)
        .unwrap();

    // Collect again: the journal reuses the seqs after `synced` for new frames.
    let journal = Journal::open(&dir);
    assert_eq!(journal.handle().recovery.last_seq, synced);
    let new_frames: Vec<Entry> = (0..3000)
        .map(|i| {
            frame_entry(
                7,
                i + 1,
                t0().add_nanos(3_600_000_000_000 + i as i64 * 1_000_000),
                &format!(
                    r#"{{"method":"pong","req_id":{i},"time_in":"2026-08-18T11:00:00.000000Z","time_out":"2026-08-18T11:00:00.000001Z"}}"#
                ),
            )
        })
        .collect();
    let end = journal.append(new_frames).await;
    assert_eq!(end, synced + 3000);
    let running = Running::start(&journal, config(&dir, "powercut", &db.url));
    running.wait_checkpoint(end, Duration::from_secs(60)).await;
    running.stop().await;
    journal.close().await;
    assert_database_equals_journal(&client, &dir, "powercut").await;
}

// ---------------------------------------------------------------------------------------------
// No record can stop the pipeline.

/// A book frame nesting JSON `depth` levels deep (the attack: ~20,000 levels in ~40 KB).
fn deep_book_frame(depth: usize) -> String {
    format!(
        r#"{{"channel":"book","type":"update","data":[{{"symbol":"BTC/USD","bids":{}{},"asks":[],"checksum":1,"timestamp":"2026-08-18T10:00:00.000000Z"}}]}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

/// A symbol of `n` characters no compression can shrink (an index row can hold ~2,700 bytes).
fn incompressible(n: usize) -> String {
    let mut rng = krakenbook::rng::Rng::new(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| char::from(b'a' + rng.below(26) as u8))
        .collect()
}

#[tokio::test]
async fn one_frame_cannot_stop_the_database() {
    let (db, client) = migrated_db().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    journal::identity(&dir, Some("poison")).unwrap();
    let journal = Journal::open(&dir);
    let running = Running::start(&journal, config(&dir, "poison", &db.url));
    let good = fixture_entries(1, t0());
    let half = good.len() / 2;
    let before = journal.append(good[..half].to_vec()).await;
    let at = t0().add_nanos(100_000_000_000);
    let poison = vec![
        // jsonb's parser runs out of stack ("stack depth limit exceeded").
        frame_entry(2, 1, at, &deep_book_frame(20_000)),
        // jsonb cannot hold NUL.
        frame_entry(
            2,
            2,
            at,
            r#"{"channel":"book","type":"update","data":[{"symbol":"BTC/USD\u0000","bids":[{"price":1.5,"qty":2}],"asks":[],"checksum":7,"timestamp":"2026-08-18T10:00:00.000000Z"}]}"#,
        ),
        // Passes every check here, refused by the server (an index row too large): found by
        // splitting the batch.
        frame_entry(
            2,
            3,
            at,
            &format!(
                r#"{{"channel":"book","type":"update","data":[{{"symbol":"{}","bids":[{{"price":1.5,"qty":2}}],"asks":[],"checksum":7,"timestamp":"2026-08-18T10:00:00.000000Z"}}]}}"#,
                incompressible(8000)
            ),
        ),
    ];
    let poisoned = journal.append(poison).await;
    let end = journal.append(good[half..].to_vec()).await;
    running.wait_checkpoint(end, Duration::from_secs(60)).await;
    assert_eq!(running.metrics.health(), Ok(()));
    assert_eq!(running.progress.stored_raw.load(Ordering::Relaxed), 3);
    assert_eq!(running.progress.not_stored.load(Ordering::Relaxed), 0);
    running.stop().await;
    journal.close().await;
    assert_database_equals_journal(&client, &dir, "poison").await;
    // The three are stored as received, in raw_text, each with a stored_raw event.
    let records = journal_records(&dir);
    for seq in before + 1..=poisoned {
        let frame = records[seq as usize - 1].frame_text().unwrap().to_owned();
        let row = client
            .query_one(
                "SELECT raw_message IS NULL, raw_text,
                        (SELECT count(*) FROM krakenbook_copies c
                           JOIN krakenbook_collectors k ON k.id = c.collector_id
                          WHERE k.name = m.collector AND c.seq = m.seq)
                   FROM kraken_orderbook_messages m WHERE collector = 'poison' AND seq = $1",
                &[&(seq as i64)],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "seq {seq}: no jsonb");
        assert_eq!(
            row.get::<_, Option<String>>(1).as_deref(),
            Some(frame.as_str())
        );
        let event: String = client
            .query_one(
                "SELECT event FROM kraken_feed_events WHERE collector = 'poison' AND seq = $1",
                &[&(seq as i64)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(event, "stored_raw", "seq {seq}");
        let entries: i64 = row.get(2);
        if seq == poisoned {
            assert_eq!(entries, 0, "the raw form has no entries");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Damage never stops or hides.

/// A closed journal of `segments` plain segments of the real captures' frames; returns the
/// first seq of each segment and the last seq.
fn closed_journal(dir: &Path, collector: &str, segments: usize) -> (Vec<u64>, u64) {
    journal::identity(dir, Some(collector)).unwrap();
    let (mut w, _) = JournalWriter::open(journal_config(dir)).unwrap();
    let entries = fixture_entries(1, t0());
    let per = entries.len() / segments;
    let mut firsts = Vec::new();
    for (i, chunk) in entries.chunks(per).take(segments).enumerate() {
        if i > 0 {
            w.rotate().unwrap();
        }
        firsts.push(w.next_seq());
        for e in chunk {
            w.append(e.clone()).unwrap();
        }
    }
    let last = w.next_seq() - 1;
    w.close().unwrap();
    (firsts, last)
}

/// The seq ranges `journal_damage` events of `collector` name ("seqs A..=B ...").
async fn damage_ranges(client: &Client, collector: &str) -> Vec<(u64, u64)> {
    client
        .query(
            "SELECT seq, detail FROM kraken_feed_events
              WHERE collector = $1 AND event = 'journal_damage' ORDER BY seq",
            &[&collector],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let detail: String = r.get(1);
            let range = detail
                .strip_prefix("seqs ")
                .and_then(|d| d.split_whitespace().next())
                .and_then(|d| d.split_once("..="))
                .unwrap_or_else(|| panic!("{detail}"));
            let seq: i64 = r.get(0);
            let range = (range.0.parse().unwrap(), range.1.parse().unwrap());
            assert_eq!(seq as u64, range.0, "{detail}");
            range
        })
        .collect()
}

async fn stored_seqs(client: &Client, collector: &str) -> BTreeSet<u64> {
    client
        .query(
            "SELECT c.seq FROM krakenbook_copies c
               JOIN krakenbook_collectors k ON k.id = c.collector_id WHERE k.name = $1
             UNION ALL
             SELECT seq FROM krakenbook_other WHERE collector = $1",
            &[&collector],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect()
}

#[tokio::test]
async fn import_of_a_journal_missing_a_middle_segment_stores_everything_intact_and_exits_1() {
    let db = fresh_db().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    let (firsts, last) = closed_journal(&dir, "holes", 3);
    let records = journal_records(&dir);
    let gone = journal::list_segments(&dir).unwrap()[1].path.clone();
    std::fs::remove_file(&gone).unwrap();
    let out = tokio::task::spawn_blocking({
        let (dir, url) = (dir.clone(), db.url.clone());
        move || {
            krakenbook()
                .args(["import", "--quiet", "--journal-dir"])
                .arg(&dir)
                .args(["--database-url", &url])
                .output()
                .unwrap()
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("import must not hang")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let (hole_first, hole_last) = (firsts[1], firsts[2] - 1);
    assert!(
        stderr.contains(&format!("seqs {hole_first}..={hole_last}")),
        "{stderr}"
    );
    let client = connect(&db.url).await;
    let stored = stored_seqs(&client, "holes").await;
    for r in &records {
        let in_hole = (hole_first..=hole_last).contains(&r.seq);
        if matches!(r.body, RecordBody::Frame(_)) && !is_heartbeat(r) {
            assert_eq!(stored.contains(&r.seq), !in_hole, "seq {}", r.seq);
        }
    }
    assert_eq!(
        damage_ranges(&client, "holes").await,
        [(hole_first, hole_last)]
    );
    let checkpoint: i64 = one(
        &client,
        "SELECT seq FROM krakenbook_checkpoints WHERE collector = 'holes'",
    )
    .await;
    assert_eq!(checkpoint as u64, last);
    // The damage is recorded once: a second import finds nothing to do.
    let again = krakenbook()
        .args(["import", "--quiet", "--journal-dir"])
        .arg(&dir)
        .args(["--database-url", &db.url])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    assert_eq!(damage_ranges(&client, "holes").await.len(), 1);
}

#[tokio::test]
async fn import_of_a_journal_whose_first_segment_is_gone_reports_it_and_stores_the_rest() {
    let db = fresh_db().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    let (firsts, last) = closed_journal(&dir, "headless", 2);
    let records = journal_records(&dir);
    std::fs::remove_file(&journal::list_segments(&dir).unwrap()[0].path).unwrap();
    let out = krakenbook()
        .args(["import", "--quiet", "--journal-dir"])
        .arg(&dir)
        .args(["--database-url", &db.url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("seqs 1..={}", firsts[1] - 1)),
        "{stderr}"
    );
    let client = connect(&db.url).await;
    let stored = stored_seqs(&client, "headless").await;
    for r in records
        .iter()
        .filter(|r| r.seq >= firsts[1] && !is_heartbeat(r))
    {
        assert!(stored.contains(&r.seq), "seq {}", r.seq);
    }
    assert!(stored.iter().all(|s| *s >= firsts[1]));
    let checkpoint: i64 = one(
        &client,
        "SELECT seq FROM krakenbook_checkpoints WHERE collector = 'headless'",
    )
    .await;
    assert_eq!(checkpoint as u64, last);
}

#[tokio::test]
async fn a_damaged_closed_segment_never_stops_the_pipeline() {
    let (db, client) = migrated_db().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    let (firsts, last) = closed_journal(&dir, "flipped", 3);
    let records = journal_records(&dir);
    let middle = journal::list_segments(&dir).unwrap()[1].path.clone();
    let mut bytes = std::fs::read(&middle).unwrap();
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 4] {
        *b ^= 0xff;
    }
    std::fs::write(&middle, &bytes).unwrap();
    // The collector's pipeline, on the journal reopened (a new active segment after the three).
    let journal = Journal::open(&dir);
    let end = journal
        .append(vec![frame_entry(
            3,
            1,
            t0().add_nanos(500_000_000_000),
            r#"{"channel":"status","type":"update","data":[{"api_version":"v2","connection_id":1,"system":"online","version":"2.0.0"}]}"#,
        )])
        .await;
    assert_eq!(end, last + 1);
    let running = Running::start(&journal, config(&dir, "flipped", &db.url));
    running.wait_checkpoint(end, Duration::from_secs(60)).await;
    assert!(running.progress.damaged_seqs.load(Ordering::Relaxed) > 0);
    running.stop().await;
    journal.close().await;
    let stored = stored_seqs(&client, "flipped").await;
    let damage = damage_ranges(&client, "flipped").await;
    assert!(!damage.is_empty());
    for r in &records {
        if !matches!(r.body, RecordBody::Frame(_)) || is_heartbeat(r) {
            continue;
        }
        let damaged = damage.iter().any(|(a, b)| (*a..=*b).contains(&r.seq));
        if r.seq < firsts[1] || r.seq >= firsts[2] {
            assert!(
                stored.contains(&r.seq),
                "seq {} of an intact segment",
                r.seq
            );
        } else {
            assert!(
                stored.contains(&r.seq) ^ damaged,
                "seq {}: stored or recorded as damage, not both, not neither",
                r.seq
            );
        }
    }
    assert!(stored.contains(&end));
}

// ---------------------------------------------------------------------------------------------
// Environment errors pause, say why, and never split.

/// Runs a pipeline that `url` makes fail with an environment error until `fix` runs: it must
/// pause (a handful of attempts, not thousands), say why on /health, log one line for the
/// episode, split nothing, and store everything once fixed.
async fn environment_episode(
    url: &str,
    admin: &Client,
    collector: &str,
    reason: &str,
    fix: impl AsyncFnOnce(),
) {
    let logs = Logs::capture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    journal::identity(&dir, Some(collector)).unwrap();
    let journal = Journal::open(&dir);
    let end = journal.append(fixture_entries(1, t0())).await;
    let running = Running::start(&journal, config(&dir, collector, url));
    running
        .wait_for("an environment error", Duration::from_secs(30), |r| {
            r.progress.retries.load(Ordering::Relaxed) >= 3
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let problem = running.metrics.health().unwrap_err();
    assert!(problem.contains(reason), "{problem}");
    assert_eq!(running.progress.up.load(Ordering::Relaxed), 0);
    let retries = running.progress.retries.load(Ordering::Relaxed);
    assert!(
        retries < 20,
        "{retries} attempts in ~2 s: the pipeline must back off\n{}",
        logs.text()
    );
    assert_eq!(
        logs.count("database refuses the pipeline"),
        1,
        "one line per episode:\n{}",
        logs.text()
    );
    assert_eq!(running.progress.stored_raw.load(Ordering::Relaxed), 0);
    assert_eq!(running.progress.not_stored.load(Ordering::Relaxed), 0);
    fix().await;
    running.wait_checkpoint(end, Duration::from_secs(30)).await;
    assert_eq!(running.metrics.health(), Ok(()));
    assert_eq!(logs.count("database: back"), 1, "{}", logs.text());
    assert_eq!(logs.count("database refuses the pipeline"), 1);
    running.stop().await;
    journal.close().await;
    assert_eq!(
        split_rows(admin).await,
        0,
        "an environment error never splits a batch"
    );
    assert_database_equals_journal(admin, &dir, collector).await;
}

/// The event rows a split batch leaves (records stored raw, or not stored).
async fn split_rows(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM kraken_feed_events WHERE event IN ('stored_raw', 'not_stored')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_missing_column_pauses_the_pipeline_and_sets_health_without_splitting() {
    let (db, client) = migrated_db().await;
    // The views depend on every column, so an operator's mistake looks like a rename.
    client
        .batch_execute("ALTER TABLE krakenbook_book RENAME COLUMN dups TO dups_gone")
        .await
        .unwrap();
    environment_episode(&db.url, &client, "dropped", "42703", async || {
        client
            .batch_execute("ALTER TABLE krakenbook_book RENAME COLUMN dups_gone TO dups")
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn no_create_right_pauses_the_pipeline_and_sets_health_without_splitting() {
    let db = fresh_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS timescaledb;
             DROP ROLE IF EXISTS kb_nocreate; CREATE ROLE kb_nocreate LOGIN;",
        )
        .await
        .unwrap();
    let url = db.url.replacen("postgres@", "kb_nocreate@", 1);
    environment_episode(&url, &client, "nocreate", "42501", async || {
        client
            .batch_execute("GRANT CREATE ON SCHEMA public TO kb_nocreate")
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_statement_timeout_on_the_role_pauses_the_pipeline_without_splitting() {
    let (db, client) = migrated_db().await;
    client
        .batch_execute(
            "DROP ROLE IF EXISTS kb_hurried; CREATE ROLE kb_hurried LOGIN SUPERUSER;
             ALTER ROLE kb_hurried SET statement_timeout = '1ms';",
        )
        .await
        .unwrap();
    let url = db.url.replacen("postgres@", "kb_hurried@", 1);
    environment_episode(&url, &client, "hurried", "57014", async || {
        client
            .batch_execute("ALTER ROLE kb_hurried RESET statement_timeout")
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_statement_timeout_shorter_than_a_batch_halves_the_writes_and_stores_everything() {
    let (db, client) = migrated_db().await;
    // Every book row takes 2 ms to insert: a batch of 500 takes about a second, over the
    // role's 400 ms; a part of 125 goes through.
    client
        .batch_execute(
            "DROP ROLE IF EXISTS kb_brisk; CREATE ROLE kb_brisk LOGIN SUPERUSER;
             ALTER ROLE kb_brisk SET statement_timeout = '400ms';
             CREATE FUNCTION kb_slow_row() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(0.002); RETURN NEW; END $$;
             CREATE TRIGGER kb_slow_row BEFORE INSERT ON krakenbook_book
               FOR EACH ROW EXECUTE FUNCTION kb_slow_row();",
        )
        .await
        .unwrap();
    let url = db.url.replacen("postgres@", "kb_brisk@", 1);
    let logs = Logs::capture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    journal::identity(&dir, Some("brisk")).unwrap();
    let journal = Journal::open(&dir);
    let end = journal.append(fixture_entries(1, t0())).await;
    let running = Running::start(&journal, config(&dir, "brisk", &url));
    running.wait_checkpoint(end, Duration::from_secs(90)).await;
    assert!(
        logs.count("writing smaller parts") >= 1,
        "the timeouts halved the writes:\n{}",
        logs.text()
    );
    assert_eq!(
        logs.count("database refuses the pipeline"),
        0,
        "halving is not a pause:\n{}",
        logs.text()
    );
    assert_eq!(running.metrics.health(), Ok(()));
    running.stop().await;
    journal.close().await;
    assert_eq!(
        split_rows(&client).await,
        0,
        "a timeout never stores a record raw"
    );
    assert_database_equals_journal(&client, &dir, "brisk").await;
}

#[tokio::test]
async fn a_wrong_password_pauses_the_pipeline_and_is_refused_at_start_up() {
    let cluster = own_cluster();
    cluster.require_passwords().unwrap();
    let admin_url = cluster.create_database().await.unwrap();
    let client = connect(&admin_url).await;
    client
        .batch_execute("CREATE ROLE kb LOGIN SUPERUSER PASSWORD 'right'")
        .await
        .unwrap();
    let wrong = admin_url.replacen("postgres@", "kb:wrong@", 1);
    // At start-up: refused with one line saying what to do (the collector exits non-zero).
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    let e = preflight(&config(&dir, "pw", &wrong), 0, Duration::from_secs(10))
        .await
        .expect_err("a wrong password is refused at start-up");
    let text = e.to_string();
    assert!(!text.contains('\n') && !text.contains("wrong@"), "{text}");
    assert!(
        text.contains("28P01") && text.contains("PGPASSWORD"),
        "{text}"
    );
    // While running (a password changed under a working collector): a paused episode.
    environment_episode(&wrong, &client, "pw", "28P01", async || {
        client
            .batch_execute("ALTER ROLE kb PASSWORD 'wrong'")
            .await
            .unwrap();
    })
    .await;
}

/// A pong frame received now (its receipt sets its batch's deadline).
fn pong_now(conn_seq: u64) -> Entry {
    frame_entry(
        9,
        conn_seq,
        Timestamp::now(),
        &format!(
            r#"{{"method":"pong","req_id":{conn_seq},"time_in":"2026-08-18T11:00:00.000000Z","time_out":"2026-08-18T11:00:00.000001Z"}}"#
        ),
    )
}

/// Batches committed so far.
fn batches(progress: &StoreProgress) -> u64 {
    progress
        .batch_duration
        .counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
}

/// A steady slow feed (a frame every 10 ms, the journal flushing each) costs the pipeline about
/// one journal read a batch: after a batch closed by its delay it reads when the next one would
/// be due instead of opening it at the journal's next flush (before: two reads a batch, and a
/// wake-up each). And a collector stopping while the pipeline waits so does not wait for that
/// instant: the last records go at once.
#[tokio::test]
async fn a_steady_slow_feed_costs_one_journal_read_a_batch_and_a_stop_does_not_wait_for_it() {
    let (db, client) = migrated_db().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    journal::identity(&dir, Some("paced")).unwrap();
    let journal = Journal::open(&dir);
    let running = Running::start(
        &journal,
        PipelineConfig {
            batch: BatchConfig {
                max_delay: Duration::from_millis(200),
                min_delay: Duration::from_millis(50),
                ..BatchConfig::default()
            },
            ..config(&dir, "paced", &db.url)
        },
    );
    let mut conn_seq = 0;
    // 3 s of frames: about 15 batches, each closed by its 200 ms delay.
    let steady_from = loop {
        conn_seq += 1;
        let last = journal.append(vec![pong_now(conn_seq)]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        if conn_seq == 50 {
            // Past the first batches (the pipeline's start reads its way in).
            running.wait_checkpoint(last, Duration::from_secs(30)).await;
            break (
                batches(&running.progress),
                running.progress.journal_reads.load(Ordering::Relaxed),
            );
        }
    };
    for _ in 0..300 {
        conn_seq += 1;
        journal.append(vec![pong_now(conn_seq)]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let batches_then = batches(&running.progress) - steady_from.0;
    let reads = running.progress.journal_reads.load(Ordering::Relaxed) - steady_from.1;
    assert!(
        batches_then >= 5,
        "{batches_then} batches in 3 s at 200 ms each"
    );
    assert!(
        reads <= batches_then + batches_then / 4 + 2,
        "{reads} journal reads for {batches_then} batches: more than one a batch"
    );
    running.stop().await;

    // Stopping while the pipeline waits for the next batch's instant (10 s away here): the
    // records left go at once.
    let metrics = Arc::new(Metrics::default());
    let pipeline = DbPipeline::new(
        PipelineConfig {
            batch: BatchConfig {
                max_delay: Duration::from_secs(10),
                min_delay: Duration::from_millis(50),
                ..BatchConfig::default()
            },
            ..config(&dir, "paced", &db.url)
        },
        journal.handle().flushed.clone(),
        Some(journal.handle().syncer()),
        metrics,
    );
    let progress = pipeline.progress();
    let (done_tx, done_rx) = watch::channel(None);
    let task = tokio::spawn(pipeline.run(CancellationToken::new(), done_rx));
    let mut last = 0;
    for _ in 0..100 {
        conn_seq += 1;
        last = journal.append(vec![pong_now(conn_seq)]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first batch waited its 10 s (no rate known yet); the next ones 2.55 s (256 records at
    // the 100 a second the first showed).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while progress.checkpoint_seq.load(Ordering::Acquire) < last {
        assert!(tokio::time::Instant::now() < deadline, "never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        conn_seq += 1;
        last = journal.append(vec![pong_now(conn_seq)]).await;
    }
    let asked = tokio::time::Instant::now();
    done_tx.send_replace(Some(last));
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the pipeline returns once done")
        .unwrap();
    assert_eq!(progress.checkpoint_seq.load(Ordering::Acquire), last);
    assert!(
        asked.elapsed() < Duration::from_millis(2000),
        "the last records waited {:?} for the paced read (2.55 s away)",
        asked.elapsed()
    );
    journal.close().await;
    assert_database_equals_journal(&client, &dir, "paced").await;
}

// ---------------------------------------------------------------------------------------------
// Outages and start-up.

#[tokio::test]
async fn an_outage_sets_health_503_after_the_threshold_and_clears_it_after() {
    let logs = Logs::capture();
    let cluster = own_cluster();
    let url = cluster.create_database().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    journal::identity(&dir, Some("outage")).unwrap();
    let journal = Journal::open(&dir);
    let running = Running::start(
        &journal,
        PipelineConfig {
            unhealthy_after: Duration::from_secs(3),
            ..config(&dir, "outage", &url)
        },
    );
    let heartbeat = |i: u64| frame_entry(1, i, Timestamp::now(), r#"{"channel":"heartbeat"}"#);
    let mut n = 1;
    let first = journal.append(vec![heartbeat(n)]).await;
    running
        .wait_checkpoint(first, Duration::from_secs(30))
        .await;
    cluster.stop().unwrap();
    let stopped = tokio::time::Instant::now();
    // The feed goes on: a heartbeat every 100 ms.
    let mut seen_down = false;
    let mut seen_unhealthy = None;
    while stopped.elapsed() < Duration::from_secs(6) {
        n += 1;
        journal.append(vec![heartbeat(n)]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let up = running.progress.up.load(Ordering::Relaxed);
        let health = running.metrics.health();
        if up == 0 {
            seen_down = true;
        }
        if stopped.elapsed() < Duration::from_millis(2500) {
            assert_eq!(health, Ok(()), "healthy before the threshold");
        }
        if let Err(problem) = health
            && seen_unhealthy.is_none()
        {
            seen_unhealthy = Some((stopped.elapsed(), problem));
        }
    }
    assert!(seen_down, "db_up 0 at once");
    let (after, problem) = seen_unhealthy.expect("503 after the threshold");
    assert!(
        after >= Duration::from_secs(3) && after < Duration::from_secs(5),
        "{after:?}"
    );
    assert!(problem.contains("database unreachable for"), "{problem}");
    cluster.start().unwrap();
    let end = journal.append(vec![heartbeat(n + 1)]).await;
    running.wait_checkpoint(end, Duration::from_secs(30)).await;
    running
        .wait_for("healthy again", Duration::from_secs(10), |r| {
            r.metrics.health().is_ok() && r.progress.up.load(Ordering::Relaxed) == 1
        })
        .await;
    assert_eq!(logs.count("database unreachable:"), 1, "{}", logs.text());
    assert_eq!(logs.count("database: back"), 1, "{}", logs.text());
    running.stop().await;
    journal.close().await;
}

#[tokio::test]
async fn preflight_tells_ready_from_unreachable() {
    let (db, _client) = migrated_db().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    journal::identity(&dir, Some("pre")).unwrap();
    let ready = preflight(&config(&dir, "pre", &db.url), 0, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(ready, Preflight::Ready { checkpoint: None });
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("postgres://kb:secret@127.0.0.1:{port}/x?sslmode=disable");
    match preflight(&config(&dir, "pre", &nowhere), 0, Duration::from_secs(5)).await {
        Ok(Preflight::Unreachable { reason }) => assert!(!reason.contains("secret"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A missing database is the operator's to fix: refused.
    let missing = db.url.rsplit_once('/').unwrap().0.to_owned() + "/no_such_db?sslmode=disable";
    let e = preflight(&config(&dir, "pre", &missing), 0, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("3D000"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// One journal per collector identity.

#[tokio::test]
async fn a_recreated_journal_is_refused_naming_both_instances() {
    let (db, client) = migrated_db().await;
    let tmp = tempfile::tempdir().unwrap();
    let first_dir = tmp.path().join("first");
    let (_, last) = closed_journal(&first_dir, "bot", 1);
    let journal = Journal::open(&first_dir);
    let running = Running::start(&journal, config(&first_dir, "bot", &db.url));
    running.wait_checkpoint(last, Duration::from_secs(60)).await;
    running.stop().await;
    journal.close().await;
    // The directory deleted and started again under the same identity: a new instance.
    let again = tmp.path().join("again");
    closed_journal(&again, "bot", 1);
    let (old, new) = (
        journal::instance(&first_dir).unwrap(),
        journal::instance(&again).unwrap(),
    );
    assert_ne!(old, new);
    let e = preflight(
        &config(&again, "bot", &db.url),
        last,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    let text = e.to_string();
    for needle in [old.as_str(), new.as_str(), "--collector-id", "\"bot\""] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    // Running anyway: refused, said, nothing written, not retried in a loop.
    let journal = Journal::open(&again);
    let running = Running::start(&journal, config(&again, "bot", &db.url));
    running
        .wait_for("the refusal", Duration::from_secs(30), |r| {
            r.metrics.health().is_err_and(|p| p.contains(&new))
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(running.progress.retries.load(Ordering::Relaxed) < 10);
    let checkpoint: i64 = one(
        &client,
        "SELECT seq FROM krakenbook_checkpoints WHERE collector = 'bot'",
    )
    .await;
    assert_eq!(
        checkpoint as u64, last,
        "nothing of the new journal written"
    );
    running.stop().await;
    journal.close().await;
}

#[tokio::test]
async fn a_copied_journal_whose_end_is_behind_the_database_is_refused() {
    let (db, _client) = migrated_db().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    journal::identity(&dir, Some("copied")).unwrap();
    // The collector gives its journal an instance id when it starts.
    journal::instance(&dir).unwrap();
    let journal = Journal::open(&dir);
    let early = journal
        .append(fixture_entries(1, t0())[..500].to_vec())
        .await;
    journal.close().await;
    // A copy made now (same identity and instance)...
    let copy = tmp.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }
    // ... while the original goes on and the database stores it all.
    let journal = Journal::open(&dir);
    let end = journal
        .append(fixture_entries(1, t0().add_nanos(1_000_000_000_000)))
        .await;
    let running = Running::start(&journal, config(&dir, "copied", &db.url));
    running.wait_checkpoint(end, Duration::from_secs(60)).await;
    running.stop().await;
    journal.close().await;
    let e = preflight(
        &config(&copy, "copied", &db.url),
        early,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    let text = e.to_string();
    for needle in [
        format!("seq {end}"),
        format!("seq {early}"),
        "--collector-id".into(),
    ] {
        assert!(text.contains(&needle), "{needle} in {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Per-connection liveness.

/// The last frame each connection journaled: conn_id → (seq, receive time to the microsecond,
/// as the database keeps it).
fn last_frames(dir: &Path) -> BTreeMap<i64, (i64, Timestamp)> {
    let mut out = BTreeMap::new();
    for r in journal_records(dir) {
        if matches!(r.body, RecordBody::Frame(_)) {
            let at = Timestamp::from_pg_micros(r.received_at.pg_micros());
            out.insert(r.conn_id as i64, (r.seq as i64, at));
        }
    }
    out
}

async fn liveness(client: &Client, collector: &str) -> BTreeMap<i64, (i64, Timestamp)> {
    client
        .query(
            "SELECT conn_id, last_seq, last_received_at FROM krakenbook_connections
              WHERE collector = $1",
            &[&collector],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

#[tokio::test]
async fn liveness_rows_after_a_kill_equal_the_last_frame_each_connection_journaled() {
    let (db, client) = migrated_db().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    journal::identity(&dir, Some("alive")).unwrap();
    let journal = Journal::open(&dir);
    let running = Running::start(&journal, config(&dir, "alive", &db.url));
    let mut entries = fixture_entries(1, t0());
    entries.extend(fixture_entries(2, t0().add_nanos(1_000_000)));
    // Connection 3 sends one book frame, then only heartbeats (not stored as messages).
    let at = t0().add_nanos(500_000_000_000);
    entries.push(frame_entry(
        3,
        1,
        at,
        r#"{"method":"subscribe","result":{"channel":"book","depth":10,"snapshot":true,"symbol":"BTC/USD"},"success":true,"time_in":"2026-08-18T10:08:20.000000Z","time_out":"2026-08-18T10:08:20.000100Z"}"#,
    ));
    for i in 0..5 {
        entries.push(frame_entry(
            3,
            i + 2,
            at.add_nanos((i as i64 + 1) * 1_000_000_000),
            r#"{"channel":"heartbeat"}"#,
        ));
    }
    let end = journal.append(entries).await;
    running.wait_checkpoint(end, Duration::from_secs(60)).await;
    running.kill().await;
    writer_gone(&client, "alive").await;
    let want = last_frames(&dir);
    assert_eq!(want.len(), 3);
    assert_eq!(liveness(&client, "alive").await, want);
    let kraken: Option<Timestamp> = client
        .query_one(
            "SELECT last_frame_timestamp FROM krakenbook_connections
              WHERE collector = 'alive' AND conn_id = 3",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        kraken,
        Some(Timestamp::parse("2026-08-18T10:08:20.000100Z").unwrap())
    );
    // More heartbeats after the kill, then a restart: the rows follow the journal.
    let more: Vec<Entry> = (0..3)
        .map(|i| {
            frame_entry(
                2,
                100_000 + i,
                at.add_nanos(60_000_000_000 + i as i64),
                r#"{"channel":"heartbeat"}"#,
            )
        })
        .collect();
    let end = journal.append(more).await;
    let running = Running::start(&journal, config(&dir, "alive", &db.url));
    running.wait_checkpoint(end, Duration::from_secs(60)).await;
    running.kill().await;
    writer_gone(&client, "alive").await;
    journal.close().await;
    assert_eq!(liveness(&client, "alive").await, last_frames(&dir));
}

// ---------------------------------------------------------------------------------------------
// Passwords off the command line.

#[tokio::test]
async fn passwords_come_from_pgpassword_or_the_password_file_never_the_command_line() {
    let cluster = own_cluster();
    cluster.require_passwords().unwrap();
    let admin_url = cluster.create_database().await.unwrap();
    let client = connect(&admin_url).await;
    client
        .batch_execute("CREATE ROLE kb LOGIN SUPERUSER PASSWORD 's3cret:pw'")
        .await
        .unwrap();
    let url = admin_url.replacen("postgres@", "kb@", 1);
    let tmp = tempfile::tempdir().unwrap();
    let migrate = |env: &[(&str, &str)]| {
        let mut cmd = krakenbook();
        cmd.args(["migrate", "--database-url", &url])
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .env("HOME", tmp.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let no_password = migrate(&[]);
    assert!(!no_password.status.success());
    let ok = migrate(&[("PGPASSWORD", "s3cret:pw")]);
    assert!(ok.status.success(), "{ok:?}");
    // ~/.pgpass (HOME), the colon escaped, matched on host, port, database and user.
    let port = cluster.port().to_string();
    let pgpass = tmp.path().join(".pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:{port}:*:someone_else:nope\n127.0.0.1:{port}:*:kb:s3cret\\:pw\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ok = migrate(&[]);
    assert!(ok.status.success(), "{ok:?}");
    // A password file others may read is ignored, with libpq's warning.
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = migrate(&[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("group or world access"), "{stderr}");
    // PGPASSFILE names another file.
    let other = tmp.path().join("passfile");
    std::fs::write(&other, "*:*:*:kb:s3cret\\:pw\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ok = migrate(&[("PGPASSFILE", other.to_str().unwrap())]);
    assert!(ok.status.success(), "{ok:?}");
    for out in [&no_password, &refused] {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains("s3cret"), "{text}");
    }
}

/// A steady slow feed whose records reach the journal some time after their receipt (the
/// outbox hands entries off up to `PATIENCE` late in a trickle): each still goes out within its
/// batch delay of its receipt. A first version of the paced read came `delay` after the last
/// read, so a record received just before that read but flushed just after it waited up to the
/// hand-off's lag more (found by review: 295–322 ms against 200); the paced read now comes
/// `delay` after the newest record read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_handed_off_late_still_goes_out_within_its_delay_of_receipt() {
    let (db, _client) = migrated_db().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    journal::identity(&dir, Some("lag")).unwrap();
    let journal = Journal::open(&dir);
    let delay = Duration::from_millis(200);
    let lag = Duration::from_millis(150);
    let running = Running::start(
        &journal,
        PipelineConfig {
            batch: BatchConfig {
                max_delay: delay,
                min_delay: delay,
                ..BatchConfig::default()
            },
            ..config(&dir, "lag", &db.url)
        },
    );
    let progress = Arc::clone(&running.progress);
    // When each checkpoint was first seen (polled every ms).
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(u64, Timestamp)>::new()));
    // The last seq to see committed (set once every record is appended): the poller stops only
    // after it has seen it, so every record has its commit time.
    let until = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let poller = {
        let seen = Arc::clone(&seen);
        let until = Arc::clone(&until);
        tokio::spawn(async move {
            let mut last = 0;
            while last < until.load(Ordering::Acquire) {
                let c = progress.checkpoint_seq.load(Ordering::Acquire);
                if c != last {
                    seen.lock().unwrap().push((c, Timestamp::now()));
                    last = c;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut received = Vec::new();
    for conn_seq in 1..=400u64 {
        // Received `lag` ago: the outbox hands it to the journal only now.
        let at = Timestamp::now().add_nanos(-(lag.as_nanos() as i64));
        let e = frame_entry(
            9,
            conn_seq,
            at,
            &format!(
                r#"{{"method":"pong","req_id":{conn_seq},"time_in":"2026-08-18T11:00:00.000000Z","time_out":"2026-08-18T11:00:00.000001Z"}}"#
            ),
        );
        let seq = journal.append(vec![e]).await;
        received.push((seq, at));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running
        .wait_checkpoint(received.last().unwrap().0, Duration::from_secs(30))
        .await;
    until.store(received.last().unwrap().0, Ordering::Release);
    poller.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    // Past the start (the first batches read their way in).
    let mut worst = (0u64, 0i64);
    for &(seq, at) in &received[100..] {
        let (_, committed) = seen.iter().find(|(c, _)| *c >= seq).unwrap();
        let waited = committed.nanos_since(at);
        if waited > worst.1 {
            worst = (seq, waited);
        }
    }
    running.stop().await;
    // max_delay, plus a generous 100 ms for the commit and the poll on a busy machine (paced
    // from the last read, the worst wait was max_delay plus the lag: 350 ms here).
    assert!(
        worst.1 < (delay + Duration::from_millis(100)).as_nanos() as i64,
        "record {} committed {} ms after its receipt (max_delay {} ms)",
        worst.0,
        worst.1 / 1_000_000,
        delay.as_millis()
    );
    journal.close().await;
}
