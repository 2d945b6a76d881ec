//! Running Skytools' own programs (python3-pgq scripts, londiste3, pgqd) against our schema:
//! whether they are installed, a scratch directory for their configs and logs, and their
//! processes.
//!
//! A scratch directory is removed when its test passes; when the test fails it is kept, and the
//! end of every log in it is printed. Processes a Skytools program daemonizes itself (londiste3's
//! copy processes) are stopped through their pid files when the directory goes.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, ensure, Context as _, Result};
use pgq_testkit::{Deadline, TempDir};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The interpreter python3-pgq and python3-londiste are installed for.
pub(crate) const PYTHON: &str = "/usr/bin/python3";

/// The original ticker daemon (package pgqd).
pub(crate) const PGQD: &str = "/usr/bin/pgqd";

/// Where the Python worker scripts of the tests are.
const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python");

/// How many lines of each log a failed test prints from its end, and how many of the lines
/// that report a problem (a long-running daemon's log is mostly progress lines).
const LOG_TAIL: usize = 60;
const LOG_PROBLEMS: usize = 20;

/// What marks a log line as reporting a problem.
const PROBLEM_MARKS: [&str; 4] = ["ERROR", "FATAL", "WARNING", "Error:"];

/// Whether `/usr/bin/python3` can import `modules` (as written after `import`).
pub(crate) async fn python_imports(modules: &str) -> bool {
    Command::new(PYTHON)
        .args(["-c", &format!("import {modules}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .is_ok_and(|status| status.success())
}

/// `pgqd` when installed; `None` (after [`pgq_testkit::reference_missing`]) when missing and
/// not required.
pub(crate) fn pgqd_binary() -> Result<Option<&'static Path>> {
    let path = Path::new(PGQD);
    if path.is_file() {
        return Ok(Some(path));
    }
    pgq_testkit::reference_missing(&format!("{PGQD} not found; install the pgqd package"))?;
    Ok(None)
}

/// A connection string without its `dbname`, as pgqd's `base_connstr` wants it.
pub(crate) fn base_connstr(dsn: &str) -> String {
    dsn.split_whitespace()
        .filter(|kv| !kv.starts_with("dbname="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A directory for one test's Skytools configs, pid files and logs.
pub(crate) struct Scratch {
    dir: TempDir,
    removed: bool,
}

impl Scratch {
    pub(crate) fn new() -> Result<Scratch> {
        Ok(Scratch {
            dir: TempDir::new("pgq-skytools")?,
            removed: false,
        })
    }

    /// `name` inside the directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `<name>.ini`: section `[section]` with `job_name`, log and pid file in this
    /// directory, and `settings` (a `%` doubled, as Skytools' interpolating parser wants it).
    pub(crate) fn config(
        &self,
        name: &str,
        section: &str,
        settings: &[(&str, &str)],
    ) -> Result<PathBuf> {
        let mut text = format!(
            "[{section}]\njob_name = {name}\nlogfile = {}\npidfile = {}\n",
            self.path(&format!("{name}.log")).display(),
            self.path(&format!("{name}.pid")).display()
        );
        for (key, value) in settings {
            ensure!(!value.contains('\n'), "{key}: a config value is one line");
            let _ = writeln!(text, "{key} = {}", value.replace('%', "%%"));
        }
        self.write(&format!("{name}.ini"), &text)
    }

    /// Writes `pgqd.ini`: pgqd ticks every 0.1 s and runs retry and maintenance every second on
    /// `databases`, connecting with `base` (a connection string without `dbname`).
    pub(crate) fn pgqd_config(&self, base: &str, databases: &[&str]) -> Result<PathBuf> {
        let first = databases.first().context("pgqd needs a database")?;
        let text = format!(
            "[pgqd]\nlogfile = {log}\npidfile = {pid}\nbase_connstr = {base}\n\
             initial_database = {first}\ndatabase_list = {list}\nticker_period = 0.1\n\
             retry_period = 0.2\nmaint_period = 1\ncheck_period = 60\n",
            log = self.path("pgqd.log").display(),
            pid = self.path("pgqd.pid").display(),
            list = databases.join(", "),
        );
        self.write("pgqd.ini", &text)
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        Ok(self.dir.write(name, text)?)
    }

    /// The last lines of `name` in this directory (empty when it does not exist).
    pub(crate) fn tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.path(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }

    /// Runs `program args` to completion before `deadline` and returns its stdout; the command
    /// and everything it printed are appended to `commands.log`. Fails when it exits non-zero.
    pub(crate) async fn run(
        &self,
        program: &str,
        args: &[&str],
        deadline: Deadline,
    ) -> Result<String> {
        let shown = format!("{program} {}", args.join(" "));
        let child = Command::new(program)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout_at(deadline.instant(), child)
            .await
            .map_err(|_| anyhow::anyhow!("`{shown}` did not finish in time"))?
            .with_context(|| format!("starting `{shown}`"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("commands.log"))?;
        writeln!(log, "$ {shown}\n{stdout}{stderr}--- {}", out.status)?;
        ensure!(
            out.status.success(),
            "`{shown}` failed ({}):\n{stdout}{stderr}",
            out.status
        );
        Ok(stdout)
    }

    /// Starts a long-running `program args` whose stdout and stderr go to `<name>.out`.
    pub(crate) fn start<S: AsRef<OsStr>>(
        &self,
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
    ) -> Result<Daemon> {
        let program = program.as_ref();
        let out = format!("{name}.out");
        let file =
            std::fs::File::create(self.path(&out)).with_context(|| format!("creating {out}"))?;
        let child = Command::new(program)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} for {name}", program.to_string_lossy()))?;
        Ok(Daemon {
            name: name.to_owned(),
            out,
            child,
        })
    }

    /// Removes the directory; call it when the test passed.
    pub(crate) fn remove(mut self) -> Result<()> {
        self.stop_daemonized();
        self.removed = true;
        std::fs::remove_dir_all(self.dir.path())
            .with_context(|| format!("removing {}", self.dir.path().display()))
    }

    /// Sends SIGTERM to every process that left a pid file in this directory and whose command
    /// line names a file of it: the ones a Skytools program daemonized (its own children are
    /// killed when their handles drop).
    fn stop_daemonized(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        let dir = self.dir.path().display().to_string();
        for entry in entries.flatten() {
            let path = entry.path();
            if !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".pid"))
            {
                continue;
            }
            let Some(pid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&dir));
            if ours {
                let _ = std::process::Command::new("kill")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.stop_daemonized();
        if self.removed {
            return;
        }
        self.dir.keep();
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| {
                [".log", ".out", ".stderr"]
                    .iter()
                    .any(|e| name.ends_with(e))
            })
            .collect();
        names.sort();
        for name in names {
            let text = std::fs::read_to_string(self.path(&name)).unwrap_or_default();
            let problems: Vec<&str> = text
                .lines()
                .filter(|line| PROBLEM_MARKS.iter().any(|mark| line.contains(mark)))
                .take(LOG_PROBLEMS)
                .collect();
            if !problems.is_empty() {
                eprintln!(
                    "--- {name} (its first {LOG_PROBLEMS} problems) ---\n{}",
                    problems.join("\n")
                );
            }
            eprintln!(
                "--- {name} (last {LOG_TAIL} lines) ---\n{}",
                self.tail(&name)
            );
        }
    }
}

/// A long-running program started by [`Scratch::start`]. Killed when dropped.
pub(crate) struct Daemon {
    name: String,
    out: String,
    child: Child,
}

impl Daemon {
    /// An error, with the end of its output, when the program has exited.
    pub(crate) fn check(&mut self, scratch: &Scratch) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}):\n{}",
                self.name,
                scratch.tail(&self.out)
            );
        }
        Ok(())
    }
}

/// A running Python worker script of `tests/python/`: its stdout line by line, its stderr in a
/// file of the scratch directory. Killed when dropped.
pub(crate) struct Worker {
    pub(crate) name: String,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: PathBuf,
}

impl Worker {
    pub(crate) fn spawn(
        scratch: &Scratch,
        name: &str,
        script: &str,
        args: &[&str],
    ) -> Result<Worker> {
        let stderr = scratch.path(&format!("{name}.stderr"));
        let stderr_file = std::fs::File::create(&stderr)
            .with_context(|| format!("creating {}", stderr.display()))?;
        let mut child = Command::new(PYTHON)
            .arg(Path::new(SCRIPTS).join(script))
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {script} for {name}"))?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        Ok(Worker {
            name: name.to_owned(),
            child,
            stdout: BufReader::new(stdout).lines(),
            stderr,
        })
    }

    /// The worker's stderr, for error messages.
    pub(crate) fn stderr(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("\n--- {} stderr ---\n{}", self.name, text.trim_end())
    }

    /// The next line the worker prints, or an error when it exits or the deadline passes first.
    pub(crate) async fn line(&mut self, deadline: Deadline) -> Result<String> {
        match tokio::time::timeout_at(deadline.instant(), self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => bail!(
                "{}: exited before printing a line{}",
                self.name,
                self.stderr()
            ),
            Ok(Err(e)) => Err(e).with_context(|| format!("{}: reading stdout", self.name)),
            Err(_) => bail!("{}: printed no line in time{}", self.name, self.stderr()),
        }
    }

    /// Whether the worker has exited; an error when it failed.
    pub(crate) fn exited(&mut self) -> Result<bool> {
        match self.child.try_wait()? {
            None => Ok(false),
            Some(status) if status.success() => Ok(true),
            Some(status) => bail!("{}: {status}{}", self.name, self.stderr()),
        }
    }

    /// Waits for the worker to exit successfully and returns the lines it printed from now on.
    pub(crate) async fn finish(mut self, deadline: Deadline) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline.instant(), self.stdout.next_line()).await {
                Ok(Ok(Some(line))) => lines.push(line),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    return Err(e).with_context(|| format!("{}: reading stdout", self.name))
                }
                Err(_) => bail!(
                    "{}: still running at the deadline{}",
                    self.name,
                    self.stderr()
                ),
            }
        }
        let status = tokio::time::timeout_at(deadline.instant(), self.child.wait())
            .await
            .map_err(|_| anyhow::anyhow!("{}: did not exit in time", self.name))??;
        ensure!(status.success(), "{}: {status}{}", self.name, self.stderr());
        Ok(lines)
    }

    /// SIGKILL, and waits until the process is gone.
    pub(crate) async fn kill(mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("killing {}", self.name))
    }
}
