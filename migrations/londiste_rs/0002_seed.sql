-- pgq-rs: the `londiste_rs` line, version 2: seeding a subscriber from a base backup.
--
-- Provider side: `londiste seed` records its plan (queue, consumer, the copy's future id,
-- tables) in the transaction that registers the consumer, so the copy carries it.
-- Subscriber side: the set of provider transactions the copy already holds, and the copy
-- condition of a filtered table.
-- See docs/seeding.md.
-- Bookkeeping. Everything below runs with search_path pinned to pg_catalog, so names the
-- database owner may have planted elsewhere are never picked up; and the bookkeeping schema must
-- be one nobody else controls: a pgq-rs schema owned by another non-superuser role, or a trigger
-- or rule on a table in pgq_rs, would run that role's code with the installer's rights.
SET LOCAL search_path = pg_catalog, pg_temp;
DO $trust$
DECLARE
    problem text;
BEGIN
    IF current_setting('search_path') <> 'pg_catalog, pg_temp' THEN
        RAISE EXCEPTION 'pgq-rs: this file must run in one transaction'
            USING ERRCODE = 'PQR03', HINT = 'Run it with psql -1 (or between BEGIN and COMMIT).';
    END IF;
    SELECT format('%s belongs to role %s', o.what, o.owner::regrole) INTO problem
      FROM (SELECT 'schema ' || n.nspname AS what, n.nspowner AS owner
              FROM pg_namespace n
             WHERE n.nspname IN ('pgq_rs', 'pgq', 'pgq_coop', 'pgq_ext', 'londiste_rs')
            UNION ALL
            SELECT 'table pgq_rs.' || c.relname, c.relowner
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'pgq_rs') o
      JOIN pg_roles r ON r.oid = o.owner
     WHERE r.rolname <> current_user AND NOT r.rolsuper
     LIMIT 1;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'pgq-rs: refusing to install: % (neither you nor a superuser)', problem
            USING ERRCODE = 'PQR03',
                  HINT = 'Run the installer as the role that owns the installation.';
    END IF;
    SELECT format('%s %s on table pgq_rs.%s', o.kind, o.name, c.relname) INTO problem
      FROM (SELECT 'trigger' AS kind, t.tgname AS name, t.tgrelid AS rel
              FROM pg_trigger t WHERE NOT t.tgisinternal
            UNION ALL
            SELECT 'rule', w.rulename, w.ev_class FROM pg_rewrite w WHERE w.rulename <> '_RETURN') o
      JOIN pg_class c ON c.oid = o.rel
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'pgq_rs'
     LIMIT 1;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'pgq-rs: refusing to install: there is a %', problem
            USING ERRCODE = 'PQR03',
                  HINT = 'pgq-rs makes no triggers or rules there: find out who did.';
    END IF;
END
$trust$;
CREATE SCHEMA IF NOT EXISTS pgq_rs;
CREATE TABLE IF NOT EXISTS pgq_rs.migrations (
    line text NOT NULL, version integer NOT NULL, description text NOT NULL,
    installed_on timestamptz NOT NULL DEFAULT now(), success boolean NOT NULL DEFAULT true,
    checksum bytea, execution_time_ms bigint, PRIMARY KEY (line, version));
-- The installation's own id: remote consumers key their batch tracking with it (a standby or a
-- copy of this database shares system_identifier, but a seeded copy makes itself a new id).
CREATE TABLE IF NOT EXISTS pgq_rs.installation (
    singleton  boolean     NOT NULL DEFAULT true PRIMARY KEY CHECK (singleton),
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_on timestamptz NOT NULL DEFAULT now());
INSERT INTO pgq_rs.installation DEFAULT VALUES ON CONFLICT DO NOTHING;
GRANT USAGE ON SCHEMA pgq_rs TO public;
GRANT SELECT ON TABLE pgq_rs.migrations, pgq_rs.installation TO public;

DO $guard$
BEGIN
    IF EXISTS (SELECT 1 FROM pgq_rs.migrations WHERE line = 'londiste_rs' AND version >= 2) THEN
        RAISE EXCEPTION 'pgq-rs: % version % or newer is already installed', 'londiste_rs', 2
            USING ERRCODE = 'PQR01';
    END IF;
END
$guard$;

CREATE TABLE londiste_rs.seed_plan (
    queue_name      text        NOT NULL,
    -- The consumer registered for the copy; it becomes the subscriber's worker.
    consumer_name   text        NOT NULL,
    -- The installation id the copy takes when it becomes a subscriber: the consumer's default
    -- name is made from it before the copy exists.
    subscriber_id   uuid        NOT NULL,
    -- Provider tables (schema.table, unquoted, as the capture trigger names them).
    tables          text[]      NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    -- The backup is done: the plan waits for `londiste seed-finish` (or `seed-cancel`).
    -- Until then a running seed holds an advisory lock; a plan without one was killed.
    copied          boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (queue_name, consumer_name)
);

-- Provider side: the subscribers' workers (consumers) that take each table's changes; the
-- capture triggers stay while one does. Empty for a table recorded before version 2.
ALTER TABLE londiste_rs.provider_table ADD COLUMN consumers text[] NOT NULL DEFAULT '{}';
-- Before version 2 a queue had one subscriber: its tables are claimed by the queue's consumers.
DO $claims$
BEGIN
    IF pg_catalog.to_regclass('pgq.subscription') IS NOT NULL THEN
        EXECUTE $sql$
            UPDATE londiste_rs.provider_table p
               SET consumers = ARRAY(SELECT c.co_name::text
                                       FROM pgq.subscription s
                                       JOIN pgq.queue q ON q.queue_id = s.sub_queue
                                       JOIN pgq.consumer c ON c.co_id = s.sub_consumer
                                      WHERE q.queue_name = p.queue_name
                                      ORDER BY 1)$sql$;
    END IF;
END
$claims$;

-- Both sides: scripts run by `londiste execute` (provider) and applied by the worker
-- (subscriber), once per file name and queue.
CREATE TABLE londiste_rs.executed (
    queue_name      text        NOT NULL,
    file_name       text        NOT NULL,
    script          text        NOT NULL,
    executed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue_name, file_name)
);

-- Subscriber side: a table copied with `--copy-condition` holds the provider's rows matching it,
-- and the worker keeps it so: rows that stop matching are deleted, rows that start matching are
-- inserted, events of rows outside it change nothing.
ALTER TABLE londiste_rs.subscriber_table ADD COLUMN copy_condition text;

-- Subscriber side: the provider transactions whose changes the seeded copy holds, read from
-- the copy's own event tables before anything wrote to it. The worker skips their events, and
-- drops the rows once a batch ends past all of them.
CREATE TABLE londiste_rs.seed_txid (
    queue_name      text        NOT NULL,
    txid            bigint      NOT NULL,
    PRIMARY KEY (queue_name, txid)
);

INSERT INTO pgq_rs.migrations (line, version, description) VALUES ('londiste_rs', 2, 'seed');
