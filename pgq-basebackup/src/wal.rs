//! Fetching WAL segments while the backup runs and after it stops.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::error::{DbContext as _, Error, IoContext as _, Result};
use crate::lsn::{segment_name, Lsn};

/// How often the source's flush position is polled while the backup runs.
const POLL: Duration = Duration::from_millis(200);

/// How often it is polled once the stop position is known: the backup waits only for that,
/// and the stop record reaches disk within the WAL writer's delay (200 ms by default), often
/// sooner.
const POLL_AFTER_STOP: Duration = Duration::from_millis(10);

/// The largest WAL page size PostgreSQL can be built with: the last segment is fetched to the
/// stop position rounded up to it, so the page holding the stop position is whole.
const MAX_WAL_PAGE: u64 = 64 * 1024;

/// Where WAL comes from and goes to.
pub(crate) struct WalFetcher {
    /// A connection of its own.
    pub(crate) client: Client,
    /// `DEST/pg_wal`.
    pub(crate) dir: PathBuf,
    /// `wal_segment_size` in bytes.
    pub(crate) seg_size: u64,
    /// The timeline the backup started on.
    pub(crate) timeline: u32,
    /// The backup's start position.
    pub(crate) start: Lsn,
    /// Bytes written, for progress.
    pub(crate) copied: Arc<AtomicU64>,
}

impl WalFetcher {
    /// Fetches every finished segment from the start position on, until `stop` carries the
    /// stop position; then fetches the rest up to it, and the timeline history file.
    pub(crate) async fn run(self, mut stop: watch::Receiver<Option<Lsn>>) -> Result<u64> {
        let mut next = self.start.0 / self.seg_size;
        let mut fetched = 0;
        loop {
            let stop_at = *stop.borrow_and_update();
            let flush = self.flush_lsn().await?;
            let mut last_done = flush.0 / self.seg_size;
            if let Some(stop_lsn) = stop_at {
                if flush >= stop_lsn {
                    last_done = (stop_lsn.0 - 1) / self.seg_size + 1;
                }
            }
            while next < last_done {
                // The segment holding the stop position is fetched only up to it and padded
                // with zeros, as pg_basebackup's streamed WAL is: nothing past it is needed,
                // and it spares most of a segment on a slow link.
                let needed = stop_at
                    .filter(|stop_lsn| (stop_lsn.0 - 1) / self.seg_size == next)
                    .map_or(self.seg_size, |stop_lsn| {
                        ((stop_lsn.0 - 1) % self.seg_size / MAX_WAL_PAGE + 1) * MAX_WAL_PAGE
                    });
                let name = segment_name(self.timeline, next, self.seg_size);
                self.fetch(&name, needed.min(self.seg_size), self.seg_size)
                    .await?;
                next += 1;
                fetched += 1;
            }
            if let Some(stop_lsn) = stop_at {
                if next > (stop_lsn.0 - 1) / self.seg_size {
                    break;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(if stop_at.is_some() { POLL_AFTER_STOP } else { POLL }) => {}
                _ = stop.changed(), if stop_at.is_none() => {}
            }
        }
        if self.timeline > 1 {
            self.fetch(&format!("{:08X}.history", self.timeline), self.seg_size, 0)
                .await?;
        }
        Ok(fetched)
    }

    async fn flush_lsn(&self) -> Result<Lsn> {
        let row = self
            .client
            .query_one(
                "SELECT pg_catalog.pg_current_wal_flush_lsn()::pg_catalog.text",
                &[],
            )
            .await
            .op("reading the WAL flush position")?;
        row.get::<_, String>(0).parse()
    }

    /// Copies the first `len` bytes of `pg_wal/<name>`, padded with zeros to `pad_to` bytes.
    async fn fetch(&self, name: &str, len: u64, pad_to: u64) -> Result<()> {
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        let row = self
            .client
            .query_one(
                "SELECT pg_catalog.pg_read_binary_file($1, 0, $2, true)",
                &[&format!("pg_wal/{name}"), &len],
            )
            .await
            .op("reading a WAL segment")?;
        let mut data: Vec<u8> =
            row.get::<_, Option<Vec<u8>>>(0)
                .ok_or_else(|| Error::WalMissing {
                    segment: name.to_owned(),
                })?;
        data.resize(
            data.len()
                .max(usize::try_from(pad_to).unwrap_or(usize::MAX)),
            0,
        );
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.partial"));
        let copied = Arc::clone(&self.copied);
        let written = tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .io_context(|| format!("creating {}", tmp.display()))?;
            file.write_all(&data)
                .and_then(|()| file.sync_all())
                .io_context(|| format!("writing {}", tmp.display()))?;
            fs::rename(&tmp, &path).io_context(|| format!("renaming {}", tmp.display()))?;
            let written = u64::try_from(data.len()).unwrap_or(0);
            copied.fetch_add(written, Ordering::Relaxed);
            Ok(written)
        })
        .await??;
        // Counted on the fetcher's task, where a caller's local recorder sees it.
        metrics::counter!("pgq_basebackup_bytes_total").increment(written);
        metrics::counter!("pgq_basebackup_files_total").increment(1);
        Ok(())
    }
}
