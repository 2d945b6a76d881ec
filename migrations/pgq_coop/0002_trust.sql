-- pgq-rs: the `pgq_coop` line, version 2: trust.
--
-- Restates every function of the line with search_path pinned (this file is where a DBA reads
-- what they are now; version 1's SQL-language wrappers had no pin, so a database default such
-- as `evil, pg_catalog` reached them), and takes DELETE on pgq_coop.batch_takeover from
-- pgq_admin: without its row, a sub-consumer whose batch was taken over would finish it
-- quietly and commit its work, and the batch would be processed twice.
--
-- Run it as `psql -v ON_ERROR_STOP=1 -1 -f 0002_trust.sql`, or let the Rust installer do it.
--
-- SQLSTATEs raised by this file, besides those of version 1:
--   PQR03  the installation is not trusted, or the file runs outside a transaction

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

DO $guard$ BEGIN
    IF EXISTS (SELECT 1 FROM pgq_rs.migrations WHERE line = 'pgq_coop' AND version >= 2) THEN
        RAISE EXCEPTION 'pgq-rs: % version % or newer is already installed', 'pgq_coop', 2
            USING ERRCODE = 'PQR01';
    END IF;
END $guard$;

REVOKE DELETE ON TABLE pgq_coop.batch_takeover FROM pgq_admin;

-- ---------------------------------------------------------------------------------------------
-- Functions
-- ---------------------------------------------------------------------------------------------

-- Version of the pgq_coop API this schema answers to.
CREATE OR REPLACE FUNCTION pgq_coop.version()
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '3.3'::text $$;

-- Registers sub-consumer i_subconsumer_name of group i_consumer_name on the
-- queue, registering the group first when needed. Returns 1 for a new
-- registration, 0 when the sub-consumer was registered already.
CREATE OR REPLACE FUNCTION pgq_coop.register_subconsumer(
    i_queue_name text,
    i_consumer_name text,
    i_subconsumer_name text)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _subcon_name text := i_consumer_name || '.' || i_subconsumer_name;
    _result      integer;
    _queue_id    integer;
    _group_sub   integer;
BEGIN
    PERFORM 1 FROM pgq.queue q WHERE q.queue_name = i_queue_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgq_coop: queue % not found', i_queue_name
            USING ERRCODE = 'PQS02';
    END IF;
    PERFORM pgq.register_consumer(i_queue_name, i_consumer_name);
    _result := pgq.register_consumer(i_queue_name, _subcon_name);
    IF _result = 1 THEN
        SELECT s.sub_queue, s.sub_id INTO _queue_id, _group_sub
          FROM pgq.queue q
          JOIN pgq.subscription s ON s.sub_queue = q.queue_id
          JOIN pgq.consumer c ON c.co_id = s.sub_consumer
         WHERE q.queue_name = i_queue_name
           AND c.co_name = i_consumer_name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pgq_coop: consumer % not registered on queue %', i_consumer_name, i_queue_name
                USING ERRCODE = 'PQS02';
        END IF;
        -- join the group: share its sub_id, start idle
        UPDATE pgq.subscription s
           SET sub_id = _group_sub,
               sub_last_tick = NULL,
               sub_next_tick = NULL,
               sub_batch = NULL
          FROM pgq.consumer c
         WHERE s.sub_queue = _queue_id
           AND s.sub_consumer = c.co_id
           AND c.co_name = _subcon_name;
    END IF;
    RETURN _result;
END;
$$;

-- Unregisters a sub-consumer. With an open batch, i_batch_handling = 1 puts
-- the batch's events into the retry queue for the group (due now, so the
-- next maintenance run hands them to whichever sub-consumer comes next) and
-- unregisters; any other value raises PQS05. Returns 1 when unregistered,
-- 0 when the sub-consumer was not registered.
CREATE OR REPLACE FUNCTION pgq_coop.unregister_subconsumer(
    i_queue_name text,
    i_consumer_name text,
    i_subconsumer_name text,
    i_batch_handling integer)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _subcon_name text := i_consumer_name || '.' || i_subconsumer_name;
    _queue_id    integer;
    _group_sub   integer;
    _self_id     integer;
    _self_sub    integer;
    _self_batch  bigint;
BEGIN
    -- the group's row first, in the same order as next_batch
    SELECT s.sub_queue, s.sub_id INTO _queue_id, _group_sub
      FROM pgq.queue q
      JOIN pgq.subscription s ON s.sub_queue = q.queue_id
      JOIN pgq.consumer c ON c.co_id = s.sub_consumer
     WHERE q.queue_name = i_queue_name
       AND c.co_name = i_consumer_name
       FOR UPDATE OF s;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;

    SELECT s.sub_consumer, s.sub_id, s.sub_batch INTO _self_id, _self_sub, _self_batch
      FROM pgq.subscription s
      JOIN pgq.consumer c ON c.co_id = s.sub_consumer
     WHERE s.sub_queue = _queue_id
       AND c.co_name = _subcon_name
       FOR UPDATE OF s;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    IF _self_sub <> _group_sub THEN
        RAISE EXCEPTION 'pgq_coop: % on queue % is not a subconsumer of %', _subcon_name, i_queue_name, i_consumer_name
            USING ERRCODE = 'PQS04';
    END IF;

    IF _self_batch IS NOT NULL THEN
        IF i_batch_handling = 1 THEN
            PERFORM pgq.batch_retry(_self_batch, 0);
        ELSE
            RAISE EXCEPTION 'subconsumer has active batch'
                USING ERRCODE = 'PQS05';
        END IF;
    END IF;

    DELETE FROM pgq.subscription s
     WHERE s.sub_queue = _queue_id
       AND s.sub_consumer = _self_id;
    DELETE FROM pgq_coop.batch_takeover t
     WHERE t.queue_id = _queue_id
       AND t.loser_id = _self_id;
    -- drop the consumer name once no queue uses it
    DELETE FROM pgq.consumer c
     WHERE c.co_id = _self_id
       AND NOT EXISTS (SELECT 1 FROM pgq.subscription s WHERE s.sub_consumer = _self_id);
    RETURN 1;
END;
$$;

-- The engine behind every next_batch form: returns the sub-consumer's
-- batch with pgq.next_batch_info's columns, all NULL when there is nothing
-- to do. A sub-consumer not registered yet is registered. The batch comes
-- from, in this order: the sub-consumer's own open batch; with
-- i_dead_interval, the open batch of a sibling whose sub_active is older
-- than now() - i_dead_interval (under a new batch id); the group's next
-- batch as pgq.next_batch_custom cuts it with i_min_lag, i_min_count and
-- i_min_interval.
CREATE OR REPLACE FUNCTION pgq_coop.next_batch_custom_info(
    in i_queue_name text,
    in i_consumer_name text,
    in i_subconsumer_name text,
    in i_min_lag interval,
    in i_min_count int4,
    in i_min_interval interval,
    in i_dead_interval interval,
    out batch_id int8,
    out cur_tick_id int8,
    out prev_tick_id int8,
    out cur_tick_time timestamptz,
    out prev_tick_time timestamptz,
    out cur_tick_event_seq int8,
    out prev_tick_event_seq int8)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _subcon_name text := i_consumer_name || '.' || i_subconsumer_name;
    _queue_id    integer;
    _group_id    integer;
    _group_sub   integer;
    _group_batch bigint;
    _group_next  bigint;
    _self_id     integer;
    _self_sub    integer;
    _self_batch  bigint;
    _self_last   bigint;
    _self_next   bigint;
    _dead        record;
BEGIN
    SELECT q.queue_id INTO _queue_id FROM pgq.queue q WHERE q.queue_name = i_queue_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgq_coop: queue % not found', i_queue_name
            USING ERRCODE = 'PQS02';
    END IF;
    PERFORM 1
       FROM pgq.subscription s
       JOIN pgq.consumer c ON c.co_id = s.sub_consumer
      WHERE s.sub_queue = _queue_id
        AND c.co_name = _subcon_name;
    IF NOT FOUND THEN
        PERFORM pgq_coop.register_subconsumer(i_queue_name, i_consumer_name, i_subconsumer_name);
    END IF;

    -- serialize the group's sub-consumers on the group's row
    SELECT s.sub_consumer, s.sub_id, s.sub_batch, s.sub_next_tick
      INTO _group_id, _group_sub, _group_batch, _group_next
      FROM pgq.subscription s
      JOIN pgq.consumer c ON c.co_id = s.sub_consumer
     WHERE s.sub_queue = _queue_id
       AND c.co_name = i_consumer_name
       FOR UPDATE OF s;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgq_coop: consumer % not registered on queue %', i_consumer_name, i_queue_name
            USING ERRCODE = 'PQS02';
    END IF;
    IF _group_batch IS NOT NULL OR _group_next IS NOT NULL THEN
        RAISE EXCEPTION 'pgq_coop: consumer % on queue % has a batch open of its own', i_consumer_name, i_queue_name
            USING ERRCODE = 'PQS03';
    END IF;

    SELECT s.sub_consumer, s.sub_id, s.sub_batch, s.sub_last_tick, s.sub_next_tick
      INTO _self_id, _self_sub, _self_batch, _self_last, _self_next
      FROM pgq.subscription s
      JOIN pgq.consumer c ON c.co_id = s.sub_consumer
     WHERE s.sub_queue = _queue_id
       AND c.co_name = _subcon_name
       FOR UPDATE OF s;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgq_coop: subconsumer % not registered on queue %', _subcon_name, i_queue_name
            USING ERRCODE = 'PQS02';
    END IF;
    IF _self_sub <> _group_sub THEN
        RAISE EXCEPTION 'pgq_coop: % on queue % is not a subconsumer of %', _subcon_name, i_queue_name, i_consumer_name
            USING ERRCODE = 'PQS04';
    END IF;

    -- asking again means any batch taken from us is given up
    DELETE FROM pgq_coop.batch_takeover t
     WHERE t.queue_id = _queue_id
       AND t.loser_id = _self_id;

    IF _self_batch IS NULL AND i_dead_interval IS NOT NULL THEN
        -- a sibling busy finishing holds its row: skip it, it is alive
        SELECT s.sub_consumer, s.sub_batch, s.sub_last_tick, s.sub_next_tick
          INTO _dead
          FROM pgq.subscription s
         WHERE s.sub_queue = _queue_id
           AND s.sub_id = _group_sub
           AND s.sub_consumer <> _group_id
           AND s.sub_consumer <> _self_id
           AND s.sub_batch IS NOT NULL
           AND s.sub_active < now() - i_dead_interval
         ORDER BY s.sub_active, s.sub_batch
         LIMIT 1
           FOR UPDATE OF s SKIP LOCKED;
        IF FOUND THEN
            _self_batch := pg_catalog.nextval('pgq.batch_id_seq');
            _self_last := _dead.sub_last_tick;
            _self_next := _dead.sub_next_tick;
            UPDATE pgq.subscription s
               SET sub_batch = NULL,
                   sub_last_tick = NULL,
                   sub_next_tick = NULL
             WHERE s.sub_queue = _queue_id
               AND s.sub_consumer = _dead.sub_consumer;
            UPDATE pgq.subscription s
               SET sub_batch = _self_batch,
                   sub_last_tick = _self_last,
                   sub_next_tick = _self_next,
                   sub_active = now()
             WHERE s.sub_queue = _queue_id
               AND s.sub_consumer = _self_id;
            INSERT INTO pgq_coop.batch_takeover
                (old_batch_id, new_batch_id, queue_id, group_id, loser_id, taker_id)
            VALUES (_dead.sub_batch, _self_batch, _queue_id, _group_id, _dead.sub_consumer, _self_id);
            -- forget takeovers whose loser is gone from the queue
            DELETE FROM pgq_coop.batch_takeover t
             WHERE NOT EXISTS (
                   SELECT 1 FROM pgq.subscription s
                    WHERE s.sub_queue = t.queue_id
                      AND s.sub_consumer = t.loser_id);
        END IF;
    ELSIF _self_batch IS NOT NULL THEN
        UPDATE pgq.subscription s
           SET sub_active = now()
         WHERE s.sub_queue = _queue_id
           AND s.sub_consumer = _self_id;
    END IF;

    IF _self_batch IS NOT NULL THEN
        batch_id := _self_batch;
        prev_tick_id := _self_last;
        cur_tick_id := _self_next;
        SELECT t.tick_time, t.tick_event_seq INTO prev_tick_time, prev_tick_event_seq
          FROM pgq.tick t
         WHERE t.tick_queue = _queue_id
           AND t.tick_id = _self_last;
        SELECT t.tick_time, t.tick_event_seq INTO cur_tick_time, cur_tick_event_seq
          FROM pgq.tick t
         WHERE t.tick_queue = _queue_id
           AND t.tick_id = _self_next;
        RETURN;
    END IF;

    -- cut the group's next batch and move it over to the sub-consumer
    SELECT f.batch_id, f.cur_tick_id, f.prev_tick_id, f.cur_tick_time, f.prev_tick_time,
           f.cur_tick_event_seq, f.prev_tick_event_seq
      INTO batch_id, cur_tick_id, prev_tick_id, cur_tick_time, prev_tick_time,
           cur_tick_event_seq, prev_tick_event_seq
      FROM pgq.next_batch_custom(i_queue_name, i_consumer_name, i_min_lag, i_min_count, i_min_interval) f;
    IF batch_id IS NULL THEN
        RETURN;
    END IF;

    UPDATE pgq.subscription s
       SET sub_batch = NULL,
           sub_last_tick = cur_tick_id,
           sub_next_tick = NULL,
           sub_active = now()
     WHERE s.sub_queue = _queue_id
       AND s.sub_consumer = _group_id;
    UPDATE pgq.subscription s
       SET sub_batch = batch_id,
           sub_last_tick = prev_tick_id,
           sub_next_tick = cur_tick_id,
           sub_active = now()
     WHERE s.sub_queue = _queue_id
       AND s.sub_consumer = _self_id;
    RETURN;
END;
$$;

-- Next batch id for the sub-consumer, NULL when there is nothing to do.
CREATE OR REPLACE FUNCTION pgq_coop.next_batch(
    i_queue_name text,
    i_consumer_name text,
    i_subconsumer_name text)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT f.batch_id
      FROM pgq_coop.next_batch_custom_info(i_queue_name, i_consumer_name, i_subconsumer_name,
                                           NULL, NULL, NULL, NULL) f
$$;

-- As next_batch(3), taking over the open batch of a sibling silent for
-- longer than i_dead_interval.
CREATE OR REPLACE FUNCTION pgq_coop.next_batch(
    i_queue_name text,
    i_consumer_name text,
    i_subconsumer_name text,
    i_dead_interval interval)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT f.batch_id
      FROM pgq_coop.next_batch_custom_info(i_queue_name, i_consumer_name, i_subconsumer_name,
                                           NULL, NULL, NULL, i_dead_interval) f
$$;

-- As next_batch(3), with the batch's ticks (pgq.next_batch_info's columns).
CREATE OR REPLACE FUNCTION pgq_coop.next_batch_info(
    in i_queue_name text,
    in i_consumer_name text,
    in i_subconsumer_name text,
    out batch_id int8,
    out cur_tick_id int8,
    out prev_tick_id int8,
    out cur_tick_time timestamptz,
    out prev_tick_time timestamptz,
    out cur_tick_event_seq int8,
    out prev_tick_event_seq int8)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT f.batch_id, f.cur_tick_id, f.prev_tick_id, f.cur_tick_time, f.prev_tick_time,
           f.cur_tick_event_seq, f.prev_tick_event_seq
      FROM pgq_coop.next_batch_custom_info(i_queue_name, i_consumer_name, i_subconsumer_name,
                                           NULL, NULL, NULL, NULL) f
$$;

-- As next_batch(4), with the batch's ticks (pgq.next_batch_info's columns).
CREATE OR REPLACE FUNCTION pgq_coop.next_batch_info(
    in i_queue_name text,
    in i_consumer_name text,
    in i_subconsumer_name text,
    in i_dead_interval interval,
    out batch_id int8,
    out cur_tick_id int8,
    out prev_tick_id int8,
    out cur_tick_time timestamptz,
    out prev_tick_time timestamptz,
    out cur_tick_event_seq int8,
    out prev_tick_event_seq int8)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT f.batch_id, f.cur_tick_id, f.prev_tick_id, f.cur_tick_time, f.prev_tick_time,
           f.cur_tick_event_seq, f.prev_tick_event_seq
      FROM pgq_coop.next_batch_custom_info(i_queue_name, i_consumer_name, i_subconsumer_name,
                                           NULL, NULL, NULL, i_dead_interval) f
$$;

-- Next batch id, with the group's batch cut as pgq.next_batch_custom does.
CREATE OR REPLACE FUNCTION pgq_coop.next_batch_custom(
    i_queue_name text,
    i_consumer_name text,
    i_subconsumer_name text,
    i_min_lag interval,
    i_min_count int4,
    i_min_interval interval)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT f.batch_id
      FROM pgq_coop.next_batch_custom_info(i_queue_name, i_consumer_name, i_subconsumer_name,
                                           i_min_lag, i_min_count, i_min_interval, NULL) f
$$;

-- As next_batch_custom(6), taking over the open batch of a sibling silent
-- for longer than i_dead_interval (PGQ's argument order: last).
CREATE OR REPLACE FUNCTION pgq_coop.next_batch_custom(
    i_queue_name text,
    i_consumer_name text,
    i_subconsumer_name text,
    i_min_lag interval,
    i_min_count int4,
    i_min_interval interval,
    i_dead_interval interval)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT f.batch_id
      FROM pgq_coop.next_batch_custom_info(i_queue_name, i_consumer_name, i_subconsumer_name,
                                           i_min_lag, i_min_count, i_min_interval, i_dead_interval) f
$$;

-- Closes a sub-consumer's batch: the sub-consumer goes idle and sub_active
-- is touched (the group's position moved when the batch was handed out).
-- Returns 1, or 0 with a warning when no open batch has that id. A batch
-- taken over by a sibling raises PQS06. The batch of a plain consumer is
-- closed as pgq.finish_batch closes it.
CREATE OR REPLACE FUNCTION pgq_coop.finish_batch(i_batch_id bigint)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _queue_id integer;
    _self_id  integer;
    _self_sub integer;
    _new_id   bigint;
BEGIN
    SELECT s.sub_queue, s.sub_consumer, s.sub_id INTO _queue_id, _self_id, _self_sub
      FROM pgq.subscription s
     WHERE s.sub_batch = i_batch_id
       FOR UPDATE OF s;
    IF NOT FOUND THEN
        SELECT t.new_batch_id INTO _new_id
          FROM pgq_coop.batch_takeover t
         WHERE t.old_batch_id = i_batch_id;
        IF FOUND THEN
            RAISE EXCEPTION 'pgq_coop: batch % was taken over by another subconsumer (as batch %)', i_batch_id, _new_id
                USING ERRCODE = 'PQS06';
        END IF;
        RAISE WARNING 'pgq_coop.finish_batch: batch % not found', i_batch_id;
        RETURN 0;
    END IF;

    PERFORM 1
       FROM pgq.subscription g
      WHERE g.sub_queue = _queue_id
        AND g.sub_id = _self_sub
        AND g.sub_consumer <> _self_id;
    IF NOT FOUND THEN
        RETURN pgq.finish_batch(i_batch_id);
    END IF;

    UPDATE pgq.subscription s
       SET sub_active = now(),
           sub_last_tick = NULL,
           sub_next_tick = NULL,
           sub_batch = NULL
     WHERE s.sub_queue = _queue_id
       AND s.sub_consumer = _self_id;
    RETURN 1;
END;
$$;

INSERT INTO pgq_rs.migrations (line, version, description) VALUES ('pgq_coop', 2, 'trust');
