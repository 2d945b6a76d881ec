-- pgq-rs: moving a database from the original pgq extension (PGQ 3.x, C) onto the pgq-rs schema,
-- in place and in one transaction. `pgq-ticker migrate-from-extension` (pgq_core::
-- migrate_from_extension) runs it: it defines the session functions below, checks the extension,
-- runs the installer's prelude (migrations/prelude.sql), detaches the extension's queues,
-- installs the pgq and pgq_triggers lines from their current files, attaches the queues to them
-- and commits.
-- Anything that fails rolls the whole transaction back, so a refused migration changes nothing.
--
-- What moves, and how:
--   * The queues' event tables (pgq.event_N and its pgq.event_N_0 .. _K, with their events,
--     indexes and grants) and sequences are not members of the extension (pgq.create_queue makes
--     them after CREATE EXTENSION), but the event tables are children of its pgq.event_template.
--     They are unhooked from it and parked in schema pgq_rs_from_extension, so that DROP EXTENSION
--     (without CASCADE) takes only the extension's own objects; then they come back into the new
--     schema pgq under the new template. No event row is copied or rewritten.
--   * The extension's own tables (queue, consumer, subscription, tick, retry_queue) and the
--     counters behind their ids and batch ids are copied into session tables first and into the
--     pgq-rs tables afterwards, column for column; queue_ticker_max_batch, which PGQ lacks, takes
--     its default. Subscriptions keep sub_batch and sub_next_tick: a batch open at the time
--     stays open and its consumer finishes it on the new schema.
--   * Triggers that call the extension's C capture functions (pgq.logutriga, pgq.sqltriga,
--     pgq.jsontriga) are dropped and made again from their own definition once the PL/pgSQL
--     functions of the same names and arguments exist, in the same enabled state.
--
-- Refusals (SQLSTATE, nothing changed):
--   PQM01  there is no pgq extension here
--   PQM02  the pgq-rs pgq line is recorded here already
--   PQM03  the current role does not own the extension
--   PQM05  londiste3's schema `londiste`, whose state and triggers pgq-rs cannot take over
--   PQM04  a cascaded setup (pgq_node), which pgq-rs does not implement
--   PQM06  a pgq_coop schema that pgq-rs did not install
--   PQM07  a queue laid out otherwise than pgq.create_queue makes it
--   PQM08  an extension version other than 3.x
-- A dependency on the extension nothing above foresaw (a view on pgq.queue, a function taking
-- a pgq type) makes DROP EXTENSION fail with its own message (2BP01), listing the objects.

-- The extension, its owner and its version, checked before the bookkeeping is looked at (the
-- installer's prelude, which may create it, runs between this and the next function).
CREATE OR REPLACE FUNCTION pg_temp.pgq_rs_check_extension() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ext_owner oid;
    version text;
BEGIN
    SELECT e.extowner, e.extversion INTO ext_owner, version
      FROM pg_extension e WHERE e.extname = 'pgq';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgq-rs: there is no pgq extension in database %', current_database()
            USING ERRCODE = 'PQM01';
    END IF;
    IF NOT pg_has_role(ext_owner, 'USAGE') THEN
        RAISE EXCEPTION 'pgq-rs: role % does not own the pgq extension (role % does)',
                        current_user, ext_owner::regrole
            USING ERRCODE = 'PQM03',
                  HINT = 'Run the migration as the extension''s owner or a superuser.';
    END IF;
    IF version NOT LIKE '3.%' THEN
        RAISE EXCEPTION 'pgq-rs: the pgq extension is at version %, not 3.x', version
            USING ERRCODE = 'PQM08',
                  HINT = 'ALTER EXTENSION pgq UPDATE to 3.5 first.';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pg_temp.pgq_rs_detach_extension()
RETURNS TABLE (queues integer, consumers integer, open_batches integer, retry_events bigint,
               triggers integer, extension_version text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ext_oid oid;
    version text;
    q record;
    t record;
    problem text;
    recorded text[] := '{}';
BEGIN
    PERFORM pg_temp.pgq_rs_check_extension();
    SELECT e.oid, e.extversion INTO ext_oid, version FROM pg_extension e WHERE e.extname = 'pgq';
    -- Dynamic: the bookkeeping exists only where a pgq-rs line was installed next to the extension.
    IF to_regclass('pgq_rs.migrations') IS NOT NULL THEN
        EXECUTE 'SELECT coalesce(array_agg(DISTINCT line), ''{}'') FROM pgq_rs.migrations'
           INTO recorded;
    END IF;
    IF recorded && ARRAY['pgq', 'pgq_triggers'] THEN
        RAISE EXCEPTION 'pgq-rs: the pgq-rs pgq line is recorded in pgq_rs.migrations next to the '
                        'pgq extension'
            USING ERRCODE = 'PQM02',
                  HINT = 'The two cannot both be installed: find out how this database got here.';
    END IF;
    IF to_regnamespace('londiste') IS NOT NULL THEN
        RAISE EXCEPTION 'pgq-rs: londiste3''s schema "londiste" is here'
            USING ERRCODE = 'PQM05',
                  HINT = 'Its tables, triggers and positions cannot be carried over: move the '
                         'replication to pgq-rs''s londiste (schema londiste_rs) and drop '
                         'londiste3 first.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgq_node')
       OR to_regnamespace('pgq_node') IS NOT NULL THEN
        RAISE EXCEPTION 'pgq-rs: this database is part of a cascaded PGQ setup (pgq_node)'
            USING ERRCODE = 'PQM04',
                  HINT = 'pgq-rs has no cascading: take the node out of its cascade and drop '
                         'pgq_node first, or leave this database on the extension.';
    END IF;
    IF to_regnamespace('pgq_coop') IS NOT NULL AND NOT 'pgq_coop' = ANY (recorded) THEN
        RAISE EXCEPTION 'pgq-rs: schema pgq_coop is here but was not installed by pgq-rs'
            USING ERRCODE = 'PQM06',
                  HINT = 'Its sub-consumers live in pgq.subscription and are carried over: drop '
                         'schema pgq_coop (its functions only), migrate, then install the '
                         'pgq-rs pgq_coop line.';
    END IF;

    -- Producers take the queue row first (insert_event reads it): taking it first here means
    -- waiting for the transactions in flight, then holding off new ones until the commit.
    LOCK TABLE pgq.queue, pgq.consumer, pgq.subscription, pgq.tick, pgq.retry_queue
        IN ACCESS EXCLUSIVE MODE;

    SELECT format('queue %L (id %s): %s', qu.queue_name, qu.queue_id, what) INTO problem
      FROM pgq.queue qu,
           LATERAL (SELECT CASE
               WHEN qu.queue_data_pfx <> 'pgq.event_' || qu.queue_id
                 OR qu.queue_event_seq <> 'pgq.event_' || qu.queue_id || '_id_seq'
                 OR qu.queue_tick_seq <> 'pgq.event_' || qu.queue_id || '_tick_seq'
                   THEN 'its tables or sequences are not named as pgq.create_queue names them'
               WHEN qu.queue_ntables NOT BETWEEN 1 AND 1000
                 OR qu.queue_cur_table NOT BETWEEN 0 AND qu.queue_ntables - 1
                   THEN 'its table count or current table is out of range'
               WHEN to_regclass(qu.queue_event_seq) IS NULL
                 OR to_regclass(qu.queue_tick_seq) IS NULL
                   THEN 'a sequence of it is missing'
               WHEN (SELECT count(*) FROM pg_inherits i
                      WHERE i.inhparent = to_regclass(qu.queue_data_pfx)
                        AND i.inhrelid::regclass::text ~ ('^pgq\.event_' || qu.queue_id || '_\d+$'))
                    <> qu.queue_ntables
                 OR NOT EXISTS (SELECT 1 FROM pg_inherits i
                                 WHERE i.inhrelid = to_regclass(qu.queue_data_pfx)
                                   AND i.inhparent = 'pgq.event_template'::regclass)
                   THEN 'its event tables are not the ones pgq.create_queue makes'
               END AS what) w
     WHERE w.what IS NOT NULL
     LIMIT 1;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'pgq-rs: cannot carry over %', problem
            USING ERRCODE = 'PQM07',
                  HINT = 'Mend or drop that queue with the extension first.';
    END IF;

    CREATE TEMP TABLE pgq_rs_stash_queue ON COMMIT DROP AS SELECT * FROM pgq.queue;
    CREATE TEMP TABLE pgq_rs_stash_consumer ON COMMIT DROP AS SELECT * FROM pgq.consumer;
    CREATE TEMP TABLE pgq_rs_stash_subscription ON COMMIT DROP AS SELECT * FROM pgq.subscription;
    CREATE TEMP TABLE pgq_rs_stash_tick ON COMMIT DROP AS SELECT * FROM pgq.tick;
    CREATE TEMP TABLE pgq_rs_stash_retry ON COMMIT DROP AS SELECT * FROM pgq.retry_queue;
    CREATE TEMP TABLE pgq_rs_stash_seq ON COMMIT DROP AS
        SELECT 'pgq.queue_queue_id_seq'::text AS seq, s.last_value, s.is_called
          FROM pgq.queue_queue_id_seq s
        UNION ALL SELECT 'pgq.consumer_co_id_seq', s.last_value, s.is_called
          FROM pgq.consumer_co_id_seq s
        UNION ALL SELECT 'pgq.subscription_sub_id_seq', s.last_value, s.is_called
          FROM pgq.subscription_sub_id_seq s
        UNION ALL SELECT 'pgq.batch_id_seq', s.last_value, s.is_called FROM pgq.batch_id_seq s;

    -- Triggers on the extension's C functions, to be made again on the PL/pgSQL ones.
    CREATE TEMP TABLE pgq_rs_stash_trigger ON COMMIT DROP AS
        SELECT tg.tgrelid::regclass AS tbl, tg.tgname::text AS name, tg.tgenabled AS enabled,
               pg_get_triggerdef(tg.oid) AS def
          FROM pg_trigger tg
          JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = tg.tgfoid
                          AND d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext_oid
                          AND d.deptype = 'e'
         WHERE NOT tg.tgisinternal;
    FOR t IN SELECT * FROM pgq_rs_stash_trigger LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.name, t.tbl);
    END LOOP;

    CREATE SCHEMA pgq_rs_from_extension;
    FOR q IN SELECT * FROM pgq_rs_stash_queue ORDER BY queue_id LOOP
        EXECUTE format('ALTER TABLE pgq.%I NO INHERIT pgq.event_template', 'event_' || q.queue_id);
        FOR i IN 0 .. q.queue_ntables - 1 LOOP
            EXECUTE format('ALTER TABLE pgq.%I SET SCHEMA pgq_rs_from_extension',
                           'event_' || q.queue_id || '_' || i);
        END LOOP;
        EXECUTE format('ALTER TABLE pgq.%I SET SCHEMA pgq_rs_from_extension',
                       'event_' || q.queue_id);
        EXECUTE format('ALTER SEQUENCE pgq.%I SET SCHEMA pgq_rs_from_extension',
                       'event_' || q.queue_id || '_id_seq');
        EXECUTE format('ALTER SEQUENCE pgq.%I SET SCHEMA pgq_rs_from_extension',
                       'event_' || q.queue_id || '_tick_seq');
    END LOOP;

    DROP EXTENSION pgq;

    RETURN QUERY SELECT
        (SELECT count(*)::integer FROM pgq_rs_stash_queue),
        (SELECT count(*)::integer FROM pgq_rs_stash_subscription),
        (SELECT count(*)::integer FROM pgq_rs_stash_subscription WHERE sub_batch IS NOT NULL),
        (SELECT count(*) FROM pgq_rs_stash_retry),
        (SELECT count(*)::integer FROM pgq_rs_stash_trigger),
        version;
END
$$;

CREATE OR REPLACE FUNCTION pg_temp.pgq_rs_attach_extension_state() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
    t record;
    s record;
BEGIN
    FOR q IN SELECT * FROM pgq_rs_stash_queue ORDER BY queue_id LOOP
        EXECUTE format('ALTER SEQUENCE pgq_rs_from_extension.%I SET SCHEMA pgq',
                       'event_' || q.queue_id || '_id_seq');
        EXECUTE format('ALTER SEQUENCE pgq_rs_from_extension.%I SET SCHEMA pgq',
                       'event_' || q.queue_id || '_tick_seq');
        EXECUTE format('ALTER TABLE pgq_rs_from_extension.%I SET SCHEMA pgq',
                       'event_' || q.queue_id);
        FOR i IN 0 .. q.queue_ntables - 1 LOOP
            EXECUTE format('ALTER TABLE pgq_rs_from_extension.%I SET SCHEMA pgq',
                           'event_' || q.queue_id || '_' || i);
        END LOOP;
        EXECUTE format('ALTER TABLE pgq.%I INHERIT pgq.event_template', 'event_' || q.queue_id);
    END LOOP;
    INSERT INTO pgq.consumer (co_id, co_name)
    SELECT co_id, co_name FROM pgq_rs_stash_consumer;
    INSERT INTO pgq.queue (queue_id, queue_name, queue_ntables, queue_cur_table,
                           queue_rotation_period, queue_switch_step1, queue_switch_step2,
                           queue_switch_time, queue_external_ticker, queue_disable_insert,
                           queue_ticker_paused, queue_ticker_max_count, queue_ticker_max_lag,
                           queue_ticker_idle_period, queue_per_tx_limit, queue_data_pfx,
                           queue_event_seq, queue_tick_seq, queue_extra_maint)
    SELECT queue_id, queue_name, queue_ntables, queue_cur_table,
           queue_rotation_period, queue_switch_step1, queue_switch_step2,
           queue_switch_time, queue_external_ticker, queue_disable_insert,
           queue_ticker_paused, queue_ticker_max_count, queue_ticker_max_lag,
           queue_ticker_idle_period, queue_per_tx_limit, queue_data_pfx,
           queue_event_seq, queue_tick_seq, queue_extra_maint
      FROM pgq_rs_stash_queue;
    -- PGQ reads a sequence's last_value, which is 1 both before the first event and after it;
    -- pgq-rs counts 0 before the first one. A queue that never had an event gets 0.
    INSERT INTO pgq.tick (tick_queue, tick_id, tick_time, tick_snapshot, tick_event_seq)
    SELECT tk.tick_queue, tk.tick_id, tk.tick_time, tk.tick_snapshot,
           CASE WHEN pg_sequence_last_value(qu.queue_event_seq::regclass) IS NULL THEN 0
                ELSE tk.tick_event_seq END
      FROM pgq_rs_stash_tick tk JOIN pgq_rs_stash_queue qu ON qu.queue_id = tk.tick_queue;
    INSERT INTO pgq.subscription (sub_id, sub_queue, sub_consumer, sub_last_tick, sub_active,
                                  sub_batch, sub_next_tick)
    SELECT sub_id, sub_queue, sub_consumer, sub_last_tick, sub_active, sub_batch, sub_next_tick
      FROM pgq_rs_stash_subscription;
    INSERT INTO pgq.retry_queue (ev_retry_after, ev_queue, ev_id, ev_time, ev_txid, ev_owner,
                                 ev_retry, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3,
                                 ev_extra4)
    SELECT ev_retry_after, ev_queue, ev_id, ev_time, ev_txid, ev_owner, ev_retry, ev_type,
           ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4
      FROM pgq_rs_stash_retry;
    FOR s IN SELECT * FROM pgq_rs_stash_seq LOOP
        PERFORM setval(s.seq::regclass, s.last_value, s.is_called);
    END LOOP;

    FOR q IN SELECT * FROM pgq_rs_stash_queue ORDER BY queue_id LOOP
        PERFORM pgq.grant_perms(q.queue_name);
        PERFORM pgq.tune_storage(q.queue_name);
    END LOOP;
    DROP SCHEMA pgq_rs_from_extension;
    PERFORM pgq._rebuild_insert_functions();

    FOR t IN SELECT * FROM pgq_rs_stash_trigger LOOP
        EXECUTE t.def;
        IF t.enabled <> 'O' THEN
            EXECUTE format('ALTER TABLE %s %s TRIGGER %I', t.tbl,
                           CASE t.enabled WHEN 'D' THEN 'DISABLE'
                                          WHEN 'R' THEN 'ENABLE REPLICA'
                                          ELSE 'ENABLE ALWAYS' END,
                           t.name);
        END IF;
    END LOOP;
END
$$;
