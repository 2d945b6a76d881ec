//! `backup_manifest` in the format `pg_verifybackup` reads (version 1), and checking a copy
//! against it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use crate::checksum::{Checksummer, ManifestChecksum};
use crate::compress::SUFFIX;
use crate::error::{Error, IoContext as _, Result};
use crate::lsn::{segment_name, Lsn};

/// The manifest's file name in the copy.
pub const MANIFEST: &str = "backup_manifest";

/// Paths `pg_verifybackup` does not expect in the manifest (the server writes or removes them
/// itself, or they are checked another way).
const UNLISTED: &[&str] = &[
    MANIFEST,
    "pg_wal",
    "postgresql.auto.conf",
    "standby.signal",
    "recovery.signal",
];

/// One file of the copy as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileEntry {
    size: u64,
    algorithm: ManifestChecksum,
    /// Hex; `None` under [`ManifestChecksum::None`].
    checksum: Option<String>,
}

/// The WAL the copy needs to reach consistency.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalRange {
    pub(crate) timeline: u32,
    pub(crate) start: Lsn,
    pub(crate) end: Lsn,
}

/// Size and checksum (of the manifest's algorithm) of files summed while they were fetched,
/// by relative path.
pub(crate) type KnownSums = HashMap<String, (u64, String)>;

/// Renders the manifest of the copy with `algorithm`'s checksums. Files in `known` whose size
/// on disk still matches keep the checksum computed while they were fetched; every other file
/// is read and summed (under [`ManifestChecksum::None`] only compressed ones, for their size).
pub(crate) fn render(
    dir: &Path,
    wal: WalRange,
    algorithm: ManifestChecksum,
    known: &KnownSums,
) -> Result<String> {
    let files = scan(dir, known, &|_| Some(algorithm))?;
    let mut text = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [");
    for (i, (path, (entry, mtime))) in files.iter().enumerate() {
        let sep = if i == 0 { "\n" } else { ",\n" };
        let path_json = serde_json::Value::String(path.clone()).to_string();
        let _ = write!(
            text,
            "{sep}{{ \"Path\": {path_json}, \"Size\": {}, \"Last-Modified\": \"{}\"",
            entry.size,
            mtime.format("%Y-%m-%d %H:%M:%S GMT"),
        );
        if let Some(checksum) = &entry.checksum {
            let _ = write!(
                text,
                ", \"Checksum-Algorithm\": \"{}\", \"Checksum\": \"{checksum}\"",
                entry.algorithm
            );
        }
        text.push_str(" }");
    }
    let _ = write!(
        text,
        " ],\n\"WAL-Ranges\": [\n{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}\n],\n",
        wal.timeline, wal.start, wal.end
    );
    let checksum = hex(&Sha256::digest(text.as_bytes()));
    let _ = writeln!(text, "\"Manifest-Checksum\": \"{checksum}\"}}");
    Ok(text)
}

/// Writes `backup_manifest` atomically: to a temporary name, flushed, then renamed. Its
/// presence marks the copy complete.
pub(crate) fn install(dir: &Path, text: &str) -> Result<()> {
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let mut file = File::create(&tmp).io_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .io_context(|| format!("writing {}", tmp.display()))?;
    let path = dir.join(MANIFEST);
    fs::rename(&tmp, &path).io_context(|| format!("renaming {}", tmp.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .io_context(|| format!("flushing {}", dir.display()))
}

/// The algorithm to sum a file with, by relative path; `None` for a file to skip.
type AlgorithmOf<'a> = dyn Fn(&str) -> Option<ManifestChecksum> + Sync + 'a;

/// Every regular file under `dir` that the manifest lists, by `/`-separated relative path,
/// summed with the algorithm `algorithm_of` names for it (files it names none for are listed
/// with their size on disk only); a compressed `<name>.zst` counts as `<name>` with its
/// decompressed size and checksum. Uncompressed files in `known` with the recorded size are
/// not read again.
fn scan(
    dir: &Path,
    known: &KnownSums,
    algorithm_of: &AlgorithmOf<'_>,
) -> Result<BTreeMap<String, (FileEntry, DateTime<Utc>)>> {
    let mut todo = Vec::new();
    let mut found = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        let entries = fs::read_dir(&abs).io_context(|| format!("listing {}", abs.display()))?;
        for entry in entries {
            let entry = entry.io_context(|| format!("listing {}", abs.display()))?;
            let stored = entry.file_name().to_string_lossy().into_owned();
            let compressed = stored.ends_with(SUFFIX) && entry.path().is_file();
            let name = if compressed {
                stored[..stored.len() - SUFFIX.len()].to_owned()
            } else {
                stored
            };
            let rel_path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if UNLISTED.contains(&rel_path.as_str()) || rel_path == format!("{MANIFEST}.tmp") {
                continue;
            }
            let path = entry.path();
            let meta = fs::metadata(&path).io_context(|| format!("stat {}", path.display()))?;
            if meta.is_dir() {
                stack.push((path, rel_path));
            } else {
                let mtime: DateTime<Utc> = meta
                    .modified()
                    .io_context(|| format!("stat {}", path.display()))?
                    .into();
                let algorithm = algorithm_of(&rel_path);
                match (algorithm, known.get(&rel_path)) {
                    (Some(algorithm), Some((size, checksum)))
                        if !compressed && *size == meta.len() =>
                    {
                        let entry = FileEntry {
                            size: *size,
                            algorithm,
                            checksum: Some(checksum.clone()),
                        };
                        found.insert(rel_path, (entry, mtime));
                    }
                    (None | Some(ManifestChecksum::None), _) if !compressed => {
                        let entry = FileEntry {
                            size: meta.len(),
                            algorithm: ManifestChecksum::None,
                            checksum: None,
                        };
                        found.insert(rel_path, (entry, mtime));
                    }
                    _ => todo.push((
                        rel_path,
                        path,
                        compressed,
                        mtime,
                        algorithm.unwrap_or(ManifestChecksum::None),
                    )),
                }
            }
        }
    }
    // Hash on two threads, largest files spread by the shared cursor.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let found = std::sync::Mutex::new(found);
    let worker = || -> Result<()> {
        loop {
            let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some((rel_path, path, compressed, mtime, algorithm)) = todo.get(index) else {
                return Ok(());
            };
            let (size, checksum) = sum_file(path, *compressed, *algorithm)?;
            let entry = FileEntry {
                size,
                algorithm: *algorithm,
                checksum,
            };
            found
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(rel_path.clone(), (entry, *mtime));
        }
    };
    crate::on_threads(2, worker)?;
    Ok(found.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Size and checksum of a file's contents (decompressed when `compressed`).
fn sum_file(
    path: &Path,
    compressed: bool,
    algorithm: ManifestChecksum,
) -> Result<(u64, Option<String>)> {
    let file = File::open(path).io_context(|| format!("opening {}", path.display()))?;
    let mut file: Box<dyn std::io::Read> = if compressed {
        Box::new(
            zstd::stream::Decoder::new(file)
                .io_context(|| format!("decompressing {}", path.display()))?,
        )
    } else {
        Box::new(file)
    };
    let mut sum = algorithm.start();
    let mut size = 0;
    let mut buf = vec![0_u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .io_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        size += u64::try_from(n).unwrap_or(0);
        if let Some(sum) = &mut sum {
            sum.update(&buf[..n]);
        }
    }
    Ok((size, sum.map(Checksummer::finish)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One way a copy differs from its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The manifest's own checksum does not match its contents.
    ManifestChecksum,
    /// A file the manifest lists is not in the copy.
    Missing {
        /// Relative path.
        path: String,
    },
    /// A file is in the copy but not in the manifest.
    Extra {
        /// Relative path.
        path: String,
    },
    /// A file's size differs.
    Size {
        /// Relative path.
        path: String,
        /// Per the manifest.
        expected: u64,
        /// On disk.
        found: u64,
    },
    /// A file's checksum differs.
    Checksum {
        /// Relative path.
        path: String,
    },
    /// A WAL segment of the manifest's WAL range is not in `pg_wal`.
    WalMissing {
        /// The segment's file name.
        segment: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::ManifestChecksum => write!(f, "the manifest checksum does not match"),
            Problem::Missing { path } => write!(f, "{path}: in the manifest, not in the copy"),
            Problem::Extra { path } => write!(f, "{path}: in the copy, not in the manifest"),
            Problem::Size {
                path,
                expected,
                found,
            } => write!(f, "{path}: size {found}, manifest says {expected}"),
            Problem::Checksum { path } => write!(f, "{path}: checksum mismatch"),
            Problem::WalMissing { segment } => write!(f, "pg_wal/{segment}: WAL segment missing"),
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Files checked against the manifest.
    pub files_checked: usize,
    /// Every mismatch, in path order.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether the copy matches its manifest.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks a copy against its `backup_manifest`: the manifest's checksum, then every file's
/// presence, size and checksum (with the algorithm the manifest names for it), files not in the manifest, and the WAL segments of its range.
///
/// # Errors
///
/// [`Error::Manifest`] when the manifest is missing (the copy is incomplete) or unreadable.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let path = dir.join(MANIFEST);
    let bad = |reason: String| Error::Manifest {
        path: path.clone(),
        reason,
    };
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad("missing: the copy is incomplete".to_owned()));
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let mut report = VerifyReport::default();
    if !checksum_matches(&bytes) {
        report.problems.push(Problem::ManifestChecksum);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let files = json["Files"]
        .as_array()
        .ok_or_else(|| bad("no \"Files\" array".to_owned()))?;
    let mut expected = BTreeMap::new();
    for file in files {
        let (Some(path), Some(size)) = (file["Path"].as_str(), file["Size"].as_u64()) else {
            return Err(bad(format!("malformed file entry {file}")));
        };
        let algorithm = match file["Checksum-Algorithm"].as_str() {
            None => ManifestChecksum::None,
            Some(name) => name.parse().map_err(|e| bad(format!("{path}: {e}")))?,
        };
        let checksum = file["Checksum"].as_str().map(str::to_owned);
        if checksum.is_some() != (algorithm != ManifestChecksum::None) {
            return Err(bad(format!(
                "{path}: a checksum needs an algorithm, and an algorithm a checksum"
            )));
        }
        expected.insert(
            path.to_owned(),
            FileEntry {
                size,
                algorithm,
                checksum,
            },
        );
    }
    let found = scan(dir, &KnownSums::new(), &|path| {
        expected.get(path).map(|entry| entry.algorithm)
    })?;
    for (path, want) in &expected {
        report.files_checked += 1;
        match found.get(path) {
            None => report
                .problems
                .push(Problem::Missing { path: path.clone() }),
            Some((have, _)) if have.size != want.size => report.problems.push(Problem::Size {
                path: path.clone(),
                expected: want.size,
                found: have.size,
            }),
            Some((have, _)) if have.checksum != want.checksum => {
                report
                    .problems
                    .push(Problem::Checksum { path: path.clone() });
            }
            Some(_) => {}
        }
    }
    for path in found.keys().filter(|p| !expected.contains_key(*p)) {
        report.problems.push(Problem::Extra { path: path.clone() });
    }
    for range in json["WAL-Ranges"].as_array().into_iter().flatten() {
        check_wal(dir, range, &mut report).map_err(bad)?;
    }
    Ok(report)
}

/// Whether the manifest's last line carries the SHA-256 of everything before it.
fn checksum_matches(bytes: &[u8]) -> bool {
    let Some(body) = bytes.strip_suffix(b"\n") else {
        return false;
    };
    let Some(cut) = body.iter().rposition(|&b| b == b'\n') else {
        return false;
    };
    let last = String::from_utf8_lossy(&body[cut + 1..]);
    let Some(value) = last
        .strip_prefix("\"Manifest-Checksum\": \"")
        .and_then(|rest| rest.strip_suffix("\"}"))
    else {
        return false;
    };
    value == hex(&Sha256::digest(&bytes[..=cut]))
}

/// Notes every segment of one WAL range missing from `pg_wal` (plain or compressed); the
/// segment size is taken from an uncompressed segment, else 16 MiB.
fn check_wal(
    dir: &Path,
    range: &serde_json::Value,
    report: &mut VerifyReport,
) -> Result<(), String> {
    let lsn = |key: &str| -> Result<Lsn, String> {
        range[key]
            .as_str()
            .ok_or_else(|| format!("WAL range without {key}"))?
            .parse()
            .map_err(|e: Error| e.to_string())
    };
    let (start, end) = (lsn("Start-LSN")?, lsn("End-LSN")?);
    let timeline = range["Timeline"]
        .as_u64()
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| "WAL range without Timeline".to_owned())?;
    let wal_dir: PathBuf = dir.join("pg_wal");
    let seg_size = fs::read_dir(&wal_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().len() == 24)
        .find_map(|e| e.metadata().ok().map(|m| m.len()))
        .filter(|&len| len.is_power_of_two())
        .unwrap_or(16 * 1024 * 1024);
    for segno in start.0 / seg_size..=end.0.saturating_sub(1) / seg_size {
        let segment = segment_name(timeline, segno, seg_size);
        let packed = wal_dir.join(format!("{segment}{SUFFIX}"));
        if !wal_dir.join(&segment).is_file() && !packed.is_file() {
            report.problems.push(Problem::WalMissing { segment });
        }
    }
    Ok(())
}
