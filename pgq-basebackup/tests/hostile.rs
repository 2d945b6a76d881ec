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
