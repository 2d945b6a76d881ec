//! Turning a copy into a cluster of its own (not a standby): it recovers to the end of the
//! backup and promotes itself, runs with nothing that reaches back to the source, is first
//! started where nobody else can connect, and gets a new system identifier.
//!
//! [`make_independent`] writes `recovery.signal` and the settings; [`Server`] starts and stops
//! the copy with the copy's own PostgreSQL version; [`Server::new_system_identifier`] gives a
//! cleanly stopped copy an identifier of its own, as `pg_createsubscriber` does; [`settle`]
//! takes back the settings only a private first start needs.

use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{append_auto_conf, conf_quote, write_private};
use crate::error::{Error, IoContext as _, Result};

/// The directory inside the copy that holds the private socket, its `pg_hba.conf` and the log
/// of the private start; [`settle`] removes it.
pub const PRIVATE_DIR: &str = "pgq_private";

/// Lines that open and close the settings only the private start needs.
const PRIVATE_BEGIN: &str = "# pgq-basebackup: private start (removed when done)";
const PRIVATE_END: &str = "# pgq-basebackup: end of private start";

/// The longest unix socket path the kernel takes (`sun_path` holds 108 bytes with the NUL).
const SOCKET_PATH_MAX: usize = 107;

/// Prepares the copy in `data` to start as a cluster of its own on `port`:
///
/// - `recovery.signal`, `recovery_target = 'immediate'` (the end of the backup, inside the
///   copied WAL), `recovery_target_action = 'promote'`, `recovery_target_timeline = 'current'`;
/// - for good: `archive_mode = off`, `restore_command = ''`, `primary_conninfo = ''`,
///   `primary_slot_name = ''`, `synchronous_standby_names = ''` (a copied one would make every
///   commit wait for a standby of the source);
/// - until [`settle`]: `restore_command = 'false'` (recovery reads the copied WAL only),
///   `default_transaction_read_only = on`, `autovacuum = off`, `max_logical_replication_workers = 0`, no TCP, a
///   socket in [`PRIVATE_DIR`] with mode 0700 and a `pg_hba.conf` there that lets its owner in
///   (only the data directory's owner and root can reach that socket).
///
/// Returns the directory of the private socket.
///
/// # Errors
///
/// [`Error::InvalidOptions`] when the socket's path would be too long for the kernel;
/// [`Error::Io`].
pub fn make_independent(data: &Path, port: u16) -> Result<PathBuf> {
    let data = std::path::absolute(data).io_context(|| format!("resolving {}", data.display()))?;
    let private = data.join(PRIVATE_DIR);
    let socket = private.join(format!(".s.PGSQL.{port}"));
    if socket.as_os_str().len() > SOCKET_PATH_MAX {
        return Err(Error::InvalidOptions {
            reason: format!(
                "the private socket {} would be longer than {SOCKET_PATH_MAX} bytes: use a \
                 data directory with a shorter path",
                socket.display()
            ),
        });
    }
    match fs::DirBuilder::new().mode(0o700).create(&private) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => {
            return Err(Error::Io {
                context: format!("creating {}", private.display()),
                source: err,
            })
        }
    }
    let hba = private.join("pg_hba.conf");
    write_private(
        &hba,
        "# pgq-basebackup: the private start; the socket is reachable by the data directory's \
         owner only.\nlocal all all trust\n",
    )?;
    write_private(&data.join("recovery.signal"), "")?;
    let settings = [
        ("recovery_target", "immediate".to_owned()),
        ("recovery_target_action", "promote".to_owned()),
        ("recovery_target_timeline", "current".to_owned()),
        ("archive_mode", "off".to_owned()),
        ("restore_command", String::new()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("synchronous_standby_names", String::new()),
    ];
    let private_settings = [
        // Archive recovery needs a restore command; one that finds nothing keeps recovery to
        // the copied WAL.
        ("restore_command", "false".to_owned()),
        ("autovacuum", "off".to_owned()),
        ("max_logical_replication_workers", "0".to_owned()),
        // Nothing the copy runs by itself (a scheduler, a background worker) writes to it;
        // whoever finishes the seed turns this off for its own session.
        ("default_transaction_read_only", "on".to_owned()),
        ("listen_addresses", String::new()),
        ("port", port.to_string()),
        ("unix_socket_directories", private.display().to_string()),
        ("unix_socket_permissions", "0700".to_owned()),
        ("hba_file", hba.display().to_string()),
    ];
    append_auto_conf(
        &data,
        &format!(
            "# pgq-basebackup: an independent copy, not a standby\n{}{PRIVATE_BEGIN}\n{}{PRIVATE_END}\n",
            conf_lines(&settings),
            conf_lines(&private_settings)
        ),
    )?;
    Ok(private)
}

/// Takes back what only the private start needed: its settings and [`PRIVATE_DIR`]; the
/// recovery target goes too (the copy has promoted). With `port`, the copy is to listen there
/// (its other connection settings are the source's).
///
/// # Errors
///
/// [`Error::Io`].
pub fn settle(data: &Path, port: Option<u16>) -> Result<()> {
    let path = data.join("postgresql.auto.conf");
    let text = fs::read_to_string(&path).io_context(|| format!("reading {}", path.display()))?;
    let mut kept = String::new();
    let mut private = false;
    for line in text.lines() {
        if line == PRIVATE_BEGIN {
            private = true;
        } else if line == PRIVATE_END {
            private = false;
        } else if !private && !line.starts_with("recovery_target") {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if let Some(port) = port {
        kept.push_str(&conf_lines(&[("port", port.to_string())]));
    }
    write_private(&path, &kept)?;
    let dir = data.join(PRIVATE_DIR);
    match fs::remove_dir_all(&dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
            context: format!("removing {}", dir.display()),
            source: err,
        }),
        _ => Ok(()),
    }
}

fn conf_lines(settings: &[(&str, String)]) -> String {
    settings
        .iter()
        .map(|(name, value)| format!("{name} = {}\n", conf_quote(value)))
        .collect()
}

/// The server programs of one PostgreSQL version, run as the data directory's owner.
#[derive(Debug, Clone)]
pub struct Server {
    bin_dir: PathBuf,
    /// Run the programs as this operating system user (through `runuser`, when we are root).
    run_as: Option<String>,
}

impl Server {
    /// The programs of PostgreSQL `major` (a copy's `PG_VERSION`): from `bin_dir` when
    /// given, else Debian's `/usr/lib/postgresql/<major>/bin`, else the first directory on
    /// `PATH` whose `postgres` is that version. `run_as` names the operating system user the
    /// server runs as when this process is root (PostgreSQL refuses root).
    ///
    /// # Errors
    ///
    /// [`Error::Server`] when no directory has that version.
    pub async fn find(
        major: &str,
        bin_dir: Option<&Path>,
        run_as: Option<String>,
    ) -> Result<Server> {
        let candidates: Vec<PathBuf> = match bin_dir {
            Some(dir) => vec![dir.to_path_buf()],
            None => std::iter::once(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")))
                .chain(
                    std::env::var_os("PATH")
                        .iter()
                        .flat_map(std::env::split_paths),
                )
                .collect(),
        };
        let mut seen = Vec::new();
        for dir in candidates {
            let postgres = dir.join("postgres");
            if !postgres.is_file() {
                continue;
            }
            let output = tokio::process::Command::new(&postgres)
                .arg("--version")
                .output()
                .await
                .io_context(|| format!("running {} --version", postgres.display()))?;
            let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if version_major(&version).as_deref() == Some(major) {
                return Ok(Server {
                    bin_dir: dir,
                    run_as,
                });
            }
            seen.push(format!("{} ({version})", dir.display()));
        }
        Err(Error::Server {
            action: "finding the server programs".to_owned(),
            detail: format!(
                "the copy is PostgreSQL {major}; no bin directory has its postgres{}",
                if seen.is_empty() {
                    String::new()
                } else {
                    format!(" (found {})", seen.join(", "))
                }
            ),
        })
    }

    /// Hands `data` (and everything in it) to the user the server runs as, when one is set.
    ///
    /// # Errors
    ///
    /// [`Error::Server`] when the user is unknown, [`Error::Io`].
    pub async fn hand_over(&self, data: &Path) -> Result<()> {
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        let uid = self.id("-u", user).await?;
        let gid = self.id("-g", user).await?;
        let mut stack = vec![data.to_path_buf()];
        while let Some(path) = stack.pop() {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .io_context(|| format!("chown {}", path.display()))?;
            // Links (mapped tablespaces) are not followed: what they point at is not the copy's.
            let meta =
                fs::symlink_metadata(&path).io_context(|| format!("stat {}", path.display()))?;
            if meta.is_dir() {
                for entry in
                    fs::read_dir(&path).io_context(|| format!("listing {}", path.display()))?
                {
                    stack.push(
                        entry
                            .io_context(|| format!("listing {}", path.display()))?
                            .path(),
                    );
                }
            }
        }
        Ok(())
    }

    async fn id(&self, flag: &str, user: &str) -> Result<u32> {
        let output = tokio::process::Command::new("id")
            .args([flag, user])
            .output()
            .await
            .io_context(|| "running id".to_owned())?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .map_err(|_| Error::Server {
                action: format!("looking up user {user}"),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
    }

    /// Starts the server on `data` and waits until it accepts connections (`pg_ctl start -w`,
    /// up to an hour: recovery of a large copy takes its time). Its log goes to `log`.
    ///
    /// # Errors
    ///
    /// [`Error::Server`] with the end of the server's log.
    pub async fn start(&self, data: &Path, log: &Path) -> Result<()> {
        let mut args = vec!["start".into(), "-D".into(), data.as_os_str().to_owned()];
        args.extend(["-l".into(), log.as_os_str().to_owned()]);
        args.extend(["-w", "-t", "3600", "-s"].map(Into::into));
        self.run("pg_ctl", &args).await.map_err(|err| match err {
            Error::Server { action, detail } => Error::Server {
                action,
                detail: format!("{detail}\nserver log:\n{}", log_tail(log)),
            },
            other => other,
        })
    }

    /// Stops the server on `data` cleanly (`pg_ctl stop -m fast -w`).
    ///
    /// # Errors
    ///
    /// [`Error::Server`].
    pub async fn stop(&self, data: &Path) -> Result<()> {
        let mut args = vec!["stop".into(), "-D".into(), data.as_os_str().to_owned()];
        args.extend(["-m", "fast", "-w", "-t", "600", "-s"].map(Into::into));
        self.run("pg_ctl", &args).await
    }

    /// Gives the cleanly stopped copy in `data` a new system identifier, as
    /// `pg_createsubscriber` does: the identifier in `global/pg_control` is replaced (its CRC
    /// made again) and `pg_resetwal` starts a new WAL that carries it. Returns the identifier.
    ///
    /// # Errors
    ///
    /// [`Error::Server`] when `pg_resetwal` refuses (e.g. the copy was not stopped cleanly) or
    /// `pg_control` is not understood; [`Error::Io`].
    pub async fn new_system_identifier(&self, data: &Path) -> Result<u64> {
        let path = data.join("global").join("pg_control");
        let mut control = fs::read(&path).io_context(|| format!("reading {}", path.display()))?;
        let identifier = fresh_identifier();
        set_system_identifier(&mut control, identifier).map_err(|detail| Error::Server {
            action: format!("reading {}", path.display()),
            detail,
        })?;
        let owner = fs::metadata(&path).io_context(|| format!("stat {}", path.display()))?;
        fs::write(&path, &control).io_context(|| format!("writing {}", path.display()))?;
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid()))
            .io_context(|| format!("chown {}", path.display()))?;
        fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .io_context(|| format!("syncing {}", path.display()))?;
        self.run("pg_resetwal", &["-D".into(), data.as_os_str().to_owned()])
            .await?;
        Ok(identifier)
    }

    async fn run(&self, program: &str, args: &[std::ffi::OsString]) -> Result<()> {
        let binary = self.bin_dir.join(program);
        let mut command = match &self.run_as {
            Some(user) if is_root() => {
                let mut c = tokio::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&binary);
                c
            }
            _ => tokio::process::Command::new(&binary),
        };
        command.args(args).current_dir("/");
        let output = command
            .output()
            .await
            .io_context(|| format!("running {}", binary.display()))?;
        if output.status.success() {
            return Ok(());
        }
        Err(Error::Server {
            action: format!(
                "{program} {}",
                args.first()
                    .map_or(std::borrow::Cow::Borrowed(""), |a| a.to_string_lossy())
            ),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
            .trim()
            .to_owned(),
        })
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The last lines of a server log.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `15` from `postgres (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)`.
fn version_major(version: &str) -> Option<String> {
    let number = version.split(") ").nth(1)?.split_whitespace().next()?;
    let major: String = number.chars().take_while(char::is_ascii_digit).collect();
    (!major.is_empty()).then_some(major)
}

/// An identifier made as `initdb` makes one: seconds in the high half, microseconds and
/// process bits below.
fn fresh_identifier() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() << 32)
        | (u64::from(now.subsec_micros()) << 12)
        | u64::from(std::process::id() & 0xfff)
}

/// Replaces the system identifier (the first 8 bytes of `pg_control`, native byte order) and
/// makes the CRC-32C again. The CRC is the last field of the control data; its offset differs
/// between versions, so it is found as the one place where the bytes before it check out.
fn set_system_identifier(control: &mut [u8], identifier: u64) -> Result<(), String> {
    let offset = (8..control.len().saturating_sub(4))
        .step_by(4)
        .find(|&at| crc32c::crc32c(&control[..at]).to_ne_bytes() == control[at..at + 4])
        .ok_or("no valid CRC found: not a pg_control this version understands")?;
    control[..8].copy_from_slice(&identifier.to_ne_bytes());
    let crc = crc32c::crc32c(&control[..offset]);
    control[offset..offset + 4].copy_from_slice(&crc.to_ne_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_major_version() {
        assert_eq!(
            version_major("postgres (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)").as_deref(),
            Some("15")
        );
        assert_eq!(
            version_major("postgres (PostgreSQL) 18beta1").as_deref(),
            Some("18")
        );
        assert_eq!(version_major("nonsense"), None);
    }

    #[test]
    fn replaces_the_identifier_and_its_crc() {
        let mut control = vec![0_u8; 8192];
        control[..8].copy_from_slice(&42_u64.to_ne_bytes());
        control[8..16].copy_from_slice(b"whatever");
        let crc = crc32c::crc32c(&control[..296]);
        control[296..300].copy_from_slice(&crc.to_ne_bytes());
        set_system_identifier(&mut control, 7).unwrap();
        assert_eq!(control[..8], 7_u64.to_ne_bytes());
        assert_eq!(
            control[296..300],
            crc32c::crc32c(&control[..296]).to_ne_bytes()
        );
        assert!(set_system_identifier(&mut vec![1_u8; 8192], 7).is_err());
    }

    #[test]
    fn settle_keeps_what_stays_and_drops_the_private_start() {
        let dir = std::env::temp_dir().join(format!("pgqbb-settle-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("postgresql.auto.conf"), "work_mem = '8MB'\n").unwrap();
        let private = make_independent(&dir, 6543).unwrap();
        assert!(private.join("pg_hba.conf").is_file());
        assert!(dir.join("recovery.signal").is_file());
        let text = fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
        assert!(text.contains("synchronous_standby_names = ''"), "{text}");
        assert!(text.contains("autovacuum = 'off'"), "{text}");
        settle(&dir, Some(6544)).unwrap();
        let text = fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
        assert!(text.starts_with("work_mem = '8MB'\n"), "{text}");
        for gone in [
            "autovacuum",
            "recovery_target",
            "6543",
            "hba_file",
            "unix_socket",
        ] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
        for kept in [
            "archive_mode = 'off'",
            "primary_conninfo = ''",
            "port = '6544'",
        ] {
            assert!(text.contains(kept), "{kept} not in {text}");
        }
        assert!(!private.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
