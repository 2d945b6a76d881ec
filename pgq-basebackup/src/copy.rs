//! Fetching the listed files over several connections, in chunks, largest file first; small
//! files travel several to a query, so a link's round trips are not paid per file. Each file
//! is summed once, as its chunks arrive, for the manifest; each written chunk goes to a log, so
//! an interrupted backup can be resumed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::SystemTime;

use futures_util::{stream, StreamExt as _, TryStreamExt as _};
use pgq_core::Dsn;
use sha2::{Digest as _, Sha256};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use crate::checksum::{Checksummer, ManifestChecksum};
use crate::dest::Dest;
use crate::error::{DbContext as _, Error, IoContext as _, Result};
use crate::listing::SourceEntry;
use crate::manifest::{hex, KnownSums};
use crate::options::Progress;
use crate::throttle::Throttle;

/// Requests each job keeps in flight, so the server reads while the client writes.
const IN_FLIGHT: usize = 2;

/// The chunk log's file name in the copy; removed once the copy is complete.
pub(crate) const CHUNK_LOG: &str = "pgq_basebackup.chunks";

impl Chunk {
    /// Offset and length as `pg_read_binary_file` takes them.
    fn range(&self) -> (i64, i64) {
        let int8 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        (int8(self.offset), int8(self.len))
    }
}

/// Files one query fetches at most; bounds the arrays it sends.
const MAX_CHUNKS_PER_QUERY: usize = 1000;

/// One `pg_read_binary_file` call.
#[derive(Debug, Clone)]
struct Chunk {
    file: usize,
    offset: u64,
    len: u64,
    /// An interrupted backup logged this very range as written.
    logged: bool,
}

/// Bytes of early chunks a file's checksum may hold; past that it gives up, and the manifest
/// reads the file again.
const MAX_PENDING: usize = 128 * 1024 * 1024;

/// A file's manifest checksum, fed in offset order; chunks that arrive early wait in
/// `pending`. Without a checksum (`sum` is `None`) nothing is kept.
struct FileHash {
    sum: Option<Checksummer>,
    /// Bytes hashed so far.
    next: u64,
    pending: BTreeMap<u64, Vec<u8>>,
    /// Bytes held in `pending`.
    pending_bytes: usize,
    /// The file changed while it was copied: the manifest hashes it from disk.
    broken: bool,
}

impl FileHash {
    fn new(algorithm: ManifestChecksum) -> FileHash {
        FileHash {
            sum: algorithm.start(),
            next: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            broken: false,
        }
    }

    /// Sums `data` found at `offset`, and whatever waited for it.
    fn feed(&mut self, offset: u64, data: &[u8]) {
        let Some(sum) = self.sum.as_mut().filter(|_| !self.broken) else {
            return;
        };
        if offset != self.next {
            self.pending_bytes += data.len();
            if self.pending_bytes > MAX_PENDING {
                self.broken = true;
                self.pending = BTreeMap::new();
            } else {
                self.pending.insert(offset, data.to_vec());
            }
            return;
        }
        sum.update(data);
        self.next += u64::try_from(data.len()).unwrap_or(u64::MAX);
        while let Some(data) = self.pending.remove(&self.next) {
            self.pending_bytes -= data.len();
            sum.update(&data);
            self.next += u64::try_from(data.len()).unwrap_or(u64::MAX);
        }
    }
}

/// What happened to a file while it was copied.
#[derive(Debug, Default)]
struct Changes {
    /// Files that came back shorter than listed: the size to cut them to.
    shrunk: HashMap<usize, u64>,
    /// Files that vanished (dropped relations): removed from the copy.
    vanished: HashSet<usize>,
}

/// How the files are fetched.
pub(crate) struct CopyPlan<'a> {
    pub(crate) dsn: &'a Dsn,
    pub(crate) dest: &'a Dest,
    pub(crate) jobs: usize,
    pub(crate) chunk_size: u64,
    pub(crate) checksum: ManifestChecksum,
    pub(crate) resume: bool,
    pub(crate) throttle: Option<Throttle>,
    pub(crate) progress: Arc<Progress>,
}

/// Creates the directories and files of the copy, then fills the files over `jobs`
/// connections. Under `resume`, files the source no longer has are removed and logged
/// chunks are confirmed with the source instead of fetched again. Returns the size and
/// `plan.checksum` of every file copied whole and unchanged, by relative path.
///
/// # Errors
///
/// [`Error::UnsafeEntry`] before anything is written when an entry's path goes through a
/// symbolic link (see [`Dest::place`]); [`Error::Db`], [`Error::Io`] while copying.
pub(crate) async fn copy_files(plan: CopyPlan<'_>, entries: &[SourceEntry]) -> Result<KnownSums> {
    let dest = plan.dest;
    let placed = entries
        .iter()
        .map(|entry| dest.place(&entry.path, entry.is_dir))
        .collect::<Result<Vec<_>>>()?;
    let logged = if plan.resume {
        remove_stale(dest, entries)?;
        read_log(&dest.root().join(CHUNK_LOG))?
    } else {
        HashSet::new()
    };
    let mut files = Vec::new();
    let mut locals = Vec::new();
    for (entry, path) in entries.iter().zip(&placed) {
        if entry.is_dir {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .io_context(|| format!("creating directory {}", path.display()))?;
        } else {
            files.push(entry);
            locals.push(path.clone());
        }
    }
    // A fresh copy creates each file when its first chunk arrives, so fetching starts at once;
    // only empty files (which get no chunk) are made here. A resumed one sizes every file now.
    for (entry, path) in files
        .iter()
        .zip(&locals)
        .filter(|(e, _)| plan.resume || e.size == 0)
    {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(!plan.resume)
            .mode(0o600)
            .open(path)
            .io_context(|| format!("creating {}", path.display()))?;
        file.set_len(entry.size)
            .and_then(|()| file.set_modified(entry.mtime))
            .io_context(|| format!("sizing {}", path.display()))?;
    }

    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by(|&a, &b| files[b].size.cmp(&files[a].size));
    let mut chunks = Vec::new();
    for index in order {
        let mut offset = 0;
        while offset < files[index].size {
            let len = plan.chunk_size.min(files[index].size - offset);
            let key = (files[index].path.clone(), offset, len);
            chunks.push(Chunk {
                file: index,
                offset,
                len,
                logged: logged.contains(&key),
            });
            offset += len;
        }
    }
    let queries = pack(chunks, plan.chunk_size);
    plan.progress.set_total(files.iter().map(|e| e.size).sum());

    let mut remaining: Vec<AtomicUsize> = files.iter().map(|_| AtomicUsize::new(0)).collect();
    for chunk in queries.iter().flatten() {
        *remaining[chunk.file].get_mut() += 1;
    }
    let log_path = dest.root().join(CHUNK_LOG);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .io_context(|| format!("opening {}", log_path.display()))?;
    let (flush_tx, flush_rx) = mpsc::channel();
    let flush_rx = Arc::new(Mutex::new(flush_rx));
    let flushers: Vec<_> = (0..FLUSHERS)
        .map(|_| {
            let queue = Arc::clone(&flush_rx);
            tokio::task::spawn_blocking(move || flusher(&queue))
        })
        .collect();
    let shared = Arc::new(Shared {
        flush: Mutex::new(flush_tx),
        paths: files.iter().map(|e| e.path.clone()).collect(),
        locals: locals.clone(),
        mtimes: files.iter().map(|e| e.mtime).collect(),
        hashes: files
            .iter()
            .map(|_| Mutex::new(FileHash::new(plan.checksum)))
            .collect(),
        remaining,
        dest: dest.root().to_path_buf(),
        queries,
        next: AtomicUsize::new(0),
        changes: Mutex::new(Changes::default()),
        log: Mutex::new(log),
        throttle: plan.throttle,
        progress: plan.progress,
    });
    // Dropping the set (on the first error) aborts the other jobs. Each job connects on its
    // own task, so on a slow link the first fetches while the others still connect.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..plan.jobs.max(1) {
        let (dsn, shared) = (plan.dsn.with_pinned_search_path(), Arc::clone(&shared));
        tasks.spawn(async move {
            let client = dsn
                .connect()
                .await
                .map_err(|source| Error::Connect { source })?;
            run_job(client, shared).await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    drop(tasks);
    // The last sender goes with `shared`; the flushers then drain the queue and end.
    let shared = Arc::into_inner(shared).ok_or_else(|| Error::Protocol {
        what: "a copy job outlived the copy".to_owned(),
    })?;
    let Shared {
        changes,
        flush,
        hashes,
        ..
    } = shared;
    drop(flush);
    for flusher in flushers {
        flusher.await??;
    }

    let changes = changes.into_inner().unwrap_or_else(|e| e.into_inner());
    let copied = files.len() - changes.vanished.len();
    metrics::counter!("pgq_basebackup_files_total")
        .increment(u64::try_from(copied).unwrap_or(u64::MAX));
    let mut sums = KnownSums::new();
    for (index, hash) in hashes.into_iter().enumerate() {
        let hash = hash.into_inner().unwrap_or_else(|e| e.into_inner());
        let whole = !hash.broken && hash.pending.is_empty() && hash.next == files[index].size;
        let unchanged = !changes.vanished.contains(&index) && !changes.shrunk.contains_key(&index);
        if let Some(sum) = hash.sum.filter(|_| whole && unchanged) {
            sums.insert(files[index].path.clone(), (files[index].size, sum.finish()));
        }
    }
    for index in &changes.vanished {
        let path = &locals[*index];
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).io_context(|| format!("removing {}", path.display()));
            }
            _ => {}
        }
    }
    for (index, len) in changes.shrunk {
        if changes.vanished.contains(&index) {
            continue;
        }
        let path = &locals[index];
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .io_context(|| format!("opening {}", path.display()))?;
        file.set_len(len)
            .and_then(|()| file.set_modified(files[index].mtime))
            .and_then(|()| file.sync_all())
            .io_context(|| format!("truncating {}", path.display()))?;
    }
    for (_, path) in entries.iter().zip(&placed).filter(|(e, _)| e.is_dir) {
        File::open(path)
            .and_then(|dir| dir.sync_all())
            .io_context(|| format!("flushing directory {}", path.display()))?;
    }
    Ok(sums)
}

/// Groups chunks, in their order, into the queries that fetch them: a chunk joins the query
/// before it while their bytes stay within `limit` (so small files share one round trip); a
/// logged chunk, which is first checked with the source, has a query of its own.
fn pack(chunks: Vec<Chunk>, limit: u64) -> Vec<Vec<Chunk>> {
    let mut queries: Vec<Vec<Chunk>> = Vec::new();
    let mut bytes = 0;
    for chunk in chunks {
        match queries.last_mut() {
            Some(last)
                if !chunk.logged
                    && !last[0].logged
                    && last.len() < MAX_CHUNKS_PER_QUERY
                    && bytes + chunk.len <= limit =>
            {
                bytes += chunk.len;
                last.push(chunk);
            }
            _ => {
                bytes = chunk.len;
                queries.push(vec![chunk]);
            }
        }
    }
    queries
}

/// Removes what an interrupted backup left that is not part of this one: files the source
/// no longer lists, and the previous label, map and manifest. `pg_wal` and the chunk log stay.
/// Symbolic links are removed, never followed, except this backup's tablespace links.
fn remove_stale(dest: &Dest, entries: &[SourceEntry]) -> Result<()> {
    let keep: HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut stack = vec![(dest.root().to_path_buf(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        let listing = match fs::read_dir(&abs) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).io_context(|| format!("listing {}", abs.display())),
        };
        for item in listing {
            let item = item.io_context(|| format!("listing {}", abs.display()))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let rel_path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if rel_path == "pg_wal" || rel_path == CHUNK_LOG {
                continue;
            }
            let path = item.path();
            let kind = item
                .file_type()
                .io_context(|| format!("examining {}", path.display()))?;
            if keep.contains(rel_path.as_str()) {
                if kind.is_dir() || (kind.is_symlink() && dest.is_own_link(&rel_path)) {
                    stack.push((path, rel_path));
                }
            } else if kind.is_dir() {
                fs::remove_dir_all(&path).io_context(|| format!("removing {}", path.display()))?;
            } else {
                fs::remove_file(&path).io_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// The chunks an interrupted backup wrote, as `(path, offset, len)`. Lines are
/// `<offset> <len> <path>`; a torn last line is ignored.
fn read_log(path: &Path) -> Result<HashSet<(String, u64, u64)>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e).io_context(|| format!("opening {}", path.display())),
    };
    let mut logged = HashSet::new();
    for line in BufReader::new(file).lines() {
        let line = line.io_context(|| format!("reading {}", path.display()))?;
        let mut parts = line.splitn(3, ' ');
        let (Some(offset), Some(len), Some(file)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(offset), Ok(len)) = (offset.parse(), len.parse()) else {
            continue;
        };
        logged.insert((file.to_owned(), offset, len));
    }
    Ok(logged)
}

/// State the jobs share.
struct Shared {
    /// Names on the source.
    paths: Vec<String>,
    /// Where each goes in the copy.
    locals: Vec<PathBuf>,
    mtimes: Vec<SystemTime>,
    /// Each file's manifest checksum so far.
    hashes: Vec<Mutex<FileHash>>,
    /// Chunks not yet written, per file: the last one restores the time and flushes.
    remaining: Vec<AtomicUsize>,
    dest: PathBuf,
    /// What each query fetches, taken in order.
    queries: Vec<Vec<Chunk>>,
    next: AtomicUsize,
    changes: Mutex<Changes>,
    log: Mutex<File>,
    throttle: Option<Throttle>,
    progress: Arc<Progress>,
    /// Completed files go to the flushers, so fetching never waits for the disk.
    flush: Mutex<mpsc::Sender<Flush>>,
}

/// A completed file to flush: its handle, path, and the source's modification time.
type Flush = (File, PathBuf, SystemTime);

/// Threads flushing completed files while the jobs fetch.
const FLUSHERS: usize = 4;

/// Restores the time of and flushes every file it receives; returns the first failure.
fn flusher(queue: &Mutex<mpsc::Receiver<Flush>>) -> Result<()> {
    loop {
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((file, path, mtime)) = next else {
            return Ok(());
        };
        file.set_modified(mtime)
            .and_then(|()| file.sync_all())
            .io_context(|| format!("flushing {}", path.display()))?;
    }
}

/// The statements a job runs.
struct Statements {
    read: Statement,
    sum: Statement,
}

/// One connection taking queries off the shared list until it is empty.
async fn run_job(client: Client, shared: Arc<Shared>) -> Result<()> {
    let stmts = Statements {
        read: client
            .prepare_typed(
                "SELECT pg_catalog.pg_read_binary_file(f.path, f.off, f.len, true) \
                   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), \
                                   pg_catalog.unnest($3)) \
                        WITH ORDINALITY AS f(path, off, len, n) \
                  ORDER BY f.n",
                &[Type::TEXT_ARRAY, Type::INT8_ARRAY, Type::INT8_ARRAY],
            )
            .await
            .op("preparing pg_read_binary_file")?,
        sum: client
            .prepare_typed(
                "SELECT pg_catalog.encode(pg_catalog.sha256(\
                     pg_catalog.pg_read_binary_file($1, $2, $3, true)), 'hex')",
                &[Type::TEXT, Type::INT8, Type::INT8],
            )
            .await
            .op("preparing sha256(pg_read_binary_file)")?,
    };
    let feed = Arc::clone(&shared);
    let queries = stream::iter(std::iter::from_fn(move || {
        let index = feed.next.fetch_add(1, Ordering::Relaxed);
        feed.queries.get(index).cloned()
    }));
    queries
        .map(|query| {
            let (client, stmts, shared) = (&client, &stmts, Arc::clone(&shared));
            async move { copy_query(client, stmts, shared, query).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await
}

/// Confirms a logged chunk with the source, or fetches the query's chunks and writes them
/// into place.
async fn copy_query(
    client: &Client,
    stmts: &Statements,
    shared: Arc<Shared>,
    query: Vec<Chunk>,
) -> Result<()> {
    if let [chunk] = query.as_slice() {
        if chunk.logged && confirm(client, stmts, &shared, chunk).await? {
            return Ok(());
        }
    }
    if let Some(throttle) = &shared.throttle {
        throttle.acquire(query.iter().map(|c| c.len).sum()).await;
    }
    let paths: Vec<&str> = query
        .iter()
        .map(|c| shared.paths[c.file].as_str())
        .collect();
    let (offsets, lens): (Vec<i64>, Vec<i64>) = query.iter().map(Chunk::range).unzip();
    let rows = client
        .query(&stmts.read, &[&paths, &offsets, &lens])
        .await
        .op("reading files (pg_read_binary_file)")?;
    if rows.len() != query.len() {
        return Err(Error::Protocol {
            what: format!(
                "asked for {} file ranges, got {} rows",
                query.len(),
                rows.len()
            ),
        });
    }
    // The rows move to the writer, which borrows the bytes: no copy on the way to the disk.
    let written = tokio::task::spawn_blocking(move || -> Result<u64> {
        let mut written = 0;
        for (chunk, row) in query.iter().zip(&rows) {
            written += store(&shared, chunk, row.get(0))?;
        }
        Ok(written)
    })
    .await??;
    // Counted here, on the copy's task, not on the writer's thread: a recorder of the caller's
    // own (`metrics::set_default_local_recorder`) sees it.
    metrics::counter!("pgq_basebackup_bytes_total").increment(written);
    Ok(())
}

/// Whether a logged chunk on disk is what the source has in that range; if so it is kept.
async fn confirm(
    client: &Client,
    stmts: &Statements,
    shared: &Arc<Shared>,
    chunk: &Chunk,
) -> Result<bool> {
    let (offset, len) = chunk.range();
    let path = &shared.paths[chunk.file];
    let row = client
        .query_one(&stmts.sum, &[&path, &offset, &len])
        .await
        .op("checksumming a file range (sha256(pg_read_binary_file))")?;
    let Some(source) = row.get::<_, Option<String>>(0) else {
        return Ok(false);
    };
    let (shared, chunk) = (Arc::clone(shared), chunk.clone());
    tokio::task::spawn_blocking(move || keep(&shared, &chunk, &source)).await?
}

/// Keeps a chunk already on disk when it hashes to what the source has in that range.
fn keep(shared: &Shared, chunk: &Chunk, sum: &str) -> Result<bool> {
    let path = &shared.locals[chunk.file];
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .io_context(|| format!("opening {}", path.display()))?;
    let mut data = vec![0_u8; usize::try_from(chunk.len).unwrap_or(usize::MAX)];
    if file.read_exact_at(&mut data, chunk.offset).is_err() || hex(&Sha256::digest(&data)) != sum {
        return Ok(false);
    }
    shared.progress.add_reused(chunk.len);
    lock_hash(shared, chunk.file).feed(chunk.offset, &data);
    finish_chunk(shared, chunk, &file, path)?;
    Ok(true)
}

/// Writes one fetched chunk into place and logs it, and notes files that shrank or vanished.
/// Returns the bytes written.
fn store(shared: &Shared, chunk: &Chunk, data: Option<&[u8]>) -> Result<u64> {
    let Some(data) = data else {
        shared.remaining[chunk.file].fetch_sub(1, Ordering::AcqRel);
        let mut changes = shared.changes.lock().unwrap_or_else(|e| e.into_inner());
        changes.vanished.insert(chunk.file);
        return Ok(0);
    };
    let got = u64::try_from(data.len()).unwrap_or(u64::MAX);
    if got < chunk.len {
        lock_hash(shared, chunk.file).broken = true;
        let mut changes = shared.changes.lock().unwrap_or_else(|e| e.into_inner());
        let end = chunk.offset + got;
        let cut = changes.shrunk.entry(chunk.file).or_insert(end);
        *cut = (*cut).min(end);
    }
    let path = &shared.locals[chunk.file];
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .io_context(|| format!("opening {}", path.display()))?;
    file.write_all_at(data, chunk.offset)
        .io_context(|| format!("writing {}", path.display()))?;
    if got == chunk.len {
        let line = format!(
            "{} {} {}\n",
            chunk.offset, chunk.len, shared.paths[chunk.file]
        );
        let mut log = shared.log.lock().unwrap_or_else(|e| e.into_inner());
        log.write_all(line.as_bytes())
            .io_context(|| format!("writing the chunk log in {}", shared.dest.display()))?;
        drop(log);
        lock_hash(shared, chunk.file).feed(chunk.offset, data);
    }
    shared.progress.add_done(got);
    finish_chunk(shared, chunk, &file, path)?;
    Ok(got)
}

/// A file's running manifest checksum.
fn lock_hash(shared: &Shared, file: usize) -> std::sync::MutexGuard<'_, FileHash> {
    shared.hashes[file]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Counts a chunk as done; the file's last one hands it to the flushers.
fn finish_chunk(shared: &Shared, chunk: &Chunk, file: &File, path: &Path) -> Result<()> {
    if shared.remaining[chunk.file].fetch_sub(1, Ordering::AcqRel) == 1 {
        let handle = file
            .try_clone()
            .io_context(|| format!("opening {}", path.display()))?;
        let sent = shared
            .flush
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((handle, path.to_path_buf(), shared.mtimes[chunk.file]));
        if sent.is_err() {
            // The flushers stopped on an error, which the copy reports when it ends.
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_chunks_arriving_out_of_order() {
        let data: Vec<u8> = (0..10_000_u32).map(|i| (i % 251) as u8).collect();
        let mut hash = FileHash::new(ManifestChecksum::Sha256);
        for (offset, range) in [(4000, 4000..8000), (8000, 8000..10_000), (0, 0..4000)] {
            hash.feed(offset, &data[range]);
        }
        assert_eq!((hash.next, hash.pending.len()), (10_000, 0));
        assert_eq!(hash.sum.unwrap().finish(), hex(&Sha256::digest(&data)));
    }

    #[test]
    fn packs_small_chunks_and_keeps_logged_ones_alone() {
        let chunk = |file, len, logged| Chunk {
            file,
            offset: 0,
            len,
            logged,
        };
        let chunks = vec![
            chunk(0, 100, false),
            chunk(1, 60, false),
            chunk(2, 40, false),
            chunk(3, 30, false),
            chunk(4, 10, true),
            chunk(5, 10, false),
            chunk(6, 10, false),
        ];
        let files: Vec<Vec<usize>> = pack(chunks, 100)
            .iter()
            .map(|q| q.iter().map(|c| c.file).collect())
            .collect();
        assert_eq!(files, [vec![0], vec![1, 2], vec![3], vec![4], vec![5, 6]]);
    }

    #[test]
    fn gives_up_when_too_much_arrives_early() {
        let mut hash = FileHash::new(ManifestChecksum::Crc32c);
        hash.feed(1, &vec![0; MAX_PENDING + 1]);
        assert!(hash.broken && hash.pending.is_empty());
        hash.feed(0, &[0]);
        assert_eq!(hash.next, 0);
    }
}
