-- pgq-rs: the `pgq` line, version 8: one tick writer per queue at a time.
--
-- pgq.ticker and pgq.catchup_ticker lock the queue's row before they write a tick. Without it, two
-- tickers at once could give the lower tick id the newer snapshot, and a transaction that
-- committed between the two snapshots came in two batches (seen with force_tick beside the
-- daemon). See pgq.ticker(text) below. A whole ticker pass (pgq.catchup_ticker() then
-- pgq.ticker()) locks its queues by name first, the order pgq.ticker() takes them in, so two
-- passes at once wait for each other instead of deadlocking.
--
-- Run it as `psql -v ON_ERROR_STOP=1 -1 -f 0008_serial_ticks.sql`, or let the Rust installer.

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
    IF EXISTS (SELECT 1 FROM pgq_rs.migrations WHERE line = 'pgq' AND version >= 8) THEN
        RAISE EXCEPTION 'pgq-rs: % version % or newer is already installed', 'pgq', 8
            USING ERRCODE = 'PQR01';
    END IF;
END
$guard$;

-- One writer of a queue's ticks at a time: the queue's row is locked first. Two tickers at once
-- (two daemons in a split brain, force_tick beside a daemon, pgqd beside ours) could otherwise
-- give the lower tick id the newer snapshot; a transaction that commits between the two
-- snapshots is then in the batch up to the lower tick and again in the one after the higher
-- tick, and its events come twice. Under the lock each tick's snapshot is taken after the
-- previous tick committed, so snapshots grow with tick ids. The lock is FOR NO KEY UPDATE:
-- producers and consumers only read the row; other tickers, settings changes, table rotation and
-- drop_queue wait for the ticker's transaction. Callers must tick in READ COMMITTED, where every
-- statement takes a new snapshot.
CREATE OR REPLACE FUNCTION pgq.ticker(i_queue_name text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
    last_tick record;
    prev_gap interval;
    event_seq bigint;
    new_events bigint;
    new_tick bigint;
    cut boolean := false;
BEGIN
    SELECT queue_id, queue_tick_seq, queue_event_seq, queue_external_ticker, queue_ticker_paused,
           queue_ticker_max_count, queue_ticker_max_lag, queue_ticker_idle_period,
           queue_ticker_max_batch
      INTO q FROM pgq.queue WHERE queue_name = i_queue_name
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such queue' USING ERRCODE = 'PQQ01',
            DETAIL = format('queue %L', i_queue_name);
    END IF;
    IF q.queue_external_ticker THEN
        RAISE EXCEPTION 'This queue has external tick source.' USING ERRCODE = 'PQT01',
            DETAIL = format('queue %L', i_queue_name);
    END IF;
    IF q.queue_ticker_paused THEN
        RAISE EXCEPTION 'Ticker has been paused for this queue' USING ERRCODE = 'PQT01',
            DETAIL = format('queue %L', i_queue_name);
    END IF;
    event_seq := pgq._event_seq_value(q.queue_event_seq);
    IF event_seq - (SELECT t.tick_event_seq FROM pgq.tick t WHERE t.tick_queue = q.queue_id
                     ORDER BY t.tick_queue DESC, t.tick_id DESC LIMIT 1) > q.queue_ticker_max_batch
       AND pgq.catchup_ticker(i_queue_name) > 0 THEN
        cut := true;
    END IF;

    SELECT tick_id, tick_time, tick_event_seq, now() - tick_time AS lag,
           txid_snapshot_xmin(tick_snapshot) AS xmin, txid_snapshot_xmax(tick_snapshot) AS xmax
      INTO last_tick FROM pgq.tick
     WHERE tick_queue = q.queue_id
     ORDER BY tick_queue DESC, tick_id DESC LIMIT 1;
    IF FOUND THEN
        IF last_tick.xmin > txid_current() THEN
            RAISE EXCEPTION 'Invalid PgQ state: old xmin=%, old xmax=%, cur txid=%',
                last_tick.xmin, last_tick.xmax, txid_current()
                USING DETAIL = format('queue %L', i_queue_name);
        END IF;
        -- PGQ reads a never-used sequence as 1, so its rule sees no new event after the first
        -- insert; positions from 1 up keep every decision PGQ's.
        new_events := greatest(event_seq, 1) - greatest(last_tick.tick_event_seq, 1);
        IF new_events > 0 THEN
            IF new_events < q.queue_ticker_max_count AND last_tick.lag < q.queue_ticker_max_lag THEN
                RETURN CASE WHEN cut THEN last_tick.tick_id END;
            END IF;
        ELSE
            SELECT last_tick.tick_time - tick_time INTO prev_gap
              FROM pgq.tick
             WHERE tick_queue = q.queue_id AND tick_id < last_tick.tick_id
             ORDER BY tick_queue DESC, tick_id DESC LIMIT 1;
            IF FOUND AND (last_tick.lag < q.queue_ticker_max_lag / 2
                          OR (last_tick.lag < prev_gap * 2
                              AND last_tick.lag < q.queue_ticker_idle_period)) THEN
                RETURN CASE WHEN cut THEN last_tick.tick_id END;
            END IF;
        END IF;
    END IF;

    new_tick := nextval(q.queue_tick_seq);
    INSERT INTO pgq.tick (tick_queue, tick_id, tick_event_seq)
    VALUES (q.queue_id, new_tick, event_seq);
    RETURN new_tick;
END
$$;

CREATE OR REPLACE FUNCTION pgq.ticker(i_queue_name text, i_tick_id bigint, i_orig_timestamp timestamptz,
                           i_event_seq bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
BEGIN
    SELECT queue_id, queue_tick_seq, queue_event_seq INTO q
      FROM pgq.queue
     WHERE queue_name = i_queue_name AND queue_external_ticker AND NOT queue_ticker_paused
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'queue not found or ticker disabled: %', i_queue_name USING ERRCODE = 'PQT01';
    END IF;
    INSERT INTO pgq.tick (tick_queue, tick_id, tick_time, tick_event_seq)
    VALUES (q.queue_id, i_tick_id, i_orig_timestamp, i_event_seq);
    PERFORM pgq.seq_setval(q.queue_tick_seq, i_tick_id), pgq.seq_setval(q.queue_event_seq, i_event_seq);
    RETURN i_tick_id;
END
$$;

CREATE OR REPLACE FUNCTION pgq.catchup_ticker(i_queue_name text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
    last_tick record;
    cur_snap txid_snapshot;
    event_seq bigint;
    -- the waiting transactions, side by side in the order of their last event id: id, last event
    -- id, number of events, time of the last event
    tx_ids bigint[];
    tx_last bigint[];
    tx_events bigint[];
    tx_time timestamptz[];
    in_progress bigint[];
    finished_xip bigint[];
    xip bigint[];
    in_batch bigint := 0;
    -- the newest transaction made visible so far: a cut's xmax is just above it
    top bigint;
    cut_time timestamptz;
    written integer := 0;
BEGIN
    SELECT queue_id, queue_data_pfx, queue_event_seq, queue_tick_seq, queue_ticker_max_batch,
           queue_external_ticker OR queue_ticker_paused AS not_here
      INTO q FROM pgq.queue WHERE queue_name = i_queue_name
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such queue' USING ERRCODE = 'PQQ01',
            DETAIL = format('queue %L', i_queue_name);
    END IF;
    IF q.not_here THEN
        RETURN 0;
    END IF;
    -- Taken once the queue's ticks are this session's to write (see pgq.ticker(text)).
    cur_snap := txid_current_snapshot();
    SELECT tick_id, tick_snapshot, tick_event_seq, tick_time INTO last_tick
      FROM pgq.tick WHERE tick_queue = q.queue_id
     ORDER BY tick_queue DESC, tick_id DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    event_seq := pgq._event_seq_value(q.queue_event_seq);
    IF event_seq - last_tick.tick_event_seq <= q.queue_ticker_max_batch THEN
        RETURN 0;
    END IF;

    -- Waiting are the transactions from the last tick's xmax on, and those it listed as running
    -- that have finished since. Still-running ones (a session idle in a transaction for hours)
    -- are left out of the scan, so it never rereads everything since the oldest of them.
    SELECT coalesce(array_agg(x), '{}') INTO finished_xip
      FROM txid_snapshot_xip(last_tick.tick_snapshot) x
     WHERE txid_visible_in_snapshot(x, cur_snap);
    -- One visibility test per transaction, not per event: OFFSET 0 keeps the tests above the
    -- GROUP BY, where the planner would push them down to every row.
    EXECUTE 'SELECT coalesce(array_agg(txid ORDER BY last_id), ''{}''),'
        || ' array_agg(last_id ORDER BY last_id), array_agg(n ORDER BY last_id),'
        || ' array_agg(ev_time ORDER BY last_id)'
        || ' FROM (SELECT ev_txid AS txid, max(ev_id) AS last_id, count(*) AS n,'
        || '              max(ev_time) AS ev_time FROM ' || pgq.quote_fqname(q.queue_data_pfx)
        || '        WHERE ((ev_txid >= txid_snapshot_xmax($1) AND ev_txid < txid_snapshot_xmax($2))'
        || '               OR ev_txid = ANY ($3)) AND ev_owner IS NULL'
        || '        GROUP BY ev_txid OFFSET 0) waiting'
        || ' WHERE NOT txid_visible_in_snapshot(txid, $1) AND txid_visible_in_snapshot(txid, $2)'
      INTO tx_ids, tx_last, tx_events, tx_time
      USING last_tick.tick_snapshot, cur_snap, finished_xip;
    -- This transaction runs too, and a snapshot does not list its own: since the queue's lock gave
    -- it an id before the snapshot, a cut above that id must not count it finished.
    SELECT coalesce(array_agg(x ORDER BY x), '{}') INTO in_progress
      FROM (SELECT txid_snapshot_xip(cur_snap) UNION SELECT txid_current()) AS running(x);
    top := txid_snapshot_xmax(last_tick.tick_snapshot) - 1;

    FOR i IN 1 .. cardinality(tx_ids) LOOP
        IF in_batch > 0 AND in_batch + tx_events[i] > q.queue_ticker_max_batch THEN
            -- a cut after the previous transaction: every one from the i-th on still waits
            SELECT coalesce(array_agg(DISTINCT x ORDER BY x), '{}') INTO xip
              FROM unnest(in_progress || tx_ids[i:]) x
             WHERE x <= top;
            INSERT INTO pgq.tick (tick_queue, tick_id, tick_time, tick_snapshot, tick_event_seq)
            VALUES (q.queue_id, nextval(q.queue_tick_seq), coalesce(cut_time, now()),
                    (coalesce(xip[1], top + 1) || ':' || (top + 1) || ':'
                     || array_to_string(xip, ','))::txid_snapshot,
                    tx_last[i - 1]);
            written := written + 1;
            in_batch := 0;
        END IF;
        in_batch := in_batch + tx_events[i];
        top := greatest(top, tx_ids[i]);
        cut_time := greatest(cut_time, tx_time[i]);
    END LOOP;
    RETURN written;
END
$$;

-- The batch cap for every queue ticked here; returns the number of ticks written. Every queue a
-- ticker pass ticks is locked first, by name: pgq.ticker() after it in the same transaction, and
-- any other pass, take them in that order, so two passes at once wait instead of deadlocking.
-- Queues with no more than ticker_max_batch events since their newest tick are then filtered out
-- in one query.
CREATE OR REPLACE FUNCTION pgq.catchup_ticker() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM FROM pgq.queue
      WHERE NOT queue_external_ticker AND NOT queue_ticker_paused
      ORDER BY queue_name
        FOR NO KEY UPDATE;
    RETURN (SELECT coalesce(sum(pgq.catchup_ticker(q.queue_name)), 0)::bigint
              FROM pgq.queue q
              JOIN LATERAL (SELECT t.tick_event_seq FROM pgq.tick t
                             WHERE t.tick_queue = q.queue_id
                             ORDER BY t.tick_queue DESC, t.tick_id DESC LIMIT 1) top ON true
             WHERE NOT q.queue_external_ticker AND NOT q.queue_ticker_paused
               AND pgq._event_seq_value(q.queue_event_seq) - top.tick_event_seq
                   > q.queue_ticker_max_batch);
END
$$;

INSERT INTO pgq_rs.migrations (line, version, description) VALUES ('pgq', 8, 'serial_ticks');
