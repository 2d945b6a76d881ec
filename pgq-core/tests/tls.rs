//! `sslmode` against a private TLS cluster whose certificate names only `localhost`.

use std::path::Path;

use anyhow::{Context as _, Result};
use pgq_core::{Dsn, SslMode};
use pgq_testkit::{Cluster, ClusterOptions, SslFiles, TempDir};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A CA and its key.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn make_ca(name: &str) -> Result<Ca> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Ca { cert, key })
}

/// A server certificate for `names` signed by `ca`.
fn server_files(ca: &Ca, names: &[&str]) -> Result<SslFiles> {
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "pgq test server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca.cert, &ca.key)?;
    Ok(SslFiles {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Connects and reports whether the session uses TLS.
async fn ssl_in_use(dsn: &str) -> Result<bool> {
    let dsn = Dsn::parse(dsn)?;
    let client = dsn.connect().await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The whole error chain of a connection attempt that must fail.
async fn refusal(dsn: &str) -> Result<String> {
    let dsn = Dsn::parse(dsn)?;
    match dsn.connect().await {
        Ok(_) => anyhow::bail!("{dsn} connected but should have been refused"),
        Err(err) => Ok(format!("{:#}", anyhow::Error::from(err))),
    }
}

fn root(path: &Path) -> String {
    format!("sslrootcert='{}'", path.display())
}

async fn sslmodes() -> Result<()> {
    let ca = make_ca("pgq test CA")?;
    let other_ca = make_ca("some other CA")?;
    let cluster = Cluster::start(ClusterOptions {
        ssl: Some(server_files(&ca, &["localhost"])?),
        listen_tcp: true,
        ..Default::default()
    })
    .await?;
    let ip_dsn = cluster
        .tcp_dsn("postgres")
        .context("the cluster listens on TCP")?;
    let name_dsn = format!("{ip_dsn} host=localhost hostaddr=127.0.0.1");
    let dir = TempDir::new("pgq-core-tls")?;
    let ca_file = root(&dir.write("ca.crt", &ca.cert.pem())?);
    let other_ca_file = root(&dir.write("other-ca.crt", &other_ca.cert.pem())?);

    assert!(!ssl_in_use(&format!("{ip_dsn} sslmode=disable")).await?);
    assert!(ssl_in_use(&format!("{ip_dsn} sslmode=prefer")).await?);
    assert!(ssl_in_use(&format!("{ip_dsn} sslmode=require")).await?);

    let full = format!("{name_dsn} sslmode=verify-full {ca_file}");
    assert!(
        ssl_in_use(&full).await?,
        "verify-full with the right CA and name"
    );
    let pool = Dsn::parse(&full)?.pool(2)?;
    let pooled = pool.get().await?;
    let row = pooled
        .query_one(
            "SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()",
            &[],
        )
        .await?;
    assert!(row.get::<_, bool>(0), "pooled connections use TLS too");

    let err = refusal(&format!("{name_dsn} sslmode=verify-full {other_ca_file}")).await?;
    assert!(
        err.contains("invalid peer certificate") && err.contains("UnknownIssuer"),
        "wrong CA: {err}"
    );

    let err = refusal(&format!("{ip_dsn} sslmode=verify-full {ca_file}")).await?;
    assert!(
        err.contains(r#"certificate not valid for name "127.0.0.1""#) && err.contains("localhost"),
        "wrong name: {err}"
    );

    let ca_only = format!("{ip_dsn} sslmode=verify-ca {ca_file}");
    assert_eq!(Dsn::parse(&ca_only)?.ssl_mode(), SslMode::VerifyCa);
    assert!(ssl_in_use(&ca_only).await?, "verify-ca ignores the name");
    let err = refusal(&format!("{ip_dsn} sslmode=verify-ca {other_ca_file}")).await?;
    assert!(err.contains("UnknownIssuer"), "verify-ca, wrong CA: {err}");

    let err = refusal(&format!("{ip_dsn} sslmode=require {other_ca_file}")).await?;
    assert!(
        err.contains("UnknownIssuer"),
        "require with a root certificate checks the chain: {err}"
    );
    Ok(())
}

#[tokio::test]
async fn sslmodes_against_a_tls_cluster() -> Result<()> {
    let _serial = pgq_testkit::serial().await;
    sslmodes().await
}
