//! `londiste seed`: a subscriber made from a base backup of the provider instead of copying
//! its tables, at an exact position (docs/seeding.md).
//!
//! The provider's capture triggers and queue are set up and committed; then the consumer is
//! registered, with the seed's plan, in one transaction; then the provider cluster is copied
//! ([`pgq_basebackup::backup`]). The copy recovers to the end of the backup and promotes
//! itself on a private socket ([`pgq_basebackup::make_independent`]). Before anything writes
//! to it, the set of provider transactions it holds is read from its own copy of the queue:
//! the `ev_txid`s of the events it sees above the consumer's registration tick. The worker
//! skips exactly those. Then the provider-only state goes (capture triggers, the queue and its
//! ticks, replication slots, prepared transactions), the copy takes the installation id the
//! plan gave it and becomes the subscriber with every table `ok`, and it gets a new system
//! identifier.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgq_basebackup::{BackupOptions, Server};
use pgq_core::{
    quote_conninfo_value, quote_ident, quote_literal, ConsumerName, Dsn, Flavor, InstallationId,
    Line,
};
use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, IsolationLevel};

use crate::admin::{capture, remove_capture, remove_capture_sql};
use crate::config::{default_consumer, Config};
use crate::error::{DbContext as _, LondisteError, Result, PROVIDER, SUBSCRIBER};
use crate::meta::{require_table, table_info, TableInfo};

/// The side name of the copy in errors, before it is the subscriber.
const COPY: &str = "copy";

/// How long a started copy may take to recover and promote.
const PROMOTION_WAIT: Duration = Duration::from_secs(3600);

// Tables with a primary key in a schema, for `--schema`.
// language=SQL
const KEYED_TABLES: &str = "\
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
   AND EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
 ORDER BY 1";

// language=SQL
const PLAN_ADD: &str = "\
INSERT INTO londiste_rs.seed_plan (queue_name, consumer_name, subscriber_id, tables)
VALUES ($1, $2, $3::text::uuid, $4)";

// language=SQL
const PLAN_OF_CONSUMER: &str = "\
SELECT copied FROM londiste_rs.seed_plan WHERE queue_name = $1 AND consumer_name = $2";

// A running seed holds this session lock on the provider from its registration on; a seed
// killed midway holds nothing.
// language=SQL
const SEED_LOCK: &str = "\
SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtextextended(
         pg_catalog.format('londiste seed %s:%s/%s', pg_catalog.length($1), $1, $2), 0))";

// language=SQL
const SEED_UNLOCK: &str = "\
SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtextextended(
         pg_catalog.format('londiste seed %s:%s/%s', pg_catalog.length($1), $1, $2), 0))";

// Seeds killed before their backup was done: nobody holds their lock (taking it here proves it;
// the caller releases it).
// language=SQL
const KILLED_SEEDS: &str = "\
SELECT consumer_name FROM londiste_rs.seed_plan
 WHERE queue_name = $1
   AND CASE WHEN copied THEN false
            ELSE pg_catalog.pg_try_advisory_lock(pg_catalog.hashtextextended(
                   pg_catalog.format('londiste seed %s:%s/%s', pg_catalog.length($1), $1,
                                     consumer_name), 0)) END";

// language=SQL
const PLANS: &str = "SELECT consumer_name FROM londiste_rs.seed_plan WHERE queue_name = $1";

// language=SQL
const SEED_TRY_LOCK: &str = "\
SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtextextended(
         pg_catalog.format('londiste seed %s:%s/%s', pg_catalog.length($1), $1, $2), 0))";

// The seed's claims on tables, taken back; the tables nobody claims any more.
// language=SQL
const RELEASE_ALL: &str = "\
WITH released AS (
  UPDATE londiste_rs.provider_table SET consumers = pg_catalog.array_remove(consumers, $2)
   WHERE queue_name = $1 AND $2 = ANY (consumers)
  RETURNING table_name, consumers)
SELECT table_name FROM released WHERE pg_catalog.cardinality(consumers) = 0";

// language=SQL
const PLAN_COPIED: &str = "\
UPDATE londiste_rs.seed_plan SET copied = true WHERE queue_name = $1 AND consumer_name = $2";

// language=SQL
const PLAN_DROP: &str =
    "DELETE FROM londiste_rs.seed_plan WHERE queue_name = $1 AND consumer_name = $2";

// language=SQL
const PLAN: &str = "\
SELECT subscriber_id::text, tables FROM londiste_rs.seed_plan
 WHERE queue_name = $1 AND consumer_name = $2";

/// The file in the copy's private directory that names the seed's consumer: the copy's plan is
/// that consumer's (another seed of the queue may have recorded one before the backup ended).
const CONSUMER_FILE: &str = "seed_consumer";

// language=SQL
const CONSUMER_REGISTERED: &str = "\
SELECT EXISTS (SELECT FROM pgq.subscription s
                 JOIN pgq.queue q ON q.queue_id = s.sub_queue
                 JOIN pgq.consumer c ON c.co_id = s.sub_consumer
                WHERE q.queue_name = $1 AND c.co_name = $2)";

// language=SQL
const IDENTITY: &str = "\
SELECT (SELECT system_identifier FROM pg_catalog.pg_control_system())::text,
       (SELECT id::text FROM pgq_rs.installation)";

// The registration tick's snapshot and the queue's event tables, on the copy.
// language=SQL
const SEED_TICK: &str = "\
SELECT t.tick_snapshot::text, q.queue_data_pfx
  FROM pgq.queue q
  JOIN pgq.subscription s ON s.sub_queue = q.queue_id
  JOIN pgq.consumer c ON c.co_id = s.sub_consumer
  JOIN pgq.tick t ON t.tick_queue = q.queue_id AND t.tick_id = s.sub_last_tick
 WHERE q.queue_name = $1 AND c.co_name = $2";

// language=SQL
const CAPTURED: &str = "\
SELECT p.table_name, p.table_oid, pg_catalog.format('%I.%I', n.nspname, c.relname)
  FROM londiste_rs.provider_table p
  JOIN pg_catalog.pg_class c ON c.oid = p.table_oid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE p.queue_name = $1";

// Prepared transactions, per database: each is rolled back where it was prepared.
// language=SQL
const PREPARED: &str = "\
SELECT database::text, pg_catalog.array_agg(gid) FROM pg_catalog.pg_prepared_xacts GROUP BY 1";

// An object of the copy's bookkeeping owned by a non-superuser other than the connected role,
// or a trigger or rule on one of its tables.
// language=SQL
const UNTRUSTED: &str = "\
WITH ours AS (SELECT oid, nspname, nspowner FROM pg_catalog.pg_namespace
               WHERE nspname IN ('pgq_rs', 'pgq', 'pgq_ext', 'londiste_rs')),
     owned AS (SELECT 'schema ' || n.nspname AS what, n.nspowner AS owner FROM ours n
               UNION ALL
               SELECT 'table ' || n.nspname || '.' || c.relname, c.relowner
                 FROM pg_catalog.pg_class c JOIN ours n ON n.oid = c.relnamespace
                WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S')
               UNION ALL
               SELECT 'function ' || p.oid::pg_catalog.regprocedure::text, p.proowner
                 FROM pg_catalog.pg_proc p JOIN ours n ON n.oid = p.pronamespace),
     planted AS (SELECT 'trigger ' || t.tgname AS kind, t.tgrelid AS rel
                   FROM pg_catalog.pg_trigger t WHERE NOT t.tgisinternal
                 UNION ALL
                 SELECT 'rule ' || w.rulename, w.ev_class FROM pg_catalog.pg_rewrite w
                  WHERE w.rulename <> '_RETURN')
SELECT pg_catalog.format('%s belongs to role %s', o.what, o.owner::pg_catalog.regrole)
  FROM owned o JOIN pg_catalog.pg_roles r ON r.oid = o.owner
 WHERE NOT r.rolsuper AND r.rolname <> current_user
UNION ALL
SELECT pg_catalog.format('there is a %s on table %s.%s', k.kind, n.nspname, c.relname)
  FROM planted k
  JOIN pg_catalog.pg_class c ON c.oid = k.rel
  JOIN ours n ON n.oid = c.relnamespace AND n.nspname IN ('pgq_rs', 'londiste_rs')
 LIMIT 1";

// language=SQL
const SLOTS: &str = "SELECT slot_name::text FROM pg_catalog.pg_replication_slots";

// The databases with logical subscriptions (pg_subscription is shared by all databases).
// language=SQL
const SUBSCRIBING: &str = "\
SELECT DISTINCT d.datname::text FROM pg_catalog.pg_subscription s
  JOIN pg_catalog.pg_database d ON d.oid = s.subdbid";

// language=SQL
const SUBSCRIPTIONS: &str = "\
SELECT subname::text FROM pg_catalog.pg_subscription
 WHERE subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())";

// language=SQL
const SUBSCRIBED_ALREADY: &str = "\
SELECT table_name FROM londiste_rs.subscriber_table WHERE queue_name = $1 ORDER BY 1";

/// What the tables to seed are.
#[derive(Debug, Clone)]
pub enum SeedTables {
    /// These provider tables (`schema.table`).
    Named(Vec<String>),
    /// Every table with a primary key in this schema.
    Schema(String),
}

/// Options of `londiste seed`.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    /// Where the copy goes: a directory that does not exist or is empty.
    pub data_dir: PathBuf,
    /// The port the copy's server listens on: on a private socket while seeding, then as the
    /// subscriber (the config's subscriber connection string must reach it there).
    pub port: u16,
    /// Start the copy and finish the seed; `false` leaves the prepared copy for the user to
    /// start, and [`seed_finish`] does the rest.
    pub start: bool,
    /// Connections that copy files in parallel.
    pub jobs: usize,
    /// The PostgreSQL programs of the provider's version (found when `None`).
    pub bin_dir: Option<PathBuf>,
    /// The operating system user the copy's server runs as, when this runs as root.
    pub run_as: Option<String>,
    /// Upper bound for the backup's file reads on the provider, in bytes per second.
    pub max_rate: Option<u64>,
}

/// What a seed did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Seeded {
    /// The provider tables, now `ok` on the subscriber (once finished).
    pub tables: Vec<String>,
    /// The worker's consumer.
    pub consumer: String,
    /// Provider transactions the copy holds that the worker skips (once finished).
    pub skipped_transactions: Option<i64>,
    /// Bytes of the base backup.
    pub backup_bytes: u64,
    /// Seconds the base backup took.
    pub backup_seconds: f64,
    /// The copy's new system identifier (once finished).
    pub system_identifier: Option<String>,
    /// Whether the seed is finished: `false` after a seed that leaves the copy for the user to
    /// start; run `londiste seed-finish` once it runs.
    pub finished: bool,
    /// Seconds the whole seed took.
    pub seconds: f64,
}

/// Seeds a subscriber from a base backup of the provider (see the module documentation and
/// docs/seeding.md). Without `start`, returns once the copy is prepared; the user starts it
/// and runs [`seed_finish`].
///
/// # Errors
///
/// Before changing anything: [`LondisteError::NotFound`], [`LondisteError::NoPrimaryKey`],
/// [`LondisteError::Seed`] (the data directory is not empty, something answers at the
/// subscriber's address already, the consumer is taken, no server programs of the provider's
/// version). Later failures undo what the seed did on the provider (the consumer, the plan, its
/// claims on the tables and the capture triggers nobody else claims); the copy is left as it is.
pub async fn seed(config: &Config, which: &SeedTables, options: &SeedOptions) -> Result<Seeded> {
    let started = Instant::now();
    let provider = config.provider.connect().await?;
    let tables = resolve_tables(&provider, which).await?;
    check_target(config, options).await?;
    let major = server_major(&provider).await?;
    let server = Server::find(&major, options.bin_dir.as_deref(), options.run_as.clone()).await?;
    let mut provider = provider;
    provider
        .batch_execute("SET tcp_keepalives_idle = 60")
        .await
        .on(PROVIDER, "keeping the seed's session alive")?;
    let lines: &[Line] = match pgq_core::flavor(&provider).await? {
        Flavor::Extension => &[Line::Londiste],
        Flavor::Ours | Flavor::None => &[Line::Pgq, Line::PgqTriggers, Line::Londiste],
    };
    pgq_core::install(&mut provider, lines).await?;
    let subscriber_id: String = provider
        .query_typed_one("SELECT pg_catalog.gen_random_uuid()::text", &[])
        .await
        .on(PROVIDER, "making the copy's installation id")?
        .get(0);
    let id = InstallationId::parse(&subscriber_id).ok_or_else(|| LondisteError::Seed {
        problem: format!("the provider made an id that is not a UUID: {subscriber_id}"),
    })?;
    let consumer = match &config.consumer {
        Some(name) => name.clone(),
        None => default_consumer(&id, &config.queue)?,
    };
    forget_killed(&provider, config, &consumer).await?;
    match pgq_core::create_queue(&provider, &config.queue).await {
        Ok(()) | Err(pgq_core::Error::QueueExists { .. }) => {}
        Err(err) => return Err(err.into()),
    }
    begin_plan(&provider, config, &consumer, &subscriber_id, &tables).await?;
    let setup = async {
        for table in &tables {
            capture(&provider, config, table, false, consumer.as_str()).await?;
        }
        register(&provider, config, &consumer).await
    };
    if let Err(err) = setup.await {
        undo(&provider, config, &consumer).await;
        return Err(err);
    }
    let mut backup = BackupOptions::new(config.provider.clone(), &options.data_dir);
    backup.jobs = options.jobs.max(1);
    backup.label = format!("londiste seed {}", config.queue);
    backup.max_rate = options.max_rate;
    let summary = match pgq_basebackup::backup(backup).await {
        Ok(summary) => summary,
        Err(err) => {
            undo(&provider, config, &consumer).await;
            return Err(err.into());
        }
    };
    let copied = provider
        .query_typed(
            PLAN_COPIED,
            &[
                (&config.queue.as_str(), Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
            ],
        )
        .await
        .on(PROVIDER, "recording the backup in the seed plan");
    if let Err(err) = copied {
        undo(&provider, config, &consumer).await;
        return Err(err);
    }
    let mut seeded = Seeded {
        tables: tables.iter().map(|t| t.event_name.clone()).collect(),
        consumer: consumer.to_string(),
        skipped_transactions: None,
        backup_bytes: summary.bytes,
        backup_seconds: summary.elapsed.as_secs_f64(),
        system_identifier: None,
        finished: false,
        seconds: 0.0,
    };
    let prepared = async {
        let private = pgq_basebackup::make_independent(&options.data_dir, options.port)?;
        let file = private.join(CONSUMER_FILE);
        std::fs::write(&file, consumer.as_str()).map_err(|e| LondisteError::Seed {
            problem: format!("writing {}: {e}", file.display()),
        })?;
        server.hand_over(&options.data_dir).await?;
        Ok::<_, LondisteError>(())
    };
    if let Err(err) = prepared.await {
        undo(&provider, config, &consumer).await;
        return Err(err);
    }
    if options.start {
        let log = options
            .data_dir
            .join(pgq_basebackup::PRIVATE_DIR)
            .join("server.log");
        let finished = async {
            server.start(&options.data_dir, &log).await?;
            finish(config, &provider, &server, options, true).await
        };
        match finished.await {
            Ok(done) => {
                seeded.skipped_transactions = done.skipped_transactions;
                seeded.system_identifier = done.system_identifier;
                seeded.finished = true;
            }
            Err(err) => {
                let _ = server.stop(&options.data_dir).await;
                undo(&provider, config, &consumer).await;
                return Err(err);
            }
        }
    }
    seeded.seconds = started.elapsed().as_secs_f64();
    Ok(seeded)
}

/// Finishes a seed whose copy the user started (`londiste seed` without `start`): the copy in
/// `options.data_dir` must run, promoted, on its private socket ([`SeedOptions::port`]).
/// Leaves it stopped, ready to start as the subscriber.
///
/// # Errors
///
/// [`LondisteError::Seed`] before changing anything: the copy is not running or still
/// recovering, is not a copy of this provider, holds no plan of this queue, or has the tables
/// already.
pub async fn seed_finish(config: &Config, options: &SeedOptions) -> Result<Seeded> {
    let started = Instant::now();
    let provider = config.provider.connect().await?;
    let major = server_major(&provider).await?;
    let server = Server::find(&major, options.bin_dir.as_deref(), options.run_as.clone()).await?;
    let mut done = finish(config, &provider, &server, options, false).await?;
    done.seconds = started.elapsed().as_secs_f64();
    Ok(done)
}

/// Reads the position, cleans the copy, makes it the subscriber and gives it a new system
/// identifier; with `restart`, starts it again as the subscriber.
async fn finish(
    config: &Config,
    provider: &Client,
    server: &Server,
    options: &SeedOptions,
    wait_for_promotion: bool,
) -> Result<Seeded> {
    let data = std::path::absolute(&options.data_dir).map_err(|e| LondisteError::Seed {
        problem: format!("resolving {}: {e}", options.data_dir.display()),
    })?;
    let queue = config.queue.as_str();
    let file = data.join(pgq_basebackup::PRIVATE_DIR).join(CONSUMER_FILE);
    let consumer = std::fs::read_to_string(&file).map_err(|e| LondisteError::Seed {
        problem: format!(
            "{} cannot be read ({e}): the copy was not prepared by `londiste seed`, or it was \
             finished already",
            file.display()
        ),
    })?;
    let dsn = private_dsn(config, &data, options.port)?;
    let mut copy = connect_promoted(&dsn, wait_for_promotion).await?;
    check_copy_of(provider, &copy).await?;
    check_trusted(&copy).await?;
    hold_plan(provider, config, &consumer).await?;
    let plan = copy
        .query_typed_opt(PLAN, &[(&queue, Type::TEXT), (&consumer, Type::TEXT)])
        .await
        .on(COPY, "reading the seed plan")?
        .ok_or_else(|| LondisteError::Seed {
            problem: format!(
                "the copy holds no seed plan of consumer {consumer} on queue {queue}: it was not \
                 made by `londiste seed`"
            ),
        })?;
    let subscriber_id: String = plan.get(0);
    let tables: Vec<String> = plan.get(1);
    let already: Vec<String> = copy
        .query_typed(SUBSCRIBED_ALREADY, &[(&queue, Type::TEXT)])
        .await
        .on(COPY, "reading the copy's subscribed tables")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !already.is_empty() {
        return Err(LondisteError::Seed {
            problem: format!(
                "the copy already subscribes to {} on queue {queue}: it was seeded already",
                already.join(", ")
            ),
        });
    }
    let skipped = read_position(&mut copy, queue, &consumer).await?;
    clean(&mut copy, &dsn, config).await?;
    become_subscriber(&mut copy, config, &consumer, &subscriber_id, &tables).await?;
    pgq_core::install(&mut copy, &[Line::PgqExt, Line::Londiste]).await?;
    drop(copy);
    server.stop(&data).await?;
    pgq_basebackup::settle(&data, Some(options.port))?;
    let identifier = server.new_system_identifier(&data).await?;
    if wait_for_promotion {
        server.start(&data, &data.join("server.log")).await?;
    }
    // The subscriber is made: a provider that fails now only keeps a plan that `seed-cancel`
    // must not take (the consumer is the worker's), so the plan is marked finished or removed.
    let names: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
        [(&queue, Type::TEXT), (&consumer.as_str(), Type::TEXT)];
    if let Err(err) = provider.query_typed(PLAN_DROP, &names).await {
        tracing::warn!(error = %err, %consumer, "the seed is done, but its plan stays on the provider: remove it from londiste_rs.seed_plan");
    }
    Ok(Seeded {
        tables,
        consumer,
        skipped_transactions: Some(skipped),
        backup_bytes: 0,
        backup_seconds: 0.0,
        system_identifier: Some(identifier.to_string()),
        finished: true,
        seconds: 0.0,
    })
}

/// The tables to seed, each with a primary key.
async fn resolve_tables(provider: &Client, which: &SeedTables) -> Result<Vec<TableInfo>> {
    let names: Vec<String> = match which {
        SeedTables::Named(names) => names.clone(),
        SeedTables::Schema(schema) => {
            let names: Vec<String> = provider
                .query_typed(KEYED_TABLES, &[(schema, Type::TEXT)])
                .await
                .on(PROVIDER, "listing the schema's tables")?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if names.is_empty() {
                return Err(LondisteError::Seed {
                    problem: format!("schema {schema} has no table with a primary key"),
                });
            }
            names
        }
    };
    let mut tables = Vec::with_capacity(names.len());
    for name in &names {
        let table = require_table(provider, PROVIDER, name).await?;
        table.require_pkey()?;
        tables.push(table);
    }
    Ok(tables)
}

/// Why a seed does not go where a server answers.
const ANSWERS: &str = "a server answers at the subscriber's address already: seeding makes a \
                       new cluster there; stop it, or point the config's subscriber elsewhere";

/// Refuses a target that is in use: a non-empty data directory, or a server answering at the
/// subscriber's address, even only to refuse the login (naming the tables it replicates
/// already, if any).
async fn check_target(config: &Config, options: &SeedOptions) -> Result<()> {
    if config.subscriber.dbname() != config.provider.dbname() {
        return Err(LondisteError::Seed {
            problem: format!(
                "the copy holds the provider's database {:?}: the config's subscriber must name \
                 it (it names {:?})",
                config.provider.dbname(),
                config.subscriber.dbname()
            ),
        });
    }
    let used = std::fs::read_dir(&options.data_dir).is_ok_and(|mut d| d.next().is_some());
    if used {
        return Err(LondisteError::Seed {
            problem: format!(
                "{} is not empty: the copy needs a new data directory",
                options.data_dir.display()
            ),
        });
    }
    let subscriber = match config.subscriber.connect().await {
        Ok(client) => client,
        Err(pgq_core::Error::Db { source, .. }) if source.as_db_error().is_some() => {
            return Err(LondisteError::Seed {
                problem: ANSWERS.to_owned(),
            })
        }
        Err(_) => return Ok(()),
    };
    let queue = config.queue.as_str();
    let replicated: Vec<String> = subscriber
        .query_typed(SUBSCRIBED_ALREADY, &[(&queue, Type::TEXT)])
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    Err(LondisteError::Seed {
        problem: if replicated.is_empty() {
            ANSWERS.to_owned()
        } else {
            format!(
                "the subscriber already replicates {} from queue {queue}",
                replicated.join(", ")
            )
        },
    })
}

async fn server_major(provider: &Client) -> Result<String> {
    let version: i32 = provider
        .query_typed_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int",
            &[],
        )
        .await
        .on(PROVIDER, "reading the server version")?
        .get(0);
    Ok((version / 10000).to_string())
}

/// Drops the plans of seeds of this queue that were killed before their backup finished (no
/// session holds their lock), unregistering their consumers so rotation goes on; then refuses
/// a consumer that is registered for anything else.
async fn forget_killed(provider: &Client, config: &Config, consumer: &ConsumerName) -> Result<()> {
    let queue = config.queue.as_str();
    let killed = provider
        .query_typed(KILLED_SEEDS, &[(&queue, Type::TEXT)])
        .await
        .on(PROVIDER, "looking for interrupted seeds")?;
    for row in killed {
        let name: String = row.get(0);
        tracing::warn!(consumer = %name, "an earlier seed was interrupted: unregistering its consumer");
        drop_plan(provider, config, &name).await?;
        provider
            .query_typed(SEED_UNLOCK, &[(&queue, Type::TEXT), (&name, Type::TEXT)])
            .await
            .on(PROVIDER, "releasing an interrupted seed's lock")?;
    }
    let names: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
        [(&queue, Type::TEXT), (&consumer.as_str(), Type::TEXT)];
    let registered = consumer_registered(provider, &names).await?;
    if registered {
        let planned = provider
            .query_typed_opt(PLAN_OF_CONSUMER, &names)
            .await
            .on(PROVIDER, "looking for an earlier seed")?;
        return Err(LondisteError::Seed {
            problem: match planned.map(|r| r.get::<_, bool>(0)) {
                Some(true) => format!(
                    "a seed with consumer {consumer} waits for `londiste seed-finish`; run \
                     `londiste seed-cancel` to abandon it"
                ),
                Some(false) => format!("a seed with consumer {consumer} runs right now"),
                None => format!(
                    "consumer {consumer} is registered on queue {queue} already: another \
                     subscriber uses it; set another `consumer` in the config"
                ),
            },
        });
    }
    Ok(())
}

/// Whether the consumer `names` gives (queue, consumer) is registered on the provider.
async fn consumer_registered(
    provider: &Client,
    names: &[(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2],
) -> Result<bool> {
    Ok(provider
        .query_typed_one(CONSUMER_REGISTERED, names)
        .await
        .on(PROVIDER, "looking for the consumer")?
        .get(0))
}

/// Unregisters a seed's consumer (if registered), takes back its claims on the tables (the
/// capture triggers go with the last claim) and removes its plan.
async fn drop_plan(provider: &Client, config: &Config, consumer: &str) -> Result<()> {
    let queue = config.queue.as_str();
    let names: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
        [(&queue, Type::TEXT), (&consumer, Type::TEXT)];
    let registered = consumer_registered(provider, &names).await?;
    if registered {
        let name = ConsumerName::new(consumer)?;
        pgq_core::unregister_consumer(provider, &config.queue, &name).await?;
    }
    let released = provider
        .query_typed(RELEASE_ALL, &names)
        .await
        .on(PROVIDER, "taking back the seed's claims on its tables")?;
    for row in released {
        let table: String = row.get(0);
        if let Some(info) = table_info(provider, PROVIDER, &table).await? {
            remove_capture(provider, config, &info).await?;
        }
    }
    provider
        .query_typed(PLAN_DROP, &names)
        .await
        .on(PROVIDER, "removing the seed plan")?;
    Ok(())
}

/// Abandons the seeds of this queue that wait for `seed-finish`, or were killed: their
/// consumers are unregistered (so rotation goes on) and their plans removed; a seed running
/// now is left alone. Returns the consumers. The copies they made are useless: remove them.
///
/// # Errors
///
/// Connection failures.
pub async fn seed_cancel(config: &Config) -> Result<Vec<String>> {
    let provider = config.provider.connect().await?;
    let queue = config.queue.as_str();
    let plans = provider
        .query_typed(PLANS, &[(&queue, Type::TEXT)])
        .await
        .on(PROVIDER, "looking for seeds to cancel")?;
    let mut cancelled = Vec::new();
    for row in plans {
        let name: String = row.get(0);
        let names: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
            [(&queue, Type::TEXT), (&name.as_str(), Type::TEXT)];
        // Held while the plan goes: a seed or seed-finish running now keeps its plan.
        let free: bool = provider
            .query_typed_one(SEED_TRY_LOCK, &names)
            .await
            .on(PROVIDER, "probing a seed's lock")?
            .get(0);
        if !free {
            continue;
        }
        drop_plan(&provider, config, &name).await?;
        provider
            .query_typed(SEED_UNLOCK, &names)
            .await
            .on(PROVIDER, "releasing a seed's lock")?;
        cancelled.push(name);
    }
    Ok(cancelled)
}

/// Takes the seed's lock (held by this session until it ends) and records its plan: the
/// consumer, the tables and the copy's future installation id. A seed killed after this is
/// found by the next one, whatever it had done.
async fn begin_plan(
    provider: &Client,
    config: &Config,
    consumer: &ConsumerName,
    subscriber_id: &str,
    tables: &[TableInfo],
) -> Result<()> {
    let queue = config.queue.as_str();
    let names: Vec<String> = tables.iter().map(|t| t.event_name.clone()).collect();
    provider
        .query_typed(
            SEED_LOCK,
            &[(&queue, Type::TEXT), (&consumer.as_str(), Type::TEXT)],
        )
        .await
        .on(PROVIDER, "taking the seed's lock")?;
    provider
        .query_typed(
            PLAN_ADD,
            &[
                (&queue, Type::TEXT),
                (&consumer.as_str(), Type::TEXT),
                (&subscriber_id, Type::TEXT),
                (&names, Type::TEXT_ARRAY),
            ],
        )
        .await
        .on(PROVIDER, "recording the seed plan")?;
    Ok(())
}

/// Registers the consumer at a tick made now, after the capture triggers committed.
async fn register(provider: &Client, config: &Config, consumer: &ConsumerName) -> Result<()> {
    pgq_core::force_tick(provider, &config.queue).await?;
    pgq_core::ticker(provider, &config.queue).await?;
    pgq_core::register_consumer(provider, &config.queue, consumer).await?;
    Ok(())
}

/// Holds the seed's lock for `seed-finish` (the seed's own session holds it already) and checks
/// that the provider still has the plan, its backup done, and the consumer: a cancelled seed
/// is not finished.
async fn hold_plan(provider: &Client, config: &Config, consumer: &str) -> Result<()> {
    let queue = config.queue.as_str();
    let names: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
        [(&queue, Type::TEXT), (&consumer, Type::TEXT)];
    let free: bool = provider
        .query_typed_one(SEED_TRY_LOCK, &names)
        .await
        .on(PROVIDER, "taking the seed's lock")?
        .get(0);
    if !free {
        return Err(LondisteError::Seed {
            problem: format!("another seed-finish or seed-cancel of consumer {consumer} runs now"),
        });
    }
    let copied: Option<bool> = provider
        .query_typed_opt(PLAN_OF_CONSUMER, &names)
        .await
        .on(PROVIDER, "reading the seed plan")?
        .map(|r| r.get(0));
    let registered = consumer_registered(provider, &names).await?;
    if copied != Some(true) || !registered {
        return Err(LondisteError::Seed {
            problem: format!(
                "the provider has no finished backup of consumer {consumer} on queue {queue} (it \
                 was cancelled, or seeded already): the copy cannot become its subscriber"
            ),
        });
    }
    Ok(())
}

/// Takes back what a failed seed did on the provider. A failure here is logged: the seed's
/// own error is the one to report, and a later seed or `seed-cancel` cleans up after this one.
async fn undo(provider: &Client, config: &Config, consumer: &ConsumerName) {
    if let Err(err) = drop_plan(provider, config, consumer.as_str()).await {
        tracing::warn!(error = %err, "could not take back what the seed did on the provider");
    }
}

/// The copy's private socket, as the subscriber's role and database (the provider's, copied),
/// writing where the copy's other sessions may not.
fn private_dsn(config: &Config, data: &Path, port: u16) -> Result<Dsn> {
    let socket = data.join(pgq_basebackup::PRIVATE_DIR);
    let text = format!(
        "host={} port={port} dbname={} user={} options='-c default_transaction_read_only=off'",
        quote_conninfo_value(&socket.display().to_string()),
        quote_conninfo_value(config.subscriber.dbname()),
        quote_conninfo_value(config.subscriber.user()),
    );
    Ok(Dsn::parse(&text)?.with_pinned_search_path())
}

/// Connects to the copy once it has promoted; without `wait`, a copy still recovering is
/// refused at once.
async fn connect_promoted(dsn: &Dsn, wait: bool) -> Result<Client> {
    let deadline = Instant::now() + PROMOTION_WAIT;
    loop {
        let attempt = async {
            let client = dsn.connect().await?;
            let recovering: bool = client
                .query_typed_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
                .await
                .on(COPY, "asking whether the copy recovers")?
                .get(0);
            Ok::<_, LondisteError>((client, recovering))
        };
        match attempt.await {
            Ok((client, false)) => return Ok(client),
            Ok((_, true)) if !wait => {
                return Err(LondisteError::Seed {
                    problem: "the copy is still recovering (not promoted): wait until it \
                              accepts writes, then run this again"
                        .to_owned(),
                })
            }
            Err(err) if !wait => {
                return Err(LondisteError::Seed {
                    problem: format!("cannot reach the copy on its private socket: {err}"),
                })
            }
            Err(err) if Instant::now() >= deadline => return Err(err),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Refuses a copy of another database: system identifier and installation id must be the
/// provider's (the copy makes new ones only when the seed is done).
async fn check_copy_of(provider: &Client, copy: &Client) -> Result<()> {
    let ours = provider
        .query_typed_one(IDENTITY, &[])
        .await
        .on(PROVIDER, "reading the provider's identity")?;
    let theirs = copy
        .query_typed_one(IDENTITY, &[])
        .await
        .on(COPY, "reading the copy's identity")?;
    let (ours, theirs): ((String, String), (String, String)) =
        ((ours.get(0), ours.get(1)), (theirs.get(0), theirs.get(1)));
    if ours != theirs {
        return Err(LondisteError::Seed {
            problem: format!(
                "the copy is not a copy of this provider (system identifier {}, installation {}; \
                 the provider has {} and {}), or it was seeded already",
                theirs.0, theirs.1, ours.0, ours.1
            ),
        });
    }
    Ok(())
}

/// Refuses a copy whose bookkeeping somebody else controls: the finish runs as the subscriber's
/// role (a superuser, to drop slots and roll back prepared transactions) and writes those
/// tables and calls those functions, so an object of another non-superuser role, or a trigger
/// or rule planted on a bookkeeping table, would run that role's code with its rights.
async fn check_trusted(copy: &Client) -> Result<()> {
    let problem: Option<String> = copy
        .query_typed_opt(UNTRUSTED, &[])
        .await
        .on(COPY, "checking who owns the copy's bookkeeping")?
        .map(|r| r.get(0));
    match problem {
        Some(problem) => Err(LondisteError::Seed {
            problem: format!(
                "refusing to finish: in the copy, {problem}; connect as the role that owns the \
                 installation, or make a superuser own it"
            ),
        }),
        None => Ok(()),
    }
}

/// Records, on the copy, the provider transactions whose events it sees above the consumer's
/// registration tick: exactly those whose changes it holds. Runs before anything writes to the
/// copy. Returns how many.
async fn read_position(copy: &mut Client, queue: &str, consumer: &str) -> Result<i64> {
    let tx = copy
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await
        .on(COPY, "starting to read the position")?;
    let tick = tx
        .query_typed_opt(SEED_TICK, &[(&queue, Type::TEXT), (&consumer, Type::TEXT)])
        .await
        .on(COPY, "reading the registration tick")?
        .ok_or_else(|| LondisteError::Seed {
            problem: format!(
                "the copy has no registration of consumer {consumer} on queue {queue}: it was \
                 taken before the seed registered it"
            ),
        })?;
    let snapshot: String = tick.get(0);
    let events: String = tick.get(1);
    let count: i64 = tx
        .query_typed_one(
            &format!(
                "WITH seen AS (
                   INSERT INTO londiste_rs.seed_txid (queue_name, txid)
                   SELECT DISTINCT $1, e.ev_txid FROM {} e
                    WHERE NOT pg_catalog.txid_visible_in_snapshot(e.ev_txid, $2::text::pg_catalog.txid_snapshot)
                   ON CONFLICT DO NOTHING
                   RETURNING 1)
                 SELECT count(*) + (SELECT count(*) FROM londiste_rs.seed_txid WHERE queue_name = $1)
                   FROM seen",
                qualified(&events)
            ),
            &[(&queue, Type::TEXT), (&snapshot, Type::TEXT)],
        )
        .await
        .on(COPY, "reading the transactions the copy holds")?
        .get(0);
    tx.commit().await.on(COPY, "recording the position")?;
    Ok(count)
}

/// `schema.table` as stored in `queue_data_pfx`, quoted.
fn qualified(name: &str) -> String {
    match name.split_once('.') {
        Some((schema, table)) => format!("{}.{}", quote_ident(schema), quote_ident(table)),
        None => quote_ident(name),
    }
}

/// Removes what only the provider needs: prepared transactions (the provider commits or rolls
/// them back itself; the worker applies them if they commit), replication slots, the logical
/// subscriptions of every database, the capture triggers and the queue.
async fn clean(copy: &mut Client, dsn: &Dsn, config: &Config) -> Result<()> {
    for row in copy
        .query_typed(PREPARED, &[])
        .await
        .on(COPY, "listing prepared transactions")?
    {
        let db: String = row.get(0);
        let gids: Vec<String> = row.get(1);
        let there = dsn.with_dbname(&db).connect().await?;
        for gid in gids {
            there
                .batch_execute(&format!("ROLLBACK PREPARED {}", quote_literal(&gid)))
                .await
                .on(
                    COPY,
                    format!("rolling back prepared transaction {gid} in {db}"),
                )?;
        }
    }
    for row in copy
        .query_typed(SLOTS, &[])
        .await
        .on(COPY, "listing replication slots")?
    {
        let slot: String = row.get(0);
        copy.query_typed(
            "SELECT pg_catalog.pg_drop_replication_slot($1)",
            &[(&slot, Type::TEXT)],
        )
        .await
        .on(COPY, format!("dropping replication slot {slot}"))?;
    }
    let databases = copy
        .query_typed(SUBSCRIBING, &[])
        .await
        .on(COPY, "listing subscriptions")?;
    for row in databases {
        let db: String = row.get(0);
        detach_subscriptions(&dsn.with_dbname(&db)).await?;
    }
    let tx = copy.transaction().await.on(COPY, "starting the cleanup")?;
    let ours = pgq_core::flavor(&tx).await? == Flavor::Ours;
    let queue = config.queue.as_str();
    let mut sql = String::new();
    for row in tx
        .query_typed(CAPTURED, &[(&queue, Type::TEXT)])
        .await
        .on(COPY, "listing the queue's tables")?
    {
        let (event_name, oid, quoted): (String, u32, String) = (row.get(0), row.get(1), row.get(2));
        sql.push_str(&remove_capture_sql(queue, &quoted, &event_name, oid, ours));
    }
    sql.push_str(&format!(
        "DELETE FROM londiste_rs.provider_seq WHERE queue_name = {};",
        quote_literal(queue)
    ));
    tx.batch_execute(&sql)
        .await
        .on(COPY, "removing the capture triggers")?;
    pgq_core::drop_queue(&tx, &config.queue, true).await?;
    tx.commit().await.on(COPY, "removing the provider's state")
}

/// Disables the logical subscriptions of the database `dsn` names and detaches them from their
/// slots on the publisher: started, they would take the provider's place there.
async fn detach_subscriptions(dsn: &Dsn) -> Result<()> {
    let client = dsn.connect().await?;
    for row in client
        .query_typed(SUBSCRIPTIONS, &[])
        .await
        .on(COPY, "listing subscriptions")?
    {
        let name = quote_ident(&row.get::<_, String>(0));
        client
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {name} DISABLE; ALTER SUBSCRIPTION {name} SET (slot_name = NONE)"
            ))
            .await
            .on(COPY, format!("detaching subscription {name}"))?;
    }
    Ok(())
}

/// Makes the copy the subscriber: its own installation id (the plan's, from which the
/// consumer's default name was made), every table `ok`, the worker's position.
async fn become_subscriber(
    copy: &mut Client,
    config: &Config,
    consumer: &str,
    subscriber_id: &str,
    tables: &[String],
) -> Result<()> {
    let queue = config.queue.as_str();
    let tx = copy
        .transaction()
        .await
        .on(SUBSCRIBER, "starting the registration")?;
    tx.query_typed(
        "UPDATE pgq_rs.installation SET id = $1::text::uuid, created_on = now()",
        &[(&subscriber_id, Type::TEXT)],
    )
    .await
    .on(SUBSCRIBER, "giving the copy its own installation id")?;
    tx.query_typed(
        "DELETE FROM londiste_rs.seed_plan WHERE queue_name = $1",
        &[(&queue, Type::TEXT)],
    )
    .await
    .on(SUBSCRIBER, "removing the copied seed plan")?;
    for name in tables {
        let table = require_table(&tx, SUBSCRIBER, name).await?;
        tx.query_typed(
            "INSERT INTO londiste_rs.subscriber_table (queue_name, table_name, dest_table, state)
             VALUES ($1, $2, $3, 'ok')",
            &[
                (&queue, Type::TEXT),
                (name, Type::TEXT),
                (&table.quoted, Type::TEXT),
            ],
        )
        .await
        .on(SUBSCRIBER, format!("registering {name}"))?;
    }
    tx.query_typed(
        "INSERT INTO londiste_rs.worker_position (queue_name, consumer_name) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
        &[(&queue, Type::TEXT), (&consumer, Type::TEXT)],
    )
    .await
    .on(SUBSCRIBER, "recording the worker")?;
    tx.commit().await.on(SUBSCRIBER, "becoming the subscriber")
}
