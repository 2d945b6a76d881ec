//! `--compress zstd`: every file of a finished copy stored as `<name>.zst`, and `restore`
//! back into a startable directory.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, IoContext as _, Result};
use crate::manifest::{self, VerifyReport, MANIFEST};

/// The suffix of a compressed file.
pub(crate) const SUFFIX: &str = ".zst";

/// Compresses every regular file under `dir` except the manifest, in place, over `threads`
/// threads; each keeps its modification time.
pub(crate) fn pack(dir: &Path, level: i32, threads: usize) -> Result<()> {
    let files = Mutex::new(regular_files(dir)?);
    let worker = || -> Result<()> {
        loop {
            let next = files.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(path) = next else {
                return Ok(());
            };
            let mut packed = path.clone().into_os_string();
            packed.push(SUFFIX);
            let packed = PathBuf::from(packed);
            convert(&path, &packed, |input, output| {
                zstd::stream::copy_encode(input, output, level)
            })?;
            fs::remove_file(&path).io_context(|| format!("removing {}", path.display()))?;
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| scope.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<Vec<()>>>()
    })?;
    Ok(())
}

/// Unpacks a compressed copy `src` into `dest` (which must not exist or be empty), then
/// checks the result against the manifest.
///
/// # Errors
///
/// [`Error::DestinationNotEmpty`], [`Error::Manifest`] when `src` has no manifest (an
/// incomplete copy is not restored), [`Error::Io`].
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
    let mut stack = vec![(src.to_path_buf(), dest.to_path_buf())];
    while let Some((from, to)) = stack.pop() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&to)
            .io_context(|| format!("creating {}", to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o700))
            .io_context(|| format!("chmod {}", to.display()))?;
        for entry in fs::read_dir(&from).io_context(|| format!("listing {}", from.display()))? {
            let entry = entry.io_context(|| format!("listing {}", from.display()))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                stack.push((path, to.join(name)));
            } else if let Some(plain) = name.strip_suffix(SUFFIX) {
                convert(&path, &to.join(plain), |input, output| {
                    zstd::stream::copy_decode(input, output)
                })?;
            } else {
                convert(&path, &to.join(name), |input, output| {
                    std::io::copy(input, output).map(drop)
                })?;
            }
        }
    }
    manifest::verify(dest)
}

/// Every regular file under `dir` but the manifest.
fn regular_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in
            fs::read_dir(&current).io_context(|| format!("listing {}", current.display()))?
        {
            let path = entry
                .io_context(|| format!("listing {}", current.display()))?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else if path != dir.join(MANIFEST) {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// Writes `to` (mode 0600) from `from` through `filter`, keeps the modification time, and
/// flushes it.
fn convert(
    from: &Path,
    to: &Path,
    filter: impl FnOnce(&mut BufReader<File>, &mut BufWriter<&File>) -> std::io::Result<()>,
) -> Result<()> {
    let input = File::open(from).io_context(|| format!("opening {}", from.display()))?;
    let mtime = input
        .metadata()
        .and_then(|m| m.modified())
        .io_context(|| format!("stat {}", from.display()))?;
    let output = File::options()
        .write(true)
        .create(true)
        .truncate(true)
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
