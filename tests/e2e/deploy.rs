//! The service kit in `deploy/`, checked by the tools that will run it and against a running
//! collector: the systemd unit by `systemd-analyze verify` (and its exposure score by
//! `systemd-analyze security --offline`), the alert rules by `promtool check rules` and their
//! unit tests by `promtool test rules`, the Grafana dashboard's structure and its queries (as
//! PromQL, by promtool), and every metric name the rules and the dashboard use against the
//! `/metrics` of a collector recording from the simulator.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use krakenbook::exchange::Faults;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::collect::{Collector, free_addr, simulator};
use crate::db::fresh_db;

const SYMBOLS: [&str; 3] = ["BTC/USD", "ETH/USD", "MINA/GBP"];

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// Runs a tool, failing with how to install it when it is missing.
fn tool(program: &str, args: &[&str], package: &str) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{program} is needed to check deploy/ ({e}): install Debian's `{package}` package \
                 (./scripts/test does)"
            )
        })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The unit as installed, with `ExecStart` naming the binary under test (verify checks that the
/// program exists and is executable).
fn unit_for_test(dir: &Path) -> PathBuf {
    let unit = read("krakenbook.service");
    let installed = "ExecStart=/usr/local/bin/krakenbook ";
    assert!(
        unit.contains(installed),
        "ExecStart runs /usr/local/bin/krakenbook"
    );
    let path = dir.join("krakenbook.service");
    let exec = format!("ExecStart={} ", env!("CARGO_BIN_EXE_krakenbook"));
    std::fs::write(&path, unit.replace(installed, &exec)).unwrap();
    path
}

#[test]
fn the_service_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let out = tool(
        "systemd-analyze",
        &["verify", unit.to_str().unwrap()],
        "systemd",
    );
    let said = text(&out);
    // Every complaint about the unit names its file; anything else is the host's business.
    assert!(
        out.status.success() && !said.contains("krakenbook.service"),
        "systemd-analyze verify: {said}"
    );
}

/// `systemd-analyze security --offline` (systemd 250 and later) scores the sandbox from 0
/// (locked down) to 10 (unprotected); the unit must stay "OK" (below 2.0).
#[test]
fn the_service_units_exposure_score_stays_low() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let out = tool(
        "systemd-analyze",
        &["security", "--offline=yes", unit.to_str().unwrap()],
        "systemd",
    );
    let said = text(&out);
    if !out.status.success() && said.contains("--offline") {
        eprintln!("this systemd cannot score a unit offline; skipped: {said}");
        return;
    }
    let score: f64 = said
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for krakenbook.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {said}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score < 2.0, "exposure {score}:\n{said}");
}

/// The unit's settings as `key -> values` (a key given several times keeps every value).
fn unit_settings() -> BTreeMap<String, Vec<String>> {
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in read("krakenbook.service").lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with('[') || line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        settings
            .entry(key.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    settings
}

#[test]
fn the_service_unit_is_sandboxed_and_keeps_the_password_off_the_command_line() {
    let s = unit_settings();
    let one = |key: &str| -> &str {
        let values = s.get(key).unwrap_or_else(|| panic!("{key}= missing"));
        values.last().unwrap()
    };
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "krakenbook"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("Restart", "on-failure"),
        ("LimitNOFILE", "65536"),
        ("KillSignal", "SIGTERM"),
        // One capability: the kernel's arrival stamps (see the next test).
        ("CapabilityBoundingSet", "CAP_BPF"),
        ("AmbientCapabilities", "CAP_BPF"),
    ] {
        assert_eq!(one(key), want, "{key}");
    }
    assert!(
        !s.contains_key("PrivateUsers"),
        "a capability in a user namespace of its own does not load a filter"
    );
    assert_eq!(
        s["SystemCallFilter"].last().map(String::as_str),
        Some("bpf")
    );
    assert!(s["SystemCallFilter"].contains(&"@system-service".to_owned()));
    // Write access to the journal directory only: no path is opened for writing beyond the
    // state directory, and the journal lives in it.
    for key in [
        "ReadWritePaths",
        "LogsDirectory",
        "CacheDirectory",
        "RuntimeDirectory",
    ] {
        assert!(!s.contains_key(key), "{key}= gives write access elsewhere");
    }
    let exec = one("ExecStart");
    assert!(
        exec.contains("--journal-dir %S/krakenbook/journal"),
        "{exec}"
    );
    // The password: a credential named by PGPASSFILE; never in ExecStart or the environment.
    assert!(!exec.contains("--database-url"), "{exec}");
    assert!(
        one("LoadCredential").starts_with("pgpass:"),
        "{:?}",
        s["LoadCredential"]
    );
    assert!(
        s["Environment"].contains(&"PGPASSFILE=%d/pgpass".to_owned()),
        "{:?}",
        s["Environment"]
    );
    let all = read("krakenbook.service");
    assert!(!all.contains("PGPASSWORD"), "no password in the unit");
    // Stopping waits longer than the collector's 7 s database grace.
    let stop: u64 = one("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    assert!(stop > 7 + 5, "TimeoutStopSec {stop}");
    assert!(s.contains_key("RestartSec") && s.contains_key("StartLimitBurst"));
}

/// The example settings file is one `collect` accepts, holds no password (the dynamic user could
/// not read a root-only file), and the example password file gives the password for its
/// database URL as libpq would.
#[test]
fn the_example_settings_and_password_files_work_together() {
    let settings = krakenbook::config::CollectFile::load(&deploy("krakenbook.toml"))
        .expect("collect accepts deploy/krakenbook.toml");
    let url = settings.database_url.expect("a database URL");
    assert!(!krakenbook::config::holds_password(&url), "{url}");
    assert!(settings.metrics_listen.is_some());
    let target = krakenbook::store::DbTarget::parse(&url).unwrap();
    let config = target.config();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("{other:?}"),
    };
    let key = krakenbook::store::PassKey {
        host,
        port: config.get_ports()[0].to_string(),
        dbname: config.get_dbname().unwrap().to_owned(),
        user: config.get_user().unwrap().to_owned(),
    };
    assert_eq!(
        krakenbook::store::pgpass_lookup(&read("pgpass.example"), &key).as_deref(),
        Some("change-me")
    );
}

#[test]
fn the_alert_rules_pass_promtool_check_rules() {
    let rules = deploy("prometheus/krakenbook-rules.yml");
    let out = tool(
        "promtool",
        &["check", "rules", rules.to_str().unwrap()],
        "prometheus",
    );
    assert!(out.status.success(), "promtool check rules: {}", text(&out));
}

#[test]
fn the_alert_rules_pass_their_promtool_unit_tests() {
    let tests = deploy("prometheus/krakenbook-rules.test.yml");
    let out = tool(
        "promtool",
        &["test", "rules", tests.to_str().unwrap()],
        "prometheus",
    );
    assert!(out.status.success(), "promtool test rules: {}", text(&out));
}

/// Alert names in the rules file.
fn alert_names() -> Vec<String> {
    read("prometheus/krakenbook-rules.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_alert_has_a_test_where_it_fires_and_one_where_it_does_not() {
    let tests = read("prometheus/krakenbook-rules.test.yml");
    let lines: Vec<&str> = tests.lines().collect();
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((_, rest)) = line.split_once("alertname: ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        if line.contains("exp_alerts: []") {
            silent.insert(name);
        } else if lines
            .get(i + 1..i + 3)
            .is_some_and(|next| next.iter().any(|l| l.contains("- exp_labels:")))
        {
            fires.insert(name);
        }
    }
    let names = alert_names();
    assert!(names.len() >= 15, "{names:?}");
    for name in &names {
        assert!(fires.contains(name), "no test where {name} fires");
        assert!(silent.contains(name), "no test where {name} stays silent");
    }
}

/// The PromQL expressions of the rules file: inline (`expr: ...`) or folded blocks
/// (`expr: >-` and the more indented lines after it).
fn rule_exprs() -> Vec<String> {
    let text = read("prometheus/krakenbook-rules.yml");
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if matches!(value, ">-" | ">" | "|" | "|-") {
            let indent = line.len() - line.trim_start().len();
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.len() - l.trim_start().len() > indent || l.trim().is_empty())
                .map(|l| l.trim())
                .collect();
            exprs.push(block.join(" "));
        } else {
            exprs.push(value.to_owned());
        }
    }
    assert_eq!(exprs.len(), alert_names().len(), "one expr per alert");
    exprs
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/krakenbook.json")).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// The dashboard's PromQL: every target's expression and every query variable's query.
fn dashboard_exprs(d: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = panels(d)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for var in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = var["definition"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    exprs
}

#[test]
fn the_dashboard_is_importable_with_a_datasource_and_a_query_on_every_panel() {
    let d = dashboard();
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=42).contains(&schema), "schemaVersion {schema}");
    assert!(d["id"].is_null(), "an imported dashboard gets its own id");
    assert!(d["uid"].is_string() && d["title"].is_string());
    let uses_input = |ds: &Value| ds["type"] == "prometheus" && ds["uid"] == "${DS_PROMETHEUS}";
    let mut ids = BTreeSet::new();
    let mut queried = 0;
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "{title}: id {id} twice");
        let grid = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(grid[k].is_u64(), "{title}: gridPos.{k}");
        }
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "{title}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(uses_input(&p["datasource"]), "{title}: datasource");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("{title}: no target"));
        for t in targets {
            assert!(uses_input(&t["datasource"]), "{title}: target datasource");
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title}: a target without expr");
            assert!(t["refId"].is_string(), "{title}: refId");
        }
        queried += 1;
    }
    assert!(queried >= 20, "{queried} panels");
    for var in d["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] == "query" {
            assert!(uses_input(&var["datasource"]), "variable {}", var["name"]);
        }
    }
}

/// Each dashboard query, with Grafana's variables given values, is valid PromQL: promtool
/// checks them as recording rules.
#[test]
fn the_dashboard_queries_are_valid_promql() {
    let d = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_exprs(&d).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("$instance", ".*")
            .replace("$symbol", ".*");
        // label_values(...) is Grafana's, not PromQL: check the selector inside it.
        let expr = match expr.strip_prefix("label_values(") {
            Some(rest) => rest.rsplit_once(',').unwrap().0.to_owned(),
            None => expr,
        };
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, &rules).unwrap();
    let out = tool(
        "promtool",
        &["check", "rules", path.to_str().unwrap()],
        "prometheus",
    );
    assert!(out.status.success(), "{}\n{rules}", text(&out));
}

/// The `krakenbook_*` metric names in a PromQL text.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("krakenbook_") {
        let before = rest[..at].chars().next_back();
        let name: String = rest[at..].chars().take_while(|&c| ident(c)).collect();
        if !before.is_some_and(ident) {
            names.insert(name.clone());
        }
        rest = &rest[at + name.len()..];
    }
    names
}

/// Every `krakenbook_*` name the rules and the dashboard use.
fn names_used() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for expr in rule_exprs().iter().chain(&dashboard_exprs(&dashboard())) {
        names.extend(metric_names(expr));
    }
    names
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let expr = r#"histogram_quantile(0.99, sum by (le) (rate(krakenbook_db_commit_latency_seconds_bucket{job="krakenbook"}[5m]))) > 1 and x:krakenbook_rule"#;
    assert_eq!(
        metric_names(expr),
        BTreeSet::from(["krakenbook_db_commit_latency_seconds_bucket".to_owned()])
    );
    let used = names_used();
    for name in [
        "krakenbook_symbol_gap_seconds",
        "krakenbook_journal_disk_free_bytes",
        "krakenbook_journal_segment_bytes",
        "krakenbook_db_lag_seconds",
        "krakenbook_reconnects_total",
        "krakenbook_checksum_mismatch_total",
    ] {
        assert!(used.contains(name), "{name} not found in {used:?}");
    }
}

/// One `GET` of `path`, retried until it answers 200 or `timeout` passes.
async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> String {
    let started = Instant::now();
    loop {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            std::io::Result::Ok(out)
        };
        if let Ok(Ok(body)) = tokio::time::timeout(Duration::from_secs(5), attempt).await
            && body.starts_with("HTTP/1.1 200")
        {
            return body;
        }
        assert!(
            started.elapsed() < timeout,
            "no answer from {addr}{path} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The samples of an exposition: (name, labels as text, value).
fn samples(body: &str) -> Vec<(String, String, f64)> {
    let text = body.split_once("\r\n\r\n").map_or(body, |(_, b)| b);
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("name value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or(f64::NAN),
            };
            (name.to_owned(), labels.to_owned(), value)
        })
        .collect()
}

fn value(samples: &[(String, String, f64)], name: &str, labels: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l == labels)
        .map(|s| s.2)
}

/// What is missing from a scrape: names the rules and the dashboard use that have no sample, and
/// per-symbol names without a sample for each subscribed symbol.
fn missing(samples: &[(String, String, f64)], used: &BTreeSet<String>) -> Vec<String> {
    let per_symbol: BTreeSet<&str> = samples
        .iter()
        .filter(|(_, l, _)| l.starts_with("symbol="))
        .map(|(n, _, _)| n.as_str())
        .collect();
    let mut out = Vec::new();
    for name in used {
        if !samples.iter().any(|(n, _, _)| n == name) {
            out.push(name.clone());
        } else if per_symbol.contains(name.as_str()) {
            for symbol in SYMBOLS {
                let labels = format!("symbol=\"{symbol}\"");
                if value(samples, name, &labels).is_none() {
                    out.push(format!("{name}{{{labels}}}"));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_use_is_exported_for_every_symbol() {
    let used = names_used();
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let sim = simulator(dir.path(), 20.0, Faults::default()).await;
    let addr = free_addr();
    let collector = Collector::start(
        &sim,
        Some(&db.url),
        dir.path(),
        &["--metrics-listen", &addr.to_string()],
    );
    // Until every book is verified and the database has committed: then every family is there.
    let started = Instant::now();
    let scrape = loop {
        let body = get(addr, "/metrics", Duration::from_secs(30)).await;
        let s = samples(&body);
        let verified = SYMBOLS.iter().all(|sym| {
            value(
                &s,
                "krakenbook_symbol_streams_verified",
                &format!("symbol=\"{sym}\""),
            ) == Some(1.0)
        });
        let committed = value(&s, "krakenbook_db_up", "") == Some(1.0);
        if (verified && committed && missing(&s, &used).is_empty())
            || started.elapsed() > Duration::from_secs(30)
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let log = collector.log();
    let gone = missing(&scrape, &used);
    assert!(
        gone.is_empty(),
        "used by deploy/ but not exported: {gone:?}\n{log}"
    );
    // The new figures mean what they say: every symbol verified, no gap; the journal on disk.
    for symbol in SYMBOLS {
        let labels = format!("symbol=\"{symbol}\"");
        assert_eq!(
            value(&scrape, "krakenbook_symbol_streams_verified", &labels),
            Some(1.0),
            "{symbol}\n{log}"
        );
        assert_eq!(
            value(&scrape, "krakenbook_symbol_gap_seconds", &labels),
            Some(0.0),
            "{symbol}"
        );
        let age = value(&scrape, "krakenbook_symbol_seconds_since_verified", &labels).unwrap();
        assert!((0.0..5.0).contains(&age), "{symbol}: {age}");
    }
    let segments = value(&scrape, "krakenbook_journal_segment_bytes", "").unwrap();
    let free = value(&scrape, "krakenbook_journal_disk_free_bytes", "").unwrap();
    let size = value(&scrape, "krakenbook_journal_disk_size_bytes", "").unwrap();
    assert!(
        segments > 0.0 && free > 0.0 && free <= size,
        "{segments} {free} {size}"
    );
    assert_eq!(value(&scrape, "krakenbook_healthy", ""), Some(1.0));
    assert_eq!(
        value(&scrape, "krakenbook_health_problem", "part=\"database\""),
        Some(0.0)
    );
    sim.shutdown().await.unwrap();
    let (status, _, log) = collector.stop();
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn per_symbol_series_exist_at_zero_before_the_exchange_answers() {
    let dir = tempfile::tempdir().unwrap();
    // An exchange address nobody listens on: the collector keeps trying to connect.
    let nobody = free_addr();
    let addr = free_addr();
    let collector = Collector::start_url(
        &format!("ws://{nobody}/v2"),
        None,
        dir.path(),
        &["--metrics-listen", &addr.to_string()],
    );
    let first = samples(&get(addr, "/metrics", Duration::from_secs(30)).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = samples(&get(addr, "/metrics", Duration::from_secs(30)).await);
    let log = collector.log();
    assert_eq!(value(&later, "krakenbook_connections_open", ""), Some(0.0));
    assert_eq!(value(&later, "krakenbook_healthy", ""), Some(0.0));
    for symbol in SYMBOLS {
        let labels = format!("symbol=\"{symbol}\"");
        for name in [
            "krakenbook_book_messages_total",
            "krakenbook_checksum_ok_total",
            "krakenbook_checksum_mismatch_total",
            "krakenbook_unverifiable_total",
            "krakenbook_resubscribes_total",
            "krakenbook_resyncs_total",
            "krakenbook_symbol_streams_verified",
        ] {
            assert_eq!(
                value(&later, name, &labels),
                Some(0.0),
                "{name}{{{labels}}}\n{log}"
            );
        }
        // Never verified: the gap is open since the subscription and grows.
        let gap = |s: &[(String, String, f64)]| {
            value(s, "krakenbook_symbol_gap_seconds", &labels).expect("gap series")
        };
        assert!(
            gap(&later) >= gap(&first) + 1.0,
            "{symbol}: {} then {}",
            gap(&first),
            gap(&later)
        );
        assert_eq!(
            value(&later, "krakenbook_symbol_seconds_since_verified", &labels),
            Some(gap(&later)),
            "{symbol}"
        );
    }
    let (status, _, log) = collector.stop();
    assert!(status.success(), "{log}");
}

/// What the unit grants is what the arrival stamps need: an unprivileged user with CAP_BPF alone
/// (ambient, no new privileges, nothing else in its bounding set) stamps frames with their
/// arrival; without it the collector says it stamps them on reading. Run as root (it changes
/// user with `setpriv`); elsewhere it checks only that the filter is refused.
#[test]
fn cap_bpf_alone_lets_an_unprivileged_collector_stamp_arrivals() {
    if krakenbook::feed::arrival_stamps_work().is_err() {
        return;
    }
    let said = |caps: &str| -> String {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        std::fs::create_dir(&journal).unwrap();
        std::process::Command::new("chmod")
            .args(["0777", journal.to_str().unwrap()])
            .status()
            .unwrap();
        let mut args = vec![
            "--reuid=65534".to_owned(),
            "--regid=65534".to_owned(),
            "--clear-groups".to_owned(),
            "--no-new-privs".to_owned(),
        ];
        if !caps.is_empty() {
            args.push(format!("--inh-caps=+{caps}"));
            args.push(format!("--ambient-caps=+{caps}"));
            args.push(format!("--bounding-set=-all,+{caps}"));
        } else {
            args.push("--bounding-set=-all".to_owned());
        }
        let child = std::process::Command::new("setpriv")
            .args(&args)
            .arg(env!("CARGO_BIN_EXE_krakenbook"))
            .args([
                "collect",
                "--symbols",
                "X/Y",
                // Nothing listens there: the filter is attached before each connect.
                "--url",
                "ws://127.0.0.1:1/v2",
                "--journal-dir",
                journal.to_str().unwrap(),
            ])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("setpriv (util-linux)");
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let pid = child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let refused = "does not record arrival times";
    let with = said("bpf");
    assert!(
        with.contains("cannot connect"),
        "it tried to connect: {with}"
    );
    assert!(!with.contains(refused), "with CAP_BPF: {with}");
    let without = said("");
    assert!(without.contains(refused), "without CAP_BPF: {without}");
}
