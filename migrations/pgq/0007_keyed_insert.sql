-- pgq-rs: the `pgq` line, version 7: inserts by key.
--
-- pgq.insert_event_by_key and pgq.insert_event_bulk_by_key make per-key ev_id order the order in
-- which the writers of that key commit, which a queue partitioned by key (docs/partitions.md)
-- needs for consumers that handle one key's events in order.
--
-- Run it as `psql -v ON_ERROR_STOP=1 -1 -f 0007_keyed_insert.sql`, or let the Rust installer.

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
    IF EXISTS (SELECT 1 FROM pgq_rs.migrations WHERE line = 'pgq' AND version >= 7) THEN
        RAISE EXCEPTION 'pgq-rs: % version % or newer is already installed', 'pgq', 7
            USING ERRCODE = 'PQR01';
    END IF;
END
$guard$;

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

REVOKE ALL ON FUNCTION
    pgq.insert_event_by_key(text, text, text, text, text, text, text, text),
    pgq.insert_event_bulk_by_key(text, text[], text[], text[], text[], text[], text[], text[])
  FROM public;
GRANT EXECUTE ON FUNCTION
    pgq.insert_event_by_key(text, text, text, text, text, text, text, text),
    pgq.insert_event_bulk_by_key(text, text[], text[], text[], text[], text[], text[], text[])
  TO pgq_writer;

INSERT INTO pgq_rs.migrations (line, version, description) VALUES ('pgq', 7, 'keyed_insert');
