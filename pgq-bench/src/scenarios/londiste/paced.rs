//! The highest provider rate a live replicator keeps up with: the uniform load written at a
//! paced rate for a fixed time while the replicator runs, at rates doubling from a start and
//! then bisecting, for a bounded number of steps.
//!
//! Lag is read from a marker row the provider counts up every [`PROBE`] in a transaction of
//! its own, between the load's transactions: the lag at a probe is the age of the oldest count
//! the subscriber does not show yet (0 when it shows the last), which is how long the oldest
//! change not yet applied has waited, to within [`PROBE`]. A step keeps up when neither those
//! samples nor the time the last count, written after the load, takes to arrive reach
//! [`LAG_LIMIT`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use pgq_core::Dsn;

use super::workload::{STRIDE, TXN_SIZE};

/// The lag a replicator must stay under.
pub(super) const LAG_LIMIT: Duration = Duration::from_secs(5);
/// How often the provider stamps the marker and the subscriber's copy is read.
pub(super) const PROBE: Duration = Duration::from_millis(100);
/// The first rate tried, in updated rows per second.
pub(super) const START_RATE: u64 = 20_000;
/// Connections writing the load, each half of the rate.
const WRITERS: u64 = 2;
/// A step whose provider wrote less than this share of the rate asked for ends the search: the
/// provider cannot write faster.
const REACHED: f64 = 0.95;
/// How long the replicator may take to catch up after a step before the search gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

// language=SQL
const STAMP: &str = "UPDATE public.bench_marker SET n = n + 1 WHERE id = 1 RETURNING n";

// language=SQL
const READ_STAMP: &str = "SELECT n FROM public.bench_marker WHERE id = 1";

/// One step of the search.
#[derive(Debug, Clone, Copy)]
pub(super) struct Step {
    /// Rows per second asked for.
    pub(super) rate: u64,
    /// Rows per second the provider wrote.
    pub(super) achieved: f64,
    /// The largest lag seen, in seconds.
    pub(super) max_lag: f64,
}

impl Step {
    pub(super) fn kept_up(&self) -> bool {
        self.max_lag < LAG_LIMIT.as_secs_f64()
    }

    fn reached(&self) -> bool {
        self.achieved >= REACHED * self.rate as f64
    }
}

/// The search's steps and its answer.
#[derive(Debug, Default)]
pub(super) struct Search {
    pub(super) steps: Vec<Step>,
}

impl Search {
    /// The highest rate the provider wrote in a step that kept up.
    pub(super) fn best(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| s.kept_up())
            .max_by(|a, b| a.achieved.total_cmp(&b.achieved))
    }

    /// The steps, for the report's notes.
    pub(super) fn describe(&self) -> String {
        self.steps
            .iter()
            .map(|s| {
                format!(
                    "{} rows/s asked, {:.0} written, lag up to {:.2} s{}",
                    s.rate,
                    s.achieved,
                    s.max_lag,
                    if s.kept_up() { "" } else { " (behind)" }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Runs the search against a replicator that is running from `provider`'s `accounts` of
/// `rows` rows (and marker) to `subscriber`: at most `max_steps` steps of `step` each.
pub(super) async fn search(
    provider: &Dsn,
    subscriber: &Dsn,
    rows: u64,
    step: Duration,
    max_steps: usize,
) -> Result<Search> {
    let mut found = Search::default();
    let (mut ok, mut bad): (Option<u64>, Option<u64>) = (None, None);
    let mut rate = START_RATE;
    let walk = Arc::new(AtomicU64::new(0));
    for _ in 0..max_steps {
        let done = run_step(provider, subscriber, rows, rate, step, &walk).await?;
        tracing::info!(?done, "paced step");
        found.steps.push(done);
        if done.kept_up() && !done.reached() {
            // The provider could write no faster: higher rates cannot be asked.
            break;
        }
        if done.kept_up() {
            ok = Some(ok.map_or(rate, |o| o.max(rate)));
        } else {
            bad = Some(bad.map_or(rate, |b| b.min(rate)));
        }
        rate = match (ok, bad) {
            (Some(o), None) => o * 2,
            (None, Some(b)) => b / 2,
            (Some(o), Some(b)) if b - o > o / 4 => (o + b) / 2 / 1000 * 1000,
            _ => break,
        };
        if rate < 1000 {
            break;
        }
    }
    Ok(found)
}

/// Writes the load at `rate` for `length` while probing the lag, then waits for the last
/// stamp to arrive.
async fn run_step(
    provider: &Dsn,
    subscriber: &Dsn,
    rows: u64,
    rate: u64,
    length: Duration,
    walk: &Arc<AtomicU64>,
) -> Result<Step> {
    let stamper = provider.connect().await?;
    let watch = subscriber.connect().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (dsn, walk, stop) = (provider.clone(), Arc::clone(walk), Arc::clone(&stop));
            tokio::spawn(write_paced(
                dsn,
                rows,
                rate / WRITERS,
                started,
                length,
                walk,
                stop,
            ))
        })
        .collect();
    let mut lag = Lag::default();
    let mut probing = tokio::time::interval(PROBE);
    while started.elapsed() < length {
        probing.tick().await;
        lag.stamped(
            stamper
                .query_one(STAMP, &[])
                .await
                .context("stamping")?
                .get(0),
        );
        lag.seen(watch.query_one(READ_STAMP, &[]).await?.get(0));
    }
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for writer in writers {
        written += writer.await??;
    }
    let achieved = written as f64 / started.elapsed().as_secs_f64();
    lag.stamped(stamper.query_one(STAMP, &[]).await?.get(0));
    let drain = Instant::now();
    while !lag.seen(watch.query_one(READ_STAMP, &[]).await?.get(0)) {
        ensure!(
            drain.elapsed() < DRAIN_TIMEOUT,
            "the replicator did not catch up after a step at {rate} rows/s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let max_lag = lag.max.as_secs_f64();
    Ok(Step {
        rate,
        achieved,
        max_lag,
    })
}

/// The marker's counts not yet seen on the subscriber, and the largest lag so far.
#[derive(Default)]
struct Lag {
    waiting: VecDeque<(i64, Instant)>,
    max: Duration,
}

impl Lag {
    fn stamped(&mut self, n: i64) {
        self.waiting.push_back((n, Instant::now()));
    }

    /// The subscriber shows count `n`; `true` when it shows every count stamped.
    fn seen(&mut self, n: i64) -> bool {
        while self
            .waiting
            .front()
            .is_some_and(|&(waiting, _)| waiting <= n)
        {
            self.waiting.pop_front();
        }
        match self.waiting.front() {
            Some((_, at)) => {
                self.max = self.max.max(at.elapsed());
                false
            }
            None => true,
        }
    }
}

/// Commits transactions of [`TXN_SIZE`] single-row updates at `rate` rows per second until
/// `length` has passed since `started` (or `stop`); returns the rows updated.
async fn write_paced(
    dsn: Dsn,
    rows: u64,
    rate: u64,
    started: Instant,
    length: Duration,
    walk: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<u64> {
    let client = dsn.connect().await?;
    let update = client
        .prepare("UPDATE public.accounts SET abalance = abalance + 1 WHERE aid = ANY($1)")
        .await?;
    let every = Duration::from_secs_f64(TXN_SIZE as f64 / rate.max(1) as f64);
    let mut due = Instant::now();
    let mut written = 0;
    while started.elapsed() < length && !stop.load(Ordering::Relaxed) {
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        due += every;
        let t = walk.fetch_add(1, Ordering::Relaxed);
        let aids: Vec<i32> = (0..TXN_SIZE)
            .map(|k| i32::try_from((t * TXN_SIZE + k) * STRIDE % rows + 1).unwrap_or(1))
            .collect();
        written += client.execute(&update, &[&aids]).await?;
    }
    Ok(written)
}
