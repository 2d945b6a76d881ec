//! A backlog inserted by concurrent producers.

use anyhow::{ensure, Result};
use pgq_core::Dsn;
use tokio::task::JoinSet;
use tokio_postgres::{Client, Statement};

/// Inserts events `$3..=$4` (their number, left-padded with `x` to `$2` bytes, as `ev_data`)
/// into queue `$1` in one statement; says how many.
// language=SQL
const INSERT_RANGE: &str = "SELECT count(pgq.insert_event($1, 't', lpad(g::text, $2::int, 'x'))) \
     FROM generate_series($3::int8, $4::int8) g";

/// What a producer inserts into a queue: events numbered from 1, of `data_bytes` bytes,
/// `per_tx` to a transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Producer {
    pub(crate) queue: &'static str,
    pub(crate) data_bytes: i32,
    pub(crate) per_tx: u64,
}

/// A producer's connection with its statement prepared.
pub(crate) struct Producing {
    client: Client,
    insert: Statement,
    producer: Producer,
}

impl Producer {
    /// Connects to `dsn` and prepares the insert.
    pub(crate) async fn connect(self, dsn: &Dsn) -> Result<Producing> {
        let client = dsn.connect().await?;
        let insert = client.prepare(INSERT_RANGE).await?;
        Ok(Producing {
            client,
            insert,
            producer: self,
        })
    }

    /// Inserts events `1..=events` from `producers` connections at once, producer `p` taking
    /// transactions `p`, `p + producers`, ...
    pub(crate) async fn fill(self, dsn: &Dsn, events: u64, producers: u64) -> Result<()> {
        let transactions = events.div_ceil(self.per_tx);
        let mut tasks = JoinSet::new();
        for producer in 0..producers {
            let dsn = dsn.clone();
            tasks.spawn(async move {
                let producing = self.connect(&dsn).await?;
                let mut inserted = 0;
                for tx in (producer..transactions).step_by(usize::try_from(producers)?) {
                    let (first, last) =
                        (tx * self.per_tx + 1, ((tx + 1) * self.per_tx).min(events));
                    inserted += producing.insert(first, last).await?;
                }
                anyhow::Ok(inserted)
            });
        }
        let mut inserted = 0;
        while let Some(done) = tasks.join_next().await {
            inserted += done??;
        }
        ensure!(
            inserted == events,
            "{inserted} events inserted, {events} expected"
        );
        Ok(())
    }
}

impl Producing {
    /// Inserts events `first..=last` in one transaction; checks that it inserted them all.
    pub(crate) async fn insert(&self, first: u64, last: u64) -> Result<u64> {
        let Producer {
            queue, data_bytes, ..
        } = self.producer;
        let range = [i64::try_from(first)?, i64::try_from(last)?];
        let n: i64 = self
            .client
            .query_one(&self.insert, &[&queue, &data_bytes, &range[0], &range[1]])
            .await?
            .get(0);
        let n = u64::try_from(n)?;
        ensure!(
            n == last + 1 - first,
            "{n} events inserted in a transaction, {} expected",
            last + 1 - first
        );
        Ok(n)
    }
}
