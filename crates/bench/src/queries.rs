//! `krakenbook-bench storage --queries`: the original tool's README queries (and this README's)
//! timed through the compatibility views against the same rows in the layout before schema 6.
//!
//! Issue 13 asks that the original README's queries keep working unmodified and fast: an index
//! scan where one applies, within 2× of the time the older layout takes on the same data. The older
//! layout is rebuilt here, in a schema of its own (`krakenbook_bench_v5`), from what the views
//! show: the two hypertables of schema 5 with the chunk interval of `krakenbook_book` and the
//! indexes migration 0001 made, filled in received order and analysed. Each query then runs with
//! `search_path` set to one layout or the other: one warm-up, then the median of at least five
//! runs and at least [`TIMED_FOR`] of them, timed on the client, every row fetched as text (as
//! psql does): a query of a fraction of a millisecond runs hundreds of times, so that a moment
//! of load on a shared machine moves its median little. Each query's plan on the views is
//! summarised by its scan nodes, so "an index scan" is read off the output, not assumed. The
//! load average is printed before and after (on a shared machine, ratios measured under load
//! are wider).
//!
//! The schema is dropped at the end, so a database given with `--database-url` is left as found
//! (it needs room for a second copy of its rows while the benchmark runs).

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_postgres::{Client, SimpleQueryMessage};

use krakenbook::time::Timestamp;

/// The schema the older layout is rebuilt in.
const OLD: &str = "krakenbook_bench_v5";

/// How long each query is run for, at least, in each layout (after its warm-up).
const TIMED_FOR: Duration = Duration::from_millis(300);

/// The most runs of one query in one layout.
const MAX_RUNS: usize = 2_000;

/// One query of the table: its label and text (`{S}` the symbol, `{T0}`/`{T1}` instants).
struct Query {
    label: &'static str,
    sql: &'static str,
}

/// The original README's queries (Q1 to Q7, `BTC/USD` replaced by a recorded symbol), this
/// README's examples (Q8 to Q10) and a symbol's latest messages (Q11).
const QUERIES: [Query; 11] = [
    Query {
        label: "Q1 COUNT(*) messages",
        sql: "SELECT COUNT(*) FROM kraken_orderbook_messages;",
    },
    Query {
        label: "Q2 COUNT(*) entries",
        sql: "SELECT COUNT(*) FROM kraken_orderbook_entries;",
    },
    Query {
        label: "Q3 messages ORDER BY timestamp DESC LIMIT 5",
        sql: "SELECT * FROM kraken_orderbook_messages ORDER BY timestamp DESC LIMIT 5;",
    },
    Query {
        label: "Q4 entries ORDER BY timestamp DESC LIMIT 10",
        sql: "SELECT * FROM kraken_orderbook_entries ORDER BY timestamp DESC LIMIT 10;",
    },
    Query {
        label: "Q5 DISTINCT symbol",
        sql: "SELECT DISTINCT symbol FROM kraken_orderbook_messages;",
    },
    Query {
        label: "Q6 count, distinct symbols, min, max",
        sql: "SELECT COUNT(*) as total_messages, COUNT(DISTINCT symbol) as unique_symbols, MIN(timestamp) as first_message, MAX(timestamp) as last_message FROM kraken_orderbook_messages;",
    },
    Query {
        label: "Q7 jsonb_pretty(raw_message) LIMIT 1",
        sql: "SELECT jsonb_pretty(raw_message) FROM kraken_orderbook_messages LIMIT 1;",
    },
    Query {
        label: "Q8 entries of a symbol ORDER BY timestamp DESC",
        sql: "SELECT * FROM kraken_orderbook_entries WHERE symbol = '{S}' ORDER BY timestamp DESC;",
    },
    Query {
        label: "Q9 latest snapshot of a symbol before T",
        sql: "SELECT collector, seq, timestamp FROM kraken_orderbook_messages WHERE symbol = '{S}' AND message_type = 'snapshot' AND timestamp <= '{T1}' ORDER BY timestamp DESC LIMIT 1;",
    },
    Query {
        label: "Q10 entries of a symbol in 30 s by seq",
        sql: "SELECT seq, ordinal, side, price, quantity FROM kraken_orderbook_entries WHERE symbol = '{S}' AND timestamp BETWEEN '{T0}' AND '{T1}' ORDER BY collector, seq, ordinal;",
    },
    Query {
        label: "Q11 messages of a symbol, latest 10",
        sql: "SELECT * FROM kraken_orderbook_messages WHERE symbol = '{S}' ORDER BY timestamp DESC LIMIT 10;",
    },
];

/// Rebuilds the older layout beside the views, times every query in both, prints the table and
/// drops the older layout again.
pub(crate) async fn run(client: &Client) -> anyhow::Result<()> {
    let (symbol, t0, t1) = instants(client).await?;
    println!();
    println!(
        "README queries: the views (schema 6) against the same rows in the layout before it \
         (schema 5, rebuilt in {OLD}); symbol {symbol}, T0 {t0}, T1 {t1}"
    );
    let built = Instant::now();
    let result = async {
        build_old_layout(client).await?;
        println!(
            "  (schema 5 rebuilt from the views in {:.1} s; medians of at least 5 runs and {} ms of runs after a warm-up, client-side, rows fetched; load average {})",
            built.elapsed().as_secs_f64(),
            TIMED_FOR.as_millis(),
            load_average()
        );
        println!(
            "  {:<48} {:>10} {:>10} {:>7}  plan on the views",
            "query", "schema 5", "views", "ratio"
        );
        for q in &QUERIES {
            let sql = q
                .sql
                .replace("{S}", &symbol)
                .replace("{T0}", &t0.to_string())
                .replace("{T1}", &t1.to_string());
            let old = time_query(client, &format!("{OLD}, public"), &sql).await?;
            let new = time_query(client, "public", &sql).await?;
            let plan = plan_summary(client, &sql).await?;
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "  {:<48} {:>7.3} ms {:>7.3} ms {:>6.2}x  {plan}",
                q.label,
                ms(old),
                ms(new),
                ms(new) / ms(old).max(1e-6)
            );
        }
        println!("  (load average {})", load_average());
        anyhow::Ok(())
    }
    .await;
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {OLD} CASCADE"))
        .await
        .context("dropping the rebuilt schema-5 tables")?;
    result
}

/// The recorded symbol with the most book messages, and a 30-second window ending 5 s before the
/// recording's last book message.
async fn instants(client: &Client) -> anyhow::Result<(String, Timestamp, Timestamp)> {
    let row = client
        .query_one(
            "SELECT symbol, max(\"timestamp\") FROM krakenbook_book
              GROUP BY symbol ORDER BY count(*) DESC, symbol LIMIT 1",
            &[],
        )
        .await
        .context("finding the busiest recorded symbol (is the database empty?)")?;
    let last: Timestamp = row.get(1);
    let t1 = last.add_nanos(-5_000_000_000);
    Ok((row.get(0), t1.add_nanos(-30_000_000_000), t1))
}

/// Schema 5's two tables, hypertables with `krakenbook_book`'s chunk interval and migration
/// 0001's indexes, filled from the views in received order.
async fn build_old_layout(client: &Client) -> anyhow::Result<()> {
    let interval: String = client
        .query_one(
            "SELECT coalesce(time_interval::text, '7 days')
               FROM timescaledb_information.dimensions
              WHERE hypertable_schema = 'public' AND hypertable_name = 'krakenbook_book'",
            &[],
        )
        .await
        .context("reading krakenbook_book's chunk interval")?
        .get(0);
    client
        .batch_execute(&format!(
            "SET client_min_messages = warning;
             DROP SCHEMA IF EXISTS {OLD} CASCADE;
             CREATE SCHEMA {OLD};
             CREATE TABLE {OLD}.kraken_orderbook_messages (LIKE public.kraken_orderbook_messages);
             CREATE TABLE {OLD}.kraken_orderbook_entries (LIKE public.kraken_orderbook_entries);
             SELECT create_hypertable('{OLD}.kraken_orderbook_messages', 'timestamp',
                                      chunk_time_interval => interval '{interval}');
             SELECT create_hypertable('{OLD}.kraken_orderbook_entries', 'timestamp',
                                      chunk_time_interval => interval '{interval}');
             CREATE INDEX ON {OLD}.kraken_orderbook_messages (symbol, \"timestamp\" DESC);
             CREATE INDEX ON {OLD}.kraken_orderbook_messages (symbol, \"timestamp\" DESC)
                 WHERE message_type = 'snapshot';
             CREATE INDEX ON {OLD}.kraken_orderbook_messages (collector, seq);
             CREATE INDEX ON {OLD}.kraken_orderbook_entries (symbol, \"timestamp\" DESC);
             INSERT INTO {OLD}.kraken_orderbook_messages
                 SELECT * FROM public.kraken_orderbook_messages ORDER BY collector, seq;
             INSERT INTO {OLD}.kraken_orderbook_entries
                 SELECT * FROM public.kraken_orderbook_entries ORDER BY collector, seq, ordinal;
             RESET client_min_messages;"
        ))
        .await
        .context("rebuilding the schema-5 tables from the views")?;
    // VACUUM cannot run in the implicit transaction of a multi-statement query.
    for table in [
        format!("{OLD}.kraken_orderbook_messages"),
        format!("{OLD}.kraken_orderbook_entries"),
        "krakenbook_book".to_owned(),
        "krakenbook_other".to_owned(),
    ] {
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .with_context(|| format!("vacuuming {table}"))?;
    }
    Ok(())
}

/// The median of the runs of `sql` under `search_path` after one warm-up: at least five, and as
/// many as fit in [`TIMED_FOR`] (at most [`MAX_RUNS`]).
async fn time_query(client: &Client, search_path: &str, sql: &str) -> anyhow::Result<Duration> {
    client
        .batch_execute(&format!(
            "SET search_path = {search_path}; SET TimeZone = 'UTC'"
        ))
        .await?;
    let mut times = Vec::with_capacity(64);
    let mut spent = Duration::ZERO;
    for run in 0.. {
        if run > 5 && (spent >= TIMED_FOR || times.len() >= MAX_RUNS) {
            break;
        }
        let start = Instant::now();
        let rows = client
            .simple_query(sql)
            .await
            .with_context(|| format!("running {sql}"))?;
        let elapsed = start.elapsed();
        anyhow::ensure!(
            rows.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))),
            "{sql} returned no row"
        );
        if run > 0 {
            times.push(elapsed);
            spent += elapsed;
        }
    }
    client.batch_execute("RESET search_path").await?;
    times.sort();
    Ok(times[times.len() / 2])
}

/// The machine's load averages over 1, 5 and 15 minutes (`/proc/loadavg`), or `?` where there
/// is none.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned())
}

/// The plan's scan and sort nodes on the views, counted: e.g. `Index Scan Backward x3; Sort`.
async fn plan_summary(client: &Client, sql: &str) -> anyhow::Result<String> {
    let rows = client
        .simple_query(&format!("EXPLAIN {sql}"))
        .await
        .with_context(|| format!("explaining {sql}"))?;
    let mut nodes: Vec<(String, usize)> = Vec::new();
    for m in rows {
        let SimpleQueryMessage::Row(row) = m else {
            continue;
        };
        let line = row.get(0).unwrap_or_default();
        let Some(node) = scan_node(line) else {
            continue;
        };
        match nodes.iter_mut().find(|(n, _)| *n == node) {
            Some((_, c)) => *c += 1,
            None => nodes.push((node, 1)),
        }
    }
    Ok(nodes
        .iter()
        .map(|(n, c)| {
            if *c > 1 {
                format!("{n} x{c}")
            } else {
                n.clone()
            }
        })
        .collect::<Vec<_>>()
        .join("; "))
}

/// The scan or sort node a line of `EXPLAIN` names, if any (`Index Scan Backward`,
/// `Seq Scan`, `Function Scan`, `Sort`, ...), without its relation.
fn scan_node(line: &str) -> Option<String> {
    let node = line.trim_start().trim_start_matches("->").trim_start();
    let node = node.split("  (").next()?;
    let node = node
        .split(" using ")
        .next()?
        .split(" on ")
        .next()?
        .trim()
        .to_owned();
    let wanted = ["Scan", "Sort"];
    (wanted
        .iter()
        .any(|w| node.ends_with(w) || node.contains(&format!("{w} ")))
        && !node.starts_with("Subquery")
        && !node.contains(':'))
    .then_some(node)
}

#[cfg(test)]
mod tests {
    use super::scan_node;

    #[test]
    fn scan_nodes_are_read_without_their_relations_and_costs() {
        let lines = [
            (
                "  ->  Index Scan Backward using _hyper_1_2_chunk_krakenbook_book_symbol_idx on _hyper_1_2_chunk b  (cost=0.29..8.31 rows=1 width=8)",
                Some("Index Scan Backward"),
            ),
            (
                "Seq Scan on krakenbook_other  (cost=0.00..1.01 rows=1 width=0)",
                Some("Seq Scan"),
            ),
            (
                "        ->  Function Scan on unnest u  (cost=0.00..0.13 rows=5 width=16)",
                Some("Function Scan"),
            ),
            ("  ->  Sort  (cost=1.02..1.03 rows=1 width=8)", Some("Sort")),
            (
                "  ->  Index Only Scan using x on y  (cost=0.1..1 rows=1 width=8)",
                Some("Index Only Scan"),
            ),
            ("Limit  (cost=0.71..1.04 rows=5 width=300)", None),
            ("        Sort Key: b.\"timestamp\" DESC", None),
            (
                "  ->  Merge Append  (cost=0.71..1.04 rows=5 width=300)",
                None,
            ),
        ];
        for (line, want) in lines {
            assert_eq!(scan_node(line).as_deref(), want, "{line}");
        }
    }
}
