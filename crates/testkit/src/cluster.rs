//! A throwaway TimescaleDB cluster: for the tests, and for `krakenbook-bench ingest` when no
//! database is given.
//!
//! [`TempCluster::new`] runs `initdb` into a fresh directory under `/tmp` (as the `postgres` user
//! when running as root, since PostgreSQL refuses to run as root), picks a free loopback port and
//! starts `postgres` with `shared_preload_libraries=timescaledb`. [`TempCluster::stop`] and
//! [`TempCluster::start`] stop it and start it again on the same port and data directory (to test
//! outages); dropping it stops it and deletes the directory.
//!
//! What must always hold: a cluster never outlives its process. `postgres` runs under a small
//! shell watchdog that stops it (and deletes the directory) as soon as the process that started
//! it is gone, even when that process was killed and no destructor ran.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

/// A throwaway cluster that could not be set up, run, or given a database.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The cluster could not be set up or run.
    #[error("throwaway TimescaleDB cluster: {0}")]
    Cluster(String),
    /// A statement on the running cluster failed.
    #[error("{context}: {source}")]
    Db {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// How a throwaway cluster is set up.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// Keep PostgreSQL's durability settings (`fsync`, `synchronous_commit`,
    /// `full_page_writes`) on. Off by default: tests do not need crash safety, benchmarks do.
    pub durable: bool,
    /// Where PostgreSQL's programs are (default: `$KRAKENBOOK_PG_BINDIR`, else `pg_config
    /// --bindir`, else the newest `/usr/lib/postgresql/*/bin`).
    pub bindir: Option<PathBuf>,
}

/// A running throwaway PostgreSQL + TimescaleDB cluster (see the module doc).
#[derive(Debug)]
pub struct TempCluster {
    root: PathBuf,
    port: u16,
    bindir: PathBuf,
    run_as: Option<&'static str>,
    options: ClusterOptions,
    watchdog: Mutex<Option<Child>>,
    next_db: AtomicU64,
}

/// The watchdog: starts postgres, and a monitor that checks once a second whether the parent
/// process (pid and start time, so a reused pid does not fool it) still exists; when it does not,
/// the monitor stops postgres and the watchdog deletes the cluster directory. When postgres stops
/// for another reason (`pg_ctl stop`), the watchdog ends the monitor and exits. Arguments:
/// postgres, root dir, parent pid, parent start time, then postgres's own arguments.
const WATCHDOG: &str = r#"
pg_bin=$1; root=$2; parent=$3; parent_start=$4; shift 4
exec >>"$root/postgres.log" 2>&1
alive() {
  [ -r "/proc/$parent/stat" ] || return 1
  read -r stat < "/proc/$parent/stat" || return 1
  stat=${stat##*) }
  set -- $stat
  [ "${20}" = "$parent_start" ]
}
"$pg_bin" "$@" &
pg=$!
( while alive; do sleep 1; done; kill -INT $pg 2>/dev/null ) &
monitor=$!
wait $pg
kill $monitor 2>/dev/null
alive || rm -rf "$root"
"#;

impl TempCluster {
    /// Creates and starts a cluster with the default options.
    pub fn new() -> Result<TempCluster, ClusterError> {
        TempCluster::with_options(ClusterOptions::default())
    }

    /// Creates and starts a cluster.
    pub fn with_options(options: ClusterOptions) -> Result<TempCluster, ClusterError> {
        let bindir = find_bindir(options.bindir.as_deref())?;
        let run_as = running_as_root()?.then_some("postgres");
        let base = if run_as.is_some() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        static N: AtomicU64 = AtomicU64::new(0);
        let root = base.join(format!(
            "krakenbook-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        if root.exists() {
            std::fs::remove_dir_all(&root).map_err(|e| io_err("clearing", &root, e))?;
        }
        std::fs::create_dir_all(&root).map_err(|e| io_err("creating", &root, e))?;
        let mut cluster = TempCluster {
            root,
            port: 0,
            bindir,
            run_as,
            options,
            watchdog: Mutex::new(None),
            next_db: AtomicU64::new(0),
        };
        if let Some(user) = cluster.run_as {
            run(Command::new("chown")
                .arg(format!("{user}:"))
                .arg(&cluster.root))?;
        }
        cluster.initdb()?;
        // A port free now may be taken before postgres binds it: try a few.
        let mut last_error = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.start() {
                Ok(()) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| ClusterError::Cluster("could not start".into())))
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data in `data/`, the server log in `postgres.log`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A URL for database `dbname` (user `postgres`, no password, no TLS).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{dbname}?sslmode=disable",
            self.port
        )
    }

    /// Creates a fresh, empty database and returns its URL.
    pub async fn create_database(&self) -> Result<String, ClusterError> {
        let name = format!(
            "krakenbook_{}",
            self.next_db.fetch_add(1, Ordering::Relaxed)
        );
        let context = |what: &str| {
            let what = what.to_owned();
            move |source| ClusterError::Db {
                context: what,
                source,
            }
        };
        let (client, connection) = tokio_postgres::connect(&self.url("postgres"), NoTls)
            .await
            .map_err(context("connecting to the cluster"))?;
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(context(&format!("creating database {name}")))?;
        drop(client);
        let _ = connection.await;
        Ok(self.url(&name))
    }

    /// Makes every role except `postgres` authenticate with a password (SCRAM) over TCP, as a
    /// production server does (`postgres` keeps trust, so [`TempCluster::url`] still works), and
    /// reloads the server's configuration: for tests of passwords and authentication failures.
    pub fn require_passwords(&self) -> Result<(), ClusterError> {
        let hba = self.root.join("data").join("pg_hba.conf");
        std::fs::write(
            &hba,
            "local all all trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .map_err(|e| io_err("writing", &hba, e))?;
        run(self
            .command(self.bindir.join("pg_ctl"))
            .arg("reload")
            .arg("-D")
            .arg(self.root.join("data")))
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        let mut guard = self.lock();
        match guard.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts the server (again) on its port and data directory, and waits until it accepts
    /// connections. A no-op when it is running.
    pub fn start(&self) -> Result<(), ClusterError> {
        let mut guard = self.lock();
        if let Some(child) = guard.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            return Ok(());
        }
        let data = self.root.join("data");
        let port = self.port.to_string();
        let mut args: Vec<String> = vec![
            "-D".into(),
            data.display().to_string(),
            "-p".into(),
            port,
            "-k".into(),
            self.root.display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "shared_preload_libraries=timescaledb".into(),
            "-c".into(),
            "timescaledb.telemetry_level=off".into(),
            "-c".into(),
            "max_connections=200".into(),
            "-c".into(),
            "log_min_messages=warning".into(),
        ];
        if !self.options.durable {
            for setting in [
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
            ] {
                args.push("-c".into());
                args.push(setting.into());
            }
        }
        let mut cmd = self.command("sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("krakenbook-pg-watchdog")
            .arg(self.bindir.join("postgres"))
            .arg(&self.root)
            .arg(std::process::id().to_string())
            .arg(own_start_time()?)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| ClusterError::Cluster(format!("cannot run sh: {e}")))?;
        *guard = Some(child);
        let Some(child) = guard.as_mut() else {
            return Err(ClusterError::Cluster("watchdog vanished".into()));
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                *guard = None;
                return Err(ClusterError::Cluster(format!(
                    "postgres exited ({status}) on port {}: {}",
                    self.port,
                    self.log_tail()
                )));
            }
            let ready = self
                .command(self.bindir.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-d", "postgres", "-U", "postgres"])
                .arg("-p")
                .arg(self.port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Cluster(format!(
                    "postgres did not accept connections within 60 s: {}",
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: sessions are ended, like a restart in production) and
    /// waits until it is down. A no-op when it is not running.
    pub fn stop(&self) -> Result<(), ClusterError> {
        self.stop_with("fast")
    }

    fn stop_with(&self, mode: &str) -> Result<(), ClusterError> {
        let mut guard = self.lock();
        let Some(mut child) = guard.take() else {
            return Ok(());
        };
        if matches!(child.try_wait(), Ok(None)) {
            let status = self
                .command(self.bindir.join("pg_ctl"))
                .arg("stop")
                .arg("-D")
                .arg(self.root.join("data"))
                .args(["-m", mode, "-w", "-t", "60"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !status.is_ok_and(|s| s.success()) {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        Ok(())
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        let data = self.root.join("data");
        let log = self.root.join("initdb.log");
        let out = self
            .command(self.bindir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .args(["--locale=C", "--no-instructions"])
            .output()
            .map_err(|e| ClusterError::Cluster(format!("cannot run initdb: {e}")))?;
        let _ = std::fs::write(&log, [out.stdout.as_slice(), &out.stderr].concat());
        if !out.status.success() {
            return Err(ClusterError::Cluster(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// A command run as the cluster's user.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        // A panic while holding the lock leaves the child handle intact: keep using it.
        self.watchdog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.root.join("postgres.log")) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().rev().take(8).collect();
        let tail: Vec<&str> = lines.into_iter().rev().collect();
        if tail.is_empty() {
            "no server log".to_owned()
        } else {
            tail.join(" | ")
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let _ = self.stop_with("immediate");
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn find_bindir(given: Option<&Path>) -> Result<PathBuf, ClusterError> {
    let has_postgres = |d: &Path| d.join("postgres").is_file() && d.join("initdb").is_file();
    if let Some(d) = given {
        return if has_postgres(d) {
            Ok(d.to_owned())
        } else {
            Err(ClusterError::Cluster(format!(
                "no postgres and initdb in {}",
                d.display()
            )))
        };
    }
    if let Some(d) = std::env::var_os("KRAKENBOOK_PG_BINDIR").map(PathBuf::from)
        && has_postgres(&d)
    {
        return Ok(d);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_postgres(&d) {
            return Ok(d);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates
        .into_iter()
        .rev()
        .find(|d| has_postgres(d))
        .ok_or_else(|| {
            ClusterError::Cluster(
                "no PostgreSQL server programs found (install postgresql-15, or set KRAKENBOOK_PG_BINDIR)"
                    .into(),
            )
        })
}

fn running_as_root() -> Result<bool, ClusterError> {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .map_err(|e| ClusterError::Cluster(format!("cannot read /proc/self: {e}")))
}

/// This process's start time in clock ticks since boot (field 22 of `/proc/self/stat`): with the
/// pid, it names this process even after the pid is reused.
fn own_start_time() -> Result<String, ClusterError> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| ClusterError::Cluster(format!("cannot read /proc/self/stat: {e}")))?;
    let after_comm = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .ok_or_else(|| ClusterError::Cluster("unexpected /proc/self/stat".into()))?;
    after_comm
        .split_whitespace()
        .nth(19)
        .map(str::to_owned)
        .ok_or_else(|| ClusterError::Cluster("unexpected /proc/self/stat".into()))
}

fn free_port() -> Result<u16, ClusterError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ClusterError::Cluster(format!("no free loopback port: {e}")))
}

fn run(cmd: &mut Command) -> Result<(), ClusterError> {
    let out = cmd
        .output()
        .map_err(|e| ClusterError::Cluster(format!("cannot run {cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ClusterError::Cluster(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ClusterError {
    ClusterError::Cluster(format!("{what} {}: {e}", path.display()))
}
