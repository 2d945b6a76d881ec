//! A database whose owner put a schema of look-alikes first in its `search_path`: for tests
//! that a session resolves nothing through a path someone else controls.

use pgq_core::quote_ident;

use crate::dsn::{connect, pg_error};
use crate::{TestDb, TestkitError};

/// The (non-superuser) role that owns a shadowed database.
pub const SHADOW_OWNER: &str = "pgq_shadow_owner";

// Look-alikes of what the daemons and runners use, each recording its call in evil.calls and
// then doing what the built-in does. Created by the database owner, who may do all of this.
// language=SQL
const SHADOWS: &str = r"
CREATE SCHEMA evil;
CREATE TABLE evil.calls (what pg_catalog.text NOT NULL);
GRANT USAGE ON SCHEMA evil TO PUBLIC;
GRANT INSERT ON evil.calls TO PUBLIC;
CREATE FUNCTION evil.rec(p_what pg_catalog.text) RETURNS pg_catalog.bool
LANGUAGE plpgsql AS $$ BEGIN INSERT INTO evil.calls VALUES (p_what); RETURN true; END $$;

CREATE FUNCTION evil.now() RETURNS pg_catalog.timestamptz LANGUAGE plpgsql
AS $$ BEGIN PERFORM evil.rec('now()'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION evil.txid_current() RETURNS pg_catalog.int8 LANGUAGE plpgsql
AS $$ BEGIN PERFORM evil.rec('txid_current()'); RETURN pg_catalog.txid_current(); END $$;
CREATE FUNCTION evil.txid_current_snapshot() RETURNS pg_catalog.txid_snapshot LANGUAGE plpgsql
AS $$ BEGIN PERFORM evil.rec('txid_current_snapshot()');
          RETURN pg_catalog.txid_current_snapshot(); END $$;
CREATE FUNCTION evil.pg_backend_pid() RETURNS pg_catalog.int4 LANGUAGE plpgsql
AS $$ BEGIN PERFORM evil.rec('pg_backend_pid()'); RETURN pg_catalog.pg_backend_pid(); END $$;
CREATE FUNCTION evil.pg_try_advisory_lock(k pg_catalog.int8) RETURNS pg_catalog.bool
LANGUAGE plpgsql AS $$ BEGIN PERFORM evil.rec('pg_try_advisory_lock(bigint)');
                         RETURN pg_catalog.pg_try_advisory_lock(k); END $$;
CREATE FUNCTION evil.pg_advisory_lock(k pg_catalog.int8) RETURNS void LANGUAGE plpgsql
AS $$ BEGIN PERFORM evil.rec('pg_advisory_lock(bigint)'); PERFORM pg_catalog.pg_advisory_lock(k);
   END $$;
CREATE FUNCTION evil.pg_notify(c pg_catalog.text, p pg_catalog.text) RETURNS void
LANGUAGE plpgsql AS $$ BEGIN PERFORM evil.rec('pg_notify(text,text)');
                         PERFORM pg_catalog.pg_notify(c, p); END $$;
CREATE FUNCTION evil.pg_cancel_backend(p pg_catalog.int4) RETURNS pg_catalog.bool
LANGUAGE plpgsql AS $$ BEGIN PERFORM evil.rec('pg_cancel_backend(int)');
                         RETURN pg_catalog.pg_cancel_backend(p); END $$;
CREATE FUNCTION evil.current_setting(n pg_catalog.text) RETURNS pg_catalog.text LANGUAGE plpgsql
AS $$ BEGIN PERFORM evil.rec('current_setting(text)'); RETURN pg_catalog.current_setting(n); END $$;
CREATE FUNCTION evil.set_config(n pg_catalog.text, v pg_catalog.text, l pg_catalog.bool)
RETURNS pg_catalog.text LANGUAGE plpgsql
AS $$ BEGIN PERFORM evil.rec('set_config(text,text,bool)');
            RETURN pg_catalog.set_config(n, v, l); END $$;
CREATE FUNCTION evil.to_regproc(n pg_catalog.text) RETURNS pg_catalog.regproc LANGUAGE plpgsql
AS $$ BEGIN PERFORM evil.rec('to_regproc(text)'); RETURN pg_catalog.to_regproc(n); END $$;
CREATE FUNCTION evil.to_regprocedure(n pg_catalog.text) RETURNS pg_catalog.regprocedure
LANGUAGE plpgsql AS $$ BEGIN PERFORM evil.rec('to_regprocedure(text)');
                         RETURN pg_catalog.to_regprocedure(n); END $$;
CREATE FUNCTION evil.to_regclass(n pg_catalog.text) RETURNS pg_catalog.regclass LANGUAGE plpgsql
AS $$ BEGIN PERFORM evil.rec('to_regclass(text)'); RETURN pg_catalog.to_regclass(n); END $$;
CREATE FUNCTION evil.hashtextextended(t pg_catalog.text, s pg_catalog.int8) RETURNS pg_catalog.int8
LANGUAGE plpgsql AS $$ BEGIN PERFORM evil.rec('hashtextextended(text,bigint)');
                         RETURN pg_catalog.hashtextextended(t, s); END $$;
CREATE FUNCTION evil.length(t pg_catalog.text) RETURNS pg_catalog.int4 LANGUAGE plpgsql
AS $$ BEGIN PERFORM evil.rec('length(text)'); RETURN pg_catalog.length(t); END $$;
CREATE FUNCTION evil.make_interval(
    years pg_catalog.int4 DEFAULT 0, months pg_catalog.int4 DEFAULT 0,
    weeks pg_catalog.int4 DEFAULT 0, days pg_catalog.int4 DEFAULT 0,
    hours pg_catalog.int4 DEFAULT 0, mins pg_catalog.int4 DEFAULT 0,
    secs pg_catalog.float8 DEFAULT 0) RETURNS pg_catalog.interval LANGUAGE plpgsql
AS $$ BEGIN PERFORM evil.rec('make_interval()');
            RETURN pg_catalog.make_interval(years, months, weeks, days, hours, mins, secs); END $$;
CREATE FUNCTION evil.pg_sequence_last_value(r pg_catalog.regclass) RETURNS pg_catalog.int8
LANGUAGE plpgsql AS $$ BEGIN PERFORM evil.rec('pg_sequence_last_value(regclass)');
                         RETURN pg_catalog.pg_sequence_last_value(r); END $$;
CREATE FUNCTION evil.setval(r pg_catalog.regclass, v pg_catalog.int8) RETURNS pg_catalog.int8
LANGUAGE plpgsql AS $$ BEGIN PERFORM evil.rec('setval(regclass,bigint)');
                         RETURN pg_catalog.setval(r, v); END $$;

CREATE FUNCTION evil.text_eq(a pg_catalog.text, b pg_catalog.text) RETURNS pg_catalog.bool
LANGUAGE plpgsql AS $$ BEGIN PERFORM evil.rec('text = text'); RETURN pg_catalog.texteq(a, b); END $$;
CREATE OPERATOR evil.= (LEFTARG = pg_catalog.text, RIGHTARG = pg_catalog.text,
                        FUNCTION = evil.text_eq);
CREATE FUNCTION evil.int4_eq(a pg_catalog.int4, b pg_catalog.int4) RETURNS pg_catalog.bool
LANGUAGE plpgsql AS $$ BEGIN PERFORM evil.rec('int = int'); RETURN pg_catalog.int4eq(a, b); END $$;
CREATE OPERATOR evil.= (LEFTARG = pg_catalog.int4, RIGHTARG = pg_catalog.int4,
                        FUNCTION = evil.int4_eq);
CREATE FUNCTION evil.int8_eq(a pg_catalog.int8, b pg_catalog.int8) RETURNS pg_catalog.bool
LANGUAGE plpgsql AS $$ BEGIN PERFORM evil.rec('bigint = bigint');
                         RETURN pg_catalog.int8eq(a, b); END $$;
CREATE OPERATOR evil.= (LEFTARG = pg_catalog.int8, RIGHTARG = pg_catalog.int8,
                        FUNCTION = evil.int8_eq);
CREATE FUNCTION evil.ts_plus(a pg_catalog.timestamptz, b pg_catalog.interval)
RETURNS pg_catalog.timestamptz LANGUAGE plpgsql
AS $$ BEGIN PERFORM evil.rec('timestamptz + interval');
            RETURN pg_catalog.timestamptz_pl_interval(a, b); END $$;
CREATE OPERATOR evil.+ (LEFTARG = pg_catalog.timestamptz, RIGHTARG = pg_catalog.interval,
                        FUNCTION = evil.ts_plus);

CREATE DOMAIN evil.int8 AS pg_catalog.int8 CHECK (evil.rec('::int8'));
CREATE DOMAIN evil.int4 AS pg_catalog.int4 CHECK (evil.rec('::int4'));
CREATE DOMAIN evil.text AS pg_catalog.text CHECK (evil.rec('::text'));
CREATE DOMAIN evil.timestamptz AS pg_catalog.timestamptz CHECK (evil.rec('::timestamptz'));
";

/// Turns `db` into a trap for sessions that resolve names through the database's
/// `search_path`: hands the database to [`SHADOW_OWNER`] (a role without superuser, created
/// when missing), which creates schema `evil` with look-alikes of built-in functions
/// (`now()`, `txid_current()`, `pg_try_advisory_lock(bigint)`, `pg_notify`, `make_interval`,
/// ...), operators (`text = text`, `int = int`, `bigint = bigint`, `timestamptz + interval`)
/// and types (`int8`, `int4`, `text`, `timestamptz` as domains) that record each use in
/// `evil.calls`, and runs `ALTER DATABASE ... SET search_path = evil, pg_catalog`. Sessions
/// opened afterwards get that path unless they pin their own; [`shadow_calls`] lists what was
/// resolved to the look-alikes.
///
/// # Errors
///
/// [`TestkitError::Postgres`] when a statement fails.
pub async fn shadow_builtins(db: &TestDb) -> Result<(), TestkitError> {
    let admin = db.client().await?;
    crate::create_role(&admin, SHADOW_OWNER, "LOGIN").await?;
    let name = quote_ident(db.name());
    admin
        .batch_execute(&format!("ALTER DATABASE {name} OWNER TO {SHADOW_OWNER}"))
        .await
        .map_err(|e| pg_error("handing the database to its shadowing owner", e))?;
    let config: tokio_postgres::Config = db
        .dsn_as(SHADOW_OWNER)
        .parse()
        .map_err(|source| TestkitError::BadDsn { source })?;
    let owner = connect(&config, "the database as its owner").await?;
    owner
        .batch_execute(SHADOWS)
        .await
        .map_err(|e| pg_error("creating the look-alikes", e))?;
    owner
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET search_path = evil, pg_catalog"
        ))
        .await
        .map_err(|e| pg_error("putting the look-alikes first in the search_path", e))?;
    Ok(())
}

/// What sessions resolved to the look-alikes of [`shadow_builtins`] so far, in order.
///
/// # Errors
///
/// [`TestkitError::Postgres`] when the query fails.
pub async fn shadow_calls(client: &tokio_postgres::Client) -> Result<Vec<String>, TestkitError> {
    let rows = client
        .query("SELECT what FROM evil.calls", &[])
        .await
        .map_err(|e| pg_error("reading evil.calls", e))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
