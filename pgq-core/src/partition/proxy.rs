//! The PL/Proxy proxy database in front of the partitions.

use crate::dsn::Dsn;
use crate::error::{DbContext, Error, Result};
use crate::ident::{quote_ident, quote_literal};

/// The PL/Proxy cluster (an SQL/MED server) that [`setup_proxy`] makes in the proxy database.
pub const PROXY_CLUSTER: &str = "pgq_partitions";

/// The proxy's functions, in schema `pgq_proxy`: the keyed inserts of the partitions, routed by
/// `hashtext(key)`. The bulk forms `insert_event_bulk_by_key` split their arrays by key
/// (PL/Proxy's `SPLIT`): each partition gets one call with its keys' events, in the given order,
/// and the ids come back grouped by partition, not in the order given. `SPLIT` needs arrays of
/// one length, so the form with extra fields takes all four, each as long as the keys (NULL
/// elements are fine). `insert_event_bulk_for_key` sends events of one key in one call with no
/// split, and returns their ids as one array: splitting costs the proxy about as much CPU per
/// event again as the call itself (pgq-bench `partitioned`).
///
/// Every name the proxy resolves is schema-qualified (`pg_catalog.hashtext`, `pgq.*` on the
/// partitions), so a caller's `search_path` picks nothing (tested with a look-alike
/// `hashtext`). The functions carry no `SET search_path`: with it a split call cost the proxy
/// about 0.7 µs more per event (measured; PL/Proxy evaluates the hash once per element).
// language=SQL
const PROXY_FUNCTIONS: &str = "\
CREATE FUNCTION pgq_proxy.insert_event_by_key(
    queue_name text, ev_key text, ev_type text, ev_data text,
    ev_extra1 text DEFAULT NULL, ev_extra2 text DEFAULT NULL,
    ev_extra3 text DEFAULT NULL, ev_extra4 text DEFAULT NULL)
RETURNS bigint LANGUAGE plproxy AS $$
    CLUSTER 'pgq_partitions';
    RUN ON pg_catalog.hashtext(ev_key);
    TARGET pgq.insert_event_by_key;
$$;
CREATE FUNCTION pgq_proxy.insert_event_bulk_by_key(
    queue_name text, ev_keys text[], ev_types text[], ev_datas text[])
RETURNS SETOF bigint LANGUAGE plproxy AS $$
    CLUSTER 'pgq_partitions';
    SPLIT ev_keys, ev_types, ev_datas;
    RUN ON pg_catalog.hashtext(ev_keys);
    TARGET pgq.insert_event_bulk_by_key;
$$;
CREATE FUNCTION pgq_proxy.insert_event_bulk_by_key(
    queue_name text, ev_keys text[], ev_types text[], ev_datas text[],
    ev_extra1 text[], ev_extra2 text[], ev_extra3 text[], ev_extra4 text[])
RETURNS SETOF bigint LANGUAGE plproxy AS $$
    CLUSTER 'pgq_partitions';
    SPLIT ev_keys, ev_types, ev_datas, ev_extra1, ev_extra2, ev_extra3, ev_extra4;
    RUN ON pg_catalog.hashtext(ev_keys);
    TARGET pgq.insert_event_bulk_by_key;
$$;
CREATE FUNCTION pgq_proxy.insert_event_bulk_for_key(
    queue_name text, ev_key text, ev_types text[], ev_datas text[],
    ev_extra1 text[] DEFAULT NULL, ev_extra2 text[] DEFAULT NULL,
    ev_extra3 text[] DEFAULT NULL, ev_extra4 text[] DEFAULT NULL)
RETURNS bigint[] LANGUAGE plproxy AS $$
    CLUSTER 'pgq_partitions';
    RUN ON pg_catalog.hashtext(ev_key);
    SELECT pg_catalog.array_agg(id ORDER BY id)
      FROM pgq.insert_event_bulk_by_key(
               queue_name, pg_catalog.array_fill(ev_key, ARRAY[pg_catalog.cardinality(ev_types)]),
               ev_types, ev_datas, ev_extra1, ev_extra2, ev_extra3, ev_extra4) AS id;
$$;
REVOKE ALL ON FUNCTION
    pgq_proxy.insert_event_by_key(text, text, text, text, text, text, text, text),
    pgq_proxy.insert_event_bulk_for_key(text, text, text[], text[], text[], text[], text[],
                                        text[]),
    pgq_proxy.insert_event_bulk_by_key(text, text[], text[], text[]),
    pgq_proxy.insert_event_bulk_by_key(text, text[], text[], text[], text[], text[], text[],
                                       text[])
  FROM public;";

/// Makes `client`'s database a proxy over `databases` (libpq connection strings of the
/// partition databases, each with the queue installed): PL/Proxy, the cluster
/// [`PROXY_CLUSTER`] of `logical` partitions (a power of two, at least the number of
/// databases), logical partition `p` on database `p % databases.len()`, and the functions of
/// schema `pgq_proxy`. In one transaction. The producers' roles need `USAGE` on the schema
/// and the cluster and `EXECUTE` on the functions (docs/partitions.md).
///
/// Keys stay on their partition while this mapping stays; another number of databases remaps
/// keys, so drain the queue on every partition before a new setup. PL/Proxy commits each remote
/// call on its own on the partition: a caller that rolls back does not take the event back.
///
/// # Errors
///
/// [`Error::InvalidPartitions`] for a bad partition count or a connection string with a
/// password in it; [`Error::InvalidDsn`] for one that does not parse; [`Error::Db`] when a
/// statement fails (PL/Proxy not installed on the server, the cluster already there).
pub async fn setup_proxy(
    client: &mut tokio_postgres::Client,
    databases: &[String],
    logical: u32,
) -> Result<()> {
    super::check_layout(databases.len(), logical)?;
    for (n, database) in databases.iter().enumerate() {
        // The cluster's options are readable to every role of the proxy database.
        if Dsn::holds_password(database)? {
            return Err(Error::InvalidPartitions {
                reason: format!(
                    "the connection string of partition {n} holds a password, which every role \
                     of the proxy database could read in pg_foreign_server: give it in the user \
                     mapping instead (ALTER USER MAPPING FOR PUBLIC SERVER {PROXY_CLUSTER} \
                     OPTIONS (ADD password '...')), or in the password file of the proxy's \
                     server"
                ),
            });
        }
    }
    let options: Vec<String> = (0..logical as usize)
        .map(|p| format!("p{p} {}", quote_literal(&databases[p % databases.len()])))
        .collect();
    let tx = client.transaction().await.op("setup_proxy")?;
    tx.batch_execute(&format!(
        "CREATE EXTENSION IF NOT EXISTS plproxy;
         CREATE SERVER {cluster} FOREIGN DATA WRAPPER plproxy OPTIONS ({options});
         CREATE USER MAPPING FOR PUBLIC SERVER {cluster};
         CREATE SCHEMA pgq_proxy;
         {PROXY_FUNCTIONS}",
        cluster = quote_ident(PROXY_CLUSTER),
        options = options.join(", "),
    ))
    .await
    .op("setup_proxy")?;
    tx.commit().await.op("setup_proxy")
}

/// Lets each of `roles` produce through the proxy: `USAGE` on schema `pgq_proxy` and on the
/// cluster [`PROXY_CLUSTER`], `EXECUTE` on the functions. In one transaction: all or none.
///
/// # Errors
///
/// [`Error::Db`] when a grant fails (a role that does not exist, no proxy set up).
pub async fn grant_proxy(client: &mut tokio_postgres::Client, roles: &[String]) -> Result<()> {
    let tx = client.transaction().await.op("grant_proxy")?;
    for role in roles {
        tx.batch_execute(&format!(
            "GRANT USAGE ON SCHEMA pgq_proxy TO {role};
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgq_proxy TO {role};
             GRANT USAGE ON FOREIGN SERVER {cluster} TO {role};",
            role = quote_ident(role),
            cluster = quote_ident(PROXY_CLUSTER),
        ))
        .await
        .op("grant_proxy")?;
    }
    tx.commit().await.op("grant_proxy")
}

/// Removes what [`setup_proxy`] made (PL/Proxy itself stays); nothing on the partitions.
///
/// # Errors
///
/// [`Error::Db`] when a statement fails.
pub async fn teardown_proxy(client: &mut tokio_postgres::Client) -> Result<()> {
    let tx = client.transaction().await.op("teardown_proxy")?;
    tx.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS pgq_proxy CASCADE;
         DROP SERVER IF EXISTS {} CASCADE;",
        quote_ident(PROXY_CLUSTER)
    ))
    .await
    .op("teardown_proxy")?;
    tx.commit().await.op("teardown_proxy")
}
