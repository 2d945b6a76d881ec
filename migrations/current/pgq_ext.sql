-- pgq-rs: the `pgq_ext` line, version 2, in one file.
--
-- Target-side batch tracking for consumers whose work lands in another database than the queue
-- (PGQ's pgq_ext API), keyed for pgq-rs's runners by the queue database's installation id, the
-- queue and the consumer. It installs alone into a database that has no pgq schema.
-- This file is what the numbered files up to 0002 build, in one piece: a DBA reads a
-- function's current definition here. A fresh installation runs it (the Rust installer does; by
-- hand: `psql -v ON_ERROR_STOP=1 -1 -f migrations/current/pgq_ext.sql`) and it records every
-- version it contains in pgq_rs.migrations; an installation at an earlier version runs the
-- numbered files after its version instead. A test installs both ways and compares the two
-- databases object by object.
--
-- SQLSTATEs raised by this line:
--   PQR01  the line is installed already (fresh installations only)
--   PQR03  the installation is not trusted, or the file runs outside a transaction
--   PQR04  an existing pgq_* role somebody else could take over
--   PQX01  set_batch_done: the batch, or a later one, is recorded as done already
--   PQX02  a NULL or empty tracking key, or a batch id below 1
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
    IF EXISTS (SELECT 1 FROM pgq_rs.migrations WHERE line = 'pgq_ext') THEN
        RAISE EXCEPTION 'pgq-rs: the pgq_ext line is installed already'
            USING ERRCODE = 'PQR01',
                  HINT = 'An installation runs the numbered files after its recorded version.';
    END IF;
END
$guard$;

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

CREATE SCHEMA pgq_ext;
GRANT USAGE ON SCHEMA pgq_ext TO PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- Tables. Rows are keyed by (consumer_id, subconsumer_id); plain consumers
-- use subconsumer_id ''.
-- ---------------------------------------------------------------------------------------------

-- Last tick a consumer has applied (SerialConsumer's position tracking).
CREATE TABLE pgq_ext.completed_tick (
    consumer_id    text   NOT NULL,
    subconsumer_id text   NOT NULL DEFAULT '',
    last_tick_id   bigint NOT NULL,
    CONSTRAINT completed_tick_pkey PRIMARY KEY (consumer_id, subconsumer_id)
);

-- Last batch a consumer has applied. Batches of one consumer come one after
-- another, so the latest id is all that needs keeping.
CREATE TABLE pgq_ext.completed_batch (
    consumer_id    text   NOT NULL,
    subconsumer_id text   NOT NULL DEFAULT '',
    last_batch_id  bigint NOT NULL,
    CONSTRAINT completed_batch_pkey PRIMARY KEY (consumer_id, subconsumer_id)
);

-- Events already applied from the batch in progress (see partial_batch).
CREATE TABLE pgq_ext.completed_event (
    consumer_id    text   NOT NULL,
    subconsumer_id text   NOT NULL DEFAULT '',
    batch_id       bigint NOT NULL,
    event_id       bigint NOT NULL,
    CONSTRAINT completed_event_pkey PRIMARY KEY (consumer_id, subconsumer_id, batch_id, event_id)
);

-- The batch whose events are being tracked one by one in completed_event.
-- When a consumer starts tagging events of another batch, the previous one
-- is finished in the queue database and its event rows are dropped.
CREATE TABLE pgq_ext.partial_batch (
    consumer_id    text   NOT NULL,
    subconsumer_id text   NOT NULL DEFAULT '',
    cur_batch_id   bigint NOT NULL,
    CONSTRAINT partial_batch_pkey PRIMARY KEY (consumer_id, subconsumer_id)
);

-- ---------------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------------

-- The last batch applied per provider installation, queue and consumer. A row is made (with
-- last_batch_id NULL) by the first lock on its key, so there is always a row to lock.
CREATE TABLE pgq_ext.batch_tracking (
    provider_id   uuid        NOT NULL,
    queue_name    text        NOT NULL,
    consumer_name text        NOT NULL,
    last_batch_id bigint,
    done_on       timestamptz,
    CONSTRAINT batch_tracking_pkey PRIMARY KEY (provider_id, queue_name, consumer_name),
    CONSTRAINT batch_tracking_key_check CHECK (queue_name <> '' AND consumer_name <> ''
                                               AND last_batch_id >= 1)
);

-- ---------------------------------------------------------------------------------------------
-- Batch tracking by provider, queue and consumer
-- ---------------------------------------------------------------------------------------------

-- Refuses (PQX02) a tracking key with a part missing, and a batch id below 1 (pgq's start at
-- 1): a NULL would make the lock and the check quietly answer for no row.
CREATE FUNCTION pgq_ext._check_tracking_key(i_provider_id uuid, i_queue_name text,
                                            i_consumer_name text, i_batch_id bigint)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    problem text;
BEGIN
    problem := CASE
        WHEN i_provider_id IS NULL THEN 'the provider id is NULL'
        WHEN i_queue_name IS NULL OR i_queue_name = '' THEN
            format('the queue name is %s', coalesce(quote_literal(i_queue_name), 'NULL'))
        WHEN i_consumer_name IS NULL OR i_consumer_name = '' THEN
            format('the consumer name is %s', coalesce(quote_literal(i_consumer_name), 'NULL'))
        WHEN i_batch_id IS NULL OR i_batch_id < 1 THEN
            format('batch id %s is not one (batch ids start at 1)',
                   coalesce(i_batch_id::text, 'NULL'))
    END;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'pgq_ext: refusing to track a batch: %', problem
            USING ERRCODE = 'PQX02',
                  HINT = 'The provider id is pgq_rs.installation''s id in the queue''s database.';
    END IF;
END
$$;

-- Makes the tracking row of (provider, queue, consumer) when missing and locks it until the
-- end of the caller's transaction (a second worker of the key waits here); true when the batch
-- is done: its id is at or below the last batch recorded.
CREATE FUNCTION pgq_ext.is_batch_done_for_update(i_provider_id uuid, i_queue_name text,
                                                 i_consumer_name text, i_batch_id bigint)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    last_done bigint;
BEGIN
    PERFORM pgq_ext._check_tracking_key(i_provider_id, i_queue_name, i_consumer_name,
                                        i_batch_id);
    LOOP
        SELECT bt.last_batch_id INTO last_done
          FROM pgq_ext.batch_tracking bt
         WHERE bt.provider_id = i_provider_id AND bt.queue_name = i_queue_name
           AND bt.consumer_name = i_consumer_name
           FOR UPDATE;
        EXIT WHEN FOUND;
        -- another worker's insert of the same key makes this one wait, then do nothing
        INSERT INTO pgq_ext.batch_tracking (provider_id, queue_name, consumer_name)
        VALUES (i_provider_id, i_queue_name, i_consumer_name)
        ON CONFLICT DO NOTHING;
    END LOOP;
    RETURN last_done IS NOT NULL AND i_batch_id <= last_done;
END
$$;

-- Records the batch as the last one done for (provider, queue, consumer). Returns true; a batch
-- at or below the last one recorded is refused with PQX01 rather than answered with false, so
-- a caller that ignores the answer still cannot commit a batch's work twice.
CREATE FUNCTION pgq_ext.set_batch_done(i_provider_id uuid, i_queue_name text,
                                       i_consumer_name text, i_batch_id bigint)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    last_done bigint;
BEGIN
    PERFORM pgq_ext._check_tracking_key(i_provider_id, i_queue_name, i_consumer_name,
                                        i_batch_id);
    INSERT INTO pgq_ext.batch_tracking AS bt
           (provider_id, queue_name, consumer_name, last_batch_id, done_on)
    VALUES (i_provider_id, i_queue_name, i_consumer_name, i_batch_id, now())
    ON CONFLICT (provider_id, queue_name, consumer_name) DO UPDATE
        SET last_batch_id = excluded.last_batch_id, done_on = excluded.done_on
      WHERE bt.last_batch_id IS NULL OR bt.last_batch_id < excluded.last_batch_id;
    IF FOUND THEN
        RETURN true;
    END IF;
    -- the conflicting row stays locked by the upsert: this reads what refused it
    SELECT bt.last_batch_id INTO last_done
      FROM pgq_ext.batch_tracking bt
     WHERE bt.provider_id = i_provider_id AND bt.queue_name = i_queue_name
       AND bt.consumer_name = i_consumer_name;
    RAISE EXCEPTION 'pgq_ext: batch % of queue % is done already for consumer %',
                    i_batch_id, i_queue_name, i_consumer_name
        USING ERRCODE = 'PQX01',
              DETAIL = format('The last batch done from provider %s is %s; batch ids only grow '
                              'within one provider installation, so another worker applied '
                              'this one.', i_provider_id, last_done),
              HINT = 'Roll this batch''s work back: the worker that applied it, or the next '
                     'one to take it, finishes it in the queue.';
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Version 1's functions, keyed by consumer name (PGQ's pgq_ext API), unchanged but for the pin.
-- Rows are keyed by (consumer_id, subconsumer_id); the short forms stand for subconsumer ''.
-- ---------------------------------------------------------------------------------------------

-- Version of the pgq_ext API this schema answers to.
CREATE FUNCTION pgq_ext.version()
RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT '3.1'::text $$;

-- True when a_batch_id is the last batch recorded as done for the
-- (sub)consumer; false when another batch or none is recorded.
CREATE FUNCTION pgq_ext.is_batch_done(a_consumer text, a_subconsumer text, a_batch_id bigint)
RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _last bigint;
BEGIN
    SELECT cb.last_batch_id INTO _last
      FROM pgq_ext.completed_batch cb
     WHERE cb.consumer_id = a_consumer
       AND cb.subconsumer_id = a_subconsumer;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    RETURN _last = a_batch_id;
END;
$$;

CREATE FUNCTION pgq_ext.is_batch_done(a_consumer text, a_batch_id bigint)
RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgq_ext.is_batch_done(a_consumer, '', a_batch_id) $$;

-- Records a_batch_id as the last batch done by the (sub)consumer. Returns
-- false, changing nothing, when that batch is already recorded; true
-- otherwise. Batch ids below 1 are accepted but not stored.
CREATE FUNCTION pgq_ext.set_batch_done(a_consumer text, a_subconsumer text, a_batch_id bigint)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pgq_ext.is_batch_done(a_consumer, a_subconsumer, a_batch_id) THEN
        RETURN false;
    END IF;
    IF a_batch_id > 0 THEN
        INSERT INTO pgq_ext.completed_batch AS cb (consumer_id, subconsumer_id, last_batch_id)
        VALUES (a_consumer, a_subconsumer, a_batch_id)
        ON CONFLICT (consumer_id, subconsumer_id)
            DO UPDATE SET last_batch_id = EXCLUDED.last_batch_id;
    END IF;
    RETURN true;
END;
$$;

CREATE FUNCTION pgq_ext.set_batch_done(a_consumer text, a_batch_id bigint)
RETURNS boolean
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgq_ext.set_batch_done(a_consumer, '', a_batch_id) $$;

-- True when the event was tagged done in that batch by the (sub)consumer.
CREATE FUNCTION pgq_ext.is_event_done(a_consumer text, a_subconsumer text, a_batch_id bigint, a_event_id bigint)
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1
          FROM pgq_ext.completed_event ce
         WHERE ce.consumer_id = a_consumer
           AND ce.subconsumer_id = a_subconsumer
           AND ce.batch_id = a_batch_id
           AND ce.event_id = a_event_id)
$$;

CREATE FUNCTION pgq_ext.is_event_done(a_consumer text, a_batch_id bigint, a_event_id bigint)
RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgq_ext.is_event_done(a_consumer, '', a_batch_id, a_event_id) $$;

-- Tags one event of a batch as done. Returns false when it already was,
-- true otherwise. Tagging an event of a new batch forgets the events of
-- the (sub)consumer's previous batch.
CREATE FUNCTION pgq_ext.set_event_done(a_consumer text, a_subconsumer text, a_batch_id bigint, a_event_id bigint)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _prev bigint;
BEGIN
    IF pgq_ext.is_event_done(a_consumer, a_subconsumer, a_batch_id, a_event_id) THEN
        RETURN false;
    END IF;

    SELECT pb.cur_batch_id INTO _prev
      FROM pgq_ext.partial_batch pb
     WHERE pb.consumer_id = a_consumer
       AND pb.subconsumer_id = a_subconsumer
       FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO pgq_ext.partial_batch (consumer_id, subconsumer_id, cur_batch_id)
        VALUES (a_consumer, a_subconsumer, a_batch_id)
        ON CONFLICT (consumer_id, subconsumer_id)
            DO UPDATE SET cur_batch_id = EXCLUDED.cur_batch_id;
    ELSIF _prev IS DISTINCT FROM a_batch_id THEN
        DELETE FROM pgq_ext.completed_event ce
         WHERE ce.consumer_id = a_consumer
           AND ce.subconsumer_id = a_subconsumer
           AND ce.batch_id = _prev;
        UPDATE pgq_ext.partial_batch pb
           SET cur_batch_id = a_batch_id
         WHERE pb.consumer_id = a_consumer
           AND pb.subconsumer_id = a_subconsumer;
    END IF;

    INSERT INTO pgq_ext.completed_event (consumer_id, subconsumer_id, batch_id, event_id)
    VALUES (a_consumer, a_subconsumer, a_batch_id, a_event_id)
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END;
$$;

CREATE FUNCTION pgq_ext.set_event_done(a_consumer text, a_batch_id bigint, a_event_id bigint)
RETURNS boolean
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgq_ext.set_event_done(a_consumer, '', a_batch_id, a_event_id) $$;

-- Last tick recorded for the (sub)consumer, NULL when none.
CREATE FUNCTION pgq_ext.get_last_tick(a_consumer text, a_subconsumer text)
RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ct.last_tick_id
      FROM pgq_ext.completed_tick ct
     WHERE ct.consumer_id = a_consumer
       AND ct.subconsumer_id = a_subconsumer
$$;

CREATE FUNCTION pgq_ext.get_last_tick(a_consumer text)
RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgq_ext.get_last_tick(a_consumer, '') $$;

-- Records the last tick applied by the (sub)consumer; a NULL tick removes
-- the record. Returns 1.
CREATE FUNCTION pgq_ext.set_last_tick(a_consumer text, a_subconsumer text, a_tick_id bigint)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF a_tick_id IS NULL THEN
        DELETE FROM pgq_ext.completed_tick ct
         WHERE ct.consumer_id = a_consumer
           AND ct.subconsumer_id = a_subconsumer;
    ELSE
        INSERT INTO pgq_ext.completed_tick AS ct (consumer_id, subconsumer_id, last_tick_id)
        VALUES (a_consumer, a_subconsumer, a_tick_id)
        ON CONFLICT (consumer_id, subconsumer_id)
            DO UPDATE SET last_tick_id = EXCLUDED.last_tick_id;
    END IF;
    RETURN 1;
END;
$$;

CREATE FUNCTION pgq_ext.set_last_tick(a_consumer text, a_tick_id bigint)
RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgq_ext.set_last_tick(a_consumer, '', a_tick_id) $$;

-- ---------------------------------------------------------------------------------------------
-- Privileges of what is new in this version (the restated functions keep theirs): pgq_writer
-- tracks, pgq_admin reads the table, nobody else reaches either. The key check runs only inside
-- the definer functions.
-- ---------------------------------------------------------------------------------------------

-- ---------------------------------------------------------------------------------------------
-- Grants (PGQ's model: everybody may ask the version, pgq_writer uses the
-- tracking functions; the tables are reached only through them).
-- ---------------------------------------------------------------------------------------------

REVOKE ALL ON TABLE pgq_ext.completed_tick, pgq_ext.completed_batch,
    pgq_ext.completed_event, pgq_ext.partial_batch FROM PUBLIC;

REVOKE ALL ON FUNCTION
    pgq_ext.is_batch_done(text, text, bigint),
    pgq_ext.is_batch_done(text, bigint),
    pgq_ext.set_batch_done(text, text, bigint),
    pgq_ext.set_batch_done(text, bigint),
    pgq_ext.is_event_done(text, text, bigint, bigint),
    pgq_ext.is_event_done(text, bigint, bigint),
    pgq_ext.set_event_done(text, text, bigint, bigint),
    pgq_ext.set_event_done(text, bigint, bigint),
    pgq_ext.get_last_tick(text, text),
    pgq_ext.get_last_tick(text),
    pgq_ext.set_last_tick(text, text, bigint),
    pgq_ext.set_last_tick(text, bigint)
  FROM PUBLIC;

GRANT EXECUTE ON FUNCTION pgq_ext.version() TO PUBLIC;

GRANT EXECUTE ON FUNCTION
    pgq_ext.is_batch_done(text, text, bigint),
    pgq_ext.is_batch_done(text, bigint),
    pgq_ext.set_batch_done(text, text, bigint),
    pgq_ext.set_batch_done(text, bigint),
    pgq_ext.is_event_done(text, text, bigint, bigint),
    pgq_ext.is_event_done(text, bigint, bigint),
    pgq_ext.set_event_done(text, text, bigint, bigint),
    pgq_ext.set_event_done(text, bigint, bigint),
    pgq_ext.get_last_tick(text, text),
    pgq_ext.get_last_tick(text),
    pgq_ext.set_last_tick(text, text, bigint),
    pgq_ext.set_last_tick(text, bigint)
  TO pgq_writer;

GRANT SELECT ON TABLE pgq_ext.completed_tick, pgq_ext.completed_batch,
    pgq_ext.completed_event, pgq_ext.partial_batch TO pgq_admin;

REVOKE ALL ON TABLE pgq_ext.batch_tracking FROM PUBLIC;
GRANT SELECT ON TABLE pgq_ext.batch_tracking TO pgq_admin;
REVOKE ALL ON FUNCTION
    pgq_ext._check_tracking_key(uuid, text, text, bigint),
    pgq_ext.is_batch_done_for_update(uuid, text, text, bigint),
    pgq_ext.set_batch_done(uuid, text, text, bigint)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    pgq_ext.is_batch_done_for_update(uuid, text, text, bigint),
    pgq_ext.set_batch_done(uuid, text, text, bigint)
  TO pgq_writer;

INSERT INTO pgq_rs.migrations (line, version, description) VALUES
    ('pgq_ext', 1, 'initial'),
    ('pgq_ext', 2, 'trust');
