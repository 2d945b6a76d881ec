-- pgq-rs: the `pgq` line, version 6: bounded batches, and the exact backlog.
--
-- Version 4 cut a backlog into batches only after an outage (the newest tick older than
-- ticker_max_lag): any shorter gap (a ticker restart, a deploy, a bulk load while the ticker
-- runs) still made one batch of everything. No tick rule can tell such a gap from one ticker pass
-- of a steady load of the same size, so the batch itself is capped: a queue setting,
-- ticker_max_batch, bounds every batch, whatever the gap, at that many events plus the
-- transactions straddling a cut; pgq.ticker(queue) applies it first, so pgqd, the daemon and
-- force_tick users are all bounded. Below the cap per pass a queue gets exactly PGQ's ticks.
--
-- pgq.batch_event_sql reads the far transactions of a batch (all of a cut batch's) as ranges of
-- ids by the index, not as one IN list that an unanalyzed event table reads whole.
--
-- pgq.get_consumer_backlog_exact counts, per consumer, the committed events it will still
-- receive, row by row; pgq.get_consumer_backlog stays the cheap estimate from tick positions.
--
-- Run it as `psql -v ON_ERROR_STOP=1 -1 -f 0006_bounded_batches.sql`, or let the Rust installer.

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
    IF EXISTS (SELECT 1 FROM pgq_rs.migrations WHERE line = 'pgq' AND version >= 6) THEN
        RAISE EXCEPTION 'pgq-rs: % version % or newer is already installed', 'pgq', 6
            USING ERRCODE = 'PQR01';
    END IF;
END
$guard$;

-- At most this many events per batch, plus the transactions straddling a cut.
ALTER TABLE pgq.queue ADD COLUMN queue_ticker_max_batch integer NOT NULL DEFAULT 10000
    CONSTRAINT queue_ticker_max_batch_positive CHECK (queue_ticker_max_batch > 0);

-- PGQ's six settings, plus disable_insert and per_tx_limit (which PGQ enforces only in C; here
-- the insert functions enforce them) and ticker_max_batch.
CREATE OR REPLACE FUNCTION pgq.set_queue_config(x_queue_name text, x_param_name text, x_param_value text)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col text;
BEGIN
    IF x_queue_name IS NULL OR x_param_name IS NULL THEN
        RAISE EXCEPTION 'Invalid NULL value' USING ERRCODE = 'PQA01';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pgq.queue WHERE queue_name = x_queue_name) THEN
        RAISE EXCEPTION 'No such event queue' USING ERRCODE = 'PQQ01',
            DETAIL = format('queue %L', x_queue_name);
    END IF;
    col := 'queue_' || x_param_name;
    IF col NOT IN ('queue_ticker_max_count', 'queue_ticker_max_lag', 'queue_ticker_idle_period',
                   'queue_ticker_paused', 'queue_rotation_period', 'queue_external_ticker',
                   'queue_disable_insert', 'queue_per_tx_limit', 'queue_ticker_max_batch') THEN
        -- PGQ's text, with its stray s: parameter "foo" comes out as "foos"
        RAISE EXCEPTION 'cannot change parameter "%s"', x_param_name USING ERRCODE = 'PQA01';
    END IF;
    EXECUTE format('UPDATE pgq.queue SET %I = $1::%s WHERE queue_name = $2', col,
                   (SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                     WHERE attrelid = 'pgq.queue'::regclass AND attname = col))
      USING x_param_value, x_queue_name;
    RETURN 1;
END
$$;

-- The batch cap. When more than ticker_max_batch events may wait since the newest tick (by event
-- sequence, which also counts rolled-back inserts and force_tick's jumps), reads the waiting
-- transactions and writes ticks between them, so that no batch holds more than that many
-- events, whatever the gap was: an outage, a ticker restart, a bulk load while the ticker runs.
-- A cut never splits a transaction: one transaction larger than the cap is a batch of its own.
-- What is left under the cap is for the ordinary tick rule, so a queue that gets fewer than
-- ticker_max_batch events per ticker pass gets exactly PGQ's ticks. Returns the number of ticks
-- written. pgq.ticker(queue) calls it first, so every path that ticks (the daemon, pgqd through
-- pgq.ticker(), force_tick followed by pgq.ticker) is bounded; the 4-argument pgq.ticker of an
-- external tick source is not.
--
-- The waiting transactions are those finished by now, in the order of their last event id; a
-- cut after the k-th makes the first k visible. A cut's snapshot is synthesized: visible are the
-- transactions finished in the current snapshot except those still waiting after the cut. As
-- xmin:xmax:xip: xmax just above the newest transaction made visible (never below the last
-- tick's xmax), and as xip the unfinished and the excluded transactions below it. So a cut's
-- snapshot lists only the excluded transactions that interleave with the included ones, not
-- the whole rest of the backlog (which made every cut's tick, and the reading of every batch,
-- grow with the backlog). Cuts only grow, so every transaction is in exactly one batch, whole. A
-- transaction that waited for another's row lock writes its events after the other committed
-- (AFTER triggers, event sequence with CACHE 1), so its last event id is larger and it is never
-- in an earlier batch than the other. Events that maint_retry_events re-inserted keep their old
-- ev_id and are left out of the computation.
--
-- The waiting transactions are held in arrays, not in a temporary table: a caller's own
-- pg_temp table of the same name would be used instead, its triggers run as this function's
-- owner.
CREATE OR REPLACE FUNCTION pgq.catchup_ticker(i_queue_name text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
    last_tick record;
    cur_snap txid_snapshot := txid_current_snapshot();
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
      INTO q FROM pgq.queue WHERE queue_name = i_queue_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such queue' USING ERRCODE = 'PQQ01',
            DETAIL = format('queue %L', i_queue_name);
    END IF;
    IF q.not_here THEN
        RETURN 0;
    END IF;
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
    SELECT coalesce(array_agg(x ORDER BY x), '{}') INTO in_progress
      FROM txid_snapshot_xip(cur_snap) x;
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

-- The batch cap for every queue ticked here; returns the number of ticks written. Queues with
-- no more than ticker_max_batch events since their newest tick are filtered out in one query.
CREATE OR REPLACE FUNCTION pgq.catchup_ticker() RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(sum(pgq.catchup_ticker(q.queue_name)), 0)::bigint
      FROM pgq.queue q
      JOIN LATERAL (SELECT t.tick_event_seq FROM pgq.tick t
                     WHERE t.tick_queue = q.queue_id
                     ORDER BY t.tick_queue DESC, t.tick_id DESC LIMIT 1) top ON true
     WHERE NOT q.queue_external_ticker AND NOT q.queue_ticker_paused
       AND pgq._event_seq_value(q.queue_event_seq) - top.tick_event_seq
           > q.queue_ticker_max_batch
$$;

-- PGQ's tick rule, after the batch cap. More than ticker_max_batch events since the last tick
-- (however short the gap: a ticker restart, a bulk load) are first cut into batches of that
-- many by pgq.catchup_ticker. Then, with new events since the last tick (by event sequence, so
-- rolled-back and in-flight inserts count): tick at ticker_max_count events or ticker_max_lag
-- age. Without: back off, no tick while the lag is under max_lag/2, or under both twice the
-- previous gap and ticker_idle_period. Returns the newest tick id written, or NULL when no tick
-- was written.
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
      INTO q FROM pgq.queue WHERE queue_name = i_queue_name;
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

-- New: the exact backlog of each consumer, the committed events it will still receive, counted
-- row by row in the queue's event tables through their ev_txid index, by transaction visibility
-- against the snapshot of its position: `ticked_events` up to the newest tick,
-- `unticked_events` committed after it (not cut into a batch yet), `retry_events` its events in
-- the retry queue. Transactions still running are not counted (they may roll back). A consumer
-- holding a batch counts from the batch's start; a cooperative group counts from the group's
-- position. It reads the whole backlog: for an operator, not for every metrics scrape
-- (pgq.get_consumer_backlog estimates from tick positions).
CREATE OR REPLACE FUNCTION pgq.get_consumer_backlog_exact(
    IN i_queue_name text DEFAULT NULL, IN i_consumer_name text DEFAULT NULL,
    OUT queue_name text, OUT consumer_name text, OUT last_tick_id bigint,
    OUT ticked_events bigint, OUT unticked_events bigint, OUT retry_events bigint,
    OUT pending_events bigint)
RETURNS SETOF record
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
    cur_snap txid_snapshot := txid_current_snapshot();
BEGIN
    FOR s IN
        SELECT q.queue_name AS qname, co.co_name AS cname, sub.sub_id, q.queue_data_pfx,
               sub.sub_last_tick, last.tick_snapshot AS last_snap, top.tick_snapshot AS top_snap
          FROM pgq.subscription sub
          JOIN pgq.queue q ON q.queue_id = sub.sub_queue
          JOIN pgq.consumer co ON co.co_id = sub.sub_consumer
          JOIN pgq.tick last ON last.tick_queue = sub.sub_queue AND last.tick_id = sub.sub_last_tick
          JOIN LATERAL (SELECT t.tick_snapshot FROM pgq.tick t
                         WHERE t.tick_queue = sub.sub_queue
                         ORDER BY t.tick_queue DESC, t.tick_id DESC LIMIT 1) top ON true
         WHERE (i_queue_name IS NULL OR q.queue_name = i_queue_name)
           AND (i_consumer_name IS NULL OR co.co_name = i_consumer_name)
         ORDER BY 1, 2
    LOOP
        queue_name := s.qname;
        consumer_name := s.cname;
        last_tick_id := s.sub_last_tick;
        -- One visibility test per transaction, not per event.
        EXECUTE 'SELECT coalesce(sum(n) FILTER (WHERE txid_visible_in_snapshot(ev_txid, $3)), 0),'
            || ' coalesce(sum(n) FILTER (WHERE NOT txid_visible_in_snapshot(ev_txid, $3)), 0)'
            || ' FROM (SELECT ev_txid, count(*) AS n FROM ' || pgq.quote_fqname(s.queue_data_pfx)
            || '        WHERE ev_txid >= txid_snapshot_xmin($1)'
            || '          AND ev_txid < txid_snapshot_xmax($2)'
            || '          AND (ev_owner IS NULL OR ev_owner = $4)'
            || '        GROUP BY ev_txid) waiting'
            || ' WHERE NOT txid_visible_in_snapshot(ev_txid, $1)'
            || '   AND txid_visible_in_snapshot(ev_txid, $2)'
          INTO ticked_events, unticked_events
          USING s.last_snap, cur_snap, s.top_snap, s.sub_id;
        SELECT count(*) INTO retry_events FROM pgq.retry_queue rq WHERE rq.ev_owner = s.sub_id;
        pending_events := ticked_events + unticked_events + retry_events;
        RETURN NEXT;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION pgq.get_consumer_backlog_exact(text, text) FROM public;
GRANT EXECUTE ON FUNCTION pgq.get_consumer_backlog_exact(text, text) TO pgq_reader;

-- A batch cut from a large backlog reads only its own transactions' rows: the ids far below the
-- start tick's xmax are read as ranges, each by the index (see the comment inside).
CREATE OR REPLACE FUNCTION pgq.batch_event_sql(x_batch_id bigint) RETURNS text
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b record;
    low bigint;
    range_lo bigint[] := '{}';
    range_hi bigint[] := '{}';
    range_ids text[] := '{}';
    xid bigint;
    cols constant text := 'SELECT ev_id, ev_time, ev_txid, ev_retry, ev_type, ev_data,'
                          || ' ev_extra1, ev_extra2, ev_extra3, ev_extra4 FROM ';
    owner_filter text;
    visibility text;
    tbl text;
    result text := '';
BEGIN
    SELECT s.sub_id, last.tick_snapshot AS last_snap, cur.tick_snapshot AS cur_snap
      INTO b
      FROM pgq.subscription s
      JOIN pgq.tick last ON last.tick_queue = s.sub_queue AND last.tick_id = s.sub_last_tick
      JOIN pgq.tick cur ON cur.tick_queue = s.sub_queue AND cur.tick_id = s.sub_next_tick
     WHERE s.sub_batch = x_batch_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch not found' USING ERRCODE = 'PQB01',
            DETAIL = format('batch %s', x_batch_id);
    END IF;

    -- Transactions in flight at the start tick and finished by the end tick can be far below the
    -- start tick's xmax: a long-running one, or after a catch-up cut every transaction of the
    -- batch. Those close to it widen the index range. The others are listed by id, in ranges
    -- of ids less than 100 apart, each range bounding an index scan of its own: so a
    -- long-running transaction does not make every batch scan everything since it began, and
    -- a batch cut from a large backlog reads only its own transactions (a bare list of many
    -- ids, on event tables not analyzed since the backlog came, as right after an outage, is
    -- estimated at half the table and read by a sequential scan, for every batch).
    low := txid_snapshot_xmax(b.last_snap);
    FOR xid IN
        SELECT x FROM txid_snapshot_xip(b.last_snap) x
         WHERE txid_visible_in_snapshot(x, b.cur_snap)
         ORDER BY x DESC
    LOOP
        IF low - 100 <= xid THEN
            low := xid;
        ELSIF cardinality(range_lo) > 0 AND range_lo[cardinality(range_lo)] - 100 <= xid THEN
            range_lo[cardinality(range_lo)] := xid;
            range_ids[cardinality(range_ids)] := range_ids[cardinality(range_ids)] || ',' || xid;
        ELSE
            range_lo := range_lo || xid;
            range_hi := range_hi || xid;
            range_ids := range_ids || xid::text;
        END IF;
    END LOOP;

    owner_filter := ' AND (ev_owner IS NULL OR ev_owner = ' || b.sub_id || ')';
    -- The integer tests first: below the end tick's xmin every transaction is visible in it, and
    -- from the start tick's xmax on none was visible in that one, so most rows skip the snapshot
    -- function calls. An empty range (a batch cut from a backlog ends where it starts) needs
    -- none.
    visibility := ' WHERE ev_txid >= ' || low
        || ' AND ev_txid < ' || txid_snapshot_xmax(b.cur_snap);
    IF low < txid_snapshot_xmax(b.cur_snap) THEN
        visibility := visibility
            || ' AND (ev_txid < ' || txid_snapshot_xmin(b.cur_snap)
            || ' OR txid_visible_in_snapshot(ev_txid, ' || quote_literal(b.cur_snap::text) || '))'
            || ' AND (ev_txid >= ' || txid_snapshot_xmax(b.last_snap)
            || ' OR NOT txid_visible_in_snapshot(ev_txid, ' || quote_literal(b.last_snap::text)
            || '))';
    END IF;
    FOR tbl IN SELECT pgq.quote_fqname(t) FROM pgq.batch_event_tables(x_batch_id) t LOOP
        IF result <> '' THEN
            result := result || ' UNION ALL ';
        END IF;
        result := result || cols || tbl || visibility || owner_filter;
        FOR i IN 1 .. cardinality(range_lo) LOOP
            result := result || ' UNION ALL ' || cols || tbl
                || ' WHERE ev_txid >= ' || range_lo[i] || ' AND ev_txid <= ' || range_hi[i]
                || ' AND ev_txid IN (' || range_ids[i] || ')' || owner_filter;
        END LOOP;
    END LOOP;
    RETURN result || ' ORDER BY 1';
END
$$;

INSERT INTO pgq_rs.migrations (line, version, description) VALUES ('pgq', 6, 'bounded_batches');
