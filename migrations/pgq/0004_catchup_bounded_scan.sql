-- pgq-rs: the `pgq` line, version 4: catch-up ticks only after an outage, and without rereading
-- what a held xmin pins.
--
-- Version 2 cut any backlog of more than 2 × ticker_max_count events since the newest tick, so
-- under a steady load above that per ticker pass it cut every pass into batches of
-- ticker_max_count: many small batches, each updating the subscription row twice (under a held
-- xmin those versions pile up and every batch got slower; measured: 7,980 batches in a minute
-- against pgqd's 597). A backlog is an outage's only when the newest tick is also older than the
-- queue's ticker_max_lag: a running ticker ticks before that, whatever the load.
--
-- Version 2's pgq.catchup_ticker(text) scanned the event table from the last tick's xmin. A
-- session idle in a transaction pins that xmin, so every ticker pass reread every event since
-- the session began (measured: 505,000 rows read to find 5,000 new ones, growing each pass).
-- The scan now covers the last tick's xmax on, plus the transactions it listed as running that
-- have finished since: the same set of transactions, found through the ev_txid index.
--
-- SQLSTATEs raised by this file:
--   PQR01  this or a newer version of the line is already installed.
--   PQQ01  catchup_ticker: no such queue.

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
    IF EXISTS (SELECT 1 FROM pgq_rs.migrations WHERE line = 'pgq' AND version >= 4) THEN
        RAISE EXCEPTION 'pgq-rs: % version % or newer is already installed', 'pgq', 4
            USING ERRCODE = 'PQR01';
    END IF;
END
$guard$;

CREATE OR REPLACE FUNCTION pgq.catchup_ticker(i_queue_name text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
    last_tick record;
    cur_snap txid_snapshot := txid_current_snapshot();
    event_seq bigint;
    cut bigint;
    prev_excluded bigint[];
    excluded bigint[];
    in_progress bigint[];
    finished_xip bigint[];
    xip bigint[];
    cut_time timestamptz;
    written integer := 0;
BEGIN
    SELECT queue_id, queue_data_pfx, queue_event_seq, queue_tick_seq, queue_ticker_max_count,
           queue_ticker_max_lag, queue_external_ticker OR queue_ticker_paused AS not_here
      INTO q FROM pgq.queue WHERE queue_name = i_queue_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such queue: %', i_queue_name USING ERRCODE = 'PQQ01';
    END IF;
    IF q.not_here OR q.queue_ticker_max_count < 1 THEN
        RETURN 0;
    END IF;
    SELECT tick_id, tick_snapshot, tick_event_seq, tick_time INTO last_tick
      FROM pgq.tick WHERE tick_queue = q.queue_id
     ORDER BY tick_queue DESC, tick_id DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    event_seq := pgq._event_seq_value(q.queue_event_seq);
    IF event_seq - last_tick.tick_event_seq <= 2 * q.queue_ticker_max_count
       OR last_tick.tick_time > now() - q.queue_ticker_max_lag THEN
        RETURN 0;
    END IF;

    -- the waiting transactions finished by now: each one's event id range and time
    CREATE TEMP TABLE IF NOT EXISTS pgq_catchup_tx (
        txid bigint PRIMARY KEY, first_id bigint, last_id bigint, ev_time timestamptz
    ) ON COMMIT DROP;
    TRUNCATE pgq_catchup_tx;
    -- Waiting are the transactions from the last tick's xmax on, and those it listed as running
    -- that have finished since. Still-running ones (a session idle in a transaction for hours)
    -- are left out of the scan, so it never rereads everything since the oldest of them.
    SELECT coalesce(array_agg(x), '{}') INTO finished_xip
      FROM txid_snapshot_xip(last_tick.tick_snapshot) x
     WHERE txid_visible_in_snapshot(x, cur_snap);
    EXECUTE 'INSERT INTO pgq_catchup_tx '
        || 'SELECT ev_txid, min(ev_id), max(ev_id), max(ev_time) FROM '
        || pgq.quote_fqname(q.queue_data_pfx)
        || ' WHERE ((ev_txid >= txid_snapshot_xmax($1) AND ev_txid < txid_snapshot_xmax($2))'
        || '        OR ev_txid = ANY ($3))'
        || ' AND NOT txid_visible_in_snapshot(ev_txid, $1)'
        || ' AND txid_visible_in_snapshot(ev_txid, $2) AND ev_owner IS NULL'
        || ' GROUP BY ev_txid'
      USING last_tick.tick_snapshot, cur_snap, finished_xip;
    SELECT coalesce(array_agg(x ORDER BY x), '{}') INTO in_progress
      FROM txid_snapshot_xip(cur_snap) x;
    -- before the first cut, every waiting transaction is still excluded
    SELECT coalesce(array_agg(txid ORDER BY txid), '{}') INTO prev_excluded FROM pgq_catchup_tx;

    cut := last_tick.tick_event_seq + q.queue_ticker_max_count;
    WHILE cut < event_seq - q.queue_ticker_max_count LOOP
        SELECT coalesce(array_agg(txid ORDER BY txid), '{}') INTO excluded
          FROM pgq_catchup_tx WHERE last_id > cut;
        -- a cut that makes nothing new visible would only add an empty batch
        IF excluded <> prev_excluded THEN
            SELECT max(ev_time) INTO cut_time FROM pgq_catchup_tx WHERE first_id <= cut;
            SELECT coalesce(array_agg(DISTINCT x ORDER BY x), '{}') INTO xip
              FROM unnest(in_progress || excluded) x;
            INSERT INTO pgq.tick (tick_queue, tick_id, tick_time, tick_snapshot, tick_event_seq)
            VALUES (q.queue_id, nextval(q.queue_tick_seq), coalesce(cut_time, now()),
                    (coalesce(xip[1], txid_snapshot_xmax(cur_snap)) || ':'
                     || txid_snapshot_xmax(cur_snap) || ':'
                     || array_to_string(xip, ','))::txid_snapshot,
                    cut);
            written := written + 1;
            prev_excluded := excluded;
        END IF;
        cut := cut + q.queue_ticker_max_count;
    END LOOP;
    RETURN written;
END
$$;

-- Catch-up for every queue ticked here; returns the number of ticks written. Queues whose newest
-- tick is recent or whose backlog is small are filtered out in one query.
CREATE OR REPLACE FUNCTION pgq.catchup_ticker() RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(sum(pgq.catchup_ticker(q.queue_name)), 0)::bigint
      FROM pgq.queue q
      JOIN LATERAL (SELECT t.tick_event_seq, t.tick_time FROM pgq.tick t
                     WHERE t.tick_queue = q.queue_id
                     ORDER BY t.tick_queue DESC, t.tick_id DESC LIMIT 1) top ON true
     WHERE NOT q.queue_external_ticker AND NOT q.queue_ticker_paused
       AND top.tick_time < now() - q.queue_ticker_max_lag
       AND pgq._event_seq_value(q.queue_event_seq) - top.tick_event_seq
           > 2 * q.queue_ticker_max_count
$$;

INSERT INTO pgq_rs.migrations (line, version, description) VALUES ('pgq', 4, 'catchup_bounded_scan');
