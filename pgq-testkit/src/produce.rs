//! Producers writing at the same time, for tests of the backlog they leave.

use crate::TestkitError;

/// Runs `producers` connections to `dsn` at once, each running `transactions` transactions
/// that insert into `queue`: transaction `t` of producer `p` inserts `events(p, t)` events
/// (type `e`, data `x`, `ev_extra1` = `p{p}t{t}`) and rolls back when `rollback(p, t)`.
/// Returns how many events were committed.
///
/// # Errors
///
/// The first connection or statement that fails.
pub async fn produce_concurrently(
    dsn: &str,
    queue: &str,
    producers: usize,
    transactions: usize,
    events: fn(usize, usize) -> usize,
    rollback: fn(usize, usize) -> bool,
) -> anyhow::Result<usize> {
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let (dsn, queue) = (dsn.to_owned(), queue.to_owned());
            tokio::spawn(async move {
                let mut client = pgq_core::Dsn::parse(&dsn)?.connect().await?;
                let mut committed = 0;
                for t in 0..transactions {
                    let n = events(p, t);
                    let tx = client.transaction().await?;
                    tx.execute(
                        "SELECT count(pgq.insert_event($1, 'e', 'x', $2, NULL, NULL, NULL))
                           FROM generate_series(1, $3)",
                        &[&queue, &format!("p{p}t{t}"), &i32::try_from(n)?],
                    )
                    .await?;
                    if rollback(p, t) {
                        tx.rollback().await?;
                    } else {
                        tx.commit().await?;
                        committed += n;
                    }
                }
                anyhow::Ok(committed)
            })
        })
        .collect();
    let mut committed = 0;
    for task in tasks {
        committed += task.await.map_err(|e| TestkitError::Io {
            context: "a producer task".to_owned(),
            source: std::io::Error::other(e),
        })??;
    }
    Ok(committed)
}
