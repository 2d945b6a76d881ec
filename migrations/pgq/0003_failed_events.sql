-- pgq-rs: the `pgq` line, version 3: failed events.
--
-- A consumer that gives up on an event (it failed too many times) moves it out of the batch into
-- pgq.failed_queue with the error text, instead of retrying it for ever or dropping it. An
-- operator lists, requeues or deletes such events with the pgq.failed_event_* functions. The
-- names follow PGQ 2's failed-queue API; PGQ 3 has none, so no PGQ 3 function changes meaning.
--
-- Failed events belong to a subscription (ev_owner = sub_id, as in pgq.retry_queue), so the
-- events a cooperative sub-consumer failed belong to its group. They go with the queue
-- (drop_queue) and with the last subscription of their sub_id (unregister_consumer).
--
-- SQLSTATEs raised by this file:
--   PQR01  this or a newer version of the line is already installed.
--   PQB01  event_failed: no consumer holds the batch.
--   PQE01  event_failed: the event is not in the batch.
--   PQF01  failed_event_*: the queue or consumer is not found.

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
    IF EXISTS (SELECT 1 FROM pgq_rs.migrations WHERE line = 'pgq' AND version >= 3) THEN
        RAISE EXCEPTION 'pgq-rs: % version % or newer is already installed', 'pgq', 3
            USING ERRCODE = 'PQR01';
    END IF;
END
$guard$;

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

CREATE TRIGGER failed_queue_cleanup AFTER DELETE ON pgq.subscription
    FOR EACH ROW EXECUTE FUNCTION pgq._failed_queue_cleanup();

-- Grants (PGQ's model): consumers (pgq_reader) fail events and read the list; pgq_admin
-- requeues and deletes them.
REVOKE ALL ON TABLE pgq.failed_queue FROM public;
REVOKE ALL ON FUNCTION
    pgq._failed_owner(text, text),
    pgq.event_failed(bigint, bigint, text),
    pgq.failed_event_list(text, text),
    pgq.failed_event_count(text, text),
    pgq.failed_event_delete(text, text, bigint),
    pgq.failed_event_retry(text, text, bigint),
    pgq._failed_queue_cleanup()
  FROM public;
GRANT EXECUTE ON FUNCTION
    pgq.event_failed(bigint, bigint, text),
    pgq.failed_event_list(text, text),
    pgq.failed_event_count(text, text)
  TO pgq_reader;
GRANT EXECUTE ON FUNCTION
    pgq.failed_event_delete(text, text, bigint),
    pgq.failed_event_retry(text, text, bigint)
  TO pgq_admin;
GRANT SELECT ON TABLE pgq.failed_queue TO pgq_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE pgq.failed_queue TO pgq_admin;

INSERT INTO pgq_rs.migrations (line, version, description) VALUES ('pgq', 3, 'failed_events');
