//! A headless Chromium for tests of the daemons' status pages: the page as the browser built it
//! (after parsing, so escaping mistakes show), and a screenshot kept for a human to look at.

use std::path::{Path, PathBuf};

use crate::{env_flag, output, TempDir, TestkitError};

/// Where the browser is looked for, in order.
const CANDIDATES: [&str; 3] = [
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
];

/// A headless browser with a profile directory of its own.
#[derive(Debug)]
pub struct Browser {
    program: PathBuf,
    profile: TempDir,
}

/// The browser, or `None` (after a loud `SKIPPED` line) when none is installed and
/// `PGQ_REQUIRE_BROWSER=1` is not set.
///
/// # Errors
///
/// [`TestkitError::ReferenceMissing`] when none is installed and `PGQ_REQUIRE_BROWSER=1`;
/// [`TestkitError::Io`] when its profile directory cannot be made.
pub fn browser() -> Result<Option<Browser>, TestkitError> {
    let Some(program) = CANDIDATES.iter().map(Path::new).find(|p| p.exists()) else {
        let what = "no headless browser (install the `chromium` package)";
        if env_flag("PGQ_REQUIRE_BROWSER") {
            return Err(TestkitError::ReferenceMissing {
                what: format!("{what}; PGQ_REQUIRE_BROWSER=1"),
            });
        }
        eprintln!("SKIPPED: {what} (set PGQ_REQUIRE_BROWSER=1 to fail instead)");
        return Ok(None);
    };
    Ok(Some(Browser {
        program: program.to_owned(),
        profile: TempDir::new("pgq-browser")?,
    }))
}

impl Browser {
    /// The document of `url` after the browser parsed it, serialized back to HTML.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Command`] when the browser fails.
    pub async fn dump_dom(&self, url: &str) -> Result<String, TestkitError> {
        self.run(&["--dump-dom", url]).await
    }

    /// Takes a screenshot of `url` into the artifacts directory (`PGQ_TEST_ARTIFACTS`, else
    /// `pgq-test-artifacts` in the temporary directory), kept after the test, and returns its
    /// path.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Io`] when the directory cannot be made, [`TestkitError::Command`] when
    /// the browser fails.
    pub async fn screenshot(&self, url: &str, name: &str) -> Result<PathBuf, TestkitError> {
        let dir = std::env::var_os("PGQ_TEST_ARTIFACTS").map_or_else(
            || std::env::temp_dir().join("pgq-test-artifacts"),
            PathBuf::from,
        );
        std::fs::create_dir_all(&dir).map_err(|e| TestkitError::Io {
            context: format!("creating {}", dir.display()),
            source: e,
        })?;
        let path = dir.join(name);
        let flag = format!("--screenshot={}", path.display());
        self.run(&[&flag, "--window-size=1200,900", url]).await?;
        eprintln!("pgq-testkit: screenshot {}", path.display());
        Ok(path)
    }

    async fn run(&self, args: &[&str]) -> Result<String, TestkitError> {
        let profile = format!("--user-data-dir={}", self.profile.path().display());
        // Tests run as root in CI, where Chromium's sandbox refuses to start.
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(["--headless", "--no-sandbox", "--disable-gpu", &profile])
            .args(args);
        let (code, stdout, stderr) = output(&mut command).await?;
        if code != 0 {
            return Err(TestkitError::Command {
                command: format!("{} {}", self.program.display(), args.join(" ")),
                status: code.to_string(),
                output: stderr,
            });
        }
        Ok(stdout)
    }
}
