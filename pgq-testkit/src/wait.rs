//! Waiting for a condition with a deadline, never for a fixed time.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::TestkitError;

/// How long the waiting helpers pause between two looks.
pub const POLL: Duration = Duration::from_millis(20);

/// A point in time a test gives up at, for loops that keep state between their looks (a
/// consumer taking batches, a process read line by line). Where a closure can make each look,
/// [`wait_for`] is shorter.
///
/// ```no_run
/// # async fn f(client: &tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let deadline = pgq_testkit::Deadline::after(Duration::from_secs(10));
/// while client.query_one("SELECT count(*) FROM t", &[]).await?.get::<_, i64>(0) < 3 {
///     deadline.pause("three rows in t").await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    limit: Duration,
}

impl Deadline {
    /// `limit` from now.
    pub fn after(limit: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + limit,
            limit,
        }
    }

    /// The moment itself, for `tokio::time::timeout_at`.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// Whether it has passed.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Pauses for [`POLL`] before the next look.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Timeout`] naming `what` once the deadline has passed.
    pub async fn pause(&self, what: impl Display) -> Result<(), TestkitError> {
        if self.passed() {
            return Err(TestkitError::Timeout {
                what: what.to_string(),
                after: self.limit,
            });
        }
        tokio::time::sleep(POLL).await;
        Ok(())
    }
}

/// Looks at `check` every [`POLL`] until it says yes.
///
/// # Errors
///
/// The first error of `check`, or [`TestkitError::Timeout`] naming `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Deadline::after(limit);
    while !check().await? {
        deadline.pause(what).await?;
    }
    Ok(())
}
