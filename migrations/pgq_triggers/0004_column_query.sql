-- pgq-rs: the `pgq_triggers` line, version 4: the column query.
--
-- pgq._capture read the table's columns with four aggregates, each with its own ORDER BY, so four
-- sorts on every captured row. It now sorts once, in a subquery. A 10,000-row UPDATE of a
-- pgbench-like table with pgq.logutriga took 1.8-2.0 s, and takes 0.9 s. Nothing else changes;
-- the other functions are as 0003_generated_columns.sql and 0002_trust.sql state them.
--
-- Run it as `psql -v ON_ERROR_STOP=1 -1 -f 0004_column_query.sql`, or let the Rust installer.

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
    IF EXISTS (SELECT 1 FROM pgq_rs.migrations WHERE line = 'pgq_triggers' AND version >= 4) THEN
        RAISE EXCEPTION 'pgq-rs: % version % or newer is already installed', 'pgq_triggers', 4
            USING ERRCODE = 'PQR01';
    END IF;
END
$guard$;

CREATE OR REPLACE FUNCTION pgq._capture(
    fmt text, op text, level text, fired text, relid oid, rel_schema text, rel_name text,
    args text[], new_row record, old_row record)
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    magic constant text[] := ARRAY['_pgq_ev_type', '_pgq_ev_data', '_pgq_ev_extra1',
                                   '_pgq_ev_extra2', '_pgq_ev_extra3', '_pgq_ev_extra4'];
    tbl constant text := rel_schema || '.' || rel_name;
    queue text;
    arg text;
    i integer;
    skip boolean := false;
    backup boolean := false;
    deny boolean := false;
    pkey_given boolean := false;
    keychange boolean := false;
    ignored text[] := '{}';
    pkey text[];
    attnums int2[];
    keys int2[];
    when_expr text;
    field_names text[] := '{}';
    field_exprs text[] := '{}';
    cols text[];
    generated text[];
    kinds "char"[] := '{}';
    types oid[];
    nv text[];
    ov text[];
    rv text[];
    row_rec record;
    new_json json;
    old_json json;
    data_cols text[];
    data_kinds "char"[];
    data_new text[];
    data_old text[];
    key_changed boolean := false;
    ok boolean;
    part text;
    ev text[];
BEGIN
    -- As PGQ's triggers: silent where session_replication_role is local (a script whose changes
    -- subscribers make themselves).
    IF current_setting('session_replication_role') = 'local' THEN
        RETURN false;
    END IF;
    IF level <> 'ROW' AND op <> 'TRUNCATE' THEN
        RAISE EXCEPTION 'pgq Ins/Upd/Del trigger must be fired FOR EACH ROW'
            USING ERRCODE = 'XX000';
    END IF;
    IF coalesce(cardinality(args), 0) = 0 THEN
        RAISE EXCEPTION 'pgq trigger must have destination queue as argument'
            USING ERRCODE = 'XX000';
    END IF;
    queue := args[array_lower(args, 1)];
    FOR i IN array_lower(args, 1) + 1 .. array_upper(args, 1) LOOP
        arg := args[i];
        IF arg = 'SKIP' THEN
            skip := true;
        ELSIF arg = 'backup' THEN
            backup := true;
        ELSIF arg = 'deny' THEN
            deny := true;
        ELSIF arg = 'keychange' THEN
            keychange := true;
        ELSIF starts_with(arg, 'ignore=') THEN
            ignored := string_to_array(substr(arg, 8), ',');
        ELSIF starts_with(arg, 'pkey=') THEN
            pkey := string_to_array(substr(arg, 6), ',');
            pkey_given := true;
        ELSIF starts_with(arg, 'when=') THEN
            when_expr := substr(arg, 6);
        ELSIF arg ~ '^ev_(type|data|extra[1-4])=' THEN
            field_names := field_names || split_part(arg, '=', 1);
            field_exprs := field_exprs || substr(arg, strpos(arg, '=') + 1);
        ELSE
            RAISE EXCEPTION 'bad param to pgq trigger' USING ERRCODE = 'XX000';
        END IF;
    END LOOP;

    -- Cheap catalog queries on every row: a session-level cache would miss DDL. Two plain
    -- queries and a loop cost less than one query doing it all. The columns are sorted once, in
    -- the subquery, and the aggregates take them in that order (nothing at this level, such as
    -- a join, could reorder them): an ORDER BY in each aggregate sorted four times and made
    -- capture take twice as long.
    SELECT array_agg(a.attname::text), array_agg(a.atttypid), array_agg(a.attnum),
           coalesce(array_agg(a.attname::text) FILTER (WHERE a.attgenerated <> ''), '{}')
      INTO cols, types, attnums, generated
      FROM (SELECT attname, atttypid, attnum, attgenerated
              FROM pg_attribute
             WHERE attrelid = relid AND attnum > 0 AND NOT attisdropped
             ORDER BY attnum) a;
    FOR i IN 1 .. cardinality(types) LOOP
        kinds[i] := CASE WHEN types[i] IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
                         THEN 'i'
                         WHEN types[i] = 'bool'::regtype THEN 'b'
                         WHEN types[i] = 'date'::regtype THEN 'd'
                         WHEN types[i] = 'timestamp'::regtype THEN 't'
                         WHEN types[i] = 'timestamptz'::regtype THEN 'z'
                         WHEN types[i] >= 16384
                              OR types[i] IN ('json'::regtype, 'jsonb'::regtype) THEN 'x'
                         ELSE 's' END;
    END LOOP;
    IF pkey IS NULL THEN
        SELECT (x.indkey::int2[])[0:x.indnkeyatts - 1] -- a slice is 1-based
          INTO keys
          FROM pg_index x
         WHERE x.indrelid = relid AND x.indisprimary;
        pkey := '{}';
        FOR i IN 1 .. coalesce(cardinality(keys), 0) LOOP
            pkey := pkey || cols[array_position(attnums, keys[i])];
        END LOOP;
    END IF;

    IF level = 'ROW' AND op IN ('UPDATE', 'DELETE') AND cardinality(pkey) = 0 THEN
        RAISE EXCEPTION 'Update/Delete on table without pkey' USING ERRCODE = 'XX000';
    END IF;
    IF skip AND fired = 'AFTER' THEN
        RAISE EXCEPTION 'SKIP does not work in AFTER trigger.' USING ERRCODE = 'XX000';
    END IF;
    IF deny THEN
        RAISE EXCEPTION 'Table ''%'' to queue ''%'': change not allowed (%)', tbl, queue, op
            USING ERRCODE = 'XX000';
    END IF;

    IF op = 'TRUNCATE' THEN
        IF cardinality(ignored) > 0 THEN
            RAISE EXCEPTION 'Column ignore does not make sense for truncate trigger'
                USING ERRCODE = 'XX000';
        END IF;
        IF backup THEN
            RAISE EXCEPTION 'Backup does not make sense for truncate trigger'
                USING ERRCODE = 'XX000';
        END IF;
        IF pkey_given THEN
            RAISE EXCEPTION 'Custom pkey_list does not make sense for truncate trigger'
                USING ERRCODE = 'XX000';
        END IF;
        IF when_expr IS NOT NULL OR cardinality(field_names) > 0 THEN
            RAISE EXCEPTION 'Custom expressions do not make sense for truncater trigger'
                USING ERRCODE = 'XX000';
        END IF;
        IF fmt = 'json' THEN
            PERFORM pgq.insert_event(queue,
                '{"op":"TRUNCATE","table":[' || to_json(rel_schema)::text || ','
                    || to_json(rel_name)::text || '],"pkey":['
                    || (SELECT coalesce(string_agg(to_json(p)::text, ',' ORDER BY n), '')
                          FROM unnest(pkey) WITH ORDINALITY AS u(p, n)) || ']}',
                '{}', tbl, NULL, NULL, NULL);
        ELSE
            PERFORM pgq.insert_event(queue, 'R', '', tbl, NULL, NULL, NULL);
        END IF;
        RETURN skip;
    END IF;

    IF op <> 'DELETE' THEN
        nv := pgq._row_values(new_row, kinds);
        row_rec := new_row;
        rv := nv;
    END IF;
    IF op = 'DELETE' THEN
        ov := pgq._row_values(old_row, kinds);
        row_rec := old_row;
        rv := ov;
    END IF;

    IF op = 'UPDATE' THEN
        -- Keys compare as text. row_to_json is the cheaper way, but for a column of a
        -- user-defined type (kind 'x') it calls the type's cast to json, code of whoever owns
        -- the type, and registered capture runs this as the schema's owner: the old row is
        -- parsed instead.
        IF 'x' = ANY (kinds) THEN
            ov := pgq._row_values(old_row, kinds);
            FOREACH arg IN ARRAY pkey LOOP
                i := array_position(cols, arg);
                key_changed := key_changed OR nv[i] IS DISTINCT FROM ov[i];
            END LOOP;
        ELSE
            new_json := row_to_json(new_row);
            old_json := row_to_json(old_row);
            FOREACH arg IN ARRAY pkey LOOP
                key_changed := key_changed
                               OR (new_json ->> arg) IS DISTINCT FROM (old_json ->> arg);
            END LOOP;
        END IF;
        IF key_changed AND NOT keychange THEN
            RAISE EXCEPTION 'primary key update not allowed' USING ERRCODE = 'XX000';
        END IF;
        IF ov IS NULL AND (key_changed OR backup OR fmt = 'sql' OR cardinality(ignored) > 0) THEN
            ov := pgq._row_values(old_row, kinds);
        END IF;
        -- A change of ignored columns only is no change; no change at all is one.
        IF cardinality(ignored) > 0 AND nv IS DISTINCT FROM ov THEN
            SELECT coalesce(bool_or(NOT c = ANY (ignored) AND NOT c = ANY (magic)
                                    AND n IS DISTINCT FROM o), false)
                   OR NOT coalesce(bool_or(c = ANY (ignored) AND n IS DISTINCT FROM o), false)
              INTO ok
              FROM unnest(cols, nv, ov) AS u(c, n, o);
            IF NOT ok THEN
                RETURN skip;
            END IF;
        END IF;
    END IF;

    IF when_expr IS NOT NULL THEN
        EXECUTE 'SELECT (' || when_expr || ')::boolean FROM (SELECT ($1).*) AS _pgq_row'
           INTO ok USING row_rec;
        IF ok IS NULL THEN
            RAISE EXCEPTION 'when= should not be NULL' USING ERRCODE = 'XX000';
        END IF;
        IF NOT ok THEN
            RETURN skip;
        END IF;
    END IF;

    -- Generated columns are left out of the data (a subscriber computes its own, and a virtual
    -- one has no stored value), except a key column: the event must name its row.
    IF cardinality(generated) > 0 THEN
        generated := ARRAY(SELECT g FROM unnest(generated) AS g WHERE NOT g = ANY (pkey));
    END IF;
    IF cardinality(ignored) = 0 AND cardinality(generated) = 0 AND NOT cols && magic THEN
        data_cols := cols;
        data_kinds := kinds;
        data_new := rv;
        data_old := ov;
    ELSE
        SELECT array_agg(c ORDER BY n), array_agg(k ORDER BY n), array_agg(v ORDER BY n),
               array_agg(o ORDER BY n)
          INTO data_cols, data_kinds, data_new, data_old
          FROM unnest(cols, kinds, rv, ov) WITH ORDINALITY AS u(c, k, v, o, n)
         WHERE NOT c = ANY (ignored) AND NOT c = ANY (magic) AND NOT c = ANY (generated);
    END IF;

    -- ev: type, data, extra1 .. extra4
    ev := ARRAY[NULL, NULL, tbl, NULL, NULL, NULL];
    IF fmt = 'urlenc' THEN
        ev[1] := left(op, 1) || ':' || array_to_string(pkey, ',');
        ev[2] := pgq._urlenc_row(data_cols, data_new);
        IF op = 'UPDATE' AND backup THEN
            ev[4] := pgq._urlenc_row(data_cols, data_old);
        END IF;
        IF key_changed THEN
            ev[5] := (SELECT pgq._urlenc_row(array_agg(c ORDER BY n), array_agg(o ORDER BY n))
                        FROM unnest(pkey) WITH ORDINALITY AS p(c, n)
                        JOIN unnest(cols, ov) AS u(uc, o) ON uc = c);
        END IF;
    ELSIF fmt = 'json' THEN
        ev[1] := '{"op":' || to_json(op)::text || ',"table":[' || to_json(rel_schema)::text
                 || ',' || to_json(rel_name)::text || '],"pkey":['
                 || (SELECT coalesce(string_agg(to_json(p)::text, ',' ORDER BY n), '')
                       FROM unnest(pkey) WITH ORDINALITY AS u(p, n)) || ']}';
        ev[2] := pgq._json_row(data_cols, data_kinds, data_new);
        IF op = 'UPDATE' AND backup THEN
            ev[4] := pgq._json_row(data_cols, data_kinds, data_old);
        END IF;
        IF key_changed THEN
            ev[5] := (SELECT pgq._json_row(array_agg(c ORDER BY n), array_agg(k ORDER BY n),
                                           array_agg(o ORDER BY n))
                        FROM unnest(pkey) WITH ORDINALITY AS p(c, n)
                        JOIN unnest(cols, kinds, ov) AS u(uc, k, o) ON uc = c);
        END IF;
    ELSE
        ev[1] := left(op, 1);
        IF op = 'INSERT' THEN
            arg := '';
            part := '';
            FOR i IN 1 .. coalesce(cardinality(data_cols), 0) LOOP
                arg := arg || CASE WHEN i > 1 THEN ',' ELSE '' END || quote_ident(data_cols[i]);
                part := part || CASE WHEN i > 1 THEN ',' ELSE '' END
                        || coalesce(quote_literal(data_new[i]), 'null');
            END LOOP;
            ev[2] := '(' || arg || ') values (' || part || ')';
        ELSE
            -- The WHERE part names the key as it was (the same as the new key, but with
            -- keychange), and is empty when no key column exists; an update that changes
            -- nothing sets the first key column. A NULL key value is an error.
            SELECT coalesce(string_agg(quote_ident(c) || '=' || quote_literal(o), ' and '
                                       ORDER BY n), ''),
                   coalesce(bool_or(o IS NULL), false)
              INTO arg, ok
              FROM unnest(cols, ov) WITH ORDINALITY AS u(c, o, n)
             WHERE c = ANY (pkey);
            IF op = 'UPDATE' THEN
                SELECT coalesce(
                           string_agg(quote_ident(c) || '=' || coalesce(quote_literal(v), 'NULL'),
                                      ',' ORDER BY n) FILTER (WHERE v IS DISTINCT FROM o),
                           (array_agg(quote_ident(c) || '=' || quote_literal(v)
                                      ORDER BY n) FILTER (WHERE c = ANY (pkey)))[1])
                  INTO part
                  FROM unnest(data_cols, data_new, data_old) WITH ORDINALITY AS u(c, v, o, n);
            END IF;
            IF ok OR part IS NULL AND op = 'UPDATE' THEN
                RAISE EXCEPTION 'logtriga: Unexpected NULL key value' USING ERRCODE = 'XX000';
            END IF;
            IF op = 'DELETE' THEN
                ev[2] := arg;
            ELSE
                ev[2] := part || ' where ' || arg;
            END IF;
        END IF;
        IF op = 'UPDATE' AND backup THEN
            ev[4] := pgq._urlenc_row(data_cols, data_old);
        END IF;
    END IF;

    IF cols && magic THEN
        FOR i IN 1 .. 6 LOOP
            IF magic[i] = ANY (cols) THEN
                ev[i] := rv[array_position(cols, magic[i])];
            END IF;
        END LOOP;
    END IF;
    FOR i IN 1 .. coalesce(cardinality(field_names), 0) LOOP
        EXECUTE 'SELECT (' || field_exprs[i] || ')::text FROM (SELECT ($1).*) AS _pgq_row'
           INTO arg USING row_rec;
        ev[array_position(magic, '_pgq_' || field_names[i])] := arg;
    END LOOP;

    PERFORM pgq.insert_event(queue, ev[1], ev[2], ev[3], ev[4], ev[5], ev[6]);
    RETURN skip;
END
$$;

INSERT INTO pgq_rs.migrations (line, version, description)
    VALUES ('pgq_triggers', 4, 'column_query');
