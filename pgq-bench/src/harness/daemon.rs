//! The ticker daemons the scenarios start: our `pgq-ticker run` and the original `pgqd`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use pgq_core::Dsn;
use tokio::process::{Child, Command};
use tokio_postgres::Client;

use super::cpu::{Cpu, CpuClock};
use super::reference::PGQD;

/// Our daemon's binary name.
const TICKER_BIN: &str = "pgq-ticker";
/// The longest wait for a daemon to connect, or for its backends to go after it stopped.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(15);

/// The client backends connected to a database.
// language=SQL
const BACKENDS: &str = "SELECT pid FROM pg_catalog.pg_stat_activity \
     WHERE datname = $1 AND backend_type = 'client backend' ORDER BY pid";

/// Our daemon's binary: `given`, else `pgq-ticker` beside this program (or one directory up,
/// where test binaries run from `deps/`), as `cargo build -p pgq-ticker -p pgq-bench` puts it.
pub(super) fn ticker_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        ensure!(
            path.is_file(),
            "{} (--ticker-bin / PGQ_BENCH_TICKER) is not a file",
            path.display()
        );
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().context("locating pgq-bench's own binary")?;
    let dir = exe
        .parent()
        .context("pgq-bench's binary has no directory")?;
    [dir.join(TICKER_BIN), dir.join("..").join(TICKER_BIN)]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no {TICKER_BIN} binary beside {}: build both with `cargo build --release -p \
                 {TICKER_BIN} -p pgq-bench` (without --release for a debug pgq-bench), or name \
                 one with --ticker-bin or PGQ_BENCH_TICKER",
                exe.display()
            )
        })
}

/// Gives a child process the password of `dsn` in `PGPASSWORD`, so that it stays out of
/// command lines and configuration files.
pub(super) fn pass_password(command: &mut Command, dsn: &Dsn) {
    if let Some(password) = dsn.config().get_password() {
        command.env("PGPASSWORD", String::from_utf8_lossy(password).into_owned());
    }
}

/// A running daemon serving one database; killed when dropped.
pub(crate) struct Daemon {
    child: Child,
    name: &'static str,
    db: String,
    log: PathBuf,
}

impl Daemon {
    /// Starts `pgq-ticker run` (binary `bin`) on `db` with this ticker period; its
    /// configuration and log go to `dir`.
    pub(crate) async fn ours(bin: &Path, db: &Dsn, period: Duration, dir: &Path) -> Result<Daemon> {
        Daemon::ours_with(bin, db, period, dir, None).await
    }

    /// [`Daemon::ours`] with its exporter (`/metrics`, `/health`, `/`) on `listen`
    /// (`host:port`) when given.
    pub(crate) async fn ours_with(
        bin: &Path,
        db: &Dsn,
        period: Duration,
        dir: &Path,
        listen: Option<&str>,
    ) -> Result<Daemon> {
        Daemon::ours_config(bin, std::slice::from_ref(db), period, dir, listen).await
    }

    /// Starts one `pgq-ticker run` serving every database of `dbs` (at least one) from one
    /// configuration, as for a partitioned queue; [`Daemon::wait_connected`] and
    /// [`Daemon::stop`] look at the first database's name on the server they are given, and only
    /// the first's password goes to the daemon.
    pub(crate) async fn ours_over(
        bin: &Path,
        dbs: &[Dsn],
        period: Duration,
        dir: &Path,
    ) -> Result<Daemon> {
        Daemon::ours_config(bin, dbs, period, dir, None).await
    }

    async fn ours_config(
        bin: &Path,
        dbs: &[Dsn],
        period: Duration,
        dir: &Path,
        listen: Option<&str>,
    ) -> Result<Daemon> {
        let first = dbs.first().context("a ticker daemon needs a database")?;
        let conninfos: Vec<String> = dbs.iter().map(Dsn::conninfo).collect();
        let period = format!("{}ms", period.as_millis());
        let config = dir.join(format!("ticker-{period}.toml"));
        let mut text = format!(
            "[ticker]\ndatabases = {}\nticker_period = {}\n",
            serde_json::to_string(&conninfos)?,
            serde_json::to_string(&period)?
        );
        if let Some(listen) = listen {
            text.push_str(&format!("listen = {}\n", serde_json::to_string(listen)?));
        }
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join(format!("ticker-{period}.log"));
        let mut command = Command::new(bin);
        command
            .arg("--log-level")
            .arg("warn")
            .arg("run")
            .arg("-c")
            .arg(&config)
            .env_remove("PGQ_DSN");
        Daemon::spawn(command, TICKER_BIN, first, log).await
    }

    /// Starts `pgqd` on `db` with this ticker period; its configuration and log go to `dir`.
    pub(crate) async fn pgqd(db: &Dsn, period: Duration, dir: &Path) -> Result<Daemon> {
        let period = period.as_secs_f64();
        let config = dir.join("pgqd.ini");
        let log = dir.join("pgqd.log");
        // pgqd appends `dbname=` to base_connstr; libpq takes the last of a repeated keyword.
        let text = format!(
            "[pgqd]\nlogfile = {}\npidfile = {}\nbase_connstr = {}\ninitial_database = {name}\n\
             database_list = {name}\nticker_period = {period}\n",
            log.display(),
            dir.join("pgqd.pid").display(),
            db.conninfo(),
            name = db.dbname(),
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let mut command = Command::new(PGQD);
        command.arg(&config);
        Daemon::spawn(command, "pgqd", db, log).await
    }

    async fn spawn(
        mut command: Command,
        name: &'static str,
        db: &Dsn,
        log: PathBuf,
    ) -> Result<Daemon> {
        pass_password(&mut command, db);
        let stderr = std::fs::File::create(log.with_extension("stderr"))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Daemon {
            child,
            name,
            db: db.dbname().to_owned(),
            log,
        })
    }

    /// What the daemon logged, for error messages.
    fn logged(&self) -> String {
        let mut text =
            std::fs::read_to_string(self.log.with_extension("stderr")).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(&self.log).unwrap_or_default());
        text
    }

    /// An error when the daemon has exited.
    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}):\n{}", self.name, self.logged());
        }
        Ok(())
    }

    /// Waits until the daemon has a backend on its database, besides the backends `keep`
    /// (this process's own connections, from [`backend_pids`]).
    pub(crate) async fn wait_connected(
        &mut self,
        watch: &Client,
        keep: &BTreeSet<i32>,
    ) -> Result<()> {
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        loop {
            self.check_running()?;
            if !backend_pids(watch, &self.db).await?.is_subset(keep) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not connect to {} in time:\n{}",
                self.name,
                self.db,
                self.logged()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the daemon's backends, lets it run for `settle`, then measures its CPU and
    /// theirs over `window` (the client backends connected to its database: one that goes away
    /// during the window counts until the start, one that comes counts whole).
    pub(crate) async fn idle_cpu(
        &mut self,
        watch: &Client,
        clock: &CpuClock,
        settle: Duration,
        window: Duration,
    ) -> Result<Cpu> {
        let pid = self
            .child
            .id()
            .with_context(|| format!("{} exited at once:\n{}", self.name, self.logged()))?;
        self.wait_connected(watch, &BTreeSet::new()).await?;
        tokio::time::sleep(settle).await;
        let backends = backend_pids(watch, &self.db).await?;
        let start = clock.snapshot(pid, &backends)?;
        tokio::time::sleep(window).await;
        let end = clock.snapshot(pid, &backends)?;
        let newer = backend_pids(watch, &self.db).await?;
        let newer: BTreeSet<i32> = newer.difference(&backends).copied().collect();
        let cpu = clock.between(&start, &end, &backends, &newer);
        self.check_running()?;
        tracing::info!(
            daemon = self.name,
            process_pct = cpu.process_pct,
            backends_pct = cpu.backends_pct,
            "idle CPU"
        );
        Ok(cpu)
    }

    /// The daemon's peak resident set size (`VmHWM` in `/proc/PID/status`), in kB; read it
    /// before [`Daemon::stop`], while the process is there.
    pub(crate) fn peak_rss_kb(&mut self) -> Result<u64> {
        self.check_running()?;
        let pid = self
            .child
            .id()
            .with_context(|| format!("{} has exited", self.name))?;
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmHWM in {path}"))
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after a while) and waits until its backends are
    /// gone, so that the next daemon gets the database's ticker lock at once.
    pub(crate) async fn stop(self, watch: &Client) -> Result<()> {
        self.stop_beside(watch, &BTreeSet::new()).await
    }

    /// [`Daemon::stop`] on a database where the backends `keep` (this process's own
    /// connections, from [`backend_pids`]) stay open.
    pub(crate) async fn stop_beside(mut self, watch: &Client, keep: &BTreeSet<i32>) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let term = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
            if !term.is_ok_and(|s| s.success()) {
                self.child.start_kill()?;
            }
            if tokio::time::timeout(DAEMON_TIMEOUT, self.child.wait())
                .await
                .is_err()
            {
                self.child.start_kill()?;
                self.child.wait().await?;
            }
        }
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        while !backend_pids(watch, &self.db).await?.is_subset(keep) {
            ensure!(
                Instant::now() < deadline,
                "{}'s backends on {} did not go away",
                self.name,
                self.db
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// The client backends connected to database `db`.
pub(crate) async fn backend_pids(watch: &Client, db: &str) -> Result<BTreeSet<i32>> {
    let rows = watch
        .query(BACKENDS, &[&db])
        .await
        .context("listing backends")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_ticker_binary_must_exist() {
        let missing = Path::new("/nonexistent/pgq-ticker");
        let err = ticker_binary(Some(missing)).unwrap_err().to_string();
        assert!(err.contains("PGQ_BENCH_TICKER"), "{err}");
        let exe = std::env::current_exe().unwrap();
        assert_eq!(ticker_binary(Some(&exe)).unwrap(), exe);
    }
}
