//! `standby`: the copy streams from the source through its permanent slot, with the
//! connection settings it was taken with and no password.

use std::time::Duration;

use pgq_basebackup::BackupOptions;
use pgq_testkit::{Cluster, ClusterOptions, Deadline, SslFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::support::{self, Scratch};

const BIN: &str = env!("CARGO_BIN_EXE_pgq-basebackup");

#[tokio::test]
async fn copy_streams_from_the_source() -> anyhow::Result<()> {
    let (_source, dsn, client) = support::connected_source().await?;
    client
        .batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'before')")
        .await?;
    let scratch = Scratch::new("standby")?;

    // A standby backup that fails drops its permanent slot again.
    let killer = dsn.connect().await?;
    let mut opts = BackupOptions::new(dsn.clone(), scratch.path());
    opts.standby = true;
    opts.slot = Some("doomed".to_owned());
    opts.before_stop = Some(Box::new(move || {
        Box::pin(async move {
            killer
                .batch_execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                      WHERE query LIKE '%pg_ls_dir(t.path%' AND pid <> pg_backend_pid()",
                )
                .await
                .expect("terminating the backup session");
        })
    }));
    let result = pgq_basebackup::backup(opts).await;
    assert!(result.is_err(), "{result:?}");
    let slots: i64 = client
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await?
        .get(0);
    assert_eq!(slots, 0);

    let mut opts = BackupOptions::new(dsn.clone(), scratch.path());
    opts.standby = true;
    opts.force = true;
    opts.slot = Some("replica_1".to_owned());
    opts.jobs = 2;
    let summary = pgq_basebackup::backup(opts).await?;
    assert_eq!(summary.slot.as_deref(), Some("replica_1"));
    assert!(scratch.path().join("standby.signal").is_file());
    let auto = std::fs::read_to_string(scratch.path().join("postgresql.auto.conf"))?;
    assert!(auto.contains("primary_slot_name = 'replica_1'"), "{auto}");
    let report = pgq_basebackup::verify(scratch.path())?;
    assert!(report.is_ok(), "{:?}", report.problems);

    let replica = Cluster::start_existing(scratch.path(), ClusterOptions::default()).await?;
    let replica_client = pgq_core::Dsn::parse(&replica.dsn("postgres"))?
        .connect()
        .await?;
    client
        .execute("INSERT INTO notes VALUES (2, 'after')", &[])
        .await?;
    let deadline = Deadline::after(Duration::from_secs(30));
    loop {
        let row = replica_client
            .query_one(
                "SELECT pg_is_in_recovery(), (SELECT body FROM notes WHERE id = 2), \
                        (SELECT status FROM pg_stat_wal_receiver)",
                &[],
            )
            .await?;
        let (recovering, body, status): (bool, Option<String>, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        assert!(recovering, "the copy must run as a standby");
        if body.as_deref() == Some("after") && status.as_deref() == Some("streaming") {
            break;
        }
        deadline
            .pause(format!(
                "the row to be replicated (receiver {status:?})\n{}",
                replica.server_log()
            ))
            .await?;
    }
    let active: bool = client
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'replica_1'",
            &[],
        )
        .await?
        .get(0);
    assert!(active, "the standby streams through its slot");
    Ok(())
}

/// A CA, and a certificate it signs for `names` (a server's, or a client's when `names` is
/// empty), as PEM: (CA certificate, certificate, key).
fn certificates(names: &[&str]) -> anyhow::Result<(String, SslFiles, SslFiles)> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pgq test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let sign = |names: Vec<String>, purpose| -> anyhow::Result<SslFiles> {
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "pgq test");
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        Ok(SslFiles {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    };
    let server = sign(
        names.iter().map(|n| (*n).to_owned()).collect(),
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let client = sign(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
    Ok((ca.pem(), server, client))
}

/// Writes a file the server's user (`postgres`, as the tests run as root) may read.
async fn write_for_server(path: &std::path::Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    support::chown_postgres(path).await
}

/// A `verify-full` source with a root certificate, a client certificate and key, channel
/// binding (`prefer`: pgq-core's TLS stack cannot do `require` yet), SCRAM, a role whose name needs quoting, and the password in a password
/// file: `primary_conninfo` keeps every one of those settings as given (the server itself
/// reads them back), names the password file, holds no password, and the standby streams
/// over TLS with them. A password given in the connection string is not written either, and
/// the command says so.
#[tokio::test]
async fn standby_keeps_tls_settings_and_writes_no_password() -> anyhow::Result<()> {
    const SECRET: &str = "S3cret-of-the-replication-role";
    let (ca, server, client) = certificates(&["localhost"])?;
    let settings = [
        ("wal_level", "replica"),
        ("max_wal_senders", "4"),
        ("max_replication_slots", "4"),
    ];
    let source = Cluster::start(ClusterOptions {
        ssl: Some(server),
        listen_tcp: true,
        settings: settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    })
    .await?;
    let admin = pgq_core::Dsn::parse(&source.dsn("postgres"))?
        .connect()
        .await?;
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"o'neil \\ rep\" LOGIN SUPERUSER PASSWORD '{SECRET}';
             CREATE TABLE notes (id int PRIMARY KEY, body text);"
        ))
        .await?;
    let hba = source.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba)?;
    std::fs::write(
        &hba,
        format!(
            "hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostssl replication all 127.0.0.1/32 scram-sha-256\n{rules}"
        ),
    )?;
    // A restart, not a reload: a reload takes effect at some later moment.
    source.restart().await?;
    let admin = pgq_core::Dsn::parse(&source.dsn("postgres"))?
        .connect()
        .await?;

    let scratch = Scratch::new("standby")?;
    let files = scratch.path().parent().expect("scratch parent");
    let (ca_file, cert_file, key_file, passfile) = (
        files.join("root ca.crt"),
        files.join("client.crt"),
        files.join("client.key"),
        files.join("pgpass"),
    );
    write_for_server(&ca_file, &ca, 0o644).await?;
    write_for_server(&cert_file, &client.cert_pem, 0o644).await?;
    write_for_server(&key_file, &client.key_pem, 0o600).await?;
    write_for_server(&passfile, &format!("*:*:*:*:{SECRET}\n"), 0o600).await?;
    let tls = format!(
        "host=localhost port={} user='o\\'neil \\\\ rep' dbname=postgres sslmode=verify-full \
         sslrootcert='{}' sslcert='{}' sslkey='{}' channel_binding=prefer",
        source.port(),
        ca_file.display(),
        cert_file.display(),
        key_file.display()
    );
    let dsn = pgq_core::Dsn::parse(&format!("{tls} passfile='{}'", passfile.display()))?;

    let mut opts = BackupOptions::new(dsn, scratch.path());
    opts.standby = true;
    opts.slot = Some("tls_standby".to_owned());
    let summary = pgq_basebackup::backup(opts).await?;
    assert!(!summary.password_left_out);
    assert_eq!(
        support::files_containing(scratch.path(), SECRET.as_bytes())?,
        Vec::<std::path::PathBuf>::new()
    );

    let replica = Cluster::start_existing(scratch.path(), ClusterOptions::default()).await?;
    let replica_client = pgq_core::Dsn::parse(&replica.dsn("postgres"))?
        .connect()
        .await?;
    let conninfo: String = replica_client
        .query_one("SELECT pg_catalog.current_setting('primary_conninfo')", &[])
        .await?
        .get(0);
    let written = pgq_core::Dsn::parse(&conninfo)?;
    assert_eq!(written.user(), "o'neil \\ rep");
    for (key, value) in [
        ("host", "localhost".to_owned()),
        ("sslmode", "verify-full".to_owned()),
        ("sslrootcert", ca_file.display().to_string()),
        ("sslcert", cert_file.display().to_string()),
        ("sslkey", key_file.display().to_string()),
        ("channel_binding", "prefer".to_owned()),
        ("passfile", passfile.display().to_string()),
    ] {
        assert_eq!(
            written.setting(key),
            Some(value.as_str()),
            "{key} in {conninfo}"
        );
    }
    assert!(!conninfo.contains("password="), "{conninfo}");

    admin
        .execute("INSERT INTO notes VALUES (1, 'streamed')", &[])
        .await?;
    let deadline = Deadline::after(Duration::from_secs(30));
    loop {
        let body: Option<String> = replica_client
            .query_one("SELECT (SELECT body FROM notes WHERE id = 1)", &[])
            .await?
            .get(0);
        if body.as_deref() == Some("streamed") {
            break;
        }
        deadline
            .pause(format!("the row to be streamed\n{}", replica.server_log()))
            .await?;
    }
    let row = admin
        .query_one(
            "SELECT r.usename::text, s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "o'neil \\ rep");
    assert!(row.get::<_, bool>(1), "the standby streams over TLS");

    // A password in the connection string: not written, and the command warns.
    let other = Scratch::new("given")?;
    let (code, out, err) = pgq_testkit::run(
        BIN,
        &[
            "backup",
            "-R",
            "-S",
            "given_inline",
            "--no-progress",
            "-d",
            &format!("{tls} password={SECRET}"),
            "-D",
            &other.path().display().to_string(),
        ],
    )
    .await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: the connection string's password is not written into the copy"),
        "{err}"
    );
    assert!(!format!("{out}{err}").contains(SECRET));
    assert_eq!(
        support::files_containing(other.path(), SECRET.as_bytes())?,
        Vec::<std::path::PathBuf>::new()
    );
    let auto = std::fs::read_to_string(other.path().join("postgresql.auto.conf"))?;
    assert!(
        auto.contains("sslmode=''verify-full''") && !auto.contains("password="),
        "{auto}"
    );
    Ok(())
}
