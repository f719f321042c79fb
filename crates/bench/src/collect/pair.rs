//! `krakenbook-bench collect --compare-redundancy A,B [--rounds K]`: what redundancy costs, as a
//! ratio measured within one window.
//!
//! Two single runs back to back do not show a ratio on a machine shared with other work: the
//! same collector's CPU moves by up to 1.7× from one run to the next. Here two collectors, one at
//! `--redundancy A` and one at `--redundancy B`, record the same simulated market (one simulator,
//! one rate) at the same time, each with its own journal and its own fresh database in one
//! throwaway cluster (journal only with `--journal-only`), and are read over the same window:
//! whatever the neighbours do lands on both. Each round starts fresh collectors and fresh
//! databases; the collector started first alternates between rounds so neither is always the one
//! that connects first. A round prints both collectors' figures (CPU as a share of one core and
//! per verified book message, split into feed, journal and db threads) and B's CPU over A's;
//! the end prints every round's ratio with their median, min and max.
//!
//! The window's length matters as much as its sharing: a collector's journal compresses each
//! closed segment (256 MiB) with zstd, a lump of CPU (about 0.8 s at depth 1000) once a segment,
//! so a window shorter than a few segments' time catches or misses lumps at random (each line
//! prints the segments closed in it); `--measure` several times the N = 1 segment time (about
//! 90 s at 100 pairs × 100 msg/s) counts them in proportion.
//!
//! What must hold: both windows are taken between readings made back to back (start readings
//! together, end readings together, in the same order), so their lengths differ by microseconds;
//! the ratio is of CPU seconds over those windows (equal to the ratio of shares of a core).

use std::process::ExitCode;

use anyhow::{Context, bail};

use krakenbook_testkit::TempCluster;

use super::{BenchCollectArgs, Collector, Market, Part, Window, peak_rss_bytes, throwaway_cluster};

/// Two different `--redundancy` values to compare: the ratio is `other` over `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedundancyPair {
    /// The first value given: the ratio's denominator.
    pub base: u32,
    /// The second value given.
    pub other: u32,
}

impl RedundancyPair {
    /// Which value's collector starts first in round `round` (from 0): the base in even rounds,
    /// the other in odd ones.
    fn start_order(self, round: u32) -> [u32; 2] {
        if round.is_multiple_of(2) {
            [self.base, self.other]
        } else {
            [self.other, self.base]
        }
    }
}

/// Parses `--compare-redundancy`: two different values from 1 to 4, comma-separated.
pub(crate) fn redundancy_pair(text: &str) -> Result<RedundancyPair, String> {
    let values: Vec<&str> = text.split(',').map(str::trim).collect();
    let [base, other] = values.as_slice() else {
        return Err(format!(
            "{text:?}: give two --redundancy values to compare, comma-separated (say 1,2)"
        ));
    };
    let parse = |v: &str| match v.parse::<u32>() {
        Ok(n @ 1..=4) => Ok(n),
        _ => Err(format!("{text:?}: {v:?} is not a redundancy from 1 to 4")),
    };
    let (base, other) = (parse(base)?, parse(other)?);
    if base == other {
        return Err(format!(
            "{text:?}: the two values are the same; give two different ones (say 1,2)"
        ));
    }
    Ok(RedundancyPair { base, other })
}

/// The median, least and greatest of some figures.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    /// Over the finite values (a ratio whose base was zero is left out); `None` when there are
    /// none. An even count's median is the mean of the middle two.
    fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let (&min, &max) = (v.first()?, v.last()?);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Spread { median, min, max })
    }
}

/// `other / base`, or NaN (left out of a [`Spread`], printed as "n/a") when `base` is not
/// positive.
fn ratio(other: f64, base: f64) -> f64 {
    if base > 0.0 { other / base } else { f64::NAN }
}

/// One round's two windows.
#[derive(Debug, Clone)]
struct Round {
    /// The redundancy whose collector started first.
    first: u32,
    base: Window,
    other: Window,
}

/// The ratios of one round: CPU (every thread, then each part), per verified message, and
/// verified messages.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ratios {
    cpu: f64,
    parts: [f64; 4],
    per_message: f64,
    messages: f64,
}

impl Ratios {
    fn of(base: &Window, other: &Window) -> Ratios {
        Ratios {
            cpu: ratio(other.core_share(), base.core_share()),
            parts: Part::ALL
                .map(|p| ratio(other.part_cpu(p) / other.wall, base.part_cpu(p) / base.wall)),
            per_message: ratio(other.micros_per_message(), base.micros_per_message()),
            messages: ratio(other.ok / other.wall, base.ok / base.wall),
        }
    }
}

/// Runs the paired measurement.
pub(super) async fn run(args: &BenchCollectArgs, pair: RedundancyPair) -> anyhow::Result<ExitCode> {
    let cluster = if args.journal_only {
        None
    } else {
        Some(throwaway_cluster().await?)
    };
    let market = Market::start(args).await?;
    eprintln!(
        "bench collect: --redundancy {} and {} side by side, {} round(s); {} pairs at depth {}, {} events/s offered ({} per pair), warm-up {:?}, measuring {:?}{}",
        pair.base,
        pair.other,
        args.rounds,
        args.pairs,
        args.depth,
        args.pairs as f64 * args.rate,
        args.rate,
        args.warmup,
        args.measure,
        if cluster.is_some() {
            ", each into its own TimescaleDB database"
        } else {
            ", journal only"
        }
    );
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        let load_before = load_average();
        let round = measure_round(args, &market, cluster.as_ref(), pair, r).await;
        let round = match round {
            Ok(round) => round,
            Err(e) => {
                let _ = market.sim.shutdown().await;
                return Err(e.context(format!("round {} of {}", r + 1, args.rounds)));
            }
        };
        println!(
            "round {} of {} (--redundancy {} started first; load average {} before, {} after):",
            r + 1,
            args.rounds,
            round.first,
            load_before.unwrap_or_else(|| "n/a".into()),
            load_average().unwrap_or_else(|| "n/a".into()),
        );
        print_round(pair, &round, cluster.is_some());
        rounds.push(round);
    }
    market.sim.shutdown().await?;
    drop(cluster);
    print_summary(pair, &rounds);
    let mismatches: f64 = rounds
        .iter()
        .map(|r| r.base.mismatches + r.other.mismatches)
        .sum();
    Ok(if mismatches == 0.0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Starts a fresh collector at each value of `pair` (in this round's order), waits out the
/// warm-up and the databases' catching up, reads both over the same window, and stops them.
async fn measure_round(
    args: &BenchCollectArgs,
    market: &Market,
    cluster: Option<&TempCluster>,
    pair: RedundancyPair,
    round: u32,
) -> anyhow::Result<Round> {
    let order = pair.start_order(round);
    let work = tempfile::tempdir().context("creating a scratch directory")?;
    let mut databases = Vec::new();
    let mut collectors = Vec::new();
    for n in order {
        let db_url = match cluster {
            Some(c) => Some(c.create_database().await?),
            None => None,
        };
        let journal = work.path().join(format!("journal-redundancy-{n}"));
        collectors.push(Collector::spawn(args, market, n, &journal, db_url.as_deref()).await?);
        databases.extend(db_url);
    }
    tokio::time::sleep(args.warmup).await;
    for c in &collectors {
        c.wait_caught_up().await?;
    }
    let mut starts = Vec::new();
    for c in &collectors {
        starts.push(c.reading().await?);
    }
    tokio::time::sleep(args.measure).await;
    let mut ends = Vec::new();
    for c in &collectors {
        ends.push(c.reading().await?);
    }
    let mut windows = Vec::new();
    for ((c, start), end) in collectors.iter().zip(&starts).zip(&ends) {
        windows.push(Window::between(start, end, peak_rss_bytes(c.pid)?));
    }
    let mut stopped = Vec::new();
    for c in collectors {
        stopped.push(tokio::spawn(c.stop()));
    }
    for s in stopped {
        s.await.context("stopping a collector")??;
    }
    if let Some(c) = cluster {
        for url in &databases {
            drop_database(c, url).await?;
        }
    }
    let [first, second]: [Window; 2] = windows
        .try_into()
        .map_err(|_| anyhow::anyhow!("expected two windows"))?;
    let (base, other) = if order[0] == pair.base {
        (first, second)
    } else {
        (second, first)
    };
    Ok(Round {
        first: order[0],
        base,
        other,
    })
}

/// Drops a round's database so rounds do not fill the disk.
async fn drop_database(cluster: &TempCluster, url: &str) -> anyhow::Result<()> {
    let Some(name) = database_name(url) else {
        bail!("no database name in {url}");
    };
    let (client, connection) =
        tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls)
            .await
            .context("connecting to the throwaway cluster")?;
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP DATABASE {name}"))
        .await
        .with_context(|| format!("dropping database {name}"))?;
    drop(client);
    let _ = connection.await;
    Ok(())
}

/// The database named by a `postgres://…/NAME?…` URL.
fn database_name(url: &str) -> Option<&str> {
    let path = url.split('?').next()?;
    let name = path.rsplit_once('/')?.1;
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then_some(name)
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn times(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "n/a".into()
    }
}

fn print_round(pair: RedundancyPair, round: &Round, has_db: bool) {
    for (n, w) in [(pair.base, &round.base), (pair.other, &round.other)] {
        // A part with no thread (the db when journal only) is left out.
        let parts: Vec<String> = Part::ALL
            .iter()
            .filter(|&&p| w.part_cpu(p) > 0.0)
            .map(|&p| format!("{} {:.2}%", p.label(), 100.0 * w.part_cpu(p) / w.wall))
            .collect();
        let latency = if has_db {
            match (
                krakenbook::metrics::histogram_quantile(0.5, &w.latency),
                krakenbook::metrics::histogram_quantile(0.99, &w.latency),
            ) {
                (Some(p50), Some(p99)) => format!(
                    ", receive → committed p50 {:.0} ms, p99 {:.0} ms",
                    p50 * 1e3,
                    p99 * 1e3
                ),
                _ => ", no commits in the window".into(),
            }
        } else {
            String::new()
        };
        println!(
            "  --redundancy {n}: {:.2}% of one core, {:.2} µs per verified book message ({}); {:.0} frames/s, {:.0} verified book messages/s; journal {:.1} MB/s, {} segment(s) closed; peak RSS {:.1} MB; {} checksum mismatches{latency}",
            100.0 * w.core_share(),
            w.micros_per_message(),
            parts.join(", "),
            w.frames / w.wall,
            w.ok / w.wall,
            w.journal_bytes / w.wall / 1e6,
            w.rotations,
            w.peak_rss as f64 / 1e6,
            w.mismatches,
        );
    }
    let r = Ratios::of(&round.base, &round.other);
    let parts: Vec<String> = Part::ALL
        .iter()
        .zip(r.parts)
        .map(|(p, x)| format!("{} {}", p.label(), times(x)))
        .collect();
    println!(
        "  --redundancy {} / {}: CPU {} ({}); per verified message {}; verified messages {}",
        pair.other,
        pair.base,
        times(r.cpu),
        parts.join(", "),
        times(r.per_message),
        times(r.messages),
    );
}

fn print_summary(pair: RedundancyPair, rounds: &[Round]) {
    let ratios: Vec<Ratios> = rounds
        .iter()
        .map(|r| Ratios::of(&r.base, &r.other))
        .collect();
    let spread = |values: Vec<f64>| match Spread::of(&values) {
        Some(s) => format!(
            "median {}, min {}, max {}",
            times(s.median),
            times(s.min),
            times(s.max)
        ),
        None => "n/a".into(),
    };
    let cpu: Vec<f64> = ratios.iter().map(|r| r.cpu).collect();
    println!();
    println!(
        "CPU of --redundancy {} over --redundancy {}, {} round(s): {}",
        pair.other,
        pair.base,
        rounds.len(),
        cpu.iter().map(|&x| times(x)).collect::<Vec<_>>().join(" ")
    );
    println!("  all threads: {}", spread(cpu.clone()));
    for (i, part) in Part::ALL.iter().enumerate() {
        println!(
            "  {:<11} {}",
            format!("{}:", part.label()),
            spread(ratios.iter().map(|r| r.parts[i]).collect())
        );
    }
    println!(
        "  per verified book message: {}",
        spread(ratios.iter().map(|r| r.per_message).collect())
    );
    if (pair.base, pair.other) == (1, 2)
        && let Some(s) = Spread::of(&cpu)
    {
        println!(
            "issue 12's goal (N = 2 at most 1.6 times N = 1): median {}, {}",
            times(s.median),
            match (s.median <= 1.6, s.max <= 1.6) {
                (true, true) => "met in every round",
                (true, false) => "met by the median, not in every round",
                (false, _) => "missed by the median",
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchCollectArgs,
    }

    fn parse(line: &[&str]) -> Result<BenchCollectArgs, String> {
        Cli::try_parse_from(std::iter::once("collect").chain(line.iter().copied()))
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn compare_redundancy_takes_two_different_values_from_1_to_4() {
        type Case<'a> = (&'a str, Result<(u32, u32), &'a str>);
        let cases: &[Case] = &[
            ("1,2", Ok((1, 2))),
            ("2,1", Ok((2, 1))),
            (" 1 , 4 ", Ok((1, 4))),
            ("1", Err("give two --redundancy values")),
            ("1,2,3", Err("give two --redundancy values")),
            ("2,2", Err("the two values are the same")),
            ("0,2", Err("\"0\" is not a redundancy from 1 to 4")),
            ("1,5", Err("\"5\" is not a redundancy from 1 to 4")),
            ("1,x", Err("\"x\" is not a redundancy from 1 to 4")),
            ("", Err("give two --redundancy values")),
        ];
        for (text, want) in cases {
            let got = redundancy_pair(text);
            match (want, &got) {
                (Ok((base, other)), Ok(p)) => {
                    assert_eq!((p.base, p.other), (*base, *other), "{text:?}")
                }
                (Err(needle), Err(message)) => {
                    assert!(message.contains(needle), "{text:?}: {message}")
                }
                _ => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn compare_redundancy_and_rounds_parse_from_the_command_line() {
        let a = parse(&["--compare-redundancy", "1,2", "--rounds", "5"]).expect("parses");
        assert_eq!(
            a.compare_redundancy,
            Some(RedundancyPair { base: 1, other: 2 })
        );
        assert_eq!(a.rounds, 5);
        let a = parse(&["--compare-redundancy", "1,2", "--journal-only"]).expect("parses");
        assert_eq!(a.rounds, 1);
        assert!(a.journal_only);
    }

    #[test]
    fn the_single_collector_mode_is_unchanged_without_compare_redundancy() {
        let a = parse(&["--redundancy", "2", "--pairs", "100"]).expect("parses");
        assert_eq!(a.compare_redundancy, None);
        assert_eq!((a.redundancy, a.rounds, a.pairs), (2, 1, 100));
        let a = parse(&[]).expect("parses");
        assert_eq!((a.redundancy, a.compare_redundancy), (1, None));
    }

    #[test]
    fn flags_that_make_no_sense_with_compare_redundancy_are_refused() {
        for (line, needle) in [
            (&["--rounds", "3"][..], "--compare-redundancy"),
            (
                &["--compare-redundancy", "1,2", "--redundancy", "2"][..],
                "cannot be used with",
            ),
            (
                &[
                    "--compare-redundancy",
                    "1,2",
                    "--database-url",
                    "postgres://x/y",
                ][..],
                "cannot be used with",
            ),
            (
                &["--compare-redundancy", "1,2", "--rounds", "0"][..],
                "--rounds",
            ),
            (&["--compare-redundancy", "2,2"][..], "the same"),
        ] {
            let e = parse(line).expect_err("refused");
            assert!(e.contains(needle), "{line:?}: {e}");
        }
    }

    #[test]
    fn the_collector_started_first_alternates_between_rounds() {
        let pair = RedundancyPair { base: 1, other: 2 };
        let orders: Vec<[u32; 2]> = (0..4).map(|r| pair.start_order(r)).collect();
        assert_eq!(orders, vec![[1, 2], [2, 1], [1, 2], [2, 1]]);
    }

    #[test]
    fn spread_gives_median_min_and_max_of_the_finite_values() {
        type Case<'a> = (&'a [f64], Option<(f64, f64, f64)>);
        let cases: &[Case] = &[
            (&[], None),
            (&[f64::NAN], None),
            (&[1.5], Some((1.5, 1.5, 1.5))),
            // Odd count: the middle one, whatever the input order.
            (&[1.7, 1.5, 1.6], Some((1.6, 1.5, 1.7))),
            // Even count: the mean of the middle two.
            (&[1.8, 1.5, 1.6, 1.7], Some((1.65, 1.5, 1.8))),
            // A round whose base used no CPU (ratio NaN) is left out.
            (&[1.5, f64::NAN, 1.7], Some((1.6, 1.5, 1.7))),
            (&[2.0, f64::INFINITY, 1.0], Some((1.5, 1.0, 2.0))),
        ];
        for (values, want) in cases {
            let got = Spread::of(values).map(|s| (s.median, s.min, s.max));
            match (got, want) {
                (None, None) => {}
                (Some(g), Some(w)) => {
                    assert!(
                        (g.0 - w.0).abs() < 1e-12 && g.1 == w.1 && g.2 == w.2,
                        "{values:?}: got {g:?}, want {w:?}"
                    )
                }
                _ => panic!("{values:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn window(wall: f64, ok: f64, threads: &[(&str, f64)]) -> Window {
        Window {
            wall,
            frames: ok,
            ok,
            mismatches: 0.0,
            journal_bytes: 0.0,
            rotations: 0.0,
            split: threads
                .iter()
                .map(|&(name, cpu)| super::super::ThreadUse {
                    name: name.into(),
                    cpu,
                    wakeups: 0,
                })
                .collect(),
            ticks_cpu: 0.0,
            peak_rss: 0,
            latency: Vec::new(),
            batches: Vec::new(),
        }
    }

    #[test]
    fn ratios_are_of_cpu_per_second_over_the_window_and_split_by_part() {
        // N = 1: 0.5 s of CPU in 10 s (5%) for 100,000 messages; N = 2 over a window a few
        // microseconds longer: 0.8 s (8%) for 200,000 copies.
        let base = window(
            10.0,
            100_000.0,
            &[("feed", 0.25), ("journal", 0.0625), ("db", 0.1875)],
        );
        let other = window(
            10.0,
            200_000.0,
            &[
                ("feed", 0.375),
                ("feed-blocking", 0.125),
                ("journal", 0.0625),
                ("journal-compress", 0.0625),
                ("db", 0.125),
                ("db-blocking", 0.0),
                ("tokio-rt-worker", 0.05),
            ],
        );
        let r = Ratios::of(&base, &other);
        assert!((r.cpu - 0.8 / 0.5).abs() < 1e-12, "{r:?}");
        assert_eq!(r.parts[0], 2.0, "feed and feed-blocking over feed");
        assert_eq!(r.parts[1], 2.0, "journal and journal-compress over journal");
        assert!((r.parts[2] - 0.125 / 0.1875).abs() < 1e-12, "db");
        assert!(r.parts[3].is_nan(), "no other thread in the base: n/a");
        assert!((r.per_message - 0.8).abs() < 1e-12, "{r:?}");
        assert_eq!(r.messages, 2.0);
    }

    #[test]
    fn threads_are_sorted_into_parts_by_name() {
        for (name, part) in [
            ("feed", Part::Feed),
            ("feed-blocking", Part::Feed),
            ("journal", Part::Journal),
            ("journal-compress", Part::Journal),
            ("db", Part::Db),
            ("db-blocking", Part::Db),
            ("tokio-rt-worker", Part::Other),
            ("krakenbook", Part::Other),
            ("feeder", Part::Other),
        ] {
            assert_eq!(Part::of(name), part, "{name}");
        }
    }

    #[test]
    fn a_round_database_name_is_read_from_its_url() {
        assert_eq!(
            database_name("postgres://postgres@127.0.0.1:5432/krakenbook_3?sslmode=disable"),
            Some("krakenbook_3")
        );
        assert_eq!(database_name("postgres://h/db"), Some("db"));
        assert_eq!(database_name("postgres://h/"), None);
        assert_eq!(database_name("postgres://h/x;DROP"), None);
    }
}
