//! `krakenbook serve` end to end: the binary serving a recording with known gaps, its JSON API
//! over loopback, and its page in a real browser (headless Chromium from Debian's package,
//! installed by `scripts/test`; these tests fail, never skip, without it).
//!
//! The recording (made once per test process): the simulator over loopback (BTC/USD and ETH/USD
//! moving, MINA/GBP quiet), a collector into a fresh TimescaleDB whose first connection loses an
//! update (a checksum mismatch, a resubscription), stopped for 6 s (a `no_collector` gap), then a
//! second collector process on the same journal and database. While the second one runs, the
//! explorer's `/api/collectors` is read (its state row must say running).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

use krakenbook::time::Timestamp;

use crate::coverage::record_downtime;
use crate::db::{TestDb, connect};
use crate::support::{krakenbook, run};

/// The recording with a mismatch and a downtime.
struct Rec {
    db: TestDb,
    _dir: tempfile::TempDir,
    /// Just before the first collector was stopped.
    stopped: Timestamp,
    /// Just before the second collector was started.
    restarted: Timestamp,
    /// `/api/collectors` while the second collector ran.
    live: Value,
}

impl Rec {
    fn downtime_middle(&self) -> Timestamp {
        crate::coverage::Downtime::midpoint(self.stopped, self.restarted)
    }

    /// The pair whose update the simulator lost: its connection's 120th frame, so which pair
    /// it is depends on how the three pairs' frames interleaved (BTC/USD most often, not
    /// always).
    async fn mismatched_symbol(&self) -> String {
        connect(&self.db.url)
            .await
            .query_one(
                "SELECT symbol FROM kraken_orderbook_messages
                  WHERE checksum_ok = false ORDER BY seq LIMIT 1",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }
}

static REC: OnceCell<Rec> = OnceCell::const_new();

async fn rec() -> &'static Rec {
    REC.get_or_init(record).await
}

async fn record() -> Rec {
    // While the second collector runs: the explorer's view of it (its state row must say running).
    let (rec, live) = record_downtime(37, Duration::from_secs(6), async |db, second| {
        let serve = Serve::start(&db.url, &[]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = get(serve.addr, "/api/collectors").await;
            assert_eq!(status, 200, "{body}");
            let running = body["collectors"].as_array().is_some_and(|list| {
                list.iter()
                    .any(|c| c["status"] == "running" && c["streams_live"].as_i64() >= Some(3))
            });
            if running {
                break body;
            }
            assert!(
                Instant::now() < deadline,
                "the running collector's state never showed: {body}\n{}",
                second.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    Rec {
        db: rec.db,
        _dir: rec.dir,
        stopped: rec.stopped,
        restarted: rec.restarted,
        live,
    }
}

/// A `krakenbook serve` process, killed when dropped.
pub(crate) struct Serve {
    child: Child,
    pub(crate) addr: SocketAddr,
    _log_dir: tempfile::TempDir,
}

impl Serve {
    // The child is waited for by `Drop` (or before the panic when it never starts).
    #[allow(clippy::zombie_processes)]
    pub(crate) fn start(url: &str, extra: &[&str]) -> Serve {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("serve.log");
        let mut child = krakenbook()
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", url])
            .args(extra)
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("krakenbook serve starts");
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("krakenbook explorer: http://").nth(1) {
                let addr = rest.split('/').next().unwrap().parse().unwrap();
                return Serve {
                    child,
                    addr,
                    _log_dir: log_dir,
                };
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve did not start:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn url(&self, fragment: &str) -> String {
        format!("http://{}/#{fragment}", self.addr)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP exchange with `host` as the `Host` header: (status, body).
async fn exchange(addr: SocketAddr, path: &str, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// A GET of the API: (status, JSON).
pub(crate) async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = exchange(addr, path, &addr.to_string()).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, json)
}

pub(crate) fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn ts(v: &Value) -> Timestamp {
    Timestamp::parse(v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"))).unwrap()
}

/// The middle of the longest verified span of the union.
fn verified_instant(coverage: &Value) -> Timestamp {
    let span = coverage["spans"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|s| ts(&s["end"]).nanos_since(ts(&s["start"])))
        .expect("a verified span");
    let (a, b) = (ts(&span["start"]), ts(&span["end"]));
    Timestamp::from_unix_nanos((a.unix_nanos() + b.unix_nanos()) / 2 / 1000 * 1000)
}

/// Headless Chromium's binary (Debian's `chromium`).
fn chromium_binary() -> String {
    for name in ["chromium", "chromium-browser"] {
        if std::process::Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return name.to_owned();
        }
    }
    panic!(
        "the browser tests need Chromium: run scripts/test (it installs Debian's chromium), or apt-get install -y chromium"
    );
}

/// Loads `url` in headless Chromium, lets its requests finish, and returns the DOM (and takes a
/// screenshot into `shot` when given).
pub(crate) fn browse(url: &str, shot: Option<&Path>) -> String {
    browse_for(url, shot, 30_000)
}

/// [`browse`] with a virtual-time budget in milliseconds: the health view refreshes every 5 s, so
/// it is read within the first interval (a refresh in flight when the budget ends would leave the
/// page not ready).
fn browse_for(url: &str, shot: Option<&Path>, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(chromium_binary());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1280,1000",
    ])
    .arg(format!("--virtual-time-budget={budget_ms}"))
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match shot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where the screenshots go (the README's are copied from here into docs/).
fn shot_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// How many pixels of a screenshot have exactly `rgb`.
fn pixels_of(path: &Path, rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(step)
        .filter(|p| p[..3] == rgb)
        .count()
}

pub(crate) fn count_of(dom: &str, needle: &str) -> usize {
    dom.matches(needle).count()
}

// ---------- the API over loopback ----------

#[tokio::test]
async fn api_coverage_shows_the_downtime_and_the_mismatch_as_gaps_with_their_causes() {
    let rec = rec().await;
    let serve = Serve::start(&rec.db.url, &[]);
    let symbol = rec.mismatched_symbol().await.replace('/', "%2F");
    let (status, c) = get(serve.addr, &format!("/api/coverage?symbol={symbol}")).await;
    assert_eq!(status, 200, "{c}");
    let gaps = c["gaps"].as_array().unwrap();
    let middle = rec.downtime_middle();
    let downtime = gaps
        .iter()
        .find(|g| {
            g["start"].is_string()
                && g["end"].is_string()
                && ts(&g["start"]) <= middle
                && middle < ts(&g["end"])
        })
        .unwrap_or_else(|| panic!("no gap holds the downtime's middle: {c}"));
    assert_eq!(downtime["cause"], "no_collector", "{downtime}");
    // The gap begins where the first collector's last frame was, before the stop.
    assert!(ts(&downtime["start"]) <= rec.stopped.add_nanos(1_000_000_000));
    assert!(ts(&downtime["end"]) >= rec.restarted);
    assert!(
        gaps.iter().any(|g| g["cause"] == "mismatch"),
        "the lost update is a mismatch gap: {c}"
    );
    // One connection of each collector process carried it.
    assert_eq!(c["streams"].as_array().unwrap().len(), 2, "{c}");
    assert!(ts(&c["first"]) < ts(&c["last"]));
}

#[tokio::test]
async fn api_book_in_a_gap_is_empty_and_says_so_and_verified_elsewhere() {
    let rec = rec().await;
    let serve = Serve::start(&rec.db.url, &[]);
    let at = rec.downtime_middle();
    let (status, b) = get(
        serve.addr,
        &format!(
            "/api/book?symbol=BTC%2FUSD&at={}&depth=10",
            enc(&at.to_string())
        ),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["verified"], false, "{b}");
    assert_eq!(b["gap"]["cause"], "no_collector", "{b}");
    assert_eq!(b["bids"].as_array().unwrap().len(), 0, "{b}");
    assert_eq!(b["asks"].as_array().unwrap().len(), 0, "{b}");
    assert!(b["gap"]["last_verified_at"].is_string(), "{b}");

    let (_, c) = get(serve.addr, "/api/coverage?symbol=BTC%2FUSD").await;
    let at = verified_instant(&c);
    let (status, b) = get(
        serve.addr,
        &format!(
            "/api/book?symbol=BTC%2FUSD&at={}&depth=10",
            enc(&at.to_string())
        ),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["verified"], true, "{b}");
    assert!(b["gap"].is_null(), "{b}");
    assert_eq!(b["bids"].as_array().unwrap().len(), 10, "{b}");
    assert!(ts(&b["last_message_at"]) <= at, "{b}");
}

#[tokio::test]
async fn api_step_moves_one_message_forward_and_back_on_the_same_stream() {
    let rec = rec().await;
    let serve = Serve::start(&rec.db.url, &[]);
    let (_, c) = get(serve.addr, "/api/coverage?symbol=ETH%2FUSD").await;
    let at = verified_instant(&c);
    let (_, b) = get(
        serve.addr,
        &format!(
            "/api/book?symbol=ETH%2FUSD&at={}&depth=25",
            enc(&at.to_string())
        ),
    )
    .await;
    assert_eq!(b["verified"], true, "{b}");
    let stream = format!(
        "symbol=ETH%2FUSD&collector={}&conn_id={}",
        enc(b["collector"].as_str().unwrap()),
        b["conn_id"]
    );
    let seq = b["last_seq"].as_i64().unwrap();
    let (status, next) = get(
        serve.addr,
        &format!("/api/step?{stream}&seq={seq}&dir=next&depth=25"),
    )
    .await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["verified"], true, "{next}");
    let next_seq = next["last_seq"].as_i64().unwrap();
    assert!(next_seq > seq, "{next}");
    assert_eq!(next["conn_id"], b["conn_id"]);
    assert_ne!(
        (&next["bids"], &next["asks"]),
        (&b["bids"], &b["asks"]),
        "a book message changes the book"
    );
    // And back: the very book of `at` again.
    let (status, back) = get(
        serve.addr,
        &format!("/api/step?{stream}&seq={next_seq}&dir=prev&depth=25"),
    )
    .await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(back["last_seq"].as_i64(), Some(seq), "{back}");
    assert_eq!((&back["bids"], &back["asks"]), (&b["bids"], &b["asks"]));
    assert_eq!(back["checksum"], b["checksum"]);
}

#[tokio::test]
async fn api_heatmap_leaves_the_downtime_blank_and_its_columns_are_the_books_at_their_instants() {
    let rec = rec().await;
    let serve = Serve::start(&rec.db.url, &[]);
    let (_, c) = get(serve.addr, "/api/coverage?symbol=BTC%2FUSD").await;
    let spans = c["spans"].as_array().unwrap();
    let from = ts(&spans[0]["start"]);
    let to = ts(&spans[spans.len() - 1]["end"]);
    let (status, map) = get(
        serve.addr,
        &format!(
            "/api/heatmap?symbol=BTC%2FUSD&from={}&to={}&columns=120&depth=25",
            enc(&from.to_string()),
            enc(&to.to_string())
        ),
    )
    .await;
    assert_eq!(status, 200, "{map}");
    let columns = map["columns"].as_array().unwrap();
    assert_eq!(columns.len(), 120);
    let middle = rec.downtime_middle();
    let step = map["step_ns"].as_i64().unwrap();
    for col in columns {
        let t = ts(&col["t"]);
        if t.nanos_since(middle).abs() < step {
            assert_eq!(col["status"], "no_collector", "{col}");
            assert_eq!(col["bids"].as_array().unwrap().len(), 0);
        }
    }
    let verified: Vec<&Value> = columns
        .iter()
        .filter(|c| c["status"] == "verified")
        .collect();
    assert!(verified.len() > 60, "{}", map["stats"]);
    // Carried from column to column, each verified column is exactly `book --at` its instant.
    for col in verified.iter().step_by(verified.len() / 6) {
        let (_, b) = get(
            serve.addr,
            &format!(
                "/api/book?symbol=BTC%2FUSD&at={}&depth=25",
                enc(col["t"].as_str().unwrap())
            ),
        )
        .await;
        let levels = |side: &Value| -> Vec<(String, String)> {
            side.as_array()
                .unwrap()
                .iter()
                .map(|l| match l {
                    Value::Array(pq) => (pq[0].to_string(), pq[1].to_string()),
                    _ => (l["price"].to_string(), l["qty"].to_string()),
                })
                .collect()
        };
        assert_eq!(levels(&col["bids"]), levels(&b["bids"]), "{}", col["t"]);
        assert_eq!(levels(&col["asks"]), levels(&b["asks"]), "{}", col["t"]);
    }
    // Fewer books started than columns: books are carried along.
    let stats = &map["stats"];
    assert!(
        stats["books_started"].as_u64().unwrap() < verified.len() as u64,
        "{stats}"
    );
}

#[tokio::test]
async fn api_refuses_bad_parameters_with_a_400_that_names_them() {
    let rec = rec().await;
    let serve = Serve::start(&rec.db.url, &[]);
    // (path, parameter at fault)
    let table = [
        ("/api/coverage", "symbol"),
        ("/api/coverage?symbol=%3Cscript%3E", "symbol"),
        ("/api/coverage?symbol=BTC%2FUSD&colour=red", "colour"),
        ("/api/book?symbol=BTC%2FUSD", "at"),
        ("/api/book?symbol=BTC%2FUSD&at=noon", "at"),
        (
            "/api/book?symbol=BTC%2FUSD&at=2026-11-24T10:00:00Z&depth=0",
            "depth",
        ),
        (
            "/api/book?symbol=BTC%2FUSD&at=2026-11-24T10:00:00Z&depth=5000",
            "depth",
        ),
        (
            "/api/heatmap?symbol=BTC%2FUSD&from=2026-11-24T10:00:00Z&to=2026-11-24T09:00:00Z",
            "to",
        ),
        (
            "/api/heatmap?symbol=BTC%2FUSD&from=2026-01-01T00:00:00Z&to=2026-11-24T09:00:00Z",
            "to",
        ),
        (
            "/api/heatmap?symbol=BTC%2FUSD&from=2026-11-24T10:00:00Z&to=2026-11-24T11:00:00Z&columns=99999",
            "columns",
        ),
        (
            "/api/step?symbol=BTC%2FUSD&collector=x&conn_id=1&seq=abc",
            "seq",
        ),
        (
            "/api/step?symbol=BTC%2FUSD&collector=x&conn_id=1&seq=5&dir=up",
            "dir",
        ),
    ];
    for (path, param) in table {
        let (status, body) = get(serve.addr, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["param"], param, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().len() > 5, "{body}");
    }
    let (status, body) = get(serve.addr, "/api/coverage?symbol=DOGE%2FEUR").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = exchange(serve.addr, "/api/nothing", &serve.addr.to_string()).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_page_from_another_host_name_gets_403_on_loopback() {
    let rec = rec().await;
    let serve = Serve::start(&rec.db.url, &[]);
    let (status, body) = exchange(serve.addr, "/api/symbols", "attacker.example:8080").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = exchange(serve.addr, "/api/symbols", "localhost").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["symbols"],
        serde_json::json!(["BTC/USD", "ETH/USD", "MINA/GBP"])
    );
    // The page and its assets come from the binary, with a policy that forbids anything else.
    let mut s = TcpStream::connect(serve.addr).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", serve.addr).as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.to_lowercase()
            .contains("content-security-policy: default-src 'self'"),
        "{out}"
    );
    assert!(
        !out.contains("http://") && !out.contains("https://"),
        "no CDN: {out}"
    );
}

#[tokio::test]
async fn serve_refuses_a_non_loopback_address_without_public() {
    let out = run(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--database-url",
        "postgres://nobody@127.0.0.1:1/none",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("add --public"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[tokio::test]
async fn the_explorer_sessions_cannot_write() {
    let rec = rec().await;
    let sessions = krakenbook::web::Sessions::new(&rec.db.url).unwrap();
    let client = sessions.client().await.unwrap();
    let e = client
        .batch_execute("DELETE FROM krakenbook_book")
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{e:?}"
    );
    let client = connect(&rec.db.url).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM kraken_orderbook_messages", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 600);
}

#[tokio::test]
async fn collectors_publish_their_state_and_a_silent_one_is_not_running() {
    let rec = rec().await;
    // While it ran.
    let live = rec.live["collectors"].as_array().unwrap();
    assert_eq!(live.len(), 1, "{}", rec.live);
    let c = &live[0];
    assert_eq!(c["status"], "running", "{c}");
    assert_eq!(c["symbols"], 3, "{c}");
    assert!(c["frames"].as_i64().unwrap() > 0, "{c}");
    assert!(
        c["last_frame_at"].is_string() && c["last_verified_at"].is_string(),
        "{c}"
    );
    assert_eq!(c["detail"].as_array().unwrap().len(), 3, "{c}");
    // After its graceful stop, and beside a collector that went silent a minute ago.
    let client = connect(&rec.db.url).await;
    client
        .batch_execute(
            "INSERT INTO krakenbook_collector_state SELECT 'crashed-host', host, pid, version,
                started_at, now() - interval '1 minute', true, frames, last_frame_at,
                last_verified_at, connections_open, symbols, streams_live, mismatches, reconnects,
                lag_records, lag_seconds, problem, detail
               FROM krakenbook_collector_state LIMIT 1
             ON CONFLICT DO NOTHING",
        )
        .await
        .unwrap();
    let serve = Serve::start(&rec.db.url, &[]);
    let (status, body) = get(serve.addr, "/api/collectors").await;
    assert_eq!(status, 200, "{body}");
    let list = body["collectors"].as_array().unwrap();
    let status_of = |name: &str| {
        list.iter()
            .find(|c| c["collector"] == name)
            .map(|c| c["status"].clone())
    };
    assert_eq!(status_of("crashed-host"), Some(Value::from("not_running")));
    let real = &c["collector"];
    assert_eq!(
        status_of(real.as_str().unwrap()),
        Some(Value::from("stopped"))
    );
    let stopped = list.iter().find(|c| c["collector"] == *real).unwrap();
    assert!(
        stopped["mismatches"].as_i64().unwrap() == 0,
        "the second process saw no mismatch: {stopped}"
    );
    assert!(stopped["last_frame_stored_at"].is_string(), "{stopped}");
}

// ---------- the page in a real browser ----------

#[tokio::test]
async fn browser_coverage_view_draws_spans_and_gaps_with_their_causes() {
    let rec = rec().await;
    let serve = Serve::start(&rec.db.url, &[]);
    let url = serve.url(&format!(
        "coverage?symbol={}",
        rec.mismatched_symbol().await
    ));
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || browse(&url, None)
    })
    .await
    .unwrap();
    assert!(dom.contains("data-ready=\"coverage\""), "{dom}");
    assert!(count_of(&dom, "class=\"span union\"") >= 2, "{dom}");
    assert!(
        dom.contains("class=\"gap union\" data-cause=\"no_collector\""),
        "{dom}"
    );
    assert!(
        dom.contains("class=\"gap union\" data-cause=\"mismatch\""),
        "{dom}"
    );
    assert!(
        dom.contains("<tr class=\"gap-row\" data-cause=\"no_collector\">"),
        "{dom}"
    );
    assert!(
        dom.contains("id=\"error\" role=\"alert\" hidden"),
        "no error shown: {dom}"
    );
    let shot = shot_path("web-coverage.png");
    tokio::task::spawn_blocking({
        let shot = shot.clone();
        move || browse(&url, Some(&shot))
    })
    .await
    .unwrap();
    // Verified green and the no-collector purple are on screen.
    assert!(pixels_of(&shot, [0x2e, 0x9e, 0x5b]) > 1000);
    assert!(pixels_of(&shot, [0x7a, 0x5a, 0xf8]) > 100);
}

#[tokio::test]
async fn browser_book_view_shows_a_verified_ladder_and_a_gap_without_a_book() {
    let rec = rec().await;
    let serve = Serve::start(&rec.db.url, &[]);
    let (_, c) = get(serve.addr, "/api/coverage?symbol=BTC%2FUSD").await;
    let at = verified_instant(&c);
    let url = serve.url(&format!("book?symbol=BTC/USD&at={at}&depth=20"));
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || browse(&url, None)
    })
    .await
    .unwrap();
    assert!(dom.contains("data-ready=\"book\""), "{dom}");
    assert!(dom.contains("data-verified=\"true\""), "{dom}");
    assert_eq!(count_of(&dom, "<tr class=\"bid\">"), 20, "{dom}");
    assert_eq!(count_of(&dom, "<tr class=\"ask\">"), 20, "{dom}");
    assert!(dom.contains("class=\"depth-bid\""), "{dom}");
    let shot = shot_path("web-book.png");
    tokio::task::spawn_blocking({
        let shot = shot.clone();
        move || browse(&url, Some(&shot))
    })
    .await
    .unwrap();
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);

    let gap = rec.downtime_middle();
    let url = serve.url(&format!("book?symbol=BTC/USD&at={gap}"));
    let dom = tokio::task::spawn_blocking(move || browse(&url, None))
        .await
        .unwrap();
    assert!(dom.contains("data-ready=\"book\""), "{dom}");
    assert!(
        dom.contains("data-verified=\"false\" data-cause=\"no_collector\""),
        "{dom}"
    );
    assert!(dom.contains("GAP (no_collector)"), "{dom}");
    assert_eq!(count_of(&dom, "<tr class=\"bid\">"), 0, "{dom}");
    assert!(dom.contains("no book in a gap"), "{dom}");
}

#[tokio::test]
async fn browser_heatmap_view_draws_verified_columns_and_leaves_the_downtime_blank() {
    let rec = rec().await;
    let serve = Serve::start(&rec.db.url, &[]);
    let (_, c) = get(serve.addr, "/api/coverage?symbol=BTC%2FUSD").await;
    let spans = c["spans"].as_array().unwrap();
    let from = ts(&spans[0]["start"]);
    let to = ts(&spans[spans.len() - 1]["end"]);
    let url = serve.url(&format!(
        "heatmap?symbol=BTC/USD&from={from}&to={to}&depth=25"
    ));
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || browse(&url, None)
    })
    .await
    .unwrap();
    assert!(dom.contains("data-ready=\"heatmap\""), "{dom}");
    let attr = |name: &str| -> String {
        let key = format!("data-{name}=\"");
        let rest = dom
            .split(&key)
            .nth(1)
            .unwrap_or_else(|| panic!("{name}: {dom}"));
        rest.split('"').next().unwrap().to_owned()
    };
    let columns: usize = attr("columns").parse().unwrap();
    let verified: usize = attr("verified").parse().unwrap();
    let blank: usize = attr("blank").parse().unwrap();
    assert!(columns >= 100, "{columns}");
    assert!(verified > columns / 2, "{verified} of {columns}");
    assert!(blank > 0, "the downtime is blank");
    assert!(attr("causes").contains("no_collector"), "{dom}");
    let shot = shot_path("web-heatmap.png");
    tokio::task::spawn_blocking({
        let shot = shot.clone();
        move || browse(&url, Some(&shot))
    })
    .await
    .unwrap();
    // The best bid (green) and ask (red) lines are drawn.
    assert!(pixels_of(&shot, [0x32, 0xd5, 0x83]) > 100);
    assert!(pixels_of(&shot, [0xf9, 0x70, 0x66]) > 100);
}

#[tokio::test]
async fn browser_health_view_shows_each_collector_and_its_status() {
    let rec = rec().await;
    let serve = Serve::start(&rec.db.url, &[]);
    let url = serve.url("health");
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || browse_for(&url, None, 4_000)
    })
    .await
    .unwrap();
    assert!(dom.contains("data-ready=\"health\""), "{dom}");
    assert!(dom.contains("data-status=\"stopped\""), "{dom}");
    assert!(dom.contains("class=\"badge stopped\""), "{dom}");
    let shot = shot_path("web-health.png");
    tokio::task::spawn_blocking(move || browse_for(&url, Some(&shot), 4_000))
        .await
        .unwrap();
}
