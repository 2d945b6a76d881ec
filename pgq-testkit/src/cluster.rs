//! Private throwaway clusters made with the machine's `initdb` and `pg_ctl`, or those in
//! `PGQ_TEST_PG_BIN`.

use std::ffi::OsString;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;

use pgq_core::quote_conninfo_value;

use crate::TestkitError;

/// The environment variable naming the PostgreSQL bin directory private clusters start from.
pub(crate) const PG_BIN_VAR: &str = "PGQ_TEST_PG_BIN";

/// How many times a TCP cluster is restarted on a fresh port when its port was taken meanwhile.
const PORT_ATTEMPTS: u32 = 5;

/// Certificate and key a [`Cluster`] serves TLS with.
#[derive(Debug, Clone)]
pub struct SslFiles {
    /// The server certificate (chain), PEM.
    pub cert_pem: String,
    /// The certificate's private key, PEM.
    pub key_pem: String,
}

/// What a [`Cluster`] starts with beyond the test defaults.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Serve TLS with these files (`ssl = on`).
    pub ssl: Option<SslFiles>,
    /// Extra server settings, `(name, value)`, applied after the test defaults.
    pub settings: Vec<(String, String)>,
    /// Also listen on 127.0.0.1 (see [`Cluster::tcp_dsn`]); the unix socket is always there.
    pub listen_tcp: bool,
}

/// A private throwaway PostgreSQL cluster, from the binaries in [`bin_dir`].
///
/// It lives in its own directory under `/tmp` (or the temporary directory when not root), with
/// trust authentication, superuser `postgres`, locale C, UTF8, `TimeZone=UTC`, `fsync=off`, and a
/// unix socket in its data directory. Dropping it stops the server (`-m immediate`) and removes
/// the directory; a watchdog process does the same if the test process dies first.
#[derive(Debug)]
pub struct Cluster {
    base: PathBuf,
    data: PathBuf,
    port: u16,
    listen_tcp: bool,
    settings: Vec<(String, String)>,
    tools: &'static Tools,
}

impl Cluster {
    /// Creates and starts a cluster; takes about a second.
    pub async fn start(opts: ClusterOptions) -> Result<Cluster, TestkitError> {
        let mut cluster = Cluster::prepare(opts.listen_tcp)?;
        let tools = cluster.tools;

        let mut initdb = tools.command("initdb");
        initdb
            .arg("-D")
            .arg(&cluster.data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--locale=C",
                "-E",
                "UTF8",
                "-N",
            ])
            .current_dir(&cluster.base);
        run(initdb, "initdb").await?;

        if let Some(ssl) = &opts.ssl {
            cluster
                .write_file("server.crt", &ssl.cert_pem, 0o644)
                .await?;
            cluster
                .write_file("server.key", &ssl.key_pem, 0o600)
                .await?;
        }
        cluster.settings = cluster.base_settings(opts.ssl.is_some());
        cluster.settings.extend(opts.settings);
        cluster.append_conf(&cluster.settings)?;
        cluster.start_server().await?;
        Ok(cluster)
    }

    /// Starts a cluster on an existing data directory, e.g. a restored base backup: the
    /// directory is moved into a fresh private directory (same file system), handed to the
    /// server's user, and started on its own port and socket with the test defaults and
    /// `opts.settings` appended to its `postgresql.conf`. Waits until it accepts connections
    /// (after recovery, for a backup).
    pub async fn start_existing(
        data_dir: &Path,
        opts: ClusterOptions,
    ) -> Result<Cluster, TestkitError> {
        let mut cluster = Cluster::prepare(opts.listen_tcp)?;
        let tools = cluster.tools;
        fs::rename(data_dir, &cluster.data).map_err(|e| {
            io_error(
                format!(
                    "moving {} to {}",
                    data_dir.display(),
                    cluster.data.display()
                ),
                e,
            )
        })?;
        fs::set_permissions(&cluster.data, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_error(format!("chmod {}", cluster.data.display()), e))?;
        if tools.as_postgres {
            let mut chown = tokio::process::Command::new("chown");
            chown.arg("-R").arg("postgres").arg(&cluster.data);
            run(chown, "chown -R postgres").await?;
        }
        cluster.settings = cluster.base_settings(opts.ssl.is_some());
        cluster.settings.extend(opts.settings);
        cluster.append_conf(&cluster.settings)?;
        cluster.start_server().await?;
        Ok(cluster)
    }

    /// A private directory for a cluster not made yet, and a watchdog that stops its server if
    /// this process dies first.
    fn prepare(listen_tcp: bool) -> Result<Cluster, TestkitError> {
        let tools = tools()?;
        let base = make_base_dir(tools.as_postgres)?;
        let cluster = Cluster {
            data: base.join("data"),
            base,
            port: free_port()?,
            listen_tcp,
            settings: Vec::new(),
            tools,
        };
        let mut stop = tools.argv("pg_ctl");
        stop.extend(["stop", "-D"].map(OsString::from));
        stop.push(cluster.data.clone().into_os_string());
        stop.extend(["-m", "immediate"].map(OsString::from));
        spawn_watchdog(Some(&cluster.base), &stop)?;
        Ok(cluster)
    }

    /// The server log's text so far.
    pub fn server_log(&self) -> String {
        fs::read_to_string(self.base.join("server.log")).unwrap_or_default()
    }

    /// Keyword/value connection string for `dbname` as superuser `postgres` over the unix socket.
    pub fn dsn(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={}",
            quote_conninfo_value(&self.data.display().to_string()),
            self.port,
            quote_conninfo_value(dbname)
        )
    }

    /// Keyword/value connection string for `dbname` as `postgres` over TCP (127.0.0.1), when the
    /// cluster was started with [`ClusterOptions::listen_tcp`].
    pub fn tcp_dsn(&self, dbname: &str) -> Option<String> {
        self.listen_tcp.then(|| {
            format!(
                "host=127.0.0.1 port={} user=postgres dbname={}",
                self.port,
                quote_conninfo_value(dbname)
            )
        })
    }

    /// The port, for TCP and for the unix socket's file name.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory, which also holds the unix socket.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The settings the server started with besides the `initdb` defaults, as `name=value, …`.
    pub fn settings_summary(&self) -> String {
        self.settings
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Restarts the server (`pg_ctl restart -m fast`): every session is terminated, the data
    /// and the port stay. Returns once it accepts connections again.
    pub async fn restart(&self) -> Result<(), TestkitError> {
        self.pg_ctl("restart", &["-m", "fast"], true).await
    }

    /// Stops the server (`pg_ctl stop -m fast`), keeping its data, as an outage does;
    /// [`Cluster::start_again`] brings it back.
    pub async fn stop(&self) -> Result<(), TestkitError> {
        self.pg_ctl("stop", &["-m", "fast"], false).await
    }

    /// Starts a server that [`Cluster::stop`] stopped, on the same port (clients keep their
    /// connection strings), and returns once it accepts connections.
    pub async fn start_again(&self) -> Result<(), TestkitError> {
        self.pg_ctl("start", &[], true).await
    }

    /// `pg_ctl ACTION` on the data directory, waiting up to a minute; with `log`, the server
    /// writes to the cluster's `server.log`.
    async fn pg_ctl(&self, action: &str, args: &[&str], log: bool) -> Result<(), TestkitError> {
        let mut pg_ctl = self.tools.command("pg_ctl");
        pg_ctl.arg(action).arg("-D").arg(&self.data);
        if log {
            pg_ctl.arg("-l").arg(self.base.join("server.log"));
        }
        pg_ctl
            .args(args)
            .args(["-w", "-t", "60", "-s"])
            .current_dir(&self.base);
        run(pg_ctl, &format!("pg_ctl {action}")).await.map(drop)
    }

    fn base_settings(&self, ssl: bool) -> Vec<(String, String)> {
        let listen = if self.listen_tcp { "127.0.0.1" } else { "" };
        let mut settings = vec![
            ("port", self.port.to_string()),
            ("listen_addresses", listen.to_owned()),
            ("unix_socket_directories", self.data.display().to_string()),
            ("fsync", "off".to_owned()),
            ("synchronous_commit", "off".to_owned()),
            ("full_page_writes", "off".to_owned()),
            ("max_connections", "200".to_owned()),
            ("TimeZone", "UTC".to_owned()),
        ];
        if ssl {
            settings.push(("ssl", "on".to_owned()));
        }
        settings
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect()
    }

    /// Writes a file into the data directory, owned by the server's user.
    async fn write_file(&self, name: &str, contents: &str, mode: u32) -> Result<(), TestkitError> {
        let path = self.data.join(name);
        fs::write(&path, contents)
            .map_err(|e| io_error(format!("writing {}", path.display()), e))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(|e| io_error(format!("chmod {}", path.display()), e))?;
        if self.tools.as_postgres {
            chown_postgres(&path).await?;
        }
        Ok(())
    }

    /// Appends settings to `postgresql.conf`; later lines win, so this also overrides.
    fn append_conf(&self, settings: &[(String, String)]) -> Result<(), TestkitError> {
        use std::io::Write as _;
        let path = self.data.join("postgresql.conf");
        let mut text = String::from("\n# pgq-testkit\n");
        for (name, value) in settings {
            let value = value.replace('\\', "\\\\").replace('\'', "''");
            text.push_str(&format!("{name} = '{value}'\n"));
        }
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|e| io_error(format!("appending to {}", path.display()), e))
    }

    /// `pg_ctl start -w`, moving to another port when a TCP port was taken meanwhile.
    async fn start_server(&mut self) -> Result<(), TestkitError> {
        let log = self.base.join("server.log");
        let mut attempt = 1;
        loop {
            let mut pg_ctl = self.tools.command("pg_ctl");
            pg_ctl
                .arg("start")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-s"])
                .current_dir(&self.base);
            let Err(error) = run(pg_ctl, "pg_ctl start").await else {
                return Ok(());
            };
            let log_text = fs::read_to_string(&log).unwrap_or_default();
            let port_taken = log_text.contains("could not bind") || log_text.contains("in use");
            if !(self.listen_tcp && port_taken && attempt < PORT_ATTEMPTS) {
                let tail: Vec<&str> = log_text.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(match error {
                    TestkitError::Command {
                        command,
                        status,
                        output,
                    } => TestkitError::Command {
                        command,
                        status,
                        output: format!("{output}\nserver log:\n{}", tail.join("\n")),
                    },
                    other => other,
                });
            }
            attempt += 1;
            self.port = free_port()?;
            let port = ("port".to_owned(), self.port.to_string());
            self.append_conf(std::slice::from_ref(&port))?;
            if let Some(entry) = self.settings.iter_mut().find(|(name, _)| name == "port") {
                *entry = port;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let mut stop = self.tools.std_command("pg_ctl");
            stop.arg("stop")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "-s"])
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Err(e) = stop.status() {
                eprintln!(
                    "pgq-testkit: could not stop cluster {}: {e}",
                    self.data.display()
                );
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.base) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("pgq-testkit: could not remove {}: {e}", self.base.display());
            }
        }
    }
}

/// Where the server binaries are, and whether they must run as `postgres` (we are root).
#[derive(Debug)]
struct Tools {
    bindir: PathBuf,
    as_postgres: bool,
}

impl Tools {
    /// The argument vector that runs `program` from the bin directory as the right user.
    fn argv(&self, program: &str) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        if self.as_postgres {
            argv.extend(["runuser", "-u", "postgres", "--"].map(OsString::from));
        }
        argv.push(self.bindir.join(program).into_os_string());
        argv
    }

    fn std_command(&self, program: &str) -> std::process::Command {
        let argv = self.argv(program);
        let mut command = std::process::Command::new(&argv[0]);
        command.args(&argv[1..]);
        command
    }

    fn command(&self, program: &str) -> tokio::process::Command {
        tokio::process::Command::from(self.std_command(program))
    }
}

/// The binaries, found once per process: those in `PGQ_TEST_PG_BIN` when set, else the machine's.
fn tools() -> Result<&'static Tools, TestkitError> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let as_postgres = is_root();
            let bindir = match pg_bin_var() {
                Some(dir) => checked_bindir(Path::new(&dir), as_postgres)?,
                None => find_bindir()?,
            };
            Ok(Tools {
                bindir,
                as_postgres,
            })
        })
        .as_ref()
        .map_err(|reason| TestkitError::NoBinaries(reason.clone()))
}

/// The bin directory private clusters are started from: `PGQ_TEST_PG_BIN` when set, else the
/// machine's (`pg_config --bindir`, the highest `/usr/lib/postgresql/<version>/bin`, `PATH`).
///
/// # Errors
///
/// [`TestkitError::NoBinaries`] when none is found, or when the one in `PGQ_TEST_PG_BIN` lacks
/// a program or cannot be run by the server's user.
pub fn bin_dir() -> Result<&'static Path, TestkitError> {
    tools().map(|tools| tools.bindir.as_path())
}

/// A PostgreSQL client program such as `psql` or `pg_verifybackup`: from [`bin_dir`] when it is
/// there, else from the highest `/usr/lib/postgresql/<version>/bin` holding it, else from
/// `PATH`. Server-only bin directories (the relocatable builds in `PGQ_TEST_PG_BIN`) ship no
/// client programs, and a client speaks to every newer or older server.
pub fn client_program(name: &str) -> PathBuf {
    let own = bin_dir().ok().map(|dir| dir.join(name));
    let mut packaged: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin").join(name)))
        })
        .collect();
    packaged.sort();
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .collect::<Vec<_>>();
    own.into_iter()
        .chain(packaged.into_iter().rev().map(|(_, path)| path))
        .chain(on_path)
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `PGQ_TEST_PG_BIN`, unless unset or empty.
pub(crate) fn pg_bin_var() -> Option<OsString> {
    std::env::var_os(PG_BIN_VAR).filter(|dir| !dir.is_empty())
}

/// Checks a bin directory given by hand: it holds `initdb`, `pg_ctl` and `postgres`, and the
/// user the server runs as can run them (their libraries included), which a directory under a
/// 0700 home such as `/root` forbids.
fn checked_bindir(dir: &Path, as_postgres: bool) -> Result<PathBuf, String> {
    let named = || format!("{PG_BIN_VAR}={}", dir.display());
    // The cluster's commands run in its own directory: a relative path would not resolve there.
    let bindir = fs::canonicalize(dir).map_err(|e| format!("{}: {e}", named()))?;
    for program in ["initdb", "pg_ctl", "postgres"] {
        if !bindir.join(program).is_file() {
            return Err(format!(
                "{}: no `{program}` there; it must name a PostgreSQL bin directory holding \
                 initdb, pg_ctl and postgres",
                named()
            ));
        }
    }
    let tools = Tools {
        bindir,
        as_postgres,
    };
    let user = if as_postgres { " as user postgres" } else { "" };
    let output = tools
        .std_command("postgres")
        .arg("--version")
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: running `postgres --version`{user}: {e}", named()))?;
    if !output.status.success() {
        return Err(format!(
            "{}: `postgres --version` failed{user} ({}): {}; the server's user must be able to \
             read and run the binaries and their libraries (keep them out of 0700 directories \
             such as /root)",
            named(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(tools.bindir)
}

/// `pg_config --bindir`, else the highest `/usr/lib/postgresql/<version>/bin`, else `PATH`.
fn find_bindir() -> Result<PathBuf, String> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(output) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_tools(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| has_tools(dir))
        .ok_or_else(|| {
            "initdb and pg_ctl not found (tried `pg_config --bindir`, /usr/lib/postgresql/*/bin, PATH)"
                .to_owned()
        })
}

/// Whether this process runs as root (initdb and pg_ctl refuse to).
/// Whether the tests run as root (then servers run as `postgres`).
pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(
        || match std::process::Command::new("id").arg("-u").output() {
            Ok(output) if output.status.success() => {
                String::from_utf8_lossy(&output.stdout).trim() == "0"
            }
            _ => std::env::var("USER").is_ok_and(|user| user == "root"),
        },
    )
}

/// Creates a fresh private directory the server's user owns.
fn make_base_dir(as_postgres: bool) -> Result<PathBuf, TestkitError> {
    let dir = crate::temp::unique_dir("pgqt", as_postgres)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| io_error(format!("chmod {}", dir.display()), e))?;
    if as_postgres {
        let status = std::process::Command::new("chown")
            .arg("postgres")
            .arg(&dir)
            .status()
            .map_err(|e| io_error("running chown", e))?;
        if !status.success() {
            let _ = fs::remove_dir(&dir);
            return Err(TestkitError::Command {
                command: format!("chown postgres {}", dir.display()),
                status: status.to_string(),
                output: "is there a `postgres` user?".to_owned(),
            });
        }
    }
    Ok(dir)
}

async fn chown_postgres(path: &Path) -> Result<(), TestkitError> {
    let mut chown = tokio::process::Command::new("chown");
    chown.arg("postgres").arg(path);
    run(chown, "chown postgres").await.map(drop)
}

/// A port nobody listens on right now (on 127.0.0.1).
///
/// # Errors
///
/// [`TestkitError::Io`] when no port can be bound.
pub fn free_port() -> Result<u16, TestkitError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| io_error("finding a free port", e))
}

/// Runs a command to completion, failing with its output unless it succeeds.
async fn run(mut command: tokio::process::Command, label: &str) -> Result<Output, TestkitError> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| io_error(format!("running {label}"), e))?;
    if output.status.success() {
        return Ok(output);
    }
    Err(TestkitError::Command {
        command: label.to_owned(),
        status: output.status.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

fn io_error(context: impl Into<String>, source: std::io::Error) -> TestkitError {
    TestkitError::Io {
        context: context.into(),
        source,
    }
}

/// Starts a detached process that waits for this process to exit, then runs `cleanup` and
/// removes `dir`. It gives up early once `dir` is gone (its owner cleaned up normally).
///
/// No destructor runs at process exit, so this is how process-wide servers get stopped.
pub(crate) fn spawn_watchdog(dir: Option<&Path>, cleanup: &[OsString]) -> Result<(), TestkitError> {
    const WATCH: &str = r#"trap '' HUP INT
cd /
parent=$1; dir=$2; shift 2
while kill -0 "$parent" 2>/dev/null; do
  if [ -n "$dir" ] && [ ! -d "$dir" ]; then exit 0; fi
  sleep 1
done
"$@"
if [ -n "$dir" ]; then rm -rf "$dir"; fi"#;
    // The outer shell backgrounds the watcher and exits at once, so nothing is left to reap.
    const DETACH: &str =
        r#"w=$1; shift; sh -c "$w" pgq-testkit-watchdog "$@" </dev/null >/dev/null 2>&1 &"#;
    let dir = dir.map_or_else(OsString::new, |d| d.as_os_str().to_owned());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(DETACH)
        .arg("pgq-testkit-detach")
        .arg(WATCH)
        .arg(std::process::id().to_string())
        .arg(dir)
        .args(cleanup)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .status()
        .map_err(|e| io_error("starting the cleanup watchdog", e))?;
    if status.success() {
        Ok(())
    } else {
        Err(TestkitError::Command {
            command: "sh (cleanup watchdog)".to_owned(),
            status: status.to_string(),
            output: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory with permissions `mode`, removed on drop.
    fn scratch(name: &str, mode: u32) -> crate::TempDir {
        let dir = crate::TempDir::new(name).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode)).unwrap();
        dir
    }

    #[test]
    fn a_bin_dir_given_by_hand_is_checked() {
        let machine = find_bindir().expect("the machine's PostgreSQL binaries");
        let as_postgres = is_root();
        assert_eq!(
            checked_bindir(&machine, as_postgres).unwrap(),
            fs::canonicalize(&machine).unwrap()
        );

        let missing = checked_bindir(Path::new("/nonexistent/pg/bin"), as_postgres).unwrap_err();
        assert!(
            missing.starts_with("PGQ_TEST_PG_BIN=/nonexistent/pg/bin: No such file"),
            "{missing}"
        );

        let empty = scratch("empty-bin", 0o755);
        let refused = checked_bindir(empty.path(), as_postgres).unwrap_err();
        assert_eq!(
            refused,
            format!(
                "PGQ_TEST_PG_BIN={}: no `initdb` there; it must name a PostgreSQL bin directory \
                 holding initdb, pg_ctl and postgres",
                empty.path().display()
            )
        );
    }

    /// As root the server runs as `postgres`, which cannot enter a 0700 directory of root's:
    /// binaries there are refused up front, before `initdb` fails on them.
    #[test]
    fn a_bin_dir_the_server_user_cannot_reach_is_refused() {
        let machine = find_bindir().expect("the machine's PostgreSQL binaries");
        let private = scratch("private-bin", 0o700);
        for program in ["initdb", "pg_ctl", "postgres"] {
            std::os::unix::fs::symlink(machine.join(program), private.path().join(program))
                .unwrap();
        }
        let checked = checked_bindir(private.path(), is_root());
        if !is_root() {
            // Without root the server runs as this user, who owns the directory.
            assert_eq!(checked.unwrap(), private.path());
            return;
        }
        let refused = checked.unwrap_err();
        let expected_start = format!(
            "PGQ_TEST_PG_BIN={}: `postgres --version` failed as user postgres (exit status: ",
            private.path().display()
        );
        assert!(refused.starts_with(&expected_start), "{refused}");
        assert!(
            refused.ends_with(
                "the server's user must be able to read and run the binaries and their \
                 libraries (keep them out of 0700 directories such as /root)"
            ),
            "{refused}"
        );
    }
}
