-- pgq-rs: the `pgq_coop` line, version 1.
--
-- Cooperative consumers (PGQ's pgq_coop API) on top of a pgq schema with
-- PGQ 3.5's SQL API: pgq-rs's own, or the original extension.
--
-- Model. A consumer group C is an ordinary consumer registered on the queue.
-- Its sub-consumer S is a consumer registered under the name 'C.S' whose
-- pgq.subscription row shares the group's sub_id, so events retried from
-- any sub-consumer's batch come back to the group (retry ownership is per
-- sub_id) and pgq.unregister_consumer(queue, 'C') removes the whole group.
-- The group's row holds the group's position (sub_last_tick, never a batch
-- between calls). A sub-consumer's row is idle with sub_last_tick,
-- sub_next_tick and sub_batch all NULL, and holds a batch with all three
-- set; so pgq's table rotation (the lowest sub_last_tick on the queue)
-- keeps every open batch's events.
--
-- next_batch locks the group's row, hands the caller its open batch if it
-- has one, else the open batch of a sibling not seen for i_dead_interval
-- (when given), else the group's next batch, which moves the group's
-- position past it. Abandoned batches go first so that one cannot hold
-- back table rotation for ever while new batches keep coming. The caller
-- must commit right after next_batch: the group's row stays locked until
-- then and every sibling waits for it.
--
-- What this needs of the pgq schema, besides PGQ 3.5's functions:
-- pgq.subscription.sub_id is not unique (sub-consumers share the group's),
-- and pgq.unregister_consumer keeps PGQ 3.5's rule for rows sharing a
-- sub_id (a sub-consumer's name removes that row, the group's name removes
-- all of them and the group's retry events).
--
-- Difference from PGQ's own pgq_coop: a batch taken over from a silent
-- sub-consumer gets a new batch id, and pgq_coop.finish_batch of the old id
-- raises PQS06 instead of closing the batch for the new holder, so the
-- late sub-consumer's transaction (its work and its finish_batch) rolls
-- back and two sub-consumers never both process one batch. Also, a batch
-- left open by unregister_subconsumer(..., 1) is put into the retry queue
-- for the group (pgq.batch_retry) instead of being dropped.
--
-- SQLSTATEs raised by this file:
--   PQR01  this or a newer version of the line is already installed.
--   PQS01  the pgq schema with PGQ 3.5's API is missing (at install).
--   PQS02  queue, group consumer or sub-consumer not found.
--   PQS03  the group consumer itself holds an open batch (it was used with
--          pgq.next_batch directly); cooperative consumption refuses it.
--   PQS04  the name 'C.S' is registered on the queue but not as a
--          sub-consumer of C (it does not share C's sub_id).
--   PQS05  unregister_subconsumer with i_batch_handling other than 1 while
--          the sub-consumer holds an open batch.
--   PQS06  finish_batch of a batch that was taken over by a sibling.

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
    IF EXISTS (SELECT 1 FROM pgq_rs.migrations WHERE line = 'pgq_coop' AND version >= 1) THEN
        RAISE EXCEPTION 'pgq-rs: % version % or newer is already installed', 'pgq_coop', 1
            USING ERRCODE = 'PQR01';
    END IF;
END $guard$;

DO $prereq$
BEGIN
    IF pg_catalog.to_regprocedure('pgq.next_batch_custom(text,text,interval,integer,interval)') IS NULL
       OR pg_catalog.to_regprocedure('pgq.register_consumer(text,text)') IS NULL
       OR pg_catalog.to_regprocedure('pgq.finish_batch(bigint)') IS NULL
       OR pg_catalog.to_regprocedure('pgq.batch_retry(bigint,integer)') IS NULL
       OR pg_catalog.to_regclass('pgq.subscription') IS NULL
       OR pg_catalog.to_regclass('pgq.batch_id_seq') IS NULL THEN
        RAISE EXCEPTION 'pgq-rs: pgq_coop needs the pgq schema (PGQ 3.5 API) installed first'
            USING ERRCODE = 'PQS01';
    END IF;
END $prereq$;

-- Roles of PGQ's grant model: readers consume, writers produce, admins administer. Roles are
-- cluster-wide: another database's installation or the original extension may have made them,
-- and then they are used as they are (a concurrent creation is tolerated) unless somebody else
-- could take them over: a role that can log in or has any attribute, or that a role other than
-- a superuser or the installer may grant to others (ADMIN OPTION, which PostgreSQL 16 gives
-- whoever creates a role with CREATEROLE), is refused, since the rights granted to it below
-- would be theirs.
DO $roles$
DECLARE
    r record;
    holder text;
BEGIN
    FOR r IN SELECT * FROM (VALUES ('pgq_reader', ''), ('pgq_writer', ''),
                                   ('pgq_admin', ' IN ROLE pgq_reader, pgq_writer')) v(name, extra)
    LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.name
                      AND (rolcanlogin OR rolsuper OR rolcreaterole OR rolcreatedb
                           OR rolreplication OR rolbypassrls)) THEN
            RAISE EXCEPTION 'pgq-rs: refusing to use the existing role %: it can log in or has '
                            'attributes a group role of pgq-rs never has', r.name
                USING ERRCODE = 'PQR04',
                      HINT = 'Find out who made it; ALTER ROLE ... NOLOGIN NOSUPERUSER '
                             'NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS, or drop it.';
        END IF;
        SELECT h.rolname INTO holder
          FROM pg_auth_members m
          JOIN pg_roles g ON g.oid = m.roleid
          JOIN pg_roles h ON h.oid = m.member
         WHERE g.rolname = r.name AND m.admin_option AND NOT h.rolsuper
           AND h.rolname <> current_user
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'pgq-rs: refusing to use the existing role %: role % may grant it '
                            'to anybody (ADMIN OPTION)', r.name, holder
                USING ERRCODE = 'PQR04',
                      HINT = format('REVOKE ADMIN OPTION FOR %I FROM %I, if that is not meant.',
                                    r.name, holder);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.name) THEN
            BEGIN
                EXECUTE 'CREATE ROLE ' || r.name || r.extra;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                -- an installer in another database of this cluster created it just now
                NULL;
            END;
        END IF;
    END LOOP;
END
$roles$;

CREATE SCHEMA pgq_coop;
GRANT USAGE ON SCHEMA pgq_coop TO PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- Table: pgq_coop.batch_takeover
--
-- One row per batch taken from a silent sub-consumer: its old id, the id
-- it goes on under, and who lost and who took it. finish_batch of an old id
-- finds it here and raises PQS06. A row goes when the losing sub-consumer
-- asks for a batch again (it has given up the old one), is unregistered, or
-- has disappeared from the queue.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE pgq_coop.batch_takeover (
    old_batch_id  bigint      NOT NULL,
    new_batch_id  bigint      NOT NULL,
    queue_id      integer     NOT NULL,
    group_id      integer     NOT NULL,
    loser_id      integer     NOT NULL,
    taker_id      integer     NOT NULL,
    taken_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT batch_takeover_pkey PRIMARY KEY (old_batch_id)
);
CREATE INDEX batch_takeover_loser_idx ON pgq_coop.batch_takeover (queue_id, loser_id);

-- ---------------------------------------------------------------------------------------------
-- Functions
-- ---------------------------------------------------------------------------------------------

-- Version of the pgq_coop API this schema answers to.
CREATE FUNCTION pgq_coop.version()
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$ SELECT '3.3'::text $$;

-- Registers sub-consumer i_subconsumer_name of group i_consumer_name on the
-- queue, registering the group first when needed. Returns 1 for a new
-- registration, 0 when the sub-consumer was registered already.
CREATE FUNCTION pgq_coop.register_subconsumer(
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
CREATE FUNCTION pgq_coop.unregister_subconsumer(
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
CREATE FUNCTION pgq_coop.next_batch_custom_info(
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
CREATE FUNCTION pgq_coop.next_batch(
    i_queue_name text,
    i_consumer_name text,
    i_subconsumer_name text)
RETURNS bigint
LANGUAGE sql
AS $$
    SELECT f.batch_id
      FROM pgq_coop.next_batch_custom_info(i_queue_name, i_consumer_name, i_subconsumer_name,
                                           NULL, NULL, NULL, NULL) f
$$;

-- As next_batch(3), taking over the open batch of a sibling silent for
-- longer than i_dead_interval.
CREATE FUNCTION pgq_coop.next_batch(
    i_queue_name text,
    i_consumer_name text,
    i_subconsumer_name text,
    i_dead_interval interval)
RETURNS bigint
LANGUAGE sql
AS $$
    SELECT f.batch_id
      FROM pgq_coop.next_batch_custom_info(i_queue_name, i_consumer_name, i_subconsumer_name,
                                           NULL, NULL, NULL, i_dead_interval) f
$$;

-- As next_batch(3), with the batch's ticks (pgq.next_batch_info's columns).
CREATE FUNCTION pgq_coop.next_batch_info(
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
AS $$
    SELECT f.batch_id, f.cur_tick_id, f.prev_tick_id, f.cur_tick_time, f.prev_tick_time,
           f.cur_tick_event_seq, f.prev_tick_event_seq
      FROM pgq_coop.next_batch_custom_info(i_queue_name, i_consumer_name, i_subconsumer_name,
                                           NULL, NULL, NULL, NULL) f
$$;

-- As next_batch(4), with the batch's ticks (pgq.next_batch_info's columns).
CREATE FUNCTION pgq_coop.next_batch_info(
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
AS $$
    SELECT f.batch_id, f.cur_tick_id, f.prev_tick_id, f.cur_tick_time, f.prev_tick_time,
           f.cur_tick_event_seq, f.prev_tick_event_seq
      FROM pgq_coop.next_batch_custom_info(i_queue_name, i_consumer_name, i_subconsumer_name,
                                           NULL, NULL, NULL, i_dead_interval) f
$$;

-- Next batch id, with the group's batch cut as pgq.next_batch_custom does.
CREATE FUNCTION pgq_coop.next_batch_custom(
    i_queue_name text,
    i_consumer_name text,
    i_subconsumer_name text,
    i_min_lag interval,
    i_min_count int4,
    i_min_interval interval)
RETURNS bigint
LANGUAGE sql
AS $$
    SELECT f.batch_id
      FROM pgq_coop.next_batch_custom_info(i_queue_name, i_consumer_name, i_subconsumer_name,
                                           i_min_lag, i_min_count, i_min_interval, NULL) f
$$;

-- As next_batch_custom(6), taking over the open batch of a sibling silent
-- for longer than i_dead_interval (PGQ's argument order: last).
CREATE FUNCTION pgq_coop.next_batch_custom(
    i_queue_name text,
    i_consumer_name text,
    i_subconsumer_name text,
    i_min_lag interval,
    i_min_count int4,
    i_min_interval interval,
    i_dead_interval interval)
RETURNS bigint
LANGUAGE sql
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
CREATE FUNCTION pgq_coop.finish_batch(i_batch_id bigint)
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

-- ---------------------------------------------------------------------------------------------
-- Grants (PGQ's model: everybody may ask the version, pgq_reader consumes).
-- ---------------------------------------------------------------------------------------------

REVOKE ALL ON TABLE pgq_coop.batch_takeover FROM PUBLIC;

REVOKE ALL ON FUNCTION
    pgq_coop.register_subconsumer(text, text, text),
    pgq_coop.unregister_subconsumer(text, text, text, integer),
    pgq_coop.next_batch_custom_info(text, text, text, interval, int4, interval, interval),
    pgq_coop.next_batch(text, text, text),
    pgq_coop.next_batch(text, text, text, interval),
    pgq_coop.next_batch_info(text, text, text),
    pgq_coop.next_batch_info(text, text, text, interval),
    pgq_coop.next_batch_custom(text, text, text, interval, int4, interval),
    pgq_coop.next_batch_custom(text, text, text, interval, int4, interval, interval),
    pgq_coop.finish_batch(bigint)
  FROM PUBLIC;

GRANT EXECUTE ON FUNCTION pgq_coop.version() TO PUBLIC;

GRANT EXECUTE ON FUNCTION
    pgq_coop.register_subconsumer(text, text, text),
    pgq_coop.unregister_subconsumer(text, text, text, integer),
    pgq_coop.next_batch_custom_info(text, text, text, interval, int4, interval, interval),
    pgq_coop.next_batch(text, text, text),
    pgq_coop.next_batch(text, text, text, interval),
    pgq_coop.next_batch_info(text, text, text),
    pgq_coop.next_batch_info(text, text, text, interval),
    pgq_coop.next_batch_custom(text, text, text, interval, int4, interval),
    pgq_coop.next_batch_custom(text, text, text, interval, int4, interval, interval),
    pgq_coop.finish_batch(bigint)
  TO pgq_reader;

GRANT SELECT ON TABLE pgq_coop.batch_takeover TO pgq_reader;
GRANT SELECT, DELETE ON TABLE pgq_coop.batch_takeover TO pgq_admin;

INSERT INTO pgq_rs.migrations (line, version, description) VALUES ('pgq_coop', 1, 'initial');
