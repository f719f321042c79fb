//! The benchmarks' binary, run as a user runs it (moved from the root package's end-to-end tests
//! with the benchmarks themselves).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use krakenbook_testkit::TempCluster;

/// The repository root: the benchmarks' default paths (`tests/fixtures/kraken-v2`) are relative
/// to it.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bench() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_krakenbook-bench"));
    cmd.current_dir(repo());
    cmd
}

fn run(args: &[&str]) -> Output {
    bench().args(args).output().expect("krakenbook-bench runs")
}

#[tokio::test]
async fn bench_ingest_prints_both_rates_and_their_ratio() {
    let cluster = TempCluster::new().unwrap();
    let url = cluster.create_database().await.unwrap();
    let out = run(&[
        "ingest",
        "--database-url",
        &url,
        "--messages",
        "3000",
        "--rounds",
        "1",
        "--batch",
        "500",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3000 BTC/USD book messages"), "{stdout}");
    assert!(stdout.contains("writer ("), "{stdout}");
    assert!(stdout.contains("plain binary COPY"), "{stdout}");
    let ratio: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ratio writer/COPY: "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(ratio > 0.0 && ratio.is_finite(), "{stdout}");
    // The scratch database is gone afterwards.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'krakenbook_bench_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[test]
fn a_killed_process_does_not_leave_its_cluster_running() {
    // `krakenbook-bench ingest` without a database starts a throwaway cluster of its own.
    let mut child = bench()
        .args(["ingest", "--messages", "50000", "--rounds", "20"])
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let dir = Path::new("/tmp").join(format!("krakenbook-pg-{}-0", child.id()));
    let alt = std::env::temp_dir().join(format!("krakenbook-pg-{}-0", child.id()));
    let pid_file = |d: &Path| d.join("data/postmaster.pid");
    let mut postmaster = None;
    for _ in 0..1200 {
        for d in [&dir, &alt] {
            if let Ok(text) = std::fs::read_to_string(pid_file(d))
                && text.lines().count() >= 8
            {
                postmaster = text
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse::<u32>().ok());
            }
        }
        if postmaster.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let postmaster = postmaster.expect("the bench's cluster started");
    assert!(Path::new(&format!("/proc/{postmaster}")).exists());
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    let mut gone = false;
    for _ in 0..300 {
        let running = std::fs::read_to_string(format!("/proc/{postmaster}/stat"))
            .is_ok_and(|s| !s.contains(") Z "));
        if !running && !dir.exists() && !alt.exists() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        gone,
        "postgres {postmaster} or its directory outlived the process"
    );
}
