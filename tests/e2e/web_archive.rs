//! The web explorer over archived ranges: the recording of `archive.rs` (three pairs in 5-second
//! chunks, a lost update early on), the explorer's books, steps and heatmaps asked over real HTTP
//! before `krakenbook archive` moves its older half to Parquet and again after, from the server
//! that was running all along (its sessions see the catalog change) and from a fresh one. Also:
//! a lazy mount reads a window's files once; `reset` empties the catalog and says where the files
//! stay (or deletes exactly them when asked); an archive directory moved away, or a file of it
//! deleted, gives every read command a one-line error naming it and saying what to do.

use serde_json::Value;

use krakenbook::time::Timestamp;
use krakenbook::web;

use crate::archive::{
    Recorded, archived_parts, cut_between_chunks, files_named, kb, older_than_until, record, stdout,
};
use crate::db::connect;
use crate::web::{Serve, browse, count_of, enc, get};

/// A chunk's length in the recording (`migrate --chunk-interval '5 seconds'`).
const CHUNK_NS: i64 = 5_000_000_000;

/// One API request and its answer (`stats.millis` of a heatmap dropped: a duration, not data).
async fn ask(serve: &Serve, path: &str) -> (u16, Value) {
    let (status, mut v) = get(serve.addr, path).await;
    if let Some(stats) = v.get_mut("stats").and_then(Value::as_object_mut) {
        stats.remove("millis");
    }
    (status, v)
}

fn book_path(symbol: &str, at: Timestamp) -> String {
    format!(
        "/api/book?symbol={}&at={}&depth=25",
        enc(symbol),
        enc(&at.to_string())
    )
}

fn step_path(book: &Value, dir: &str) -> String {
    format!(
        "/api/step?symbol={}&collector={}&conn_id={}&seq={}&at={}&dir={dir}&depth=25",
        enc(book["symbol"].as_str().unwrap()),
        enc(book["collector"].as_str().unwrap()),
        book["conn_id"],
        book["last_seq"],
        enc(book["last_message_at"].as_str().unwrap()),
    )
}

fn heatmap_path(symbol: &str, from: Timestamp, to: Timestamp, columns: usize) -> String {
    format!(
        "/api/heatmap?symbol={}&from={}&to={}&columns={columns}&depth=25",
        enc(symbol),
        enc(&from.to_string()),
        enc(&to.to_string())
    )
}

/// What the explorer answers about the recording: (request, status, answer) in order. The
/// steps walk forward from just before `archive_end` until past it (across the archive's end
/// into the database), then back.
async fn explore(serve: &Serve, r: &Recorded, archive_end: Timestamp) -> Vec<(String, u16, Value)> {
    let mut out = Vec::new();
    let mut push = |path: String, (status, v): (u16, Value)| {
        out.push((path, status, v.clone()));
        v
    };
    for symbol in ["BTC/USD", "ETH/USD", "MINA/GBP"] {
        for offset_ms in [2_000, 5_000, 8_000] {
            let p = book_path(symbol, r.first.add_nanos(offset_ms * 1_000_000));
            push(p.clone(), ask(serve, &p).await);
        }
        let p = book_path(symbol, r.last.add_nanos(-2_000_000_000));
        push(p.clone(), ask(serve, &p).await);
    }
    // Steps across the archive's end.
    let p = book_path("BTC/USD", archive_end.add_nanos(-300_000_000));
    let mut book = push(p.clone(), ask(serve, &p).await);
    assert_eq!(
        book["verified"], true,
        "a verified book to step from: {book}"
    );
    let mut forward = 0;
    while forward < 200 {
        let p = step_path(&book, "next");
        let (status, next) = ask(serve, &p).await;
        assert_eq!(status, 200, "{p}: {next}");
        book = push(p, (status, next));
        forward += 1;
        if Timestamp::parse(book["last_message_at"].as_str().unwrap()).unwrap() >= archive_end {
            break;
        }
    }
    for _ in 0..forward.min(5) + 2 {
        let p = step_path(&book, "prev");
        let (status, prev) = ask(serve, &p).await;
        assert_eq!(status, 200, "{p}: {prev}");
        book = push(p, (status, prev));
    }
    // Heatmaps: inside the archived range, and across its end into the database.
    for (from, to, columns) in [
        (r.first.add_nanos(1_000_000_000), archive_end, 40),
        (r.first, r.last, 80),
    ] {
        for symbol in ["BTC/USD", "ETH/USD"] {
            let p = heatmap_path(symbol, from, to, columns);
            push(p.clone(), ask(serve, &p).await);
        }
    }
    out
}

fn assert_same(after: &[(String, u16, Value)], before: &[(String, u16, Value)], who: &str) {
    assert_eq!(after.len(), before.len(), "{who}: as many answers");
    for (a, b) in after.iter().zip(before) {
        assert_eq!(a.0, b.0, "{who}: the same requests");
        assert_eq!(
            (a.1, &a.2),
            (b.1, &b.2),
            "{who}: {} differs after archiving",
            a.0
        );
    }
}

/// Archives the chunks ending before the recording's middle into `dir`: the end of the archived
/// range.
async fn archive_older_half(r: &Recorded, dir: &std::path::Path) -> Timestamp {
    let cut = cut_between_chunks(r.first);
    let older = older_than_until(&r.db.url, cut).await;
    stdout(
        &kb(
            &r.db.url,
            &[
                "archive",
                "--older-than",
                &older,
                "--to",
                dir.to_str().unwrap(),
            ],
        ),
        "archive",
    );
    assert!(archived_parts(&r.db.url).await >= 2);
    let end: Timestamp = connect(&r.db.url)
        .await
        .query_one("SELECT max(range_end) FROM krakenbook_archive", &[])
        .await
        .unwrap()
        .get(0);
    // The cut lies half a chunk past the last archived chunk's end.
    assert_eq!(end.add_nanos(CHUNK_NS / 2), cut);
    end
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_answers_books_steps_and_heatmaps_in_an_archived_range_as_before_archiving() {
    let r = record().await;
    let cold = r.dir.path().join("cold");
    let archive_end = cut_between_chunks(r.first).add_nanos(-CHUNK_NS / 2);
    let running = Serve::start(&r.db.url, &[]);
    let timed = std::time::Instant::now();
    let before = explore(&running, &r, archive_end).await;
    let before_ms = timed.elapsed().as_millis();
    let verified_books = before
        .iter()
        .filter(|(p, _, v)| p.starts_with("/api/book") && v["verified"] == true)
        .count();
    assert!(verified_books >= 8, "{verified_books} verified books asked");
    let heatmap_verified: u64 = before
        .iter()
        .filter(|(p, _, _)| p.starts_with("/api/heatmap"))
        .map(|(_, _, v)| v["stats"]["verified"].as_u64().unwrap())
        .sum();
    assert!(
        heatmap_verified > 100,
        "{heatmap_verified} verified columns"
    );

    assert_eq!(archive_older_half(&r, &cold).await, archive_end);
    let left: i64 = connect(&r.db.url)
        .await
        .query_one(
            "SELECT count(*) FROM krakenbook_book WHERE \"timestamp\" < $1",
            &[&archive_end],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left, 0,
        "the archived range's rows are gone from the database"
    );

    // The server that ran all along: its sessions see the catalog change and mount the archive.
    let timed = std::time::Instant::now();
    assert_same(
        &explore(&running, &r, archive_end).await,
        &before,
        "running server",
    );
    let running_ms = timed.elapsed().as_millis();
    drop(running);
    // A fresh one, asked twice (the second time from what its sessions loaded already).
    let fresh = Serve::start(&r.db.url, &[]);
    let timed = std::time::Instant::now();
    assert_same(
        &explore(&fresh, &r, archive_end).await,
        &before,
        "fresh server",
    );
    let fresh_ms = timed.elapsed().as_millis();
    let timed = std::time::Instant::now();
    assert_same(
        &explore(&fresh, &r, archive_end).await,
        &before,
        "fresh server, again",
    );
    println!(
        "explorer, {} requests: {before_ms} ms before archiving; after: {running_ms} ms (running server), {fresh_ms} ms (fresh server), {} ms (again, rows loaded)",
        before.len(),
        timed.elapsed().as_millis()
    );
    // A step without at= (as a script may ask): the message is found in the archive's files
    // by the sessions that have not loaded it, and the answer is the same.
    let (_, book) = ask(
        &fresh,
        &book_path("BTC/USD", r.first.add_nanos(8_000_000_000)),
    )
    .await;
    let with_at = step_path(&book, "next");
    let no_at = with_at.split("&at=").next().unwrap().to_owned() + "&dir=next&depth=25";
    let want = ask(&fresh, &with_at).await;
    assert_eq!(want.0, 200, "{}", want.1);
    for _ in 0..web::SESSIONS + 1 {
        assert_eq!(ask(&fresh, &no_at).await, want, "{no_at}");
    }
    // The page, in a real browser: the book and the heatmap of the archived range.
    let at = r.first.add_nanos(8_000_000_000);
    let url = fresh.url(&format!("book?symbol=BTC/USD&at={at}&depth=20"));
    let dom = tokio::task::spawn_blocking(move || browse(&url, None))
        .await
        .unwrap();
    assert!(dom.contains("data-ready=\"book\""), "{dom}");
    assert!(dom.contains("data-verified=\"true\""), "{dom}");
    assert_eq!(count_of(&dom, "<tr class=\"bid\">"), 20, "{dom}");
    let (from, to) = (r.first.add_nanos(1_000_000_000), archive_end);
    let url = fresh.url(&format!(
        "heatmap?symbol=BTC/USD&from={from}&to={to}&depth=25"
    ));
    let dom = tokio::task::spawn_blocking(move || browse(&url, None))
        .await
        .unwrap();
    assert!(dom.contains("data-ready=\"heatmap\""), "{dom}");
    let verified: usize = dom
        .split("data-verified=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{dom}"));
    assert!(verified > 50, "{verified} verified columns drawn");
    // A wrong at= is refused, naming the message's instant.
    let wrong = with_at.replace(
        &enc(book["last_message_at"].as_str().unwrap()),
        &enc(&r.first.add_nanos(3_000_000_000).to_string()),
    );
    let (status, v) = ask(&fresh, &wrong).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["param"], "at", "{v}");
    drop(fresh);

    // `reset` empties the catalog and says where the files stay.
    let parquet = files_named(&cold, ".parquet");
    assert!(parquet > 0);
    let out = stdout(&kb(&r.db.url, &["reset", "--yes"]), "reset");
    assert!(
        out.contains("krakenbook_archive")
            && out.contains(cold.canonicalize().unwrap().to_str().unwrap())
            && out.contains("left"),
        "{out}"
    );
    assert_eq!(archived_parts(&r.db.url).await, 0);
    assert_eq!(
        files_named(&cold, ".parquet"),
        parquet,
        "no file deleted unasked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_mount_reads_an_archived_window_once_and_nothing_for_a_window_before_it() {
    let r = record().await;
    let cold = r.dir.path().join("cold");
    let archive_end = archive_older_half(&r, &cold).await;
    let client = connect(&r.db.url).await;
    let mut lazy = krakenbook::archive::LazyMount::open(&client).await.unwrap();
    assert_eq!(lazy.archived_range().unwrap().1, archive_end);
    client
        .batch_execute("SET default_transaction_read_only = on")
        .await
        .unwrap();
    let at = r.first.add_nanos(6_000_000_000);
    let first = lazy.ensure(&client, "BTC/USD", &[(at, at)]).await.unwrap();
    assert!(first.files > 0 && first.book_rows > 0, "{first:?}");
    let again = lazy.ensure(&client, "BTC/USD", &[(at, at)]).await.unwrap();
    assert_eq!(
        again,
        Default::default(),
        "a window loaded is not read again"
    );
    let earlier = r.first.add_nanos(-60_000_000_000);
    let before = lazy
        .ensure(&client, "BTC/USD", &[(earlier, earlier)])
        .await
        .unwrap();
    assert_eq!(
        before,
        Default::default(),
        "nothing archived before the recording"
    );
    // No row twice: the session's book rows of the window are the database's before archiving,
    // counted by key.
    let dup: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT collector_id, seq FROM krakenbook_book
                GROUP BY collector_id, seq HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dup, 0);
    // A heatmap's worth of windows already loaded: nothing read, and the time it takes.
    let windows: Vec<(Timestamp, Timestamp)> = (0..100)
        .map(|i| {
            let t = at.add_nanos(-i * 10_000_000);
            (t, t)
        })
        .collect();
    lazy.ensure(&client, "BTC/USD", &windows).await.unwrap();
    let timed = std::time::Instant::now();
    let again = lazy.ensure(&client, "BTC/USD", &windows).await.unwrap();
    assert_eq!(again.files, 0);
    println!(
        "100 windows loaded already: ensure took {} ms",
        timed.elapsed().as_millis()
    );
    assert!(!lazy.changed(&client).await.unwrap());
    assert_eq!(lazy.rows_loaded(), first.book_rows + first.other_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_archive_directory_or_a_deleted_file_gives_every_read_a_one_line_error_naming_it() {
    let r = record().await;
    let cold = r.dir.path().join("cold");
    archive_older_half(&r, &cold).await;
    let shown = cold.canonicalize().unwrap().to_str().unwrap().to_owned();
    let url = r.db.url.clone();
    let at = r.first.add_nanos(6_000_000_000).to_string();
    let (from, to) = (
        r.first.add_nanos(1_000_000_000).to_string(),
        r.last.to_string(),
    );
    let png = r.dir.path().join("plot.png");
    let csv = r.dir.path().join("export.csv");
    let addr = crate::collect::free_addr().to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["book", "BTC/USD", "--at", &at],
        vec!["query", "--coverage"],
        vec![
            "export",
            "--symbol",
            "BTC/USD",
            "--from",
            &from,
            "--to",
            &to,
            "-q",
            "-o",
            csv.to_str().unwrap(),
        ],
        vec![
            "replay", "--verify", "--from", &from, "--to", &to, "--quiet",
        ],
        vec!["replay", "--serve", &addr, "--from", &from, "--speed", "0"],
        vec![
            "plot",
            "BTC/USD",
            "--from",
            &from,
            "--to",
            &to,
            "-o",
            png.to_str().unwrap(),
            "-q",
        ],
        vec!["serve", "--listen", "127.0.0.1:0"],
    ];
    let check = |args: &[&str], needle: &str| {
        let out = kb(&url, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded: {err}");
        assert!(
            err.contains(needle)
                && err.contains(&shown)
                && err.contains("put the archive's files back"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    };

    // The directory moved away.
    let moved = r.dir.path().join("moved");
    std::fs::rename(&cold, &moved).unwrap();
    for args in &commands {
        check(args, "it is gone");
    }
    std::fs::rename(&moved, &cold).unwrap();

    // One book file of the part holding `at` deleted: the reads that need it say which.
    let rel: String = connect(&url)
        .await
        .query_one(
            "SELECT f->>'path' FROM krakenbook_archive, jsonb_array_elements(manifest) f
              WHERE f->>'dataset' = 'book' AND f->>'symbol' = 'BTC/USD'
                AND range_start <= $1::text::timestamptz AND range_end > $1::text::timestamptz",
            &[&at],
        )
        .await
        .unwrap()
        .get(0);
    let file = cold.join(&rel);
    let aside = r.dir.path().join("aside.parquet");
    std::fs::rename(&file, &aside).unwrap();
    check(&["book", "BTC/USD", "--at", &at], &rel);
    // The explorer starts (coverage reads no book file) and its book answer is a 503 that says so.
    let serve = Serve::start(&url, &[]);
    let (status, v) = get(
        serve.addr,
        &book_path("BTC/USD", Timestamp::parse(&at).unwrap()),
    )
    .await;
    assert_eq!(status, 503, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains(&rel) && e.contains(&shown) && e.contains("put the archive's files back"),
        "{e}"
    );
    drop(serve);
    std::fs::rename(&aside, &file).unwrap();
    stdout(
        &kb(&url, &["book", "BTC/USD", "--at", &at]),
        "book with the file back",
    );

    // `reset --delete-archive-files` deletes exactly the catalog's files.
    let parquet = files_named(&cold, ".parquet");
    let out = stdout(
        &kb(&url, &["reset", "--yes", "--delete-archive-files"]),
        "reset --delete-archive-files",
    );
    assert!(
        out.contains(&format!(
            "deleted {parquet} of the archive's {parquet} files"
        )),
        "{out}"
    );
    assert_eq!(files_named(&cold, ".parquet"), 0);
    assert_eq!(archived_parts(&url).await, 0);
}
