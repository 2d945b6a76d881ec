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
