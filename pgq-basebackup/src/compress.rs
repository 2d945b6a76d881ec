//! `--compress zstd`: every file of a finished copy stored as `<name>.zst`, and `restore`
//! back into a startable directory.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, IoContext as _, Result};
use crate::manifest::{self, VerifyReport, MANIFEST};

/// The suffix of a compressed file.
pub(crate) const SUFFIX: &str = ".zst";

/// Compresses every regular file under `dir` except the manifest, in place, over `threads`
/// threads; each keeps its modification time. Symbolic links are refused, never followed.
pub(crate) fn pack(dir: &Path, level: i32, threads: usize) -> Result<()> {
    let manifest = Path::new(MANIFEST);
    let files: Vec<Entry> = walk(dir)?
        .into_iter()
        .filter(|e| !e.is_dir && e.rel != manifest)
        .collect();
    let files = Mutex::new(files);
    let worker = || -> Result<()> {
        loop {
            let next = files.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(entry) = next else {
                return Ok(());
            };
            let path = dir.join(&entry.rel);
            let mut packed = path.clone().into_os_string();
            packed.push(SUFFIX);
            convert(&path, &entry, Path::new(&packed), |input, output| {
                zstd::stream::copy_encode(input, output, level)
            })?;
            fs::remove_file(&path).io_context(|| format!("removing {}", path.display()))?;
        }
    };
    crate::on_threads(threads, worker)
}

/// Unpacks a compressed copy `src` into `dest` (which must not exist or be empty), then
/// checks the result against the manifest. Nothing in `src` is followed: a symbolic link (or
/// any entry but a directory or a regular file) is refused before anything is written, and
/// every file and directory in `dest` is created new, so nothing lands outside it.
///
/// # Errors
///
/// [`Error::DestinationNotEmpty`], [`Error::Manifest`] when `src` has no manifest (an
/// incomplete copy is not restored), [`Error::UnsafeEntry`] naming a link in `src`,
/// [`Error::Io`].
pub fn restore(src: &Path, dest: &Path) -> Result<VerifyReport> {
    if !src.join(MANIFEST).is_file() {
        return Err(Error::Manifest {
            path: src.join(MANIFEST),
            reason: "missing: the copy is incomplete".to_owned(),
        });
    }
    if fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::DestinationNotEmpty {
            path: dest.to_path_buf(),
        });
    }
    let entries = walk(src)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dest)
        .io_context(|| format!("creating {}", dest.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o700))
        .io_context(|| format!("chmod {}", dest.display()))?;
    for entry in &entries {
        let from = src.join(&entry.rel);
        let to = dest.join(&entry.rel);
        if entry.is_dir {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&to)
                .io_context(|| format!("creating {}", to.display()))?;
            continue;
        }
        let name = entry.rel.file_name().unwrap_or_default().as_bytes();
        match name.strip_suffix(SUFFIX.as_bytes()) {
            Some(plain) => convert(
                &from,
                entry,
                &to.with_file_name(OsStr::from_bytes(plain)),
                |input, output| zstd::stream::copy_decode(input, output),
            )?,
            None => convert(&from, entry, &to, |input, output| {
                std::io::copy(input, output).map(drop)
            })?,
        }
    }
    manifest::verify(dest)
}

/// A directory or regular file of a copy, found without following links.
struct Entry {
    /// Relative to the copy.
    rel: PathBuf,
    is_dir: bool,
    /// Device and inode, to check that the file opened later is this one.
    id: (u64, u64),
}

/// Every directory and regular file under `root`, each directory before what it holds.
///
/// # Errors
///
/// [`Error::UnsafeEntry`] for a symbolic link or any other kind of entry; [`Error::Io`].
fn walk(root: &Path) -> Result<Vec<Entry>> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for item in fs::read_dir(&dir).io_context(|| format!("listing {}", dir.display()))? {
            let item = item.io_context(|| format!("listing {}", dir.display()))?;
            let rel = rel.join(item.file_name());
            // The entry's own metadata: a link is not followed.
            let meta = item
                .metadata()
                .io_context(|| format!("examining {}", item.path().display()))?;
            let kind = meta.file_type();
            if !kind.is_dir() && !kind.is_file() {
                return Err(Error::UnsafeEntry {
                    path: item.path(),
                    reason: if kind.is_symlink() {
                        "a symbolic link (packing and restoring never follow one)"
                    } else {
                        "neither a directory nor a regular file"
                    },
                });
            }
            if kind.is_dir() {
                stack.push(rel.clone());
            }
            found.push(Entry {
                rel,
                is_dir: kind.is_dir(),
                id: (meta.dev(), meta.ino()),
            });
        }
    }
    Ok(found)
}

/// Writes `to`, a new file (mode 0600; an existing entry of that name, a link included, is
/// an error), from the file `entry` found at `from` through `filter`; keeps the modification
/// time and flushes it.
fn convert(
    from: &Path,
    entry: &Entry,
    to: &Path,
    filter: impl FnOnce(&mut BufReader<File>, &mut BufWriter<&File>) -> std::io::Result<()>,
) -> Result<()> {
    let input = File::open(from).io_context(|| format!("opening {}", from.display()))?;
    let meta = input
        .metadata()
        .io_context(|| format!("stat {}", from.display()))?;
    if (meta.dev(), meta.ino()) != entry.id {
        return Err(Error::UnsafeEntry {
            path: from.to_path_buf(),
            reason: "replaced while being read (by a symbolic link?)",
        });
    }
    let mtime = meta
        .modified()
        .io_context(|| format!("stat {}", from.display()))?;
    let output = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .io_context(|| format!("creating {}", to.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut writer = BufWriter::with_capacity(1 << 20, &output);
    filter(&mut reader, &mut writer)
        .and_then(|()| writer.flush())
        .io_context(|| format!("writing {} from {}", to.display(), from.display()))?;
    drop(writer);
    output
        .set_modified(mtime)
        .and_then(|()| output.sync_all())
        .io_context(|| format!("flushing {}", to.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn pack_refuses_links_and_leaves_their_targets() {
        let dir = std::env::temp_dir().join(format!("pgqbb-pack-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (copy, outside) = (dir.join("copy"), dir.join("outside"));
        fs::create_dir_all(copy.join("base")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), "mine").unwrap();
        fs::write(copy.join("base/1"), "data").unwrap();
        symlink(&outside, copy.join("linked dir")).unwrap();
        let err = pack(&copy, 3, 1).expect_err("a link in the copy");
        assert_eq!(
            err.to_string(),
            format!(
                "refused {}: a symbolic link (packing and restoring never follow one)",
                copy.join("linked dir").display()
            )
        );
        assert!(copy.join("base/1").is_file(), "nothing was packed");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
        assert_eq!(fs::read_to_string(outside.join("secret")).unwrap(), "mine");
        fs::remove_dir_all(&dir).unwrap();
    }
}
