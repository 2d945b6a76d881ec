-- pgq-rs: the `pgq` line, version 2: wake-ups on tick, and catch-up ticks after an outage.
-- Both are extensions: no PGQ function changes meaning.

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
    IF EXISTS (SELECT 1 FROM pgq_rs.migrations WHERE line = 'pgq' AND version >= 2) THEN
        RAISE EXCEPTION 'pgq-rs: % version % or newer is already installed', 'pgq', 2
            USING ERRCODE = 'PQR01';
    END IF;
END
$guard$;

-- Every tick, whoever makes it, wakes the consumers that LISTEN on channel pgq_tick; the payload
-- is the queue name (one channel for all queues: channel names are limited to 63 bytes, queue
-- names are not). Notifications are delivered at commit.
CREATE FUNCTION pgq._notify_tick() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgq_tick', q.queue_name) FROM pgq.queue q WHERE q.queue_id = NEW.tick_queue;
    RETURN NULL;
END
$$;

CREATE TRIGGER tick_notify AFTER INSERT ON pgq.tick
    FOR EACH ROW EXECUTE FUNCTION pgq._notify_tick();

-- Catch-up after downtime. When more than 2 × ticker_max_count events wait since the newest
-- tick, writes ticks at event ids E = last + k × ticker_max_count, so that batches hold about
-- ticker_max_count events instead of one giant batch; the ordinary pgq.ticker() then ticks the
-- rest. Returns the number of ticks written.
--
-- A cut's snapshot is synthesized: visible are the transactions finished in the current snapshot
-- except those with an event of this queue above the cut. As xmin:xmax:xip that is the current
-- snapshot's xmax, and as xip its unfinished transactions plus the excluded ones. Cuts only grow,
-- so every transaction is in exactly one batch, whole. A transaction that waited for another's
-- row lock writes its events after the other committed (AFTER triggers, event sequence with
-- CACHE 1), so its largest ev_id is larger and it is never cut before the other. Events that
-- maint_retry_events re-inserted keep their old ev_id and are left out of the computation.
CREATE FUNCTION pgq.catchup_ticker(i_queue_name text) RETURNS integer
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
    xip bigint[];
    cut_time timestamptz;
    written integer := 0;
BEGIN
    SELECT queue_id, queue_data_pfx, queue_event_seq, queue_tick_seq, queue_ticker_max_count,
           queue_external_ticker OR queue_ticker_paused AS not_here
      INTO q FROM pgq.queue WHERE queue_name = i_queue_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such queue: %', i_queue_name USING ERRCODE = 'PQQ01';
    END IF;
    IF q.not_here OR q.queue_ticker_max_count < 1 THEN
        RETURN 0;
    END IF;
    SELECT tick_id, tick_snapshot, tick_event_seq INTO last_tick
      FROM pgq.tick WHERE tick_queue = q.queue_id
     ORDER BY tick_queue DESC, tick_id DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    event_seq := pgq._event_seq_value(q.queue_event_seq);
    IF event_seq - last_tick.tick_event_seq <= 2 * q.queue_ticker_max_count THEN
        RETURN 0;
    END IF;

    -- the waiting transactions finished by now: each one's event id range and time
    CREATE TEMP TABLE IF NOT EXISTS pgq_catchup_tx (
        txid bigint PRIMARY KEY, first_id bigint, last_id bigint, ev_time timestamptz
    ) ON COMMIT DROP;
    TRUNCATE pgq_catchup_tx;
    EXECUTE 'INSERT INTO pgq_catchup_tx '
        || 'SELECT ev_txid, min(ev_id), max(ev_id), max(ev_time) FROM '
        || pgq.quote_fqname(q.queue_data_pfx)
        || ' WHERE ev_txid >= txid_snapshot_xmin($1) AND ev_txid < txid_snapshot_xmax($2)'
        || ' AND NOT txid_visible_in_snapshot(ev_txid, $1)'
        || ' AND txid_visible_in_snapshot(ev_txid, $2) AND ev_owner IS NULL'
        || ' GROUP BY ev_txid'
      USING last_tick.tick_snapshot, cur_snap;
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

-- Catch-up for every queue ticked here; returns the number of ticks written. The daemon calls it
-- on every pass, so the queues with no backlog are filtered out in one query (the sequence read
-- with pg_sequence_last_value, not one dynamic statement per queue).
CREATE FUNCTION pgq.catchup_ticker() RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(sum(pgq.catchup_ticker(q.queue_name)), 0)::bigint
      FROM pgq.queue q
      JOIN LATERAL (SELECT t.tick_event_seq FROM pgq.tick t
                     WHERE t.tick_queue = q.queue_id
                     ORDER BY t.tick_queue DESC, t.tick_id DESC LIMIT 1) top ON true
     WHERE NOT q.queue_external_ticker AND NOT q.queue_ticker_paused
       AND pgq._event_seq_value(q.queue_event_seq) - top.tick_event_seq
           > 2 * q.queue_ticker_max_count
$$;

REVOKE ALL ON FUNCTION pgq._notify_tick(), pgq.catchup_ticker(text), pgq.catchup_ticker()
  FROM public;
GRANT EXECUTE ON FUNCTION pgq.catchup_ticker(text), pgq.catchup_ticker() TO pgq_admin;

INSERT INTO pgq_rs.migrations (line, version, description)
VALUES ('pgq', 2, 'tick_wakeups_and_catchup');
