//! Routing keys to the partition databases from Rust, without PL/Proxy: one pool per database,
//! and the event inserted inside the producer's own transaction there.

use std::ops::{Deref, DerefMut};

use deadpool_postgres::{Object, Pool, PoolError};

use super::{check_layout, database_of, insert_event_by_key};
use crate::dsn::Dsn;
use crate::error::{Error, Result};
use crate::ident::QueueName;
use crate::ids::EventId;
use crate::producer::NewEvent;

/// A producer's router over the databases of a partitioned queue: one connection pool per
/// database, keys mapped as [`super::setup_proxy`] maps them (`logical` partitions, logical
/// partition `p` on database `p % databases`), so the Rust producers and the proxy's put every
/// key on the same database.
///
/// Unlike a call through PL/Proxy, which commits on the partition on its own, an event inserted
/// on a [`PartitionClient`] is part of the transaction the producer opens there: it exists
/// exactly when the producer's changes on that database commit. A database that cannot be
/// reached fails the keys routed to it with [`Error::Partition`], naming it; the other keys go
/// on.
pub struct Router {
    logical: u32,
    partitions: Vec<Partition>,
}

struct Partition {
    /// Host, port and database name, for errors (never the password).
    name: String,
    pool: Pool,
}

/// A pooled connection to the database of one key, from [`Router::client`]. It derefs to the
/// driver's client: open a transaction on it, write the producer's rows and insert the event with
/// [`insert_event_by_key`], then commit.
pub struct PartitionClient {
    partition: usize,
    client: Object,
}

impl PartitionClient {
    /// The database's index in the router's list.
    pub fn partition(&self) -> usize {
        self.partition
    }
}

impl Deref for PartitionClient {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        &self.client
    }
}

impl DerefMut for PartitionClient {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Client {
        &mut self.client
    }
}

impl Router {
    /// A router over `databases` (in the order the proxy was set up with) with `logical`
    /// partitions and pools of at most `pool_size` connections each. Connects lazily.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPartitions`] for a layout the proxy would refuse too; [`Error::Tls`] or
    /// [`Error::InvalidDsn`] when a pool cannot be built.
    pub fn new(databases: &[Dsn], logical: u32, pool_size: usize) -> Result<Router> {
        check_layout(databases.len(), logical)?;
        let partitions = databases
            .iter()
            .map(|dsn| {
                Ok(Partition {
                    name: format!(
                        "host={} port={} dbname={}",
                        dsn.setting("host").unwrap_or_default(),
                        dsn.setting("port").unwrap_or_default(),
                        dsn.dbname()
                    ),
                    pool: dsn.pool(pool_size)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Router {
            logical,
            partitions,
        })
    }

    /// The index of the database that holds `key`.
    pub fn database_of(&self, key: &str) -> usize {
        database_of(key, self.logical, self.partitions.len())
    }

    /// A connection to the database that holds `key`.
    ///
    /// # Errors
    ///
    /// [`Error::Partition`] naming the database when no connection can be had there.
    pub async fn client(&self, key: &str) -> Result<PartitionClient> {
        let partition = self.database_of(key);
        let client = self.partitions[partition]
            .pool
            .get()
            .await
            .map_err(|err| self.error(partition, pool_error(err)))?;
        Ok(PartitionClient { partition, client })
    }

    /// Inserts one event for `key` on its database in a transaction of its own and returns its
    /// id. To make the event part of the producer's own changes, use [`Router::client`] and
    /// [`insert_event_by_key`] in the producer's transaction instead.
    ///
    /// # Errors
    ///
    /// [`Error::Partition`] naming the database, with the reason: no connection, or the
    /// insert's own error (as for [`crate::insert_event`]).
    pub async fn insert_event(
        &self,
        queue: &QueueName,
        key: &str,
        event: &NewEvent,
    ) -> Result<EventId> {
        let client = self.client(key).await?;
        insert_event_by_key(&*client, queue, key, event)
            .await
            .map_err(|err| self.error(client.partition, err))
    }

    /// `source`, saying on which database it happened.
    pub fn error(&self, partition: usize, source: Error) -> Error {
        Error::Partition {
            partition,
            database: self.partitions[partition].name.clone(),
            source: Box::new(source),
        }
    }
}

/// The pool's error as a crate error. The pools have no timeouts and are never closed, so in
/// practice it is the connection's own error.
fn pool_error(err: PoolError) -> Error {
    match err {
        PoolError::Backend(source) => Error::Db {
            op: "connect",
            source,
        },
        other => Error::InvalidDsn {
            reason: format!("connection pool: {other}"),
        },
    }
}
