//! The copy's directory: file names from the source placed in it safely, and which existing
//! directories `--force` may empty or `--resume` may continue in.
//!
//! Every name the source sends passes through [`check_name`] as it arrives (the listing is the
//! only place names come from; tablespace OIDs are read as numbers, WAL file names are built
//! from numbers). [`Dest::place`] then refuses a path that would go through a symbolic link in
//! the copy other than those this backup made for `--tablespace-mapping`. A refused name stops
//! the backup before anything is written for any listed file.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::copy::CHUNK_LOG;
use crate::error::{Error, IoContext as _, Result};
use crate::manifest::MANIFEST;

/// Files that mark a directory as PostgreSQL's data directory or a copy made by this crate.
const MARKERS: &[&str] = &["PG_VERSION", MANIFEST, CHUNK_LOG];

/// Checks a path the source sent (relative to its data directory, `/`-separated) and returns
/// it as text.
///
/// # Errors
///
/// [`Error::UnsafeName`] for an empty or absolute path, an empty, `.` or `..` component, a NUL
/// byte, or a name that is not UTF-8 (the server's file functions take names as text, so such
/// a file could not be read back).
pub(crate) fn check_name(raw: &[u8]) -> Result<String> {
    let refuse = |reason| {
        Err(Error::UnsafeName {
            path: raw.escape_ascii().to_string(),
            reason,
        })
    };
    if raw.is_empty() {
        return refuse("empty");
    }
    if raw.contains(&0) {
        return refuse("a NUL byte");
    }
    if raw.starts_with(b"/") {
        return refuse("an absolute path");
    }
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" => return refuse("an empty component"),
            b"." => return refuse("a `.` component"),
            b".." => return refuse("a `..` component"),
            _ => {}
        }
    }
    String::from_utf8(raw.to_vec()).or_else(|_| {
        refuse(
            "not UTF-8: the server reads files by names given as text, so this one cannot be \
             copied; move it out of the data directory",
        )
    })
}

/// The copy's directory and the symbolic links this backup made in it.
#[derive(Debug)]
pub(crate) struct Dest {
    root: PathBuf,
    /// `pg_tblspc/<oid>` of each tablespace mapped elsewhere.
    links: HashSet<String>,
}

impl Dest {
    pub(crate) fn new(root: PathBuf, links: HashSet<String>) -> Dest {
        Dest { root, links }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `rel` is a tablespace link this backup made.
    pub(crate) fn is_own_link(&self, rel: &str) -> bool {
        self.links.contains(rel)
    }

    /// Where a checked name goes in the copy. Each part of its path that exists already must
    /// not be a symbolic link, except a tablespace link of this backup on the way to a
    /// directory: files are never written through a link the copy holds.
    ///
    /// # Errors
    ///
    /// [`Error::UnsafeEntry`] naming the link; [`Error::Io`] when a part cannot be examined.
    pub(crate) fn place(&self, rel: &str, is_dir: bool) -> Result<PathBuf> {
        let parts: Vec<&str> = rel.split('/').collect();
        let mut prefix = String::with_capacity(rel.len());
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                prefix.push('/');
            }
            prefix.push_str(part);
            let path = self.root.join(&prefix);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(e).io_context(|| format!("examining {}", path.display())),
            };
            let last = i + 1 == parts.len();
            if meta.file_type().is_symlink() && !(self.is_own_link(&prefix) && (is_dir || !last)) {
                return Err(Error::UnsafeEntry {
                    path,
                    reason: "a symbolic link this backup did not make for --tablespace-mapping \
                             (the copy is never written through one)",
                });
            }
        }
        Ok(self.root.join(rel))
    }
}

/// Refuses to empty (`--force`) or continue in (`--resume`) a non-empty `dir` unless it is a
/// PostgreSQL data directory that no server runs on, or a copy made by this crate.
///
/// # Errors
///
/// [`Error::NotACopy`] saying why; [`Error::Io`] when `dir` cannot be read.
pub(crate) fn check_reusable(dir: &Path, action: &'static str) -> Result<()> {
    if is_empty_or_missing(dir)? {
        return Ok(());
    }
    let refuse = |reason: String| {
        Err(Error::NotACopy {
            path: dir.to_path_buf(),
            action,
            reason,
        })
    };
    if fs::symlink_metadata(dir.join("postmaster.pid")).is_ok() {
        return refuse(
            "it holds postmaster.pid, so a server may be running on it (stop the server, or \
             remove a stale postmaster.pid)"
                .to_owned(),
        );
    }
    let marked = MARKERS
        .iter()
        .any(|name| fs::symlink_metadata(dir.join(name)).is_ok_and(|meta| meta.is_file()));
    if marked {
        return Ok(());
    }
    refuse(format!(
        "it is neither a PostgreSQL data directory (no PG_VERSION) nor a copy made by \
         pgq-basebackup (no {MANIFEST} or {CHUNK_LOG})"
    ))
}

/// Like [`check_reusable`] for the new directory of a mapped tablespace: it may hold only
/// PostgreSQL's `PG_<version>_<catalog version>` directories.
///
/// # Errors
///
/// [`Error::NotACopy`] naming the first other entry; [`Error::Io`].
pub(crate) fn check_tablespace_reusable(dir: &Path, action: &'static str) -> Result<()> {
    if is_empty_or_missing(dir)? {
        return Ok(());
    }
    for entry in fs::read_dir(dir).io_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.io_context(|| format!("listing {}", dir.display()))?;
        let is_dir = entry
            .file_type()
            .io_context(|| format!("examining {}", entry.path().display()))?
            .is_dir();
        if !is_dir || !entry.file_name().as_encoded_bytes().starts_with(b"PG_") {
            return Err(Error::NotACopy {
                path: dir.to_path_buf(),
                action,
                reason: format!(
                    "a tablespace directory holds only PG_<version> directories, not {:?}",
                    entry.file_name()
                ),
            });
        }
    }
    Ok(())
}

fn is_empty_or_missing(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut listing) => Ok(listing.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).io_context(|| format!("opening {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn reason(result: Result<impl std::fmt::Debug>) -> String {
        result.expect_err("must be refused").to_string()
    }

    #[test]
    fn refuses_hostile_names() {
        for (name, why) in [
            (&b""[..], "empty"),
            (b"/etc/passwd", "an absolute path"),
            (b"//x", "an absolute path"),
            (b"../x", "a `..` component"),
            (b"base/../../x", "a `..` component"),
            (b"base/..", "a `..` component"),
            (b"./x", "a `.` component"),
            (b"base//x", "an empty component"),
            (b"base/", "an empty component"),
            (b"base/x\0y", "a NUL byte"),
            (b"caf\xe9", "not UTF-8"),
        ] {
            let text = reason(check_name(name));
            assert!(
                text.starts_with(&format!(
                    "refused file name \"{}\" from the source: {why}",
                    name.escape_ascii()
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn keeps_awkward_but_safe_names() {
        for name in [
            "PG_VERSION",
            "base/5/16384.1",
            "my dir/it's \"quoted\" \\ é",
            "...",
            "..x",
            "-rf",
            "line\nbreak",
        ] {
            assert_eq!(check_name(name.as_bytes()).unwrap(), name);
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pgqbb-dest-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_only_through_its_own_tablespace_links() {
        let dir = scratch("links");
        let (root, outside, mapped) = (dir.join("copy"), dir.join("outside"), dir.join("new"));
        for d in [&root, &outside, &mapped] {
            fs::create_dir_all(d).unwrap();
        }
        fs::create_dir_all(root.join("pg_tblspc")).unwrap();
        symlink(&mapped, root.join("pg_tblspc/16384")).unwrap();
        symlink(&outside, root.join("pg_tblspc/16385")).unwrap();
        symlink(&outside, root.join("base")).unwrap();
        let dest = Dest::new(root.clone(), HashSet::from(["pg_tblspc/16384".to_owned()]));

        assert_eq!(
            dest.place("pg_tblspc/16384", true).unwrap(),
            root.join("pg_tblspc/16384")
        );
        assert!(dest.place("pg_tblspc/16384/PG_15_1/5/1", false).is_ok());
        assert!(dest.place("global/pg_control", false).is_ok());
        for (rel, is_dir) in [
            ("pg_tblspc/16384", false),
            ("pg_tblspc/16385", true),
            ("pg_tblspc/16385/PG_15_1/5/1", false),
            ("base", true),
            ("base/5/1", false),
        ] {
            let text = reason(dest.place(rel, is_dir));
            assert!(
                text.contains("a symbolic link this backup did not make"),
                "{rel}: {text}"
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_data_directories_and_copies_are_reused() {
        let dir = scratch("reuse");
        assert!(check_reusable(&dir.join("missing"), "empty").is_ok());
        assert!(check_reusable(&dir, "empty").is_ok());
        fs::write(dir.join(".bashrc"), "mine").unwrap();
        let text = reason(check_reusable(&dir, "empty (--force)"));
        assert!(
            text.starts_with(&format!("refusing to empty (--force) {}", dir.display()))
                && text.contains("neither a PostgreSQL data directory")
                && text.ends_with("nothing was deleted"),
            "{text}"
        );
        // A marker that is a link does not count.
        symlink("/etc/hostname", dir.join("PG_VERSION")).unwrap();
        assert!(check_reusable(&dir, "empty").is_err());
        fs::remove_file(dir.join("PG_VERSION")).unwrap();
        fs::write(dir.join("PG_VERSION"), "15\n").unwrap();
        assert!(check_reusable(&dir, "empty").is_ok());
        fs::write(dir.join("postmaster.pid"), "1").unwrap();
        assert!(reason(check_reusable(&dir, "empty")).contains("a server may be running"));

        let ts = dir.join("ts");
        fs::create_dir_all(ts.join("PG_15_202209061")).unwrap();
        assert!(check_tablespace_reusable(&ts, "empty").is_ok());
        fs::write(ts.join("notes.txt"), "mine").unwrap();
        assert!(reason(check_tablespace_reusable(&ts, "empty")).contains("\"notes.txt\""));
        fs::remove_dir_all(&dir).unwrap();
    }
}
