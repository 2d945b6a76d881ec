//! A compromised source sends file names that point outside the copy: the backup refuses
//! them before it writes anything for them. The source is a real server behind a man in the
//! middle that rewrites one value in the rows the server sends (the crate's own network path,
//! unchanged; only the bytes are the attacker's).

use pgq_basebackup::{BackupOptions, Error};
use pgq_core::Dsn;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{self, Scratch};

/// Forwards connections to a server on 127.0.0.1, replacing every field of every data row
/// that equals `from` with `to`; stops on drop.
struct Rewriter {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Rewriter {
    async fn start(upstream: u16, from: &[u8], to: &[u8]) -> anyhow::Result<Rewriter> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (from, to) = (from.to_vec(), to.to_vec());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (from, to) = (from.clone(), to.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upward = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    });
                    let _ = rewrite(&mut server_read, &mut client_write, &from, &to).await;
                    upward.abort();
                });
            }
        });
        Ok(Rewriter { port, task })
    }

    /// The source as seen through the rewriter (no TLS, so the rows can be read).
    fn dsn(&self) -> anyhow::Result<Dsn> {
        Ok(Dsn::parse(&format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
            self.port
        ))?)
    }
}

impl Drop for Rewriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies the server's messages (type byte, length, body) to the client, rewriting data rows.
async fn rewrite(
    server: &mut (impl AsyncRead + Unpin),
    client: &mut (impl AsyncWrite + Unpin),
    from: &[u8],
    to: &[u8],
) -> anyhow::Result<()> {
    loop {
        let mut head = [0_u8; 5];
        server.read_exact(&mut head).await?;
        let len = usize::try_from(u32::from_be_bytes([head[1], head[2], head[3], head[4]]))?;
        let mut body = vec![0_u8; len.saturating_sub(4)];
        server.read_exact(&mut body).await?;
        if head[0] == b'D' {
            body = rewrite_row(&body, from, to)?;
            let len = u32::try_from(body.len() + 4)?;
            head[1..].copy_from_slice(&len.to_be_bytes());
        }
        client.write_all(&head).await?;
        client.write_all(&body).await?;
    }
}

/// A `DataRow` body with each field equal to `from` replaced by `to`.
fn rewrite_row(body: &[u8], from: &[u8], to: &[u8]) -> anyhow::Result<Vec<u8>> {
    let count = u16::from_be_bytes([body[0], body[1]]);
    let mut out = body[..2].to_vec();
    let mut at = 2;
    for _ in 0..count {
        let len = i32::from_be_bytes(body[at..at + 4].try_into()?);
        at += 4;
        let Ok(len) = usize::try_from(len) else {
            out.extend_from_slice(&len.to_be_bytes());
            continue;
        };
        let field = &body[at..at + len];
        at += len;
        let field = if field == from { to } else { field };
        out.extend_from_slice(&i32::try_from(field.len())?.to_be_bytes());
        out.extend_from_slice(field);
    }
    Ok(out)
}

/// Every file and directory under `dir`, relative, sorted.
fn tree(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path.clone());
            }
            found.push(path.strip_prefix(dir)?.display().to_string());
        }
    }
    found.sort();
    Ok(found)
}

/// `../victim` (would delete a file beside the copy: the server finds no such file, and a
/// vanished file is removed from the copy), an absolute path to an empty file's entry (would
/// truncate any file the client may write), and `..` inside a directory's name: each is
/// refused, and the files outside the copy are untouched.
#[tokio::test]
async fn hostile_file_names_are_refused() -> anyhow::Result<()> {
    let source = support::source().await?;
    // An empty file, so the entry's file is created before any chunk is fetched.
    std::fs::write(source.data_dir().join("empty_file"), "")?;
    let scratch = Scratch::new("copy")?;
    let outside = scratch
        .path()
        .parent()
        .expect("scratch parent")
        .to_path_buf();
    let victim = outside.join("victim");
    std::fs::write(&victim, "precious")?;
    let absolute = outside.join("absolute victim");
    std::fs::write(&absolute, "precious too")?;

    let cases: [(&[u8], Vec<u8>, &str); 3] = [
        (b"PG_VERSION", b"../victim".to_vec(), "a `..` component"),
        (
            b"empty_file",
            absolute.display().to_string().into_bytes(),
            "absolute",
        ),
        (
            b"pg_notify",
            b"pg_notify/../../made".to_vec(),
            "a `..` component",
        ),
    ];
    for (from, to, reason) in cases {
        let rewriter = Rewriter::start(source.port(), from, &to).await?;
        let err = pgq_basebackup::backup(BackupOptions::new(rewriter.dsn()?, scratch.path()))
            .await
            .expect_err("a hostile name must be refused");
        let Error::UnsafeName { path, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(path.as_bytes(), to.as_slice());
        let text = err.to_string();
        assert!(
            text.contains(&format!("refused file name \"{path}\" from the source"))
                && text.contains(reason),
            "{text}"
        );
        assert_eq!(std::fs::read_to_string(&victim)?, "precious");
        assert_eq!(std::fs::read_to_string(&absolute)?, "precious too");
        assert_eq!(
            tree(&outside)?,
            [
                "absolute victim",
                "copy",
                "copy/pg_wal",
                "copy/pg_wal/archive_status",
                "copy/pgq_basebackup.chunks",
                "victim",
            ],
            "nothing but the WAL directory and the copy's marker is written"
        );
        std::fs::remove_dir_all(scratch.path())?;
    }
    Ok(())
}

/// Legal but awkward names (spaces, both quotes, a backslash, non-ASCII, a leading dash, a
/// line break) are copied byte for byte, and the copy verifies, with `pg_verifybackup` too. A
/// name that is not UTF-8 cannot be read back through the server's text-typed file functions:
/// it is refused by name, before anything is written for the listed files.
#[tokio::test]
async fn awkward_names_are_copied_and_non_utf8_is_refused_by_name() -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;

    let source = support::source().await?;
    let awkward = [
        ("my dir/it's \"quoted\" \\ é.txt", "one"),
        ("-rf", "two"),
        ("my dir/line\nbreak", "three"),
    ];
    std::fs::create_dir(source.data_dir().join("my dir"))?;
    for (name, text) in awkward {
        std::fs::write(source.data_dir().join(name), text)?;
    }
    let scratch = Scratch::new("copy")?;
    pgq_basebackup::backup(BackupOptions::new(support::dsn(&source)?, scratch.path())).await?;
    for (name, text) in awkward {
        assert_eq!(std::fs::read_to_string(scratch.path().join(name))?, text);
    }
    let report = pgq_basebackup::verify(scratch.path())?;
    assert!(report.is_ok(), "{:?}", report.problems);
    support::assert_pg_verifybackup_accepts(scratch.path()).await?;

    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9.conf");
    std::fs::write(source.data_dir().join("my dir").join(latin1), "four")?;
    let other = Scratch::new("other")?;
    let err = pgq_basebackup::backup(BackupOptions::new(support::dsn(&source)?, other.path()))
        .await
        .expect_err("a name that is not UTF-8");
    assert!(matches!(err, Error::UnsafeName { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(
            "refused file name \"my dir/caf\\xe9.conf\" from the source: not UTF-8: the server \
             reads files by names given as text"
        ),
        "{err}"
    );
    assert!(!other.path().join("my dir").exists());
    assert!(!other.path().join("PG_VERSION").exists());
    Ok(())
}

/// A database owner who puts a schema of theirs before `pg_catalog` (`ALTER DATABASE ... SET
/// search_path`), with look-alike operators, functions and a `text` type that note each call,
/// gets none of them run by a backup that connects to that database as a superuser: every
/// statement the backup sends names `pg_catalog`'s objects.
#[tokio::test]
async fn owner_objects_on_the_search_path_never_run() -> anyhow::Result<()> {
    let (_source, admin, client) = support::connected_source().await?;
    client.batch_execute("CREATE ROLE owner LOGIN").await?;
    client
        .batch_execute("CREATE DATABASE app OWNER owner")
        .await?;
    let owner = admin.with_dbname("app").with_user("owner");
    owner
        .connect()
        .await?
        .batch_execute(
            "CREATE SCHEMA evil;
             CREATE TABLE evil.calls (what text, by_role text DEFAULT current_user,
                                      query text DEFAULT current_query());
             CREATE FUNCTION evil.note(what pg_catalog.text) RETURNS boolean LANGUAGE sql
               AS $$ INSERT INTO evil.calls (what) VALUES (what) RETURNING true $$;
             CREATE FUNCTION evil.name_eq(name, name) RETURNS boolean LANGUAGE sql
               AS $$ SELECT evil.note('=(name)') AND pg_catalog.nameeq($1, $2) $$;
             CREATE OPERATOR evil.= (LEFTARG = name, RIGHTARG = name, FUNCTION = evil.name_eq);
             CREATE FUNCTION evil.text_eq(pg_catalog.text, pg_catalog.text) RETURNS boolean
               LANGUAGE sql AS $$ SELECT evil.note('=(text)') AND pg_catalog.texteq($1, $2) $$;
             CREATE OPERATOR evil.= (LEFTARG = pg_catalog.text, RIGHTARG = pg_catalog.text,
                                     FUNCTION = evil.text_eq);
             CREATE FUNCTION evil.text_ne(pg_catalog.text, pg_catalog.text) RETURNS boolean
               LANGUAGE sql AS $$ SELECT evil.note('<>') AND pg_catalog.textne($1, $2) $$;
             CREATE OPERATOR evil.<> (LEFTARG = pg_catalog.text, RIGHTARG = pg_catalog.text,
                                      FUNCTION = evil.text_ne);
             CREATE FUNCTION evil.cat(pg_catalog.text, pg_catalog.text) RETURNS pg_catalog.text
               LANGUAGE sql AS $$ SELECT CASE WHEN evil.note('||')
                                              THEN pg_catalog.textcat($1, $2) END $$;
             CREATE OPERATOR evil.|| (LEFTARG = pg_catalog.text, RIGHTARG = pg_catalog.text,
                                      FUNCTION = evil.cat);
             CREATE FUNCTION evil.like(pg_catalog.text, pg_catalog.text) RETURNS boolean
               LANGUAGE sql AS $$ SELECT evil.note('~~') AND pg_catalog.textlike($1, $2) $$;
             CREATE OPERATOR evil.~~ (LEFTARG = pg_catalog.text, RIGHTARG = pg_catalog.text,
                                      FUNCTION = evil.like);
             CREATE FUNCTION evil.unnest(pg_catalog.text[]) RETURNS SETOF pg_catalog.text
               LANGUAGE sql AS $$ SELECT evil.note('unnest'); SELECT pg_catalog.unnest($1) $$;
             CREATE DOMAIN evil.text AS pg_catalog.text CHECK (evil.note('text'));
             ALTER DATABASE app SET search_path = evil, pg_catalog;",
        )
        .await?;
    // Each call noted in the owner's table, as (what, by whom, in which statement); emptied.
    let calls = || async {
        let client = owner.connect().await?;
        let rows = client
            .query("SELECT what, by_role, query FROM evil.calls", &[])
            .await?;
        client.batch_execute("TRUNCATE evil.calls").await?;
        let calls: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        anyhow::Ok(calls)
    };
    // The trap works: a superuser's unqualified cast in that database runs the owner's code.
    admin
        .with_dbname("app")
        .connect()
        .await?
        .batch_execute("SELECT 'x'::text")
        .await?;
    assert_eq!(
        calls().await?,
        [(
            "text".to_owned(),
            "postgres".to_owned(),
            "SELECT 'x'::text".to_owned()
        )]
    );

    let scratch = Scratch::new("copy")?;
    let mut opts = BackupOptions::new(admin.with_dbname("app"), scratch.path());
    opts.standby = true;
    opts.jobs = 2;
    pgq_basebackup::backup(opts).await?;
    assert_eq!(calls().await?, []);
    assert!(pgq_basebackup::verify(scratch.path())?.is_ok());
    Ok(())
}
