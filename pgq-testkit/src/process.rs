//! Running programs from tests: to completion, or in the background with their log collected.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::{Deadline, TestkitError, POLL};

/// Runs `program args…` to completion (no stdin) and returns its exit code (-1 when a signal
/// ended it), stdout and stderr.
///
/// # Errors
///
/// [`TestkitError::Io`] when it cannot be started.
pub async fn run(
    program: impl AsRef<OsStr>,
    args: &[&str],
) -> Result<(i32, String, String), TestkitError> {
    output(tokio::process::Command::new(program).args(args)).await
}

/// Like [`run`], for a command prepared by the caller (environment, directory).
///
/// # Errors
///
/// [`TestkitError::Io`] when it cannot be started.
pub async fn output(
    command: &mut tokio::process::Command,
) -> Result<(i32, String, String), TestkitError> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| TestkitError::Io {
            context: format!("running {:?}", command.as_std().get_program()),
            source: e,
        })?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A program running in the background (a daemon under test), its stderr collected line by
/// line as it comes. Killed when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Process {
    /// Starts `command` with no stdin, stdout discarded and stderr collected.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Io`] when it cannot be started.
    pub fn spawn(command: &mut std::process::Command) -> Result<Process, TestkitError> {
        let name = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| TestkitError::Io {
                context: format!("starting {name}"),
                source: e,
            })?;
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut text = sink.lock().unwrap_or_else(PoisonError::into_inner);
                    text.push_str(&line);
                    text.push('\n');
                }
            });
        }
        Ok(Process {
            name,
            child,
            stderr,
        })
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many lines of its stderr contain every one of `parts`.
    pub fn count(&self, parts: &[&str]) -> usize {
        self.log()
            .lines()
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .count()
    }

    /// Sends signal `name` (`TERM`, `HUP`, ...) with `kill`.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Io`] or [`TestkitError::Command`] when `kill` fails.
    pub fn signal(&self, name: &str) -> Result<(), TestkitError> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .map_err(|e| TestkitError::Io {
                context: "running kill".to_owned(),
                source: e,
            })?;
        if status.success() {
            return Ok(());
        }
        Err(TestkitError::Command {
            command: format!("kill -{name} {}", self.child.id()),
            status: status.to_string(),
            output: String::new(),
        })
    }

    /// SIGKILL, and waits until it is gone.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Io`] when it cannot be killed or reaped.
    pub fn kill(&mut self) -> Result<ExitStatus, TestkitError> {
        let io = |e| TestkitError::Io {
            context: format!("killing {}", self.name),
            source: e,
        };
        self.child.kill().map_err(io)?;
        self.child.wait().map_err(io)
    }

    /// Waits for it to exit, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Timeout`] (with its log) when it is still running after `limit`.
    pub async fn exit(&mut self, limit: Duration) -> Result<ExitStatus, TestkitError> {
        let deadline = Deadline::after(limit);
        loop {
            let exited = self.child.try_wait().map_err(|e| TestkitError::Io {
                context: format!("waiting for {}", self.name),
                source: e,
            })?;
            if let Some(status) = exited {
                return Ok(status);
            }
            if deadline.passed() {
                return Err(TestkitError::Timeout {
                    what: format!("{} to exit; its log:\n{}", self.name, self.log()),
                    after: limit,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
