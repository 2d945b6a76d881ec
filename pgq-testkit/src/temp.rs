//! Scratch directories for tests: configs, backups, logs.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::TestkitError;

/// A fresh directory of its own for one test, removed when dropped, or kept (and its path
/// printed) when dropped during a panic, or after [`keep`](TempDir::keep).
///
/// It lies under `/tmp` when the tests run as root, where the server's user (`postgres`) can
/// reach what a test hands it, else in the temporary directory.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates `<prefix>-<pid>-<n>`.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Io`] when it cannot be created.
    pub fn new(prefix: &str) -> Result<TempDir, TestkitError> {
        Ok(TempDir {
            path: unique_dir(prefix, crate::cluster::is_root())?,
            keep: false,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Writes (or rewrites) `name` inside the directory and returns its path.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Io`] when it cannot be written.
    pub fn write(&self, name: &str, contents: &str) -> Result<PathBuf, TestkitError> {
        let path = self.join(name);
        fs::write(&path, contents).map_err(|e| TestkitError::Io {
            context: format!("writing {}", path.display()),
            source: e,
        })?;
        Ok(path)
    }

    /// Leaves the directory in place when dropped, for a look after a failure.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            eprintln!("pgq-testkit: kept {}", self.path.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("pgq-testkit: could not remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Creates a directory `<prefix>-<pid>-<n>` no one else has: under `/tmp` for a root process
/// (whose temporary directory may lie where the server's user cannot go), else in the
/// temporary directory.
pub(crate) fn unique_dir(prefix: &str, as_root: bool) -> Result<PathBuf, TestkitError> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let parent = if as_root {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let pid = std::process::id();
    loop {
        let dir = parent.join(format!(
            "{prefix}-{pid}-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(TestkitError::Io {
                    context: format!("creating {}", dir.display()),
                    source: e,
                })
            }
        }
    }
}
