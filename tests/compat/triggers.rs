//! PGQ's change-capture triggers (`pgq.logutriga`, `pgq.sqltriga`, `pgq.jsontriga`): our
//! PL/pgSQL line `pgq_triggers` against the C functions of the reference extension. Both sides
//! get the same tables and the same statements under each trigger and each trigger argument;
//! every queued event (ev_type, ev_data, ev_extra1..4) and every error (SQLSTATE and message) is
//! recorded and the two records must be equal. The `keychange` argument exists on our side only
//! and is asserted on its own.

use std::fmt::Write as _;

use anyhow::{ensure, Context as _, Result};
use pgq_core::{quote_literal, InstallReport, Line};
use pgq_testkit::TestDb;
use serde_json::{json, Value};
use tokio_postgres::Client;

use super::{install, Flavor, QUEUE};

/// A database with PGQ (and, on our side, the `pgq_triggers` line) and queue [`QUEUE`].
struct Side {
    client: Client,
    /// The last event id already recorded.
    seen: i64,
    /// One entry per statement.
    trace: Vec<(String, Value)>,
    // Last, so that it is dropped after the connection.
    _db: TestDb,
}

impl Side {
    async fn new(flavor: Flavor) -> Result<Side> {
        let db = TestDb::new().await?;
        let mut client = db.client().await?;
        install(flavor, &mut client).await?;
        if flavor == Flavor::Ours {
            pgq_core::install(&mut client, &[Line::PgqTriggers])
                .await
                .context("installing the pgq_triggers line")?;
        }
        // Times are written in the session's time zone: make it one with an offset.
        client
            .batch_execute(
                "SET timezone = 'Europe/Tallinn';
                 CREATE SCHEMA \"Other Schema\";
                 CREATE SCHEMA s2;",
            )
            .await?;
        client
            .query("SELECT pgq.create_queue($1)", &[&QUEUE])
            .await?;
        Ok(Side {
            client,
            seen: 0,
            trace: Vec::new(),
            _db: db,
        })
    }

    /// Runs `sql` unrecorded; it must succeed.
    async fn setup(&self, sql: &str) -> Result<()> {
        self.client
            .batch_execute(sql)
            .await
            .with_context(|| sql.to_owned())
    }

    /// Runs `sql` and records the events it queued, or its error.
    async fn run(&mut self, sql: &str) -> Result<Value> {
        let outcome = match self.client.batch_execute(sql).await {
            Ok(()) => json!({ "events": self.new_events().await? }),
            Err(e) => {
                let db = e.as_db_error().with_context(|| format!("{sql}: {e}"))?;
                json!({ "error": [db.code().code(), db.message()] })
            }
        };
        self.trace.push((sql.to_owned(), outcome.clone()));
        Ok(outcome)
    }

    /// Events queued since the last call, in id order, as
    /// `[ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4]`.
    async fn new_events(&mut self) -> Result<Vec<Value>> {
        let rows = self
            .client
            .query(
                "SELECT ev_id, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4
                   FROM pgq.event_template WHERE ev_id > $1 ORDER BY ev_id",
                &[&self.seen],
            )
            .await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            self.seen = row.get(0);
            events.push(json!((1..7)
                .map(|i| row.get::<_, Option<String>>(i))
                .collect::<Vec<_>>()));
        }
        Ok(events)
    }
}

/// The tables of the scenario: key types, a composite key in another order than the columns,
/// many value types, quoted names, another schema, no key, PGQ's magic columns.
const TABLES: &str = r#"
CREATE TABLE t_int (
    id int PRIMARY KEY, txt text, b bytea, j json, jb jsonb, arr int[], tarr text[],
    n numeric, ts timestamptz, tsn timestamp, d date, ok bool, f float8, i2 smallint,
    big bigint, iv interval, u uuid, c char(3), rng int4range);
CREATE TYPE mood AS ENUM ('ok', 'sad');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TABLE t_big (id bigint PRIMARY KEY, v text, ts timestamptz, tsn timestamp, d date,
                    ok bool, tags text[], n numeric, f real);
CREATE TABLE t_text (k text PRIMARY KEY, v text);
CREATE TABLE t_comp (a int, b text, c text, m mood, p posint, PRIMARY KEY (b, a));
CREATE TABLE "Other Schema"."MiXed" ("Id" int PRIMARY KEY, "Val ue" text, "ü" text);
CREATE TABLE s2.t (id int PRIMARY KEY, v text);
CREATE TABLE t_nopk (a int, b text);
CREATE TABLE t_magic (id int PRIMARY KEY, v text, _pgq_ev_type text, _pgq_ev_data text,
                      _pgq_ev_extra1 text, _pgq_ev_extra4 text);
"#;

const TABLE_NAMES: [&str; 8] = [
    "t_int",
    "t_big",
    "t_text",
    "t_comp",
    "\"Other Schema\".\"MiXed\"",
    "s2.t",
    "t_nopk",
    "t_magic",
];

/// Statements run under each trigger set-up, in order.
const STATEMENTS: &[&str] = &[
    r#"INSERT INTO t_int VALUES
        (1, E'a b&c=d%e+f''g"h\ni ü\\ ~*', '\x00ff41', '{"a": [1, 2], "s": "x\"y"}',
         '{"b": null, "n": 1.50}', '{1,NULL,3}', '{"a b","c,d",NULL,"e\"f",""}', 1.50,
         '2020-01-02 03:04:05.123456+00', '2020-01-02 03:04:05', '2020-01-02', true, 0.1, 2,
         9007199254740993, '1 day 02:00:00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'ab',
         '[1,5)'),
        (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL),
        (3, '', '\x', '"str"', 'null', '{}', '{}', 'NaN', 'infinity', '-infinity', 'infinity',
         false, 'Infinity', -1, -2, '0', NULL, '', 'empty')"#,
    "UPDATE t_int SET txt = 'x', ok = NOT ok WHERE id IN (1, 3)",
    "UPDATE t_int SET txt = txt WHERE id = 1",
    "UPDATE t_int SET b = NULL, j = '[1]', ts = NULL WHERE id = 1",
    "UPDATE t_int SET id = 10 WHERE id = 2",
    "DELETE FROM t_int WHERE id = 3",
    "INSERT INTO t_big VALUES (9223372036854775807, 'max'), (-1, 'neg')",
    "INSERT INTO t_big VALUES (7, 'a b', '2021-06-01 12:00:00.5-07', '2021-06-01 12:00', \
     '1999-12-31', true, NULL, 0.000, 1e30), \
     (8, NULL, 'infinity', '-infinity', '-infinity', false, NULL, 'NaN', '-Infinity')",
    "UPDATE t_big SET v = 'changed'",
    "UPDATE t_big SET tags = '{\"x, y\",NULL}', ok = NULL WHERE id = 7",
    "DELETE FROM t_big WHERE id < 0",
    "INSERT INTO t_text VALUES ('key with space&=%+', 'v'), ('ключ', NULL), ('', 'empty key')",
    "UPDATE t_text SET v = 'w' WHERE k = 'ключ'",
    "UPDATE t_text SET k = 'new' WHERE k = ''",
    "DELETE FROM t_text WHERE k LIKE 'key%'",
    "INSERT INTO t_comp VALUES (1, 'x', 'c1', 'ok', 1), (2, 'y', NULL, NULL, NULL)",
    "UPDATE t_comp SET m = 'sad', p = 3 WHERE a = 1",
    "UPDATE t_comp SET c = 'zz'",
    "UPDATE t_comp SET c = 'zz' WHERE a = 1",
    "UPDATE t_comp SET a = 5 WHERE a = 2",
    "DELETE FROM t_comp WHERE b = 'y'",
    r#"INSERT INTO "Other Schema"."MiXed" VALUES (1, 'v 1', 'ü'), (2, NULL, '"q"')"#,
    r#"UPDATE "Other Schema"."MiXed" SET "Val ue" = 'new' WHERE "Id" = 1"#,
    r#"DELETE FROM "Other Schema"."MiXed" WHERE "Id" = 2"#,
    "INSERT INTO s2.t VALUES (1, 'a'), (2, 'skip')",
    "UPDATE s2.t SET v = 'b' WHERE id = 1",
    "DELETE FROM s2.t",
    "INSERT INTO t_nopk VALUES (1, 'x'), (NULL, NULL)",
    "UPDATE t_nopk SET b = 'y'",
    "DELETE FROM t_nopk",
    "INSERT INTO t_magic VALUES (1, 'a', 'T', 'D', 'E1', 'E4'), (2, 'b', NULL, NULL, NULL, NULL)",
    "UPDATE t_magic SET v = 'c' WHERE id = 1",
    "DELETE FROM t_magic WHERE id = 2",
    "TRUNCATE t_int, t_big, t_text, t_comp, \"Other Schema\".\"MiXed\", s2.t, t_nopk, t_magic",
];

/// Trigger arguments after the queue name, each set run through all of [`STATEMENTS`].
/// `None` stands for a trigger without any argument.
const ARGUMENTS: &[Option<&[&str]>] = &[
    Some(&[]),
    Some(&["backup"]),
    Some(&["ignore=c,txt,\"Val ue\",Val ue,v"]),
    Some(&["ignore=c", "backup"]),
    Some(&["pkey=v"]),
    Some(&["pkey=c,a"]),
    Some(&["pkey=nosuch"]),
    Some(&["when=v IS DISTINCT FROM 'skip'"]),
    Some(&["ev_extra4=v", "ev_type='T:'||id", "ev_extra1=upper(v)"]),
    Some(&["ev_data=NULL", "ev_extra2='x'", "ev_extra3='y'"]),
    Some(&["deny"]),
    Some(&["SKIP"]),
    Some(&["bogus"]),
    Some(&["Backup"]),
    None,
];

const KINDS: [&str; 3] = ["logutriga", "sqltriga", "jsontriga"];

/// `CREATE TRIGGER` statements for `kind` with `args` on every table: a row trigger and a
/// TRUNCATE trigger each.
fn triggers(kind: &str, args: Option<&[&str]>) -> String {
    let mut call = String::new();
    if let Some(args) = args {
        call.push_str(&quote_literal(QUEUE));
        for arg in args {
            let _ = write!(call, ", {}", quote_literal(arg));
        }
    }
    let mut sql = String::new();
    for table in TABLE_NAMES {
        let _ = writeln!(
            sql,
            "CREATE TRIGGER capture AFTER INSERT OR UPDATE OR DELETE ON {table}
                 FOR EACH ROW EXECUTE PROCEDURE pgq.{kind}({call});
             CREATE TRIGGER capture_truncate AFTER TRUNCATE ON {table}
                 FOR EACH STATEMENT EXECUTE PROCEDURE pgq.{kind}({call});"
        );
    }
    sql
}

fn drop_triggers() -> String {
    let mut sql = String::new();
    for table in TABLE_NAMES {
        let _ = writeln!(
            sql,
            "DROP TRIGGER capture ON {table}; DROP TRIGGER capture_truncate ON {table};"
        );
    }
    let _ = writeln!(sql, "TRUNCATE {};", TABLE_NAMES.join(", "));
    sql
}

/// The whole scenario on one side.
async fn scenario(side: &mut Side) -> Result<()> {
    side.setup(TABLES).await?;
    for kind in KINDS {
        for &args in ARGUMENTS {
            side.setup(&triggers(kind, args)).await?;
            side.trace
                .push((format!("== {kind} {args:?}"), Value::Null));
            for sql in STATEMENTS {
                side.run(sql).await?;
            }
            // A statement-level trigger on other operations is refused.
            side.setup(&format!(
                "CREATE TRIGGER stmt AFTER INSERT ON s2.t FOR EACH STATEMENT
                     EXECUTE PROCEDURE pgq.{kind}('q')"
            ))
            .await?;
            side.run("INSERT INTO s2.t VALUES (100, 'stmt')").await?;
            side.setup("DROP TRIGGER stmt ON s2.t").await?;
            side.setup(&drop_triggers()).await?;
        }
        // Expressions make no sense for TRUNCATE.
        side.setup(&format!(
            "CREATE TRIGGER expr AFTER TRUNCATE ON s2.t FOR EACH STATEMENT
                 EXECUTE PROCEDURE pgq.{kind}('q', 'when=true')"
        ))
        .await?;
        side.run("TRUNCATE s2.t").await?;
        side.setup("DROP TRIGGER expr ON s2.t").await?;
        // A NULL when= is an error.
        side.setup(&format!(
            "CREATE TRIGGER expr AFTER INSERT ON s2.t FOR EACH ROW
                 EXECUTE PROCEDURE pgq.{kind}('q', 'when=v = ''x''')"
        ))
        .await?;
        side.run("INSERT INTO s2.t VALUES (1, 'x'), (2, 'y')")
            .await?;
        side.run("INSERT INTO s2.t VALUES (3, NULL)").await?;
        side.setup("DROP TRIGGER expr ON s2.t; TRUNCATE s2.t")
            .await?;
        // Under session_replication_role = local every trigger is silent, deny included (a
        // script whose changes the subscribers make themselves); an origin session is not.
        for args in [&[][..], &["deny"][..]] {
            side.setup(&triggers(kind, Some(args))).await?;
            side.run(
                "SET session_replication_role = local;
                 INSERT INTO s2.t VALUES (7, 'local');
                 UPDATE s2.t SET v = 'local 2' WHERE id = 7;
                 DELETE FROM s2.t;
                 TRUNCATE s2.t;
                 RESET session_replication_role;",
            )
            .await?;
            side.run("INSERT INTO s2.t VALUES (8, 'origin')").await?;
            side.setup("RESET session_replication_role").await?;
            side.setup(&drop_triggers()).await?;
        }
    }
    Ok(())
}

/// A statement's outcome as the argument sets are checked on: how many events it queued, or
/// its error's SQLSTATE and message.
fn outcome(recorded: &Value) -> Value {
    match recorded.get("events") {
        Some(events) => json!(events.as_array().map_or(0, Vec::len)),
        None => recorded["error"].clone(),
    }
}

/// The statements run under `kind` with `args`, and what each recorded.
fn block<'a>(
    trace: &'a [(String, Value)],
    kind: &str,
    args: Option<&[&str]>,
) -> Vec<&'a (String, Value)> {
    let header = format!("== {kind} {args:?}");
    trace
        .iter()
        .skip_while(|(sql, _)| *sql != header)
        .skip(1)
        .take_while(|(sql, _)| !sql.starts_with("== "))
        .collect()
}

fn error(message: &str) -> Value {
    json!(["XX000", message])
}

const PKEY_UPDATE: &str = "primary key update not allowed";
const NO_PKEY: &str = "Update/Delete on table without pkey";
const EXPR_TRUNCATE: &str = "Custom expressions do not make sense for truncater trigger";

/// The outcomes of [`STATEMENTS`] and the statement-level trigger's insert without trigger
/// arguments: the events per row, key updates and keyless updates refused.
#[rustfmt::skip]
fn plain_outcomes() -> Vec<Value> {
    let (pkey, no_pkey) = (error(PKEY_UPDATE), error(NO_PKEY));
    let n = |events: usize| json!(events);
    vec![
        // t_int, t_big, t_text, t_comp
        n(3), n(2), n(1), n(1), pkey.clone(), n(1),
        n(2), n(2), n(4), n(1), n(1),
        n(3), n(1), pkey.clone(), n(1),
        n(2), n(1), n(2), n(1), pkey, n(1),
        // "Other Schema"."MiXed", s2.t, t_nopk, t_magic
        n(2), n(1), n(1),
        n(2), n(1), n(2),
        n(2), no_pkey.clone(), no_pkey,
        n(2), n(1), n(1),
        // TRUNCATE: an event per table; then the statement-level trigger
        n(8),
        error("pgq Ins/Upd/Del trigger must be fired FOR EACH ROW"),
    ]
}

/// Asserts what each trigger argument does, on one side's trace: its own expectations of
/// the events queued and the errors, whatever the other side says.
fn expect_argument_semantics(trace: &[(String, Value)]) -> Result<()> {
    let statements = STATEMENTS.len() + 1;
    for kind in KINDS {
        let outcomes = |args: Option<&[&str]>| -> Vec<Value> {
            block(trace, kind, args)
                .iter()
                .map(|(_, v)| outcome(v))
                .collect()
        };
        ensure!(
            outcomes(Some(&[])) == plain_outcomes(),
            "{kind} without arguments: {:?}",
            outcomes(Some(&[]))
        );
        // Arguments that change no event count; TRUNCATE refuses them.
        for (args, truncate) in [
            (
                &["backup"][..],
                "Backup does not make sense for truncate trigger",
            ),
            (
                &["ev_data=NULL", "ev_extra2='x'", "ev_extra3='y'"],
                EXPR_TRUNCATE,
            ),
        ] {
            let mut expected = plain_outcomes();
            expected[STATEMENTS.len() - 1] = error(truncate);
            ensure!(
                outcomes(Some(args)) == expected,
                "{kind} {args:?}: {:?}",
                outcomes(Some(args))
            );
        }
        // Arguments that refuse every change: each INSERT and TRUNCATE fails (nothing else
        // finds a row), and no event is queued.
        let deny = |op: &str, message: &str| {
            message.starts_with("Table '")
                && message.ends_with(&format!(" to queue 'q': change not allowed ({op})"))
        };
        for (args, refusal) in [
            (Some(&["deny"][..]), None),
            (
                Some(&["SKIP"]),
                Some("SKIP does not work in AFTER trigger."),
            ),
            (Some(&["bogus"]), Some("bad param to pgq trigger")),
            (Some(&["Backup"]), Some("bad param to pgq trigger")),
            (
                None,
                Some("pgq trigger must have destination queue as argument"),
            ),
        ] {
            for (sql, recorded) in block(trace, kind, args).into_iter().take(statements) {
                let op = sql.split_whitespace().next().unwrap_or_default();
                let got = outcome(recorded);
                let refused = got[0] == "XX000"
                    && got[1].as_str().is_some_and(|message| match refusal {
                        Some(refusal) => message == refusal,
                        None => deny(op, message),
                    });
                ensure!(
                    if op == "INSERT" || op == "TRUNCATE" {
                        refused
                    } else {
                        got == json!(0)
                    },
                    "{kind} {args:?}: {sql} => {got}"
                );
            }
        }
        // Filters: an update of ignored columns only, and rows `when=` leaves out.
        let ignoring = outcomes(Some(&["ignore=c,txt,\"Val ue\",Val ue,v"]));
        ensure!(
            ignoring[17] == json!(0),
            "{kind}: an update of ignored columns queued {}",
            ignoring[17]
        );
        let when = outcomes(Some(&["when=v IS DISTINCT FROM 'skip'"]));
        ensure!(
            when[24] == json!(1),
            "{kind}: when= let {} of 2 rows through, 1 expected",
            when[24]
        );
        // Expressions for the event's fields; PGQ's magic columns.
        let recorded = |args: Option<&[&str]>, i: usize| block(trace, kind, args)[i].1.clone();
        let fields: Vec<Value> = recorded(
            Some(&["ev_extra4=v", "ev_type='T:'||id", "ev_extra1=upper(v)"]),
            24,
        )["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|ev| json!([ev[0], ev[2], ev[5]]))
            .collect();
        ensure!(
            fields == [json!(["T:1", "A", "a"]), json!(["T:2", "SKIP", "skip"])],
            "{kind}: ev_type, ev_extra1, ev_extra4 from expressions: {fields:?}"
        );
        ensure!(
            recorded(Some(&[]), 30)
                == json!({ "events": [["T", "D", "E1", null, null, "E4"],
                                      [null, null, null, null, null, null]] }),
            "{kind}: magic columns"
        );
        // After the argument sets: a TRUNCATE trigger with an expression, a NULL when=, and
        // session_replication_role = local (silent, deny included) and origin.
        let tail: Vec<Value> = block(trace, kind, None)
            .iter()
            .skip(statements)
            .map(|(_, v)| outcome(v))
            .collect();
        ensure!(
            tail == [
                error(EXPR_TRUNCATE),
                json!(1),
                error("when= should not be NULL"),
                json!(0),
                json!(1),
                json!(0),
                error("Table 's2.t' to queue 'q': change not allowed (INSERT)"),
            ],
            "{kind}: {tail:?}"
        );
    }
    Ok(())
}

/// Both traces, the differing entries marked, or None when they are equal.
fn diff(ours: &[(String, Value)], reference: &[(String, Value)]) -> Option<String> {
    if ours == reference {
        return None;
    }
    let mut report =
        "our triggers and the reference extension's differ (entries marked !!):\n".to_owned();
    for i in 0..ours.len().max(reference.len()) {
        let (o, r) = (ours.get(i), reference.get(i));
        let show = |e: Option<&(String, Value)>| {
            e.map_or("<missing>".to_owned(), |(sql, v)| format!("{sql} => {v}"))
        };
        if o == r {
            let _ = writeln!(report, "   {i:4} {}", show(o));
        } else {
            let _ = writeln!(report, "!! {i:4} ours:      {}", show(o));
            let _ = writeln!(report, "!!      reference: {}", show(r));
        }
    }
    Some(report)
}

#[tokio::test]
async fn same_events_and_errors_as_the_c_triggers() -> Result<()> {
    let mut ours = Side::new(Flavor::Ours).await?;
    scenario(&mut ours).await.context("our schema")?;
    if std::env::var_os("PGQ_COMPAT_TRACE").is_some() {
        for (i, (sql, outcome)) in ours.trace.iter().enumerate() {
            eprintln!("{i:4} {sql} => {outcome}");
        }
    }
    // Our own expectations, whatever the reference: a few events and errors of the trace.
    let find = |sql: &str, nth: usize| {
        ours.trace
            .iter()
            .filter(|(s, _)| s == sql)
            .nth(nth)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        find(STATEMENTS[3], 0),
        Some(json!({ "events": [[
            "U:id",
            "id=1&txt=x&b&j=%5b1%5d&jb=%7b%22b%22%3a+null%2c+%22n%22%3a+1.50%7d\
             &arr=%7b1%2cNULL%2c3%7d\
             &tarr=%7b%22a+b%22%2c%22c%2cd%22%2cNULL%2c%22e%5c%22f%22%2c%22%22%7d&n=1.50&ts\
             &tsn=2020-01-02+03%3a04%3a05&d=2020-01-02&ok=f&f=0.1&i2=2&big=9007199254740993\
             &iv=1+day+02%3a00%3a00&u=a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11&c=ab+&rng=%5b1%2c5%29",
            "public.t_int", null, null, null
        ]] }))
    );
    assert_eq!(
        find(STATEMENTS[4], 0),
        Some(json!({ "error": ["XX000", "primary key update not allowed"] }))
    );
    expect_argument_semantics(&ours.trace).context("our schema")?;
    let Some(mut reference) = reference_side().await? else {
        return Ok(());
    };
    scenario(&mut reference)
        .await
        .context("reference extension")?;
    expect_argument_semantics(&reference.trace).context("reference extension")?;
    if let Some(report) = diff(&ours.trace, &reference.trace) {
        panic!("{report}");
    }
    Ok(())
}

/// The reference side, or None (after a SKIPPED line) when the extension is missing.
async fn reference_side() -> Result<Option<Side>> {
    let probe = TestDb::new().await?;
    if !pgq_testkit::reference_available(&probe.client().await?).await? {
        return Ok(None);
    }
    Ok(Some(Side::new(Flavor::Reference).await?))
}

#[tokio::test]
async fn keychange_queues_key_updates_with_the_old_key() -> Result<()> {
    let mut side = Side::new(Flavor::Ours).await?;
    side.setup(TABLES).await?;
    let mut got = Vec::new();
    for kind in KINDS {
        side.setup(&triggers(kind, Some(&["keychange"]))).await?;
        side.setup("INSERT INTO t_comp VALUES (1, 'x y', 'c'); INSERT INTO s2.t VALUES (5, 'v')")
            .await?;
        side.new_events().await?;
        got.push(
            side.run("UPDATE t_comp SET a = 2, b = 'z&' WHERE a = 1")
                .await?,
        );
        got.push(side.run("UPDATE s2.t SET id = 6").await?);
        // Without a key change, ev_extra3 is left alone.
        got.push(side.run("UPDATE s2.t SET v = 'w'").await?);
        side.setup(&drop_triggers()).await?;
    }
    let expected = json!([
        { "events": [["U:b,a", "a=2&b=z%26&c=c&m&p", "public.t_comp", null, "b=x+y&a=1", null]] },
        { "events": [["U:id", "id=6&v=v", "s2.t", null, "id=5", null]] },
        { "events": [["U:id", "id=6&v=w", "s2.t", null, null, null]] },
        { "events": [["U", "a='2',b='z&' where a='1' and b='x y'", "public.t_comp", null, null,
                      null]] },
        { "events": [["U", "id='6' where id='5'", "s2.t", null, null, null]] },
        { "events": [["U", "v='w' where id='6'", "s2.t", null, null, null]] },
        { "events": [[r#"{"op":"UPDATE","table":["public","t_comp"],"pkey":["b","a"]}"#,
                      r#"{"a":2,"b":"z&","c":"c","m":null,"p":null}"#, "public.t_comp", null,
                      r#"{"b":"x y","a":1}"#, null]] },
        { "events": [[r#"{"op":"UPDATE","table":["s2","t"],"pkey":["id"]}"#,
                      r#"{"id":6,"v":"v"}"#, "s2.t", null, r#"{"id":5}"#, null]] },
        { "events": [[r#"{"op":"UPDATE","table":["s2","t"],"pkey":["id"]}"#,
                      r#"{"id":6,"v":"w"}"#, "s2.t", null, null, null]] },
    ]);
    assert_eq!(Value::Array(got), expected);
    Ok(())
}

#[tokio::test]
async fn line_is_skipped_next_to_the_extension_and_its_sql_refused() -> Result<()> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    if !pgq_testkit::reference_available(&client).await? {
        return Ok(());
    }
    install(Flavor::Reference, &mut client).await?;
    let report: InstallReport =
        pgq_core::install(&mut client, &[Line::Pgq, Line::PgqTriggers]).await?;
    ensure!(
        report
            .lines
            .iter()
            .all(|l| l.provided_by_extension && l.applied.is_empty()),
        "{report}"
    );
    assert_eq!(
        report.to_string(),
        "pgq: provided by the pgq extension, skipped\n\
         pgq_triggers: provided by the pgq extension, skipped"
    );
    pgq_core::check(&client, &[Line::PgqTriggers]).await?;
    let err = client
        .batch_execute(&pgq_core::migrations_sql(Line::PgqTriggers, 0))
        .await
        .expect_err("the line's SQL must refuse to run next to the extension");
    client.batch_execute("ROLLBACK").await?;
    let db_err = err.as_db_error().context("a database error")?;
    assert_eq!(db_err.code().code(), "PQR02");
    assert!(
        db_err.message().contains("has its own triggers"),
        "{db_err}"
    );
    // The extension's C triggers are still the ones in place.
    let language: String = client
        .query_one(
            "SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
              WHERE p.oid = 'pgq.logutriga()'::regprocedure",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(language, "c");
    Ok(())
}
