-- pgq-rs: the `pgq` line, version 8, in one file.
--
-- PGQ 3.x's queue schema and SQL API in plain SQL and PL/pgSQL (no C), so it installs where C
-- extensions cannot. This file is what the numbered files 0001 to 0008 build, in one piece: a DBA
-- reads a function's current definition here. A fresh installation runs it (the Rust installer
-- does; by hand: `psql -v ON_ERROR_STOP=1 -1 -f migrations/current/pgq.sql`) and it records
-- every version it contains in pgq_rs.migrations; an installation at an earlier version runs the
-- numbered files after its version instead. A test installs both ways and compares the two
-- databases object by object.
--
-- SQLSTATEs raised by this line (class PQ, so callers classify errors without reading messages):
--   PQR01  the line is installed already (fresh installations only)
--   PQR03  the installation is not trusted (see below), or the file runs outside a transaction
--   PQR04  an existing pgq_* role somebody else could take over
--   PQQ01  unknown queue
--   PQQ02  queue cannot be dropped: consumers are still registered
--   PQC01  consumer not registered on the queue
--   PQB01  batch not found (unknown or already finished)
--   PQE01  event not found in the batch
--   PQF01  failed_event_*: the queue or consumer is not found
--   PQI01  inserts are disabled on the queue
--   PQI02  the transaction exceeded the queue's per-transaction event limit
--   PQT01  the queue is ticked externally, or its ticker is paused
--   PQT02  tick not found
--   PQA01  invalid argument (NULL where a value is required, unknown setting)

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
    IF EXISTS (SELECT 1 FROM pgq_rs.migrations WHERE line = 'pgq') THEN
        RAISE EXCEPTION 'pgq-rs: the pgq line is installed already'
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

CREATE SCHEMA pgq;

-- ---------------------------------------------------------------------------------------------
-- Tables (PGQ 3.x's, column for column, and the failed queue)
-- ---------------------------------------------------------------------------------------------

CREATE TABLE pgq.consumer (
    co_id   serial,
    co_name text NOT NULL,
    CONSTRAINT consumer_pkey PRIMARY KEY (co_id),
    CONSTRAINT consumer_name_uq UNIQUE (co_name)
);

CREATE TABLE pgq.queue (
    queue_id                 serial,
    queue_name               text        NOT NULL,
    queue_ntables            integer     NOT NULL DEFAULT 3,
    queue_cur_table          integer     NOT NULL DEFAULT 0,
    queue_rotation_period    interval    NOT NULL DEFAULT '2 hours',
    queue_switch_step1       bigint      NOT NULL DEFAULT txid_current(),
    queue_switch_step2       bigint      DEFAULT txid_current(),
    queue_switch_time        timestamptz NOT NULL DEFAULT now(),
    queue_external_ticker    boolean     NOT NULL DEFAULT false,
    queue_disable_insert     boolean     NOT NULL DEFAULT false,
    queue_ticker_paused      boolean     NOT NULL DEFAULT false,
    queue_ticker_max_count   integer     NOT NULL DEFAULT 500,
    queue_ticker_max_lag     interval    NOT NULL DEFAULT '3 seconds',
    queue_ticker_idle_period interval    NOT NULL DEFAULT '1 minute',
    queue_per_tx_limit       integer,
    queue_data_pfx           text        NOT NULL,
    queue_event_seq          text        NOT NULL,
    queue_tick_seq           text        NOT NULL,
    queue_extra_maint        text[],
    -- at most this many events per batch, plus the transactions straddling a cut
    queue_ticker_max_batch   integer     NOT NULL DEFAULT 10000
        CONSTRAINT queue_ticker_max_batch_positive CHECK (queue_ticker_max_batch > 0),
    CONSTRAINT queue_pkey PRIMARY KEY (queue_id),
    CONSTRAINT queue_name_uq UNIQUE (queue_name)
);

-- A tick: the queue's transaction snapshot and event-sequence position at one moment.
CREATE TABLE pgq.tick (
    tick_queue     integer       NOT NULL,
    tick_id        bigint        NOT NULL,
    tick_time      timestamptz   NOT NULL DEFAULT now(),
    tick_snapshot  txid_snapshot NOT NULL DEFAULT txid_current_snapshot(),
    tick_event_seq bigint        NOT NULL,
    CONSTRAINT tick_pkey PRIMARY KEY (tick_queue, tick_id),
    CONSTRAINT tick_queue_fkey FOREIGN KEY (tick_queue) REFERENCES pgq.queue (queue_id)
);

CREATE SEQUENCE pgq.batch_id_seq;

-- Sub-consumers of a cooperative group share the group's sub_id, so sub_id is not unique.
CREATE TABLE pgq.subscription (
    sub_id        serial      NOT NULL,
    sub_queue     integer     NOT NULL,
    sub_consumer  integer     NOT NULL,
    sub_last_tick bigint,
    sub_active    timestamptz NOT NULL DEFAULT now(),
    sub_batch     bigint,
    sub_next_tick bigint,
    CONSTRAINT subscription_pkey PRIMARY KEY (sub_queue, sub_consumer),
    CONSTRAINT subscription_batch_idx UNIQUE (sub_batch),
    CONSTRAINT sub_queue_fkey FOREIGN KEY (sub_queue) REFERENCES pgq.queue (queue_id),
    CONSTRAINT sub_consumer_fkey FOREIGN KEY (sub_consumer) REFERENCES pgq.consumer (co_id)
);

-- Every queue's event tables inherit from this one.
CREATE TABLE pgq.event_template (
    ev_id     bigint      NOT NULL,
    ev_time   timestamptz NOT NULL,
    ev_txid   bigint      NOT NULL DEFAULT txid_current(),
    ev_owner  integer,
    ev_retry  integer,
    ev_type   text,
    ev_data   text,
    ev_extra1 text,
    ev_extra2 text,
    ev_extra3 text,
    ev_extra4 text
);

-- Events handed back by a consumer, re-inserted for that consumer (ev_owner = sub_id) when due.
CREATE TABLE pgq.retry_queue (
    ev_retry_after timestamptz NOT NULL,
    ev_queue       integer     NOT NULL,
    LIKE pgq.event_template,
    CONSTRAINT rq_pkey PRIMARY KEY (ev_owner, ev_id),
    CONSTRAINT rq_queue_id_fkey FOREIGN KEY (ev_queue) REFERENCES pgq.queue (queue_id)
);
ALTER TABLE pgq.retry_queue ALTER COLUMN ev_owner SET NOT NULL;
ALTER TABLE pgq.retry_queue ALTER COLUMN ev_txid DROP NOT NULL;
CREATE INDEX rq_retry_idx ON pgq.retry_queue (ev_retry_after);

-- Events a consumer gave up on, with the reason (pgq.event_failed); an operator lists, requeues
-- or deletes them with the pgq.failed_event_* functions.
CREATE TABLE pgq.failed_queue (
    ev_failed_reason text        NOT NULL,
    ev_failed_time   timestamptz NOT NULL DEFAULT now(),
    ev_queue         integer     NOT NULL,
    LIKE pgq.event_template,
    CONSTRAINT fq_pkey PRIMARY KEY (ev_owner, ev_id),
    CONSTRAINT fq_queue_id_fkey FOREIGN KEY (ev_queue) REFERENCES pgq.queue (queue_id)
        ON DELETE CASCADE
);
ALTER TABLE pgq.failed_queue ALTER COLUMN ev_owner SET NOT NULL;
ALTER TABLE pgq.failed_queue ALTER COLUMN ev_txid DROP NOT NULL;

-- The names SECURITY DEFINER functions build statements from are the ones create_queue derives
-- from the queue id, and nothing else.
ALTER TABLE pgq.queue ADD CONSTRAINT queue_names_derived CHECK (
    queue_data_pfx = 'pgq.event_' || queue_id
    AND queue_event_seq = 'pgq.event_' || queue_id || '_id_seq'
    AND queue_tick_seq = 'pgq.event_' || queue_id || '_tick_seq'
    AND queue_ntables BETWEEN 1 AND 1000
    AND queue_cur_table >= 0 AND queue_cur_table < queue_ntables);

-- ---------------------------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------------------------

-- 'schema.name' (or 'name', meaning public) as a quoted identifier.
CREATE FUNCTION pgq.quote_fqname(i_name text) RETURNS text
LANGUAGE sql STRICT IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN strpos(i_name, '.') > 0
        THEN pg_catalog.quote_ident(pg_catalog.split_part(i_name, '.', 1)) || '.'
             || pg_catalog.quote_ident(pg_catalog.substr(i_name, strpos(i_name, '.') + 1))
        ELSE 'public.' || pg_catalog.quote_ident(i_name)
    END
$$;

-- The sequence's last_value, whether or not nextval was ever called (PGQ reads it this way, and
-- tick_event_seq values depend on it). The queue functions read their own sequences with
-- pgq._event_seq_value, which needs no dynamic SQL.
CREATE FUNCTION pgq.seq_getval(i_seq_name text) RETURNS bigint
LANGUAGE plpgsql STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    last_val bigint;
BEGIN
    EXECUTE 'SELECT last_value FROM ' || pgq.quote_fqname(i_seq_name) INTO last_val;
    RETURN last_val;
END
$$;

-- Moves a sequence forward to i_new_value; never backwards. Returns the resulting value.
CREATE FUNCTION pgq.seq_setval(i_seq_name text, i_new_value bigint) RETURNS bigint
LANGUAGE plpgsql STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cur bigint := pgq.seq_getval(i_seq_name);
BEGIN
    IF cur < i_new_value THEN
        PERFORM pg_catalog.setval(pgq.quote_fqname(i_seq_name), i_new_value);
        RETURN i_new_value;
    END IF;
    RETURN cur;
END
$$;

-- A queue's event-sequence position: the last event id handed out, 0 before the first one
-- (pg_sequence_last_value is NULL then; pgq.seq_getval, PGQ's, reads the start value 1 for both
-- "none yet" and "one").
CREATE FUNCTION pgq._event_seq_value(i_seq_name text) RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(pg_catalog.pg_sequence_last_value(i_seq_name::regclass), 0)
$$;

CREATE FUNCTION pgq.version() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT '3.5'::text $$;

-- Present for PGQ tools that call it after an upgrade; the migrations do the upgrading here.
CREATE FUNCTION pgq.upgrade_schema() RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$ SELECT 0 $$;

-- ---------------------------------------------------------------------------------------------
-- Queues
-- ---------------------------------------------------------------------------------------------

-- Copies the grants of one table to another (used to give event tables the template's grants).
CREATE FUNCTION pgq._grant_perms_from(src_schema text, src_table text, dst_schema text, dst_table text)
RETURNS integer
LANGUAGE plpgsql STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    g record;
    target text := pg_catalog.quote_ident(dst_schema) || '.' || pg_catalog.quote_ident(dst_table);
BEGIN
    FOR g IN
        SELECT grantee, privilege_type, is_grantable
          FROM information_schema.table_privileges
         WHERE table_schema = src_schema AND table_name = src_table
    LOOP
        EXECUTE pg_catalog.format('GRANT %s ON %s TO %s%s',
            g.privilege_type, target,
            CASE WHEN g.grantee = 'PUBLIC' THEN 'public' ELSE pg_catalog.quote_ident(g.grantee) END,
            CASE WHEN g.is_grantable = 'YES' THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    RETURN 1;
END
$$;

CREATE FUNCTION pgq.grant_perms(x_queue_name text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
    tbl_schema text;
    tbl_name text;
BEGIN
    SELECT * INTO q FROM pgq.queue WHERE queue_name = x_queue_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Queue not found' USING ERRCODE = 'PQQ01',
            DETAIL = format('queue %L', x_queue_name);
    END IF;
    tbl_schema := split_part(q.queue_data_pfx, '.', 1);
    tbl_name := substr(q.queue_data_pfx, strpos(q.queue_data_pfx, '.') + 1);
    EXECUTE 'GRANT SELECT ON ' || pgq.quote_fqname(q.queue_tick_seq) || ' TO public';
    EXECUTE 'GRANT SELECT ON ' || pgq.quote_fqname(q.queue_event_seq) || ' TO public';
    EXECUTE 'GRANT USAGE ON ' || pgq.quote_fqname(q.queue_event_seq) || ' TO pgq_admin';
    PERFORM pgq._grant_perms_from('pgq', 'event_template', tbl_schema, tbl_name);
    FOR i IN 0 .. q.queue_ntables - 1 LOOP
        PERFORM pgq._grant_perms_from('pgq', 'event_template', tbl_schema, tbl_name || '_' || i);
    END LOOP;
    RETURN 1;
END
$$;

-- Event tables are insert-only and emptied by TRUNCATE: no dead tuples, so no autovacuum.
CREATE FUNCTION pgq.tune_storage(i_queue_name text) RETURNS integer
LANGUAGE plpgsql STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
BEGIN
    SELECT * INTO q FROM pgq.queue WHERE queue_name = i_queue_name;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    FOR i IN 0 .. q.queue_ntables - 1 LOOP
        EXECUTE 'ALTER TABLE ' || pgq.quote_fqname(q.queue_data_pfx || '_' || i)
            || ' SET (fillfactor = 100, autovacuum_enabled = off, toast.autovacuum_enabled = off)';
    END LOOP;
    RETURN 1;
END
$$;

CREATE FUNCTION pgq.create_queue(i_queue_name text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id integer;
    data_pfx text;
    event_seq text;
    tick_seq text;
    ntables integer;
    tbl text;
BEGIN
    IF i_queue_name IS NULL THEN
        RAISE EXCEPTION 'Invalid NULL value' USING ERRCODE = 'PQA01';
    END IF;
    -- one queue creation at a time: each regenerates the insert functions
    LOCK TABLE pgq.queue IN SHARE ROW EXCLUSIVE MODE;
    IF EXISTS (SELECT 1 FROM pgq.queue WHERE queue_name = i_queue_name) THEN
        RETURN 0;
    END IF;
    new_id := nextval('pgq.queue_queue_id_seq');
    data_pfx := 'pgq.event_' || new_id;
    event_seq := data_pfx || '_id_seq';
    tick_seq := data_pfx || '_tick_seq';
    INSERT INTO pgq.queue (queue_id, queue_name, queue_data_pfx, queue_event_seq, queue_tick_seq)
    VALUES (new_id, i_queue_name, data_pfx, event_seq, tick_seq)
    RETURNING queue_ntables INTO ntables;

    -- CACHE 1 keeps ev_id in commit-wait order across sessions (catch-up ticks rely on it).
    EXECUTE 'CREATE SEQUENCE ' || pgq.quote_fqname(tick_seq) || ' CACHE 1';
    EXECUTE 'CREATE SEQUENCE ' || pgq.quote_fqname(event_seq) || ' CACHE 1';
    EXECUTE 'CREATE TABLE ' || pgq.quote_fqname(data_pfx) || ' () INHERITS (pgq.event_template)';
    FOR i IN 0 .. ntables - 1 LOOP
        tbl := data_pfx || '_' || i;
        EXECUTE 'CREATE TABLE ' || pgq.quote_fqname(tbl) || ' () INHERITS ('
            || pgq.quote_fqname(data_pfx) || ')';
        EXECUTE 'ALTER TABLE ' || pgq.quote_fqname(tbl) || ' ALTER COLUMN ev_id SET DEFAULT nextval('
            || quote_literal(event_seq) || ')';
        EXECUTE 'CREATE INDEX ' || quote_ident('event_' || new_id || '_' || i || '_txid_idx')
            || ' ON ' || pgq.quote_fqname(tbl) || ' (ev_txid)';
    END LOOP;
    PERFORM pgq.grant_perms(i_queue_name);
    PERFORM pgq._rebuild_insert_functions();
    PERFORM pgq.ticker(i_queue_name);
    PERFORM pgq.tune_storage(i_queue_name);
    RETURN 1;
END
$$;

CREATE FUNCTION pgq.drop_queue(x_queue_name text, x_force boolean) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
BEGIN
    LOCK TABLE pgq.queue IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO q FROM pgq.queue WHERE queue_name = x_queue_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'No such event queue' USING ERRCODE = 'PQQ01',
            DETAIL = format('queue %L', x_queue_name);
    END IF;
    IF x_force THEN
        PERFORM pgq.unregister_consumer(x_queue_name, c.co_name)
           FROM pgq.subscription s JOIN pgq.consumer c ON c.co_id = s.sub_consumer
          WHERE s.sub_queue = q.queue_id;
    ELSIF EXISTS (SELECT 1 FROM pgq.subscription WHERE sub_queue = q.queue_id) THEN
        RAISE EXCEPTION 'cannot drop queue, consumers still attached'
            USING ERRCODE = 'PQQ02', DETAIL = format('queue %L', x_queue_name);
    END IF;
    FOR i IN 0 .. q.queue_ntables - 1 LOOP
        EXECUTE 'DROP TABLE ' || pgq.quote_fqname(q.queue_data_pfx || '_' || i);
    END LOOP;
    EXECUTE 'DROP TABLE ' || pgq.quote_fqname(q.queue_data_pfx);
    DELETE FROM pgq.retry_queue WHERE ev_queue = q.queue_id;
    DELETE FROM pgq.tick WHERE tick_queue = q.queue_id;
    EXECUTE 'DROP SEQUENCE ' || pgq.quote_fqname(q.queue_tick_seq);
    EXECUTE 'DROP SEQUENCE ' || pgq.quote_fqname(q.queue_event_seq);
    DELETE FROM pgq.queue WHERE queue_id = q.queue_id;
    PERFORM pgq._rebuild_insert_functions();
    RETURN 1;
END
$$;

CREATE FUNCTION pgq.drop_queue(x_queue_name text) RETURNS integer
LANGUAGE sql STRICT SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgq.drop_queue(x_queue_name, false) $$;

-- PGQ's six settings, plus disable_insert and per_tx_limit (which PGQ enforces only in C; here
-- the insert functions enforce them) and ticker_max_batch.
CREATE FUNCTION pgq.set_queue_config(x_queue_name text, x_param_name text, x_param_value text)
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

-- The table inserts go to right now.
CREATE FUNCTION pgq.current_event_table(x_queue_name text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
BEGIN
    SELECT queue_data_pfx || '_' || queue_cur_table AS tbl, queue_disable_insert
      INTO q FROM pgq.queue WHERE queue_name = x_queue_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Event queue not found' USING ERRCODE = 'PQQ01',
            DETAIL = format('queue %L', x_queue_name);
    END IF;
    IF q.queue_disable_insert AND current_setting('session_replication_role') <> 'replica' THEN
        RAISE EXCEPTION 'Writing to queue disabled' USING ERRCODE = 'PQI01',
            DETAIL = format('queue %L', x_queue_name);
    END IF;
    RETURN q.tbl;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Producing
-- ---------------------------------------------------------------------------------------------

-- Counts this transaction's events per queue in a transaction-local setting, which resets at
-- commit or rollback (and with a rolled-back savepoint), and refuses going over the limit.
-- per_tx_limit is a guard rail against runaway producers, not a security boundary: the setting
-- is the session's own, and set_config can reset it.
CREATE FUNCTION pgq._count_tx_events(
    i_queue_id integer, i_queue_name text, i_limit integer, i_count bigint)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key text := 'pgq_rs.tx_events_' || i_queue_id;
    used bigint := coalesce(nullif(current_setting(key, true), ''), '0')::bigint + i_count;
BEGIN
    IF used > i_limit THEN
        RAISE EXCEPTION 'Queue ''%'' allows max % events from one TX', i_queue_name, i_limit
            USING ERRCODE = 'PQI02',
                  DETAIL = format('This transaction would have inserted %s.', used);
    END IF;
    PERFORM set_config(key, used::text, true);
END
$$;

-- pgq.insert_event (both forms) and pgq.insert_event_raw are generated by
-- pgq._rebuild_insert_functions(), whenever a queue is created or dropped and at the end of this
-- file; pg_get_functiondef shows what they are now. Each one:
--   - looks the queue up (a queue with checks to make, or an unknown name, goes through
--     pgq._insert_target, which raises when the insert is refused);
--   - takes the next event id first, like PGQ, even for an event given an ev_id (a retried event
--     keeps its id, and the sequence still moves so the ticker sees new events) or one that is
--     then refused;
--   - inserts with one static INSERT per event table, whose plan PL/pgSQL keeps for the session
--     (PL/pgSQL, not SQL: an SQL function that cannot be inlined, SECURITY DEFINER, is planned
--     again on every call), falling back to dynamic SQL (pgq._insert_dynamic) for a table it
--     does not know.
--
-- The branches are built in one query (string_agg): appending in a loop copies the growing text
-- each time. Queues are grouped by queue_id / 32 so a call tests at most ~32 + 32 branches,
-- however many queues there are. Bodies are not validated here (check_function_bodies off): they
-- are generated from the catalog, and PL/pgSQL compiles a function on first use in a session.
CREATE FUNCTION pgq._rebuild_insert_functions() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET check_function_bodies = off AS $rebuild$
DECLARE
    branches text;
    f record;
BEGIN
    SELECT string_agg(grp.branch, '' ORDER BY grp.bucket) INTO branches
      FROM (SELECT per_queue.bucket,
                   format(E'\n    WHEN %s THEN\n      CASE t.queue_id%s\n      ELSE NULL;'
                          || E'\n      END CASE;',
                          per_queue.bucket,
                          string_agg(per_queue.branch, '' ORDER BY per_queue.queue_id)) AS branch
              FROM (SELECT q.queue_id, q.queue_id / 32 AS bucket,
                           format(E'\n      WHEN %s THEN\n        CASE t.cur_table%s'
                                  || E'\n        ELSE NULL;\n        END CASE;',
                                  q.queue_id,
                                  string_agg(format(
                                      E'\n        WHEN %s THEN INSERT INTO %s (ev_id, ev_time,'
                                      || ' ev_owner, ev_retry, ev_type, ev_data, ev_extra1,'
                                      || ' ev_extra2, ev_extra3, ev_extra4) VALUES (@VALUES@)'
                                      || ' RETURNING ev_id INTO new_id;',
                                      t.n, pgq.quote_fqname(q.queue_data_pfx || '_' || t.n)),
                                      '' ORDER BY t.n)) AS branch
                      FROM pgq.queue q
                      CROSS JOIN LATERAL generate_series(0, q.queue_ntables - 1) AS t(n)
                     GROUP BY q.queue_id, q.queue_data_pfx) per_queue
             GROUP BY per_queue.bucket) grp;
    branches := coalesce(branches, E'\n    WHEN NULL THEN NULL;');
    FOR f IN
        SELECT * FROM (VALUES
            ('pgq.insert_event(queue_name text, ev_type text, ev_data text)',
             't.next_id, now(), NULL, NULL, $2, $3, NULL, NULL, NULL, NULL'),
            ('pgq.insert_event(queue_name text, ev_type text, ev_data text, ev_extra1 text,'
             ' ev_extra2 text, ev_extra3 text, ev_extra4 text)',
             't.next_id, now(), NULL, NULL, $2, $3, $4, $5, $6, $7'),
            ('pgq.insert_event_raw(queue_name text, ev_id bigint, ev_time timestamptz,'
             ' ev_owner integer, ev_retry integer, ev_type text, ev_data text, ev_extra1 text,'
             ' ev_extra2 text, ev_extra3 text, ev_extra4 text)',
             'coalesce($2, t.next_id), $3, $4, $5, $6, $7, $8, $9, $10, $11')
        ) AS v(signature, vals)
    LOOP
        EXECUTE format($f$
CREATE OR REPLACE FUNCTION %s RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
-- Generated by pgq._rebuild_insert_functions() from the catalog; do not edit.
-- (ev_id and the other parameters are named like the event columns.)
#variable_conflict use_column
DECLARE
    t record;
    new_id bigint;
BEGIN
    SELECT q.queue_id, q.queue_data_pfx AS data_pfx, q.queue_event_seq AS event_seq,
           q.queue_cur_table AS cur_table,
           q.queue_disable_insert OR q.queue_per_tx_limit IS NOT NULL AS restricted,
           nextval(q.queue_event_seq::regclass) AS next_id
      INTO t FROM pgq.queue q WHERE q.queue_name = $1;
    IF NOT FOUND OR t.restricted THEN
        PERFORM pgq._insert_target($1, 1);
    END IF;
    CASE t.queue_id / 32%s
    ELSE NULL;
    END CASE;
    IF new_id IS NULL THEN
        new_id := pgq._insert_dynamic(t.data_pfx || '_' || t.cur_table, t.event_seq, %s);
    END IF;
    RETURN new_id;
END
$body$$f$, f.signature, replace(branches, '@VALUES@', f.vals), f.vals);
    END LOOP;
END
$rebuild$;

-- Checks a queue before an insert (exists, accepts inserts, per-transaction limit) and returns
-- its id, prefix, sequence and current table.
CREATE FUNCTION pgq._insert_target(
    IN i_queue_name text, IN i_count bigint,
    OUT queue_id integer, OUT data_pfx text, OUT event_seq text, OUT cur_table integer)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    disabled boolean;
    per_tx_limit integer;
BEGIN
    IF i_queue_name IS NULL THEN
        RAISE EXCEPTION 'Queue name must not be NULL' USING ERRCODE = 'PQA01';
    END IF;
    SELECT q.queue_id, q.queue_data_pfx, q.queue_event_seq, q.queue_cur_table,
           q.queue_disable_insert, q.queue_per_tx_limit
      INTO queue_id, data_pfx, event_seq, cur_table, disabled, per_tx_limit
      FROM pgq.queue q WHERE q.queue_name = i_queue_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'No such queue' USING ERRCODE = 'PQQ01',
            DETAIL = format('queue %L', i_queue_name);
    END IF;
    IF disabled AND current_setting('session_replication_role') <> 'replica' THEN
        RAISE EXCEPTION 'Insert into queue disallowed' USING ERRCODE = 'PQI01',
            DETAIL = format('queue %L', i_queue_name);
    END IF;
    IF per_tx_limit IS NOT NULL THEN
        PERFORM pgq._count_tx_events(queue_id, i_queue_name, per_tx_limit, i_count);
    END IF;
END
$$;

-- Inserts one event with dynamic SQL: the path for a table the insert functions do not know.
CREATE FUNCTION pgq._insert_dynamic(
    i_table text, i_event_seq text, i_ev_id bigint, i_ev_time timestamptz, i_ev_owner integer,
    i_ev_retry integer, i_ev_type text, i_ev_data text,
    i_ev_extra1 text, i_ev_extra2 text, i_ev_extra3 text, i_ev_extra4 text)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
BEGIN
    EXECUTE 'INSERT INTO ' || pgq.quote_fqname(i_table)
        || ' (ev_id, ev_time, ev_owner, ev_retry, ev_type, ev_data,'
        || ' ev_extra1, ev_extra2, ev_extra3, ev_extra4)'
        || ' VALUES (coalesce($1, nextval(' || quote_literal(i_event_seq) || ')),'
        || ' $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING ev_id'
      INTO new_id
      USING i_ev_id, i_ev_time, i_ev_owner, i_ev_retry, i_ev_type, i_ev_data,
            i_ev_extra1, i_ev_extra2, i_ev_extra3, i_ev_extra4;
    RETURN new_id;
END
$$;

-- New: many events in one statement. Arrays are read side by side (a shorter one is padded with
-- NULLs); ev_ids are returned in array order.
CREATE FUNCTION pgq.insert_event_bulk(
    queue_name text, ev_types text[], ev_datas text[],
    ev_extra1 text[] DEFAULT NULL, ev_extra2 text[] DEFAULT NULL,
    ev_extra3 text[] DEFAULT NULL, ev_extra4 text[] DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint := coalesce(greatest(cardinality($2), cardinality($3), cardinality($4),
                                  cardinality($5), cardinality($6), cardinality($7)), 0);
    t record := pgq._insert_target($1, n);
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE 'INSERT INTO ' || pgq.quote_fqname(t.data_pfx || '_' || t.cur_table)
        || ' (ev_time, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4)'
        || ' SELECT now(), t, d, e1, e2, e3, e4'
        || ' FROM unnest($1, $2, $3, $4, $5, $6) WITH ORDINALITY AS u(t, d, e1, e2, e3, e4, n)'
        || ' ORDER BY n RETURNING ev_id'
      USING $2, $3, $4, $5, $6, $7;
END
$$;

-- Events by key. Within a batch events come in ev_id order, but ids are taken when a transaction
-- inserts, not when it commits: two transactions writing the same key could commit in the other
-- order than their ids. These functions first take a transaction-level advisory lock on
-- (queue id, hashtext(key)), so a second writer of a key waits until the first one commits or
-- rolls back, and per key ev_id order is commit order. Keys that share a hash also share the
-- lock: they wait for each other, which costs some parallelism and never order. The key itself
-- is not stored; put it in the event where the consumer needs it. The lock uses the two-integer
-- advisory lock space; an application that locks (queue id, hash) pairs of its own would wait
-- on these.
CREATE FUNCTION pgq.insert_event_by_key(
    queue_name text, ev_key text, ev_type text, ev_data text,
    ev_extra1 text DEFAULT NULL, ev_extra2 text DEFAULT NULL,
    ev_extra3 text DEFAULT NULL, ev_extra4 text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF ev_key IS NULL THEN
        RAISE EXCEPTION 'an event key must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            DETAIL = format('queue %L', queue_name);
    END IF;
    -- An unknown queue takes no lock here and is refused by pgq.insert_event.
    PERFORM pg_advisory_xact_lock(q.queue_id, hashtext(ev_key))
       FROM pgq.queue q WHERE q.queue_name = insert_event_by_key.queue_name;
    RETURN pgq.insert_event(queue_name, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3,
                            ev_extra4);
END
$$;

-- The bulk form: ev_keys[i] is the key of the i-th event. The locks are taken in hash order, so
-- two bulk calls over the same keys cannot deadlock on each other.
CREATE FUNCTION pgq.insert_event_bulk_by_key(
    queue_name text, ev_keys text[], ev_types text[], ev_datas text[],
    ev_extra1 text[] DEFAULT NULL, ev_extra2 text[] DEFAULT NULL,
    ev_extra3 text[] DEFAULT NULL, ev_extra4 text[] DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint := coalesce(greatest(cardinality(ev_types), cardinality(ev_datas),
                                  cardinality(ev_extra1), cardinality(ev_extra2),
                                  cardinality(ev_extra3), cardinality(ev_extra4)), 0);
BEGIN
    IF coalesce(cardinality(ev_keys), 0) <> n OR array_position(ev_keys, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'every event needs a key that is not NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = format('queue %L: %s keys for %s events', queue_name,
                                  coalesce(cardinality(ev_keys), 0), n);
    END IF;
    PERFORM pg_advisory_xact_lock(l.queue_id, l.h)
       FROM (SELECT DISTINCT q.queue_id, hashtext(k) AS h
               FROM pgq.queue q CROSS JOIN unnest(ev_keys) AS k
              WHERE q.queue_name = insert_event_bulk_by_key.queue_name
              ORDER BY 2) l;
    RETURN QUERY SELECT * FROM pgq.insert_event_bulk(queue_name, ev_types, ev_datas, ev_extra1,
                                                     ev_extra2, ev_extra3, ev_extra4);
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Ticking
-- ---------------------------------------------------------------------------------------------

-- PGQ's tick rule, after the batch cap. More than ticker_max_batch events since the last tick
-- (however short the gap: a ticker restart, a bulk load) are first cut into batches of that
-- many by pgq.catchup_ticker. Then, with new events since the last tick (by event sequence, so
-- rolled-back and in-flight inserts count): tick at ticker_max_count events or ticker_max_lag
-- age. Without: back off, no tick while the lag is under max_lag/2, or under both twice the
-- previous gap and ticker_idle_period. Returns the newest tick id written, or NULL when no tick
-- was written.
--
-- One writer of a queue's ticks at a time: the queue's row is locked first. Two tickers at once
-- (two daemons in a split brain, force_tick beside a daemon, pgqd beside ours) could otherwise
-- give the lower tick id the newer snapshot; a transaction that commits between the two
-- snapshots is then in the batch up to the lower tick and again in the one after the higher
-- tick, and its events come twice. Under the lock each tick's snapshot is taken after the
-- previous tick committed, so snapshots grow with tick ids. The lock is FOR NO KEY UPDATE:
-- producers and consumers only read the row; other tickers, settings changes, table rotation and
-- drop_queue wait for the ticker's transaction. Callers must tick in READ COMMITTED, where every
-- statement takes a new snapshot.
CREATE FUNCTION pgq.ticker(i_queue_name text) RETURNS bigint
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

-- Ticks every queue that is ticked here and not paused; returns how many got a tick.
CREATE FUNCTION pgq.ticker() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ticked bigint := 0;
    qname text;
BEGIN
    FOR qname IN
        SELECT queue_name FROM pgq.queue
         WHERE NOT queue_external_ticker AND NOT queue_ticker_paused
         ORDER BY queue_name
    LOOP
        IF pgq.ticker(qname) > 0 THEN
            ticked := ticked + 1;
        END IF;
    END LOOP;
    RETURN ticked;
END
$$;

-- A tick from an external source (a queue fed from another database).
CREATE FUNCTION pgq.ticker(i_queue_name text, i_tick_id bigint, i_orig_timestamp timestamptz,
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

-- Makes the next pgq.ticker() call tick by pushing the event sequence past ticker_max_count.
-- Returns the newest existing tick id.
CREATE FUNCTION pgq.force_tick(i_queue_name text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
    newest bigint;
BEGIN
    SELECT queue_id, queue_event_seq, queue_ticker_max_count INTO q
      FROM pgq.queue
     WHERE queue_name = i_queue_name AND NOT queue_external_ticker AND NOT queue_ticker_paused;
    IF FOUND THEN
        PERFORM setval(q.queue_event_seq, nextval(q.queue_event_seq) + q.queue_ticker_max_count * 2 + 1000);
    END IF;
    SELECT t.tick_id INTO newest
      FROM pgq.tick t JOIN pgq.queue qq ON qq.queue_id = t.tick_queue
     WHERE qq.queue_name = i_queue_name
     ORDER BY t.tick_queue DESC, t.tick_id DESC LIMIT 1;
    RETURN newest;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Consumers
-- ---------------------------------------------------------------------------------------------

CREATE FUNCTION pgq.register_consumer_at(x_queue_name text, x_consumer_name text, x_tick_pos bigint)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    qid integer;
    cid integer;
    start_tick bigint;
BEGIN
    SELECT queue_id INTO qid FROM pgq.queue WHERE queue_name = x_queue_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Event queue not created yet' USING ERRCODE = 'PQQ01',
            DETAIL = format('queue %L', x_queue_name);
    END IF;
    SELECT co_id INTO cid FROM pgq.consumer WHERE co_name = x_consumer_name FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO pgq.consumer (co_name) VALUES (x_consumer_name) RETURNING co_id INTO cid;
    END IF;
    IF x_tick_pos IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pgq.tick WHERE tick_queue = qid AND tick_id = x_tick_pos) THEN
        RAISE EXCEPTION 'cannot reposition, tick not found: %', x_tick_pos USING ERRCODE = 'PQT02';
    END IF;

    IF EXISTS (SELECT 1 FROM pgq.subscription WHERE sub_queue = qid AND sub_consumer = cid) THEN
        IF x_tick_pos IS NOT NULL THEN
            UPDATE pgq.subscription
               SET sub_last_tick = x_tick_pos, sub_batch = NULL, sub_next_tick = NULL,
                   sub_active = now()
             WHERE sub_queue = qid AND sub_consumer = cid;
        END IF;
        RETURN 0;
    END IF;

    start_tick := x_tick_pos;
    IF start_tick IS NULL THEN
        SELECT tick_id INTO start_tick FROM pgq.tick
         WHERE tick_queue = qid ORDER BY tick_queue DESC, tick_id DESC LIMIT 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'No ticks for this queue.  Please run ticker on database.'
                USING ERRCODE = 'PQT02', DETAIL = format('queue %L', x_queue_name);
        END IF;
    END IF;
    INSERT INTO pgq.subscription (sub_queue, sub_consumer, sub_last_tick)
    VALUES (qid, cid, start_tick);
    RETURN 1;
END
$$;

CREATE FUNCTION pgq.register_consumer(x_queue_name text, x_consumer_id text) RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT pgq.register_consumer_at($1, $2, NULL)
$$;

-- Returns 0 (with no error, as PGQ) when the consumer is not registered. A cooperative
-- sub-consumer (a row sharing its group's sub_id) is removed alone; a whole consumer takes its
-- retry events with it.
CREATE FUNCTION pgq.unregister_consumer(x_queue_name text, x_consumer_name text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
    sharing integer;
BEGIN
    SELECT sub.sub_id, sub.sub_queue, co.co_id,
           (sub.sub_last_tick IS NULL) = (sub.sub_next_tick IS NULL) AS may_be_subconsumer
      INTO s
      FROM pgq.subscription sub
      JOIN pgq.consumer co ON co.co_id = sub.sub_consumer
      JOIN pgq.queue q ON q.queue_id = sub.sub_queue
     WHERE q.queue_name = x_queue_name AND co.co_name = x_consumer_name
       FOR UPDATE OF sub, co;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    SELECT count(*) INTO sharing FROM pgq.subscription WHERE sub_id = s.sub_id;
    IF sharing > 1 AND s.may_be_subconsumer THEN
        DELETE FROM pgq.subscription WHERE sub_id = s.sub_id AND sub_consumer = s.co_id;
        RETURN 1;
    END IF;
    DELETE FROM pgq.retry_queue WHERE ev_owner = s.sub_id;
    DELETE FROM pgq.subscription WHERE sub_id = s.sub_id;
    IF NOT EXISTS (SELECT 1 FROM pgq.subscription WHERE sub_consumer = s.co_id) THEN
        DELETE FROM pgq.consumer WHERE co_id = s.co_id;
    END IF;
    RETURN sharing;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Batches
-- ---------------------------------------------------------------------------------------------

-- The first tick after i_prev_tick_id that is at least i_min_count events or i_min_interval
-- after it (merging small ticks into one batch). NULLs when no such tick exists yet.
CREATE FUNCTION pgq.find_tick_helper(
    IN i_queue_id integer, IN i_prev_tick_id bigint, IN i_prev_tick_time timestamptz,
    IN i_prev_tick_seq bigint, IN i_min_count bigint, IN i_min_interval interval,
    OUT next_tick_id bigint, OUT next_tick_time timestamptz, OUT next_tick_seq bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    newest record;
    enough boolean := false;
    overshot boolean := false;
BEGIN
    SELECT tick_id, tick_time, tick_event_seq INTO newest
      FROM pgq.tick
     WHERE tick_queue = i_queue_id AND tick_id > i_prev_tick_id
     ORDER BY tick_queue DESC, tick_id DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF i_min_count IS NOT NULL THEN
        enough := newest.tick_event_seq - i_prev_tick_seq >= i_min_count;
        overshot := newest.tick_event_seq - i_prev_tick_seq > i_min_count * 2;
    END IF;
    IF i_min_interval IS NOT NULL THEN
        enough := enough OR newest.tick_time - i_prev_tick_time >= i_min_interval;
        overshot := overshot OR newest.tick_time - i_prev_tick_time > i_min_interval * 2;
    END IF;
    IF overshot THEN
        -- the newest tick is far past the threshold: take the first tick that reaches it
        SELECT tick_id, tick_time, tick_event_seq INTO newest
          FROM pgq.tick
         WHERE tick_queue = i_queue_id AND tick_id > i_prev_tick_id
           AND ((i_min_count IS NOT NULL AND tick_event_seq - i_prev_tick_seq >= i_min_count)
                OR (i_min_interval IS NOT NULL AND tick_time - i_prev_tick_time >= i_min_interval))
         ORDER BY tick_queue, tick_id LIMIT 1;
        enough := true;
    END IF;
    IF enough THEN
        next_tick_id := newest.tick_id;
        next_tick_time := newest.tick_time;
        next_tick_seq := newest.tick_event_seq;
    END IF;
END
$$;

CREATE FUNCTION pgq.next_batch_custom(
    IN i_queue_name text, IN i_consumer_name text,
    IN i_min_lag interval, IN i_min_count integer, IN i_min_interval interval,
    OUT batch_id bigint, OUT cur_tick_id bigint, OUT prev_tick_id bigint,
    OUT cur_tick_time timestamptz, OUT prev_tick_time timestamptz,
    OUT cur_tick_event_seq bigint, OUT prev_tick_event_seq bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
BEGIN
    SELECT sub.sub_queue, sub.sub_consumer, sub.sub_batch, sub.sub_last_tick,
           last.tick_id AS last_id, last.tick_time AS last_time, last.tick_event_seq AS last_seq,
           nxt.tick_id AS next_id, nxt.tick_time AS next_time, nxt.tick_event_seq AS next_seq
      INTO s
      FROM pgq.subscription sub
      JOIN pgq.queue q ON q.queue_id = sub.sub_queue
      JOIN pgq.consumer co ON co.co_id = sub.sub_consumer
      LEFT JOIN pgq.tick last ON last.tick_queue = sub.sub_queue AND last.tick_id = sub.sub_last_tick
      LEFT JOIN pgq.tick nxt ON nxt.tick_queue = sub.sub_queue AND nxt.tick_id = sub.sub_next_tick
     WHERE q.queue_name = i_queue_name AND co.co_name = i_consumer_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Not subscriber to queue: %/%', coalesce(i_queue_name, 'NULL'),
            coalesce(i_consumer_name, 'NULL') USING ERRCODE = 'PQC01';
    END IF;
    IF s.last_id IS NULL THEN
        RAISE EXCEPTION 'PgQ corruption: Consumer % on queue % does not see tick %',
            i_consumer_name, i_queue_name, s.sub_last_tick;
    END IF;
    prev_tick_id := s.last_id;
    prev_tick_time := s.last_time;
    prev_tick_event_seq := s.last_seq;

    -- a batch already open: hand it out again
    IF s.sub_batch IS NOT NULL THEN
        batch_id := s.sub_batch;
        cur_tick_id := s.next_id;
        cur_tick_time := s.next_time;
        cur_tick_event_seq := s.next_seq;
        RETURN;
    END IF;

    IF i_min_count IS NULL AND i_min_interval IS NULL THEN
        SELECT tick_id, tick_time, tick_event_seq
          INTO cur_tick_id, cur_tick_time, cur_tick_event_seq
          FROM pgq.tick
         WHERE tick_queue = s.sub_queue AND tick_id > s.last_id
         ORDER BY tick_queue, tick_id LIMIT 1;
    ELSE
        SELECT h.next_tick_id, h.next_tick_time, h.next_tick_seq
          INTO cur_tick_id, cur_tick_time, cur_tick_event_seq
          FROM pgq.find_tick_helper(s.sub_queue, s.last_id, s.last_time, s.last_seq,
                                    i_min_count, i_min_interval) h;
    END IF;
    IF i_min_lag IS NOT NULL AND now() - cur_tick_time < i_min_lag THEN
        cur_tick_id := NULL;
    END IF;
    IF cur_tick_id IS NULL THEN
        cur_tick_time := NULL;
        cur_tick_event_seq := NULL;
        prev_tick_id := NULL;
        prev_tick_time := NULL;
        prev_tick_event_seq := NULL;
        RETURN;
    END IF;

    batch_id := nextval('pgq.batch_id_seq');
    UPDATE pgq.subscription
       SET sub_batch = batch_id, sub_next_tick = cur_tick_id, sub_active = now()
     WHERE sub_queue = s.sub_queue AND sub_consumer = s.sub_consumer;
END
$$;

CREATE FUNCTION pgq.next_batch_info(
    IN i_queue_name text, IN i_consumer_name text,
    OUT batch_id bigint, OUT cur_tick_id bigint, OUT prev_tick_id bigint,
    OUT cur_tick_time timestamptz, OUT prev_tick_time timestamptz,
    OUT cur_tick_event_seq bigint, OUT prev_tick_event_seq bigint)
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM pgq.next_batch_custom(i_queue_name, i_consumer_name, NULL, NULL, NULL)
$$;

CREATE FUNCTION pgq.next_batch(i_queue_name text, i_consumer_name text) RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT batch_id FROM pgq.next_batch_custom(i_queue_name, i_consumer_name, NULL, NULL, NULL)
$$;

CREATE FUNCTION pgq.get_batch_info(
    IN x_batch_id bigint,
    OUT queue_name text, OUT consumer_name text, OUT batch_start timestamptz,
    OUT batch_end timestamptz, OUT prev_tick_id bigint, OUT tick_id bigint, OUT lag interval,
    OUT seq_start bigint, OUT seq_end bigint)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT q.queue_name, co.co_name, prev.tick_time, cur.tick_time, s.sub_last_tick,
           s.sub_next_tick, now() - cur.tick_time, prev.tick_event_seq, cur.tick_event_seq
      FROM pgq.subscription s
      JOIN pgq.queue q ON q.queue_id = s.sub_queue
      JOIN pgq.consumer co ON co.co_id = s.sub_consumer
      JOIN pgq.tick prev ON prev.tick_queue = s.sub_queue AND prev.tick_id = s.sub_last_tick
      JOIN pgq.tick cur ON cur.tick_queue = s.sub_queue AND cur.tick_id = s.sub_next_tick
     WHERE s.sub_batch = x_batch_id
$$;

-- The event tables that can hold a batch's events: the current one, the previous one, or both,
-- depending on where the batch's transactions lie against the last table switch.
-- Custom plans only (here and in batch_event_sql): after five calls PL/pgSQL may switch to a
-- generic plan, which for these tick lookups was 40× slower with large tick snapshots (a
-- 500,000-event outage: 2.5 ms → 100 ms per batch).
CREATE FUNCTION pgq.batch_event_tables(x_batch_id bigint) RETURNS SETOF text
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b record;
    want_prev boolean;
    want_cur boolean;
BEGIN
    SELECT txid_snapshot_xmin(last.tick_snapshot) AS tx_min,
           txid_snapshot_xmax(cur.tick_snapshot) AS tx_max,
           q.queue_data_pfx, q.queue_ntables, q.queue_cur_table,
           q.queue_switch_step1, q.queue_switch_step2
      INTO b
      FROM pgq.subscription s
      JOIN pgq.queue q ON q.queue_id = s.sub_queue
      JOIN pgq.tick last ON last.tick_queue = s.sub_queue AND last.tick_id = s.sub_last_tick
      JOIN pgq.tick cur ON cur.tick_queue = s.sub_queue AND cur.tick_id = s.sub_next_tick
     WHERE s.sub_batch = x_batch_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Cannot find data for batch %', x_batch_id USING ERRCODE = 'PQB01';
    END IF;
    -- every transaction of the batch ended before the switch started: only the old table
    want_prev := true;
    want_cur := true;
    IF b.tx_max < b.queue_switch_step1 THEN
        want_cur := false;
    ELSIF b.queue_switch_step2 IS NOT NULL AND b.tx_min > b.queue_switch_step2 THEN
        -- every transaction of the batch started after the switch finished: only the new table
        want_prev := false;
    END IF;
    IF want_prev THEN
        RETURN NEXT b.queue_data_pfx || '_'
            || CASE WHEN b.queue_cur_table = 0 THEN b.queue_ntables - 1 ELSE b.queue_cur_table - 1 END;
    END IF;
    IF want_cur THEN
        RETURN NEXT b.queue_data_pfx || '_' || b.queue_cur_table;
    END IF;
END
$$;

-- The SQL that reads a batch's events in ev_id order: events of transactions visible in the
-- batch's end tick and not in its start tick, plus this consumer's retried events.
CREATE FUNCTION pgq.batch_event_sql(x_batch_id bigint) RETURNS text
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

CREATE FUNCTION pgq.get_batch_events(
    IN x_batch_id bigint,
    OUT ev_id bigint, OUT ev_time timestamptz, OUT ev_txid bigint, OUT ev_retry integer,
    OUT ev_type text, OUT ev_data text,
    OUT ev_extra1 text, OUT ev_extra2 text, OUT ev_extra3 text, OUT ev_extra4 text)
RETURNS SETOF record
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE pgq.batch_event_sql(x_batch_id);
END
$$;

-- Opens a cursor named i_cursor_name over the batch's events (optionally filtered by
-- i_extra_where, an SQL condition on the event columns) and returns its first i_quick_limit rows.
CREATE FUNCTION pgq.get_batch_cursor(
    IN i_batch_id bigint, IN i_cursor_name text, IN i_quick_limit integer, IN i_extra_where text,
    OUT ev_id bigint, OUT ev_time timestamptz, OUT ev_txid bigint, OUT ev_retry integer,
    OUT ev_type text, OUT ev_data text,
    OUT ev_extra1 text, OUT ev_extra2 text, OUT ev_extra3 text, OUT ev_extra4 text)
RETURNS SETOF record
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    query text;
BEGIN
    IF i_batch_id IS NULL OR i_cursor_name IS NULL OR i_quick_limit IS NULL THEN
        RETURN;
    END IF;
    query := pgq.batch_event_sql(i_batch_id);
    IF i_extra_where IS NOT NULL THEN
        query := 'SELECT * FROM (' || left(query, -length(' ORDER BY 1')) || ') evs WHERE '
            || i_extra_where || ' ORDER BY 1';
    END IF;
    EXECUTE 'DECLARE ' || quote_ident(i_cursor_name) || ' NO SCROLL CURSOR FOR ' || query;
    IF i_quick_limit > 0 THEN
        RETURN QUERY EXECUTE 'FETCH ' || i_quick_limit || ' FROM ' || quote_ident(i_cursor_name);
    END IF;
END
$$;

CREATE FUNCTION pgq.get_batch_cursor(
    IN i_batch_id bigint, IN i_cursor_name text, IN i_quick_limit integer,
    OUT ev_id bigint, OUT ev_time timestamptz, OUT ev_txid bigint, OUT ev_retry integer,
    OUT ev_type text, OUT ev_data text,
    OUT ev_extra1 text, OUT ev_extra2 text, OUT ev_extra3 text, OUT ev_extra4 text)
RETURNS SETOF record
LANGUAGE sql STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM pgq.get_batch_cursor(i_batch_id, i_cursor_name, i_quick_limit, NULL)
$$;

-- Hands one event of the batch back, for this consumer only, to come again after x_retry_time.
-- Returns 0 when it is already queued for retry.
CREATE FUNCTION pgq.event_retry(x_batch_id bigint, x_event_id bigint, x_retry_time timestamptz)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgq.subscription WHERE sub_batch = x_batch_id) THEN
        RAISE EXCEPTION 'event not found' USING ERRCODE = 'PQB01',
            DETAIL = format('batch %s is not open', x_batch_id);
    END IF;
    INSERT INTO pgq.retry_queue (ev_retry_after, ev_queue, ev_id, ev_time, ev_txid, ev_owner,
                                 ev_retry, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3,
                                 ev_extra4)
    SELECT x_retry_time, s.sub_queue, e.ev_id, e.ev_time, NULL, s.sub_id,
           coalesce(e.ev_retry, 0) + 1, e.ev_type, e.ev_data, e.ev_extra1, e.ev_extra2,
           e.ev_extra3, e.ev_extra4
      FROM pgq.get_batch_events(x_batch_id) e, pgq.subscription s
     WHERE s.sub_batch = x_batch_id AND e.ev_id = x_event_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event not found' USING ERRCODE = 'PQE01',
            DETAIL = format('event %s is not in batch %s', x_event_id, x_batch_id);
    END IF;
    RETURN 1;
EXCEPTION WHEN unique_violation THEN
    RETURN 0;
END
$$;

CREATE FUNCTION pgq.event_retry(x_batch_id bigint, x_event_id bigint, x_retry_seconds integer)
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT pgq.event_retry(x_batch_id, x_event_id,
                           now() + make_interval(secs => x_retry_seconds))
$$;

-- Hands every event of the batch back for retry; returns how many were queued.
CREATE FUNCTION pgq.batch_retry(i_batch_id bigint, i_retry_seconds integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
    queued integer;
BEGIN
    SELECT sub_id, sub_queue INTO s FROM pgq.subscription WHERE sub_batch = i_batch_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch_retry: batch % not found', i_batch_id USING ERRCODE = 'PQB01';
    END IF;
    INSERT INTO pgq.retry_queue (ev_retry_after, ev_queue, ev_id, ev_time, ev_txid, ev_owner,
                                 ev_retry, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3,
                                 ev_extra4)
    SELECT DISTINCT now() + make_interval(secs => i_retry_seconds), s.sub_queue, e.ev_id,
           e.ev_time, NULL::bigint, s.sub_id, coalesce(e.ev_retry, 0) + 1, e.ev_type, e.ev_data,
           e.ev_extra1, e.ev_extra2, e.ev_extra3, e.ev_extra4
      FROM pgq.get_batch_events(i_batch_id) e
     WHERE NOT EXISTS (SELECT 1 FROM pgq.retry_queue rq
                        WHERE rq.ev_owner = s.sub_id AND rq.ev_id = e.ev_id);
    GET DIAGNOSTICS queued = ROW_COUNT;
    RETURN queued;
END
$$;

-- Closes the batch: the consumer's position moves to the batch's end tick. Returns 0 with a
-- WARNING (as PGQ) when the batch is unknown or already finished.
CREATE FUNCTION pgq.finish_batch(x_batch_id bigint) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE pgq.subscription
       SET sub_active = now(), sub_last_tick = sub_next_tick, sub_next_tick = NULL,
           sub_batch = NULL
     WHERE sub_batch = x_batch_id;
    IF NOT FOUND THEN
        RAISE WARNING 'finish_batch: batch % not found', x_batch_id;
        RETURN 0;
    END IF;
    RETURN 1;
END
$$;

-- Puts an event straight into a consumer's retry queue (used by tools that move events).
CREATE FUNCTION pgq.event_retry_raw(
    x_queue text, x_consumer text, x_retry_after timestamptz, x_ev_id bigint,
    x_ev_time timestamptz, x_ev_retry integer, x_ev_type text, x_ev_data text,
    x_ev_extra1 text, x_ev_extra2 text, x_ev_extra3 text, x_ev_extra4 text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
    new_id bigint := x_ev_id;
BEGIN
    SELECT sub.sub_id, sub.sub_queue, q.queue_event_seq INTO s
      FROM pgq.subscription sub
      JOIN pgq.queue q ON q.queue_id = sub.sub_queue
      JOIN pgq.consumer co ON co.co_id = sub.sub_consumer
     WHERE q.queue_name = x_queue AND co.co_name = x_consumer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer not registered' USING ERRCODE = 'PQC01',
            DETAIL = format('consumer %L on queue %L', x_consumer, x_queue);
    END IF;
    IF new_id IS NULL THEN
        new_id := nextval(s.queue_event_seq);
    END IF;
    INSERT INTO pgq.retry_queue (ev_retry_after, ev_queue, ev_id, ev_time, ev_owner, ev_retry,
                                 ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4)
    VALUES (x_retry_after, s.sub_queue, new_id, x_ev_time, s.sub_id, x_ev_retry, x_ev_type,
            x_ev_data, x_ev_extra1, x_ev_extra2, x_ev_extra3, x_ev_extra4);
    RETURN new_id;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Information
-- ---------------------------------------------------------------------------------------------

CREATE FUNCTION pgq.get_queue_info(
    IN i_queue_name text,
    OUT queue_name text, OUT queue_ntables integer, OUT queue_cur_table integer,
    OUT queue_rotation_period interval, OUT queue_switch_time timestamptz,
    OUT queue_external_ticker boolean, OUT queue_ticker_paused boolean,
    OUT queue_ticker_max_count integer, OUT queue_ticker_max_lag interval,
    OUT queue_ticker_idle_period interval, OUT ticker_lag interval, OUT ev_per_sec float8,
    OUT ev_new bigint, OUT last_tick_id bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT q.queue_name, q.queue_ntables, q.queue_cur_table, q.queue_rotation_period,
           q.queue_switch_time, q.queue_external_ticker, q.queue_ticker_paused,
           q.queue_ticker_max_count, q.queue_ticker_max_lag, q.queue_ticker_idle_period,
           now() - top.tick_time,
           -- event rate over the last 20 ticks
           CASE WHEN old.tick_time < top.tick_time
                THEN (top.tick_event_seq - old.tick_event_seq)
                     / extract(epoch FROM top.tick_time - old.tick_time)::float8
           END,
           pgq._event_seq_value(q.queue_event_seq) - top.tick_event_seq,
           top.tick_id
      FROM pgq.queue q
      LEFT JOIN LATERAL (
            SELECT t.tick_id, t.tick_time, t.tick_event_seq FROM pgq.tick t
             WHERE t.tick_queue = q.queue_id
             ORDER BY t.tick_queue DESC, t.tick_id DESC LIMIT 1) top ON true
      LEFT JOIN LATERAL (
            SELECT t.tick_time, t.tick_event_seq FROM pgq.tick t
             WHERE t.tick_queue = q.queue_id AND t.tick_id >= top.tick_id - 20
             ORDER BY t.tick_queue, t.tick_id LIMIT 1) old ON true
     WHERE i_queue_name IS NULL OR q.queue_name = i_queue_name
     ORDER BY q.queue_name
$$;

CREATE FUNCTION pgq.get_queue_info(
    OUT queue_name text, OUT queue_ntables integer, OUT queue_cur_table integer,
    OUT queue_rotation_period interval, OUT queue_switch_time timestamptz,
    OUT queue_external_ticker boolean, OUT queue_ticker_paused boolean,
    OUT queue_ticker_max_count integer, OUT queue_ticker_max_lag interval,
    OUT queue_ticker_idle_period interval, OUT ticker_lag interval, OUT ev_per_sec float8,
    OUT ev_new bigint, OUT last_tick_id bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM pgq.get_queue_info(NULL) $$;

CREATE FUNCTION pgq.get_consumer_info(
    IN i_queue_name text, IN i_consumer_name text,
    OUT queue_name text, OUT consumer_name text, OUT lag interval, OUT last_seen interval,
    OUT last_tick bigint, OUT current_batch bigint, OUT next_tick bigint,
    OUT pending_events bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT q.queue_name, co.co_name, now() - t.tick_time, now() - s.sub_active,
           s.sub_last_tick, s.sub_batch, s.sub_next_tick,
           (SELECT top.tick_event_seq FROM pgq.tick top
             WHERE top.tick_queue = s.sub_queue
             ORDER BY top.tick_queue DESC, top.tick_id DESC LIMIT 1) - t.tick_event_seq
      FROM pgq.subscription s
      JOIN pgq.queue q ON q.queue_id = s.sub_queue
      JOIN pgq.consumer co ON co.co_id = s.sub_consumer
      LEFT JOIN pgq.tick t ON t.tick_queue = s.sub_queue AND t.tick_id = s.sub_last_tick
     WHERE (i_queue_name IS NULL OR q.queue_name = i_queue_name)
       AND (i_consumer_name IS NULL OR co.co_name = i_consumer_name)
     ORDER BY 1, 2
$$;

CREATE FUNCTION pgq.get_consumer_info(
    IN i_queue_name text,
    OUT queue_name text, OUT consumer_name text, OUT lag interval, OUT last_seen interval,
    OUT last_tick bigint, OUT current_batch bigint, OUT next_tick bigint,
    OUT pending_events bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM pgq.get_consumer_info(i_queue_name, NULL) $$;

CREATE FUNCTION pgq.get_consumer_info(
    OUT queue_name text, OUT consumer_name text, OUT lag interval, OUT last_seen interval,
    OUT last_tick bigint, OUT current_batch bigint, OUT next_tick bigint,
    OUT pending_events bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM pgq.get_consumer_info(NULL, NULL) $$;

-- New: the backlog per queue, for an operator after the ticker was down. events_since_tick is
-- the event-sequence distance from the newest tick (it counts rolled-back inserts too).
CREATE FUNCTION pgq.get_queue_backlog(
    IN i_queue_name text DEFAULT NULL,
    OUT queue_name text, OUT newest_tick_id bigint, OUT newest_tick_time timestamptz,
    OUT tick_age interval, OUT events_since_tick bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT q.queue_name, top.tick_id, top.tick_time, now() - top.tick_time,
           pgq._event_seq_value(q.queue_event_seq) - top.tick_event_seq
      FROM pgq.queue q
      LEFT JOIN LATERAL (
            SELECT t.tick_id, t.tick_time, t.tick_event_seq FROM pgq.tick t
             WHERE t.tick_queue = q.queue_id
             ORDER BY t.tick_queue DESC, t.tick_id DESC LIMIT 1) top ON true
     WHERE i_queue_name IS NULL OR q.queue_name = i_queue_name
     ORDER BY q.queue_name
$$;

-- New: the backlog per consumer: ticks and events between its position and the newest tick.
CREATE FUNCTION pgq.get_consumer_backlog(
    IN i_queue_name text DEFAULT NULL, IN i_consumer_name text DEFAULT NULL,
    OUT queue_name text, OUT consumer_name text, OUT last_tick_id bigint,
    OUT last_tick_time timestamptz, OUT lag interval, OUT pending_ticks bigint,
    OUT pending_events bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT q.queue_name, co.co_name, s.sub_last_tick, last.tick_time, now() - last.tick_time,
           (SELECT count(*) FROM pgq.tick t
             WHERE t.tick_queue = s.sub_queue AND t.tick_id > s.sub_last_tick),
           top.tick_event_seq - last.tick_event_seq
      FROM pgq.subscription s
      JOIN pgq.queue q ON q.queue_id = s.sub_queue
      JOIN pgq.consumer co ON co.co_id = s.sub_consumer
      LEFT JOIN pgq.tick last ON last.tick_queue = s.sub_queue AND last.tick_id = s.sub_last_tick
      LEFT JOIN LATERAL (
            SELECT t.tick_event_seq FROM pgq.tick t
             WHERE t.tick_queue = s.sub_queue
             ORDER BY t.tick_queue DESC, t.tick_id DESC LIMIT 1) top ON true
     WHERE (i_queue_name IS NULL OR q.queue_name = i_queue_name)
       AND (i_consumer_name IS NULL OR co.co_name = i_consumer_name)
       AND s.sub_last_tick IS NOT NULL
     ORDER BY 1, 2
$$;

-- New: the exact backlog of each consumer, the committed events it will still receive, counted
-- row by row in the queue's event tables through their ev_txid index, by transaction visibility
-- against the snapshot of its position: `ticked_events` up to the newest tick,
-- `unticked_events` committed after it (not cut into a batch yet), `retry_events` its events in
-- the retry queue. Transactions still running are not counted (they may roll back). A consumer
-- holding a batch counts from the batch's start; a cooperative group counts from the group's
-- position. It reads the whole backlog: for an operator, not for every metrics scrape
-- (pgq.get_consumer_backlog estimates from tick positions).
CREATE FUNCTION pgq.get_consumer_backlog_exact(
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

-- ---------------------------------------------------------------------------------------------
-- Maintenance
-- ---------------------------------------------------------------------------------------------

-- Re-inserts due retry events into their queues (at most 10 per call; call until it returns 0).
-- Each queue's events move in a subtransaction of their own: a queue whose insert fails (a
-- broken queue) is passed over with a WARNING, and the other queues' events still move.
CREATE FUNCTION pgq.maint_retry_events() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    moved integer := 0;
    of_queue integer;
    q record;
    r record;
BEGIN
    LOCK TABLE pgq.retry_queue IN SHARE UPDATE EXCLUSIVE MODE;
    FOR q IN
        SELECT rq.ev_queue, min(rq.ev_retry_after) AS first_due
          FROM pgq.retry_queue rq
         WHERE rq.ev_retry_after <= now()
         GROUP BY rq.ev_queue
         ORDER BY 2, 1
    LOOP
        EXIT WHEN moved >= 10;
        of_queue := 0;
        BEGIN
            FOR r IN
                SELECT qq.queue_name, rq.ev_id, rq.ev_time, rq.ev_owner, rq.ev_retry, rq.ev_type,
                       rq.ev_data, rq.ev_extra1, rq.ev_extra2, rq.ev_extra3, rq.ev_extra4
                  FROM pgq.retry_queue rq JOIN pgq.queue qq ON qq.queue_id = rq.ev_queue
                 WHERE rq.ev_queue = q.ev_queue AND rq.ev_retry_after <= now()
                 ORDER BY rq.ev_retry_after
                 LIMIT 10 - moved
            LOOP
                PERFORM pgq.insert_event_raw(r.queue_name, r.ev_id, r.ev_time, r.ev_owner,
                                             r.ev_retry, r.ev_type, r.ev_data, r.ev_extra1,
                                             r.ev_extra2, r.ev_extra3, r.ev_extra4);
                DELETE FROM pgq.retry_queue WHERE ev_owner = r.ev_owner AND ev_id = r.ev_id;
                of_queue := of_queue + 1;
            END LOOP;
            moved := moved + of_queue;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'maint_retry_events: the retry events of queue % stay: %',
                q.ev_queue, SQLERRM;
        END;
    END LOOP;
    RETURN moved;
END
$$;

-- Rotation, step 1: when the rotation period has passed and every consumer has moved past the
-- previous switch, empty the next table with TRUNCATE and make it current. Old ticks that no
-- batch can need any more are deleted.
CREATE FUNCTION pgq.maint_rotate_tables_step1(i_queue_name text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q record;
    oldest_tick bigint;
    oldest_xmin bigint;
    next_table integer;
BEGIN
    SELECT * INTO q FROM pgq.queue
     WHERE queue_name = i_queue_name
       AND queue_rotation_period IS NOT NULL
       AND queue_switch_step2 IS NOT NULL
       AND queue_switch_time + queue_rotation_period < now()
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    IF txid_current() < q.queue_switch_step1 THEN
        RAISE EXCEPTION 'queue % maint failure: step1=%, current=%',
            i_queue_name, q.queue_switch_step1, txid_current();
    END IF;

    SELECT min(sub_last_tick) INTO oldest_tick FROM pgq.subscription WHERE sub_queue = q.queue_id;
    IF oldest_tick IS NOT NULL THEN
        SELECT txid_snapshot_xmin(tick_snapshot) INTO oldest_xmin
          FROM pgq.tick WHERE tick_queue = q.queue_id AND tick_id = oldest_tick;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'queue % maint failure: tick % not found', i_queue_name, oldest_tick;
        END IF;
        -- a consumer may still read the table that would be emptied
        IF oldest_xmin <= q.queue_switch_step2 THEN
            RETURN 0;
        END IF;
    END IF;

    next_table := (q.queue_cur_table + 1) % q.queue_ntables;
    BEGIN
        EXECUTE 'LOCK TABLE ' || pgq.quote_fqname(q.queue_data_pfx || '_' || next_table) || ' NOWAIT';
        EXECUTE 'TRUNCATE ' || pgq.quote_fqname(q.queue_data_pfx || '_' || next_table);
    EXCEPTION WHEN lock_not_available THEN
        -- a reader holds it; try again at the next maintenance round
        RETURN 0;
    END;
    UPDATE pgq.queue
       SET queue_cur_table = next_table, queue_switch_time = now(),
           queue_switch_step1 = txid_current(), queue_switch_step2 = NULL
     WHERE queue_id = q.queue_id;
    DELETE FROM pgq.tick
     WHERE tick_queue = q.queue_id AND txid_snapshot_xmin(tick_snapshot) < q.queue_switch_step2;
    RETURN 0;
END
$$;

-- Rotation, step 2, in a separate transaction: records the txid after which every new
-- transaction writes to the new table.
CREATE FUNCTION pgq.maint_rotate_tables_step2() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE pgq.queue SET queue_switch_step2 = txid_current() WHERE queue_switch_step2 IS NULL;
    RETURN 0;
END
$$;

-- Whether a maintenance daemon may call i_name, 'schema.function': the function lives in the
-- pgq, pgq_node or londiste schema, and that schema and every function of that name in it belong
-- to the owner of schema pgq. Whoever owns a database can create a schema named londiste in it;
-- a daemon, often a superuser, must not run their code.
CREATE FUNCTION pgq._maint_trusted(i_name text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(bool_and(p.proowner = own.nspowner AND n.nspowner = own.nspowner), false)
      FROM pg_namespace own, pg_namespace n
      JOIN pg_proc p ON p.pronamespace = n.oid
     WHERE own.nspname = 'pgq'
       AND n.nspname IN ('pgq', 'pgq_node', 'londiste')
       AND n.nspname || '.' || p.proname = i_name
$$;

-- The queue's own tables that need an explicit VACUUM (only when autovacuum is off), among those
-- that belong to the owner of schema pgq.
CREATE FUNCTION pgq.maint_tables_to_vacuum() RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.nspname || '.' || c.relname
      FROM (VALUES (1, 'pgq', 'subscription'), (2, 'pgq', 'consumer'), (3, 'pgq', 'queue'),
                   (4, 'pgq', 'tick'), (5, 'pgq', 'retry_queue'),
                   (6, 'pgq_ext', 'completed_tick'), (7, 'pgq_ext', 'completed_batch'),
                   (8, 'pgq_ext', 'completed_event'), (9, 'pgq_ext', 'partial_batch'),
                   (10, 'pgq_node', 'local_state'), (11, 'londiste', 'seq_info'),
                   (12, 'txid', 'epoch'), (13, 'londiste', 'completed')) AS v(ord, scm, tbl)
      JOIN pg_namespace n ON n.nspname = v.scm
      JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = v.tbl
      JOIN pg_namespace own ON own.nspname = 'pgq' AND own.nspowner = c.relowner
     WHERE current_setting('autovacuum') <> 'on'
     ORDER BY v.ord
$$;

-- What a maintenance daemon should run now, one (function, argument) pair per row, in order.
-- Functions named in queue_extra_maint, and the hooks of the PGQ tools that may share this
-- database, are listed only when pgq._maint_trusted says so.
CREATE FUNCTION pgq.maint_operations(OUT func_name text, OUT func_arg text)
RETURNS SETOF record
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rotations integer := 0;
    ops text[];
BEGIN
    func_name := 'pgq.maint_rotate_tables_step1';
    FOR func_arg IN
        SELECT queue_name FROM pgq.queue
         WHERE queue_rotation_period IS NOT NULL AND queue_switch_step2 IS NOT NULL
           AND queue_switch_time + queue_rotation_period < now()
         ORDER BY 1
    LOOP
        rotations := rotations + 1;
        RETURN NEXT;
    END LOOP;
    IF rotations = 0 THEN
        SELECT count(*) INTO rotations FROM pgq.queue
         WHERE queue_rotation_period IS NOT NULL AND queue_switch_step2 IS NULL;
    END IF;
    IF rotations > 0 THEN
        func_name := 'pgq.maint_rotate_tables_step2';
        func_arg := NULL;
        RETURN NEXT;
    END IF;

    FOR func_arg, ops IN
        SELECT queue_name, queue_extra_maint FROM pgq.queue
         WHERE queue_extra_maint IS NOT NULL ORDER BY 1
    LOOP
        FOREACH func_name IN ARRAY ops LOOP
            IF pgq._maint_trusted(func_name) THEN
                RETURN NEXT;
            END IF;
        END LOOP;
    END LOOP;

    func_name := 'vacuum';
    FOR func_arg IN SELECT * FROM pgq.maint_tables_to_vacuum() LOOP
        RETURN NEXT;
    END LOOP;

    IF pgq._maint_trusted('pgq_node.maint_watermark') THEN
        func_name := 'pgq_node.maint_watermark';
        FOR func_arg IN EXECUTE
            'SELECT queue_name FROM pgq_node.node_info WHERE node_type = ''root'''
        LOOP
            RETURN NEXT;
        END LOOP;
    END IF;
    IF pgq._maint_trusted('londiste.root_check_seqs')
       AND pgq._maint_trusted('pgq_node.maint_watermark') THEN
        func_name := 'londiste.root_check_seqs';
        FOR func_arg IN EXECUTE
            'SELECT DISTINCT s.queue_name FROM londiste.seq_info s, pgq_node.node_info n'
            ' WHERE s.local AND n.node_type = ''root'' AND n.queue_name = s.queue_name'
        LOOP
            RETURN NEXT;
        END LOOP;
    END IF;
    IF pgq._maint_trusted('londiste.periodic_maintenance') THEN
        func_name := 'londiste.periodic_maintenance';
        func_arg := NULL;
        RETURN NEXT;
    END IF;
END
$$;

CREATE FUNCTION pgq._notify_tick() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('pgq_tick', q.queue_name) FROM pgq.queue q WHERE q.queue_id = NEW.tick_queue;
    RETURN NULL;
END
$$;
-- The subscription of (queue, consumer): its queue and sub_id; PQF01 when there is none.
CREATE FUNCTION pgq._failed_owner(x_queue_name text, x_consumer_name text,
                                  OUT queue_id integer, OUT sub_id integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    SELECT s.sub_queue, s.sub_id INTO queue_id, sub_id
      FROM pgq.queue q
      JOIN pgq.subscription s ON s.sub_queue = q.queue_id
      JOIN pgq.consumer c ON c.co_id = s.sub_consumer
     WHERE q.queue_name = x_queue_name AND c.co_name = x_consumer_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer % not registered on queue %', x_consumer_name, x_queue_name
            USING ERRCODE = 'PQF01';
    END IF;
END
$$;

-- Moves one event of the batch into the failed queue with the reason. Returns 1, or 0 when the
-- event is in the failed queue already.
CREATE FUNCTION pgq.event_failed(x_batch_id bigint, x_event_id bigint, x_reason text)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgq.subscription WHERE sub_batch = x_batch_id) THEN
        RAISE EXCEPTION 'batch % not found', x_batch_id USING ERRCODE = 'PQB01';
    END IF;
    INSERT INTO pgq.failed_queue (ev_failed_reason, ev_queue, ev_id, ev_time, ev_txid, ev_owner,
                                  ev_retry, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3,
                                  ev_extra4)
    SELECT coalesce(x_reason, ''), s.sub_queue, e.ev_id, e.ev_time, e.ev_txid, s.sub_id,
           e.ev_retry, e.ev_type, e.ev_data, e.ev_extra1, e.ev_extra2, e.ev_extra3, e.ev_extra4
      FROM pgq.get_batch_events(x_batch_id) e, pgq.subscription s
     WHERE s.sub_batch = x_batch_id AND e.ev_id = x_event_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event % not found in batch %', x_event_id, x_batch_id
            USING ERRCODE = 'PQE01';
    END IF;
    RETURN 1;
EXCEPTION WHEN unique_violation THEN
    RETURN 0;
END
$$;

-- The consumer's failed events, oldest failure first.
CREATE FUNCTION pgq.failed_event_list(
    x_queue_name text, x_consumer_name text,
    OUT ev_failed_reason text, OUT ev_failed_time timestamptz, OUT ev_id bigint,
    OUT ev_time timestamptz, OUT ev_txid bigint, OUT ev_owner integer, OUT ev_retry integer,
    OUT ev_type text, OUT ev_data text, OUT ev_extra1 text, OUT ev_extra2 text,
    OUT ev_extra3 text, OUT ev_extra4 text)
RETURNS SETOF record
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o record;
BEGIN
    o := pgq._failed_owner(x_queue_name, x_consumer_name);
    RETURN QUERY
        SELECT f.ev_failed_reason, f.ev_failed_time, f.ev_id, f.ev_time, f.ev_txid, f.ev_owner,
               f.ev_retry, f.ev_type, f.ev_data, f.ev_extra1, f.ev_extra2, f.ev_extra3,
               f.ev_extra4
          FROM pgq.failed_queue f
         WHERE f.ev_queue = o.queue_id AND f.ev_owner = o.sub_id
         ORDER BY f.ev_failed_time, f.ev_id;
END
$$;

-- How many failed events the consumer has.
CREATE FUNCTION pgq.failed_event_count(x_queue_name text, x_consumer_name text)
RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o record;
    n integer;
BEGIN
    o := pgq._failed_owner(x_queue_name, x_consumer_name);
    SELECT count(*) INTO n
      FROM pgq.failed_queue f
     WHERE f.ev_queue = o.queue_id AND f.ev_owner = o.sub_id;
    RETURN n;
END
$$;

-- Deletes one failed event. Returns 1, or 0 when the consumer has no such failed event.
CREATE FUNCTION pgq.failed_event_delete(x_queue_name text, x_consumer_name text,
                                        x_event_id bigint)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o record;
BEGIN
    o := pgq._failed_owner(x_queue_name, x_consumer_name);
    DELETE FROM pgq.failed_queue f
     WHERE f.ev_queue = o.queue_id AND f.ev_owner = o.sub_id AND f.ev_id = x_event_id;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    RETURN 1;
END
$$;

-- Requeues one failed event for the consumer: it moves to the retry queue, due now, with a
-- fresh retry count, and the next maintenance run delivers it to this consumer again. Returns
-- 1, or 0 when the consumer has no such failed event or it is in the retry queue already.
CREATE FUNCTION pgq.failed_event_retry(x_queue_name text, x_consumer_name text,
                                       x_event_id bigint)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o record;
BEGIN
    o := pgq._failed_owner(x_queue_name, x_consumer_name);
    INSERT INTO pgq.retry_queue (ev_retry_after, ev_queue, ev_id, ev_time, ev_txid, ev_owner,
                                 ev_retry, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3,
                                 ev_extra4)
    SELECT now(), f.ev_queue, f.ev_id, f.ev_time, NULL, f.ev_owner, 0, f.ev_type, f.ev_data,
           f.ev_extra1, f.ev_extra2, f.ev_extra3, f.ev_extra4
      FROM pgq.failed_queue f
     WHERE f.ev_queue = o.queue_id AND f.ev_owner = o.sub_id AND f.ev_id = x_event_id
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    DELETE FROM pgq.failed_queue f
     WHERE f.ev_queue = o.queue_id AND f.ev_owner = o.sub_id AND f.ev_id = x_event_id;
    RETURN 1;
END
$$;

-- Failed events go with the last subscription of their sub_id (unregister_consumer).
CREATE FUNCTION pgq._failed_queue_cleanup() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM pgq.failed_queue f
     WHERE f.ev_queue = OLD.sub_queue AND f.ev_owner = OLD.sub_id
       AND NOT EXISTS (SELECT 1 FROM pgq.subscription s
                        WHERE s.sub_queue = OLD.sub_queue AND s.sub_id = OLD.sub_id);
    RETURN NULL;
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
CREATE FUNCTION pgq.catchup_ticker(i_queue_name text) RETURNS integer
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
CREATE FUNCTION pgq.catchup_ticker() RETURNS bigint
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

-- ---------------------------------------------------------------------------------------------
-- Triggers
-- ---------------------------------------------------------------------------------------------

CREATE TRIGGER tick_notify AFTER INSERT ON pgq.tick
    FOR EACH ROW EXECUTE FUNCTION pgq._notify_tick();

CREATE TRIGGER failed_queue_cleanup AFTER DELETE ON pgq.subscription
    FOR EACH ROW EXECUTE FUNCTION pgq._failed_queue_cleanup();

DO $generate$ BEGIN PERFORM pgq._rebuild_insert_functions(); END $generate$;

-- ---------------------------------------------------------------------------------------------
-- Privileges (PGQ's model: public reads metadata, readers consume, writers produce, admins
-- administer through functions; nobody but the owner writes the meta tables)
-- ---------------------------------------------------------------------------------------------

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgq FROM public;
REVOKE ALL ON ALL TABLES IN SCHEMA pgq FROM public;
GRANT USAGE ON SCHEMA pgq TO public;

GRANT EXECUTE ON FUNCTION
    pgq.seq_getval(text), pgq._event_seq_value(text), pgq.quote_fqname(text), pgq.version(),
    pgq.get_queue_info(), pgq.get_queue_info(text),
    pgq.get_consumer_info(), pgq.get_consumer_info(text), pgq.get_consumer_info(text, text),
    pgq.get_queue_backlog(text), pgq.get_consumer_backlog(text, text)
  TO public;

GRANT EXECUTE ON FUNCTION
    pgq.batch_event_sql(bigint), pgq.batch_event_tables(bigint),
    pgq.find_tick_helper(integer, bigint, timestamptz, bigint, bigint, interval),
    pgq.register_consumer(text, text), pgq.register_consumer_at(text, text, bigint),
    pgq.unregister_consumer(text, text),
    pgq.next_batch_info(text, text), pgq.next_batch(text, text),
    pgq.next_batch_custom(text, text, interval, integer, interval),
    pgq.get_batch_events(bigint), pgq.get_batch_info(bigint),
    pgq.get_batch_cursor(bigint, text, integer, text), pgq.get_batch_cursor(bigint, text, integer),
    pgq.event_retry(bigint, bigint, timestamptz), pgq.event_retry(bigint, bigint, integer),
    pgq.batch_retry(bigint, integer), pgq.force_tick(text), pgq.finish_batch(bigint),
    pgq.get_consumer_backlog_exact(text, text),
    pgq.event_failed(bigint, bigint, text), pgq.failed_event_list(text, text),
    pgq.failed_event_count(text, text)
  TO pgq_reader;

GRANT EXECUTE ON FUNCTION
    pgq.insert_event(text, text, text), pgq.insert_event(text, text, text, text, text, text, text),
    pgq.insert_event_bulk(text, text[], text[], text[], text[], text[], text[]),
    pgq.insert_event_by_key(text, text, text, text, text, text, text, text),
    pgq.insert_event_bulk_by_key(text, text[], text[], text[], text[], text[], text[], text[]),
    pgq.current_event_table(text)
  TO pgq_writer;

GRANT EXECUTE ON FUNCTION
    pgq.ticker(text, bigint, timestamptz, bigint), pgq.ticker(text), pgq.ticker(),
    pgq.catchup_ticker(text), pgq.catchup_ticker(),
    pgq.maint_retry_events(), pgq.maint_rotate_tables_step1(text),
    pgq.maint_rotate_tables_step2(), pgq.maint_tables_to_vacuum(), pgq.maint_operations(),
    pgq._maint_trusted(text), pgq.upgrade_schema(),
    pgq.grant_perms(text), pgq._grant_perms_from(text, text, text, text), pgq.tune_storage(text),
    pgq.seq_setval(text, bigint), pgq.create_queue(text), pgq.drop_queue(text, boolean),
    pgq.drop_queue(text), pgq.set_queue_config(text, text, text),
    pgq.insert_event_raw(text, bigint, timestamptz, integer, integer, text, text, text, text,
                         text, text),
    pgq.event_retry_raw(text, text, timestamptz, bigint, timestamptz, integer, text, text, text,
                        text, text, text),
    pgq._count_tx_events(integer, text, integer, bigint),
    pgq.failed_event_delete(text, text, bigint), pgq.failed_event_retry(text, text, bigint)
  TO pgq_admin;

GRANT SELECT ON TABLE pgq.event_template TO pgq_reader;
GRANT SELECT, INSERT, TRUNCATE ON TABLE pgq.event_template TO pgq_admin;
GRANT SELECT ON TABLE pgq.consumer, pgq.queue, pgq.tick, pgq.subscription TO public;
GRANT SELECT ON TABLE pgq.consumer, pgq.queue, pgq.tick, pgq.subscription, pgq.retry_queue,
    pgq.failed_queue TO pgq_admin;
GRANT SELECT ON TABLE pgq.failed_queue TO pgq_reader;

INSERT INTO pgq_rs.migrations (line, version, description) VALUES
    ('pgq', 1, 'initial'),
    ('pgq', 2, 'tick_wakeups_and_catchup'),
    ('pgq', 3, 'failed_events'),
    ('pgq', 4, 'catchup_bounded_scan'),
    ('pgq', 5, 'trust'),
    ('pgq', 6, 'bounded_batches'),
    ('pgq', 7, 'keyed_insert'),
    ('pgq', 8, 'serial_ticks');
