//! A scenario's own directory for the files of the programs it starts.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// `$TMPDIR/pgq-bench-<scenario>-<pid>`, for configuration files, logs and copies; removed
/// with everything in it when dropped.
#[derive(Debug)]
pub(crate) struct WorkDir(PathBuf);

impl WorkDir {
    /// Creates the directory of `scenario`.
    pub(crate) fn new(scenario: &str) -> Result<WorkDir> {
        let dir = std::env::temp_dir().join(format!("pgq-bench-{scenario}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(WorkDir(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub(crate) fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(%err, dir = %self.0.display(), "cannot remove the work directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_with_its_files_when_dropped() -> Result<()> {
        let dir = WorkDir::new("work-dir-test")?;
        let path = dir.path().to_path_buf();
        std::fs::create_dir(dir.join("sub"))?;
        std::fs::write(dir.join("sub").join("file"), "x")?;
        drop(dir);
        assert!(!path.exists(), "{} is still there", path.display());
        Ok(())
    }
}
