//! Tests of [`Dsn`](super::Dsn): both syntaxes, the environment and libpq's defaults, the
//! password file and the TLS settings.

use std::ffi::OsString;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::config::Host;

use super::settings::DEFAULT_SOCKET_DIR;
use super::*;

/// Serializes the tests that touch the process environment.
static ENV_LOCK: Mutex<()> = Mutex::new(());

/// Holds the environment lock with every variable the module reads cleared, `USER=tester`
/// and `HOME` an empty directory; restores the old values on drop.
struct TestEnv {
    saved: Vec<(&'static str, Option<OsString>)>,
    home: PathBuf,
    _lock: MutexGuard<'static, ()>,
}

impl TestEnv {
    fn new(vars: &[(&str, &str)]) -> TestEnv {
        let lock = ENV_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let names = KEYWORDS.iter().filter_map(|(_, var)| *var).chain([
            "PGQ_DSN",
            "DATABASE_URL",
            "USER",
            "LOGNAME",
            "HOME",
        ]);
        let saved = names.map(|name| (name, std::env::var_os(name))).collect();
        let home = temp_dir();
        let env = TestEnv {
            saved,
            home,
            _lock: lock,
        };
        for (name, _) in &env.saved {
            std::env::remove_var(name);
        }
        std::env::set_var("USER", "tester");
        std::env::set_var("HOME", &env.home);
        for (name, value) in vars {
            std::env::set_var(name, value);
        }
        env
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for (name, value) in &self.saved {
            match value {
                Some(value) => std::env::set_var(name, value),
                None => std::env::remove_var(name),
            }
        }
        let _ = fs::remove_dir_all(&self.home);
    }
}

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "pgq-dsn-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn tcp_hosts(dsn: &Dsn) -> Vec<String> {
    dsn.config()
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => format!("unix:{}", path.display()),
        })
        .collect()
}

fn password(dsn: &Dsn) -> Option<&str> {
    dsn.config()
        .get_password()
        .map(|p| std::str::from_utf8(p).unwrap())
}

fn reason(err: Error) -> String {
    match err {
        Error::InvalidDsn { reason } | Error::Tls { reason } => reason,
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn keyword_value_form() {
    let _env = TestEnv::new(&[]);
    let dsn = Dsn::parse(
        "host=db1 port=6543 dbname=app user=alice password=secret sslmode=require \
         application_name=ticker connect_timeout=10 options='-c search_path=x'",
    )
    .unwrap();
    assert_eq!(tcp_hosts(&dsn), ["db1"]);
    assert_eq!(dsn.config().get_ports(), [6543]);
    assert_eq!(dsn.dbname(), "app");
    assert_eq!(dsn.user(), "alice");
    assert_eq!(dsn.config().get_user(), Some("alice"));
    assert_eq!(password(&dsn), Some("secret"));
    assert_eq!(dsn.ssl_mode(), SslMode::Require);
    assert_eq!(
        dsn.config().get_ssl_mode(),
        tokio_postgres::config::SslMode::Require
    );
    assert_eq!(dsn.config().get_application_name(), Some("ticker"));
    assert_eq!(dsn.config().get_options(), Some("-c search_path=x"));
    assert_eq!(
        dsn.config().get_connect_timeout(),
        Some(&Duration::from_secs(10))
    );
    let from_str: Dsn = "dbname=other".parse().unwrap();
    assert_eq!(from_str.dbname(), "other");
}

#[test]
fn keepalives_on_by_default() {
    let _env = TestEnv::new(&[]);
    let config = Dsn::parse("host=db1").unwrap().config().clone();
    assert!(config.get_keepalives());
    assert_eq!(config.get_keepalives_idle(), Duration::from_secs(60));
    assert_eq!(
        config.get_keepalives_interval(),
        Some(Duration::from_secs(10))
    );
    assert_eq!(config.get_keepalives_retries(), Some(6));
    assert_eq!(
        config.get_tcp_user_timeout(),
        Some(&Duration::from_secs(120))
    );
    assert!(
        !Dsn::parse("host=db1")
            .unwrap()
            .to_string()
            .contains("keepalive"),
        "defaults are not shown as if the user had set them"
    );
}

#[test]
fn keepalive_settings_in_both_forms() {
    let _env = TestEnv::new(&[]);
    for text in [
        "host=db1 keepalives_idle=5 keepalives_interval=2 keepalives_count=3 \
         tcp_user_timeout=4500",
        "postgres://db1/?keepalives_idle=5&keepalives_interval=2&keepalives_count=3\
         &tcp_user_timeout=4500",
    ] {
        let config = Dsn::parse(text).unwrap().config().clone();
        assert!(config.get_keepalives(), "{text}");
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(5));
        assert_eq!(
            config.get_keepalives_interval(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(config.get_keepalives_retries(), Some(3));
        assert_eq!(
            config.get_tcp_user_timeout(),
            Some(&Duration::from_millis(4500))
        );
    }
    let off = Dsn::parse("postgres://db1/?keepalives=0").unwrap();
    assert!(!off.config().get_keepalives());
    let os = Dsn::parse(
        "host=db1 keepalives_idle=0 keepalives_interval=0 keepalives_count=0 \
         tcp_user_timeout=0",
    )
    .unwrap();
    let config = os.config();
    assert_eq!(config.get_keepalives_idle(), Duration::from_secs(7200));
    assert_eq!(config.get_keepalives_interval(), None);
    assert_eq!(config.get_keepalives_retries(), None);
    assert_eq!(config.get_tcp_user_timeout(), None);

    for (text, expected) in [
        (
            "keepalives_idle=-1",
            r#"invalid keepalives_idle value "-1""#,
        ),
        (
            "keepalives_interval=1s",
            r#"invalid keepalives_interval value "1s""#,
        ),
        (
            "keepalives_count=99999999999",
            r#"invalid keepalives_count value "99999999999""#,
        ),
        (
            "tcp_user_timeout=soon",
            r#"invalid tcp_user_timeout value "soon""#,
        ),
        ("keepalives=yes", r#"invalid keepalives value "yes""#),
    ] {
        let err = reason(Dsn::parse(&format!("host=db1 {text}")).unwrap_err());
        assert_eq!(err, expected, "{text}");
    }
}

#[test]
fn pinned_search_path_keeps_the_user_options() {
    let _env = TestEnv::new(&[]);
    let pinned = Dsn::parse("host=db1 password=hunter2")
        .unwrap()
        .with_pinned_search_path();
    assert_eq!(
        pinned.config().get_options(),
        Some("-c search_path=pg_catalog,pg_temp")
    );
    assert_eq!(password(&pinned), Some("hunter2"));
    let user = Dsn::parse("host=db1 options='-c work_mem=64MB -c search_path=app'").unwrap();
    let pinned = user.with_pinned_search_path();
    let expected = "-c work_mem=64MB -c search_path=app -c search_path=pg_catalog,pg_temp";
    assert_eq!(pinned.config().get_options(), Some(expected));
    assert_eq!(
        user.config().get_options(),
        Some("-c work_mem=64MB -c search_path=app"),
        "the original is unchanged"
    );
    assert!(pinned
        .to_string()
        .contains(&format!("options='{expected}'")));
    assert_eq!(
        pinned.with_dbname("other").config().get_options(),
        Some(expected),
        "kept for another database"
    );
}

#[test]
fn libpq_quoting() {
    let pairs =
        parse_keyword_value(r"  a = 1 b='two words' c='it\'s' d=back\\slash e='' f=x\ y g='\\'")
            .unwrap();
    let expected = [
        ("a", "1"),
        ("b", "two words"),
        ("c", "it's"),
        ("d", r"back\slash"),
        ("e", ""),
        ("f", "x y"),
        ("g", r"\"),
    ];
    let got: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, expected);

    let err = reason(parse_keyword_value("host").map(|_| ()).unwrap_err());
    assert!(err.contains(r#"missing "=" after "host""#), "{err}");
    let err = reason(
        parse_keyword_value("password='abc")
            .map(|_| ())
            .unwrap_err(),
    );
    assert!(err.contains("unterminated quoted value"), "{err}");
    assert!(!err.contains("abc"), "{err}");
}

#[test]
fn url_form() {
    let _env = TestEnv::new(&[]);
    let dsn = Dsn::parse(
        "postgresql://al%40ice:p%3As%2Fs@db1:6543,db2/my%20db\
         ?sslmode=verify-full&application_name=a%26b",
    )
    .unwrap();
    assert_eq!(dsn.user(), "al@ice");
    assert_eq!(password(&dsn), Some("p:s/s"));
    assert_eq!(tcp_hosts(&dsn), ["db1", "db2"]);
    assert_eq!(dsn.config().get_ports(), [6543, 5432]);
    assert_eq!(dsn.dbname(), "my db");
    assert_eq!(dsn.ssl_mode(), SslMode::VerifyFull);
    assert_eq!(dsn.config().get_application_name(), Some("a&b"));

    let dsn = Dsn::parse("postgres://%2Fvar%2Frun%2Fpg:5433/db").unwrap();
    assert_eq!(tcp_hosts(&dsn), ["unix:/var/run/pg"]);
    assert_eq!(dsn.config().get_ports(), [5433]);
    assert_eq!(
        dsn.config().get_ssl_mode(),
        tokio_postgres::config::SslMode::Disable,
        "no TLS on Unix sockets"
    );

    let dsn = Dsn::parse("postgres://[::1]:5433/db?ssl=true&user=bob").unwrap();
    assert_eq!(tcp_hosts(&dsn), ["::1"]);
    assert_eq!(dsn.user(), "bob");
    assert_eq!(dsn.ssl_mode(), SslMode::Require);

    let dsn = Dsn::parse("postgres://").unwrap();
    assert_eq!(dsn.user(), "tester");
    assert_eq!(dsn.dbname(), "tester");
    let dsn = Dsn::parse("user='' dbname='' port=''").unwrap();
    assert_eq!((dsn.user(), dsn.dbname()), ("tester", "tester"));
    assert_eq!(dsn.config().get_ports(), [5432]);

    let err = reason(Dsn::parse("postgres://u:s%zzecret@h/db").unwrap_err());
    assert!(
        err.contains("invalid percent-encoding in URL password"),
        "{err}"
    );
    assert!(!err.contains("ecret"), "{err}");
    let err = reason(Dsn::parse("postgres://h/db?bogus=1").unwrap_err());
    assert!(
        err.contains(r#"unknown connection option "bogus""#),
        "{err}"
    );
    let err = reason(Dsn::parse("postgres://h/db?sslmode").unwrap_err());
    assert!(err.contains("missing key/value separator"), "{err}");
}

#[test]
fn unknown_and_unsupported_keys() {
    let _env = TestEnv::new(&[]);
    let err = reason(Dsn::parse("host=h colour=blue").unwrap_err());
    assert_eq!(err, r#"unknown connection option "colour""#);
    let err = reason(Dsn::parse("host=h service=x").unwrap_err());
    assert_eq!(err, r#"connection option "service" is not supported"#);
    let err = reason(Dsn::parse("host=h sslmode=sometimes").unwrap_err());
    assert!(err.starts_with(r#"invalid sslmode "sometimes""#), "{err}");
    let err = reason(Dsn::parse("host=h port=70000").unwrap_err());
    assert_eq!(err, r#"invalid port number "70000""#);
    let err = reason(Dsn::parse("host=a,b port=1,2,3").unwrap_err());
    assert_eq!(err, "2 host names but 3 ports");
}

#[test]
fn environment_fallbacks() {
    let _env = TestEnv::new(&[
        ("PGHOST", "envhost"),
        ("PGPORT", "7777"),
        ("PGUSER", "bob"),
        ("PGDATABASE", "bobdb"),
        ("PGPASSWORD", "envpw"),
        ("PGSSLMODE", "disable"),
    ]);
    let dsn = Dsn::parse("").unwrap();
    assert_eq!(tcp_hosts(&dsn), ["envhost"]);
    assert_eq!(dsn.config().get_ports(), [7777]);
    assert_eq!(dsn.user(), "bob");
    assert_eq!(dsn.dbname(), "bobdb");
    assert_eq!(password(&dsn), Some("envpw"));
    assert_eq!(dsn.ssl_mode(), SslMode::Disable);

    let dsn = Dsn::parse("host=h user=carol port=1").unwrap();
    assert_eq!(tcp_hosts(&dsn), ["h"]);
    assert_eq!(dsn.config().get_ports(), [1]);
    assert_eq!(dsn.user(), "carol");
    assert_eq!(dsn.dbname(), "bobdb");
}

#[test]
fn libpq_defaults() {
    let _env = TestEnv::new(&[]);
    let dsn = Dsn::parse("").unwrap();
    let expected_host = if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
        format!("unix:{DEFAULT_SOCKET_DIR}")
    } else {
        "localhost".to_owned()
    };
    assert_eq!(tcp_hosts(&dsn), [expected_host]);
    assert_eq!(dsn.config().get_ports(), [5432]);
    assert_eq!(dsn.user(), "tester");
    assert_eq!(dsn.dbname(), "tester");
    assert_eq!(dsn.ssl_mode(), SslMode::Prefer);
    assert_eq!(password(&dsn), None);

    std::env::remove_var("USER");
    let err = reason(Dsn::parse("host=h").unwrap_err());
    assert!(err.contains("no user name given"), "{err}");

    let dsn = Dsn::parse("hostaddr=10.1.2.3 user=u").unwrap();
    assert_eq!(tcp_hosts(&dsn), ["10.1.2.3"]);
    assert!(dsn.config().get_hostaddrs().is_empty());
    let dsn = Dsn::parse("host=db.example hostaddr=10.1.2.3 user=u").unwrap();
    assert_eq!(tcp_hosts(&dsn), ["db.example"]);
    assert_eq!(
        dsn.config().get_hostaddrs(),
        ["10.1.2.3".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn from_env_precedence() {
    let env = TestEnv::new(&[]);
    assert!(Dsn::from_env().unwrap().is_none());
    std::env::set_var("PGDATABASE", "fromvars");
    assert_eq!(Dsn::from_env().unwrap().unwrap().dbname(), "fromvars");
    std::env::set_var("DATABASE_URL", "postgres://h/fromurl");
    assert_eq!(Dsn::from_env().unwrap().unwrap().dbname(), "fromurl");
    std::env::set_var("PGQ_DSN", "host=h dbname=frompgq");
    assert_eq!(Dsn::from_env().unwrap().unwrap().dbname(), "frompgq");
    std::env::set_var("PGQ_DSN", "host=h nope=1");
    let err = reason(Dsn::from_env().unwrap_err());
    assert_eq!(err, r#"PGQ_DSN: unknown connection option "nope""#);
    drop(env);
}

#[cfg(unix)]
#[test]
fn passfile_is_used_like_libpq() {
    let env = TestEnv::new(&[]);
    let pgpass = env.home.join(".pgpass");
    write_private(
        &pgpass,
        "db1:5432:app:alice:apppw\ndb1:*:other:*:otherpw\nlocalhost:5432:*:*:sockpw\n",
        0o600,
    );
    let dsn = Dsn::parse("host=db1 user=alice dbname=app").unwrap();
    assert_eq!(password(&dsn), Some("apppw"));
    assert_eq!(password(&dsn.with_dbname("other")), Some("otherpw"));
    assert_eq!(password(&dsn.with_dbname("third")), None);
    assert_eq!(password(&dsn.with_user("bob")), None);
    assert_eq!(dsn.with_user("bob").config().get_user(), Some("bob"));
    assert_eq!(
        password(&dsn.with_user("bob").with_dbname("other")),
        Some("otherpw")
    );
    let explicit = Dsn::parse("host=db1 user=alice dbname=app password=given").unwrap();
    assert_eq!(password(&explicit.with_dbname("other")), Some("given"));
    let socket = Dsn::parse(&format!("host={DEFAULT_SOCKET_DIR} user=u")).unwrap();
    assert_eq!(password(&socket), Some("sockpw"));

    write_private(&pgpass, "*:*:*:*:loose\n", 0o644);
    assert_eq!(password(&Dsn::parse("host=db1").unwrap()), None);

    let other = env.home.join("elsewhere");
    write_private(&other, "*:*:*:*:viafile\n", 0o600);
    std::env::set_var("PGPASSFILE", &other);
    assert_eq!(password(&Dsn::parse("host=db1").unwrap()), Some("viafile"));
    let dsn = Dsn::parse(&format!("host=db1 passfile='{}'", pgpass.display())).unwrap();
    assert_eq!(password(&dsn), None);
}

#[cfg(unix)]
#[test]
fn settings_and_password_source() {
    let env = TestEnv::new(&[("PGSSLROOTCERT", "/env/root.crt")]);
    let file = env.home.join("pw");
    write_private(&file, "db1:*:*:alice:fromfile\n", 0o600);
    let dsn = Dsn::parse(&format!(
        "host=db1 user=alice sslmode=verify-full sslkey='/k ey' passfile='{}'",
        file.display()
    ))
    .unwrap();
    assert_eq!(dsn.setting("sslmode"), Some("verify-full"));
    assert_eq!(dsn.setting("sslkey"), Some("/k ey"));
    assert_eq!(dsn.setting("sslrootcert"), Some("/env/root.crt"));
    assert_eq!(dsn.setting("port"), Some("5432"));
    assert_eq!(dsn.setting("sslcert"), None);
    assert_eq!(dsn.setting("colour"), None);
    assert_eq!(dsn.setting("password"), None);
    assert_eq!(
        dsn.password_source(),
        Some(PasswordSource::File(file.clone()))
    );
    assert_eq!(dsn.with_user("nobody").password_source(), None);
    let given = Dsn::parse("host=db1 password=hunter2").unwrap();
    assert_eq!(given.password_source(), Some(PasswordSource::Given));
    assert_eq!(given.setting("password"), None);
    std::env::set_var("PGPASSWORD", "fromenv");
    assert_eq!(
        Dsn::parse("host=db1").unwrap().password_source(),
        Some(PasswordSource::Given)
    );
}

#[test]
fn display_and_debug_redact_the_password() {
    let _env = TestEnv::new(&[]);
    let dsn =
        Dsn::parse("host=db1 user=alice password=hunter2 dbname='my db' application_name='it\\'s'")
            .unwrap();
    let shown = dsn.to_string();
    assert_eq!(
        shown,
        r"host=db1 port=5432 user=alice password=******** dbname='my db' sslmode=prefer application_name='it\'s'"
    );
    let debug = format!("{dsn:?}");
    assert_eq!(debug, format!("Dsn({shown})"));
    assert!(!shown.contains("hunter2") && !debug.contains("hunter2"));
    let url = Dsn::parse("postgres://u:hunter2@h/db").unwrap();
    assert!(!format!("{url} {url:?}").contains("hunter2"));

    let again = Dsn::parse(&shown).unwrap();
    assert_eq!(again.dbname(), "my db");
    assert_eq!(again.config().get_application_name(), Some("it's"));
    let without_password = Dsn::parse("host=db1 user=alice").unwrap();
    assert!(!without_password.to_string().contains("password"));
}

#[test]
fn ssl_settings() {
    let env = TestEnv::new(&[]);
    let dsn = Dsn::parse("host=h sslrootcert=system").unwrap();
    assert_eq!(dsn.ssl_mode(), SslMode::VerifyFull);
    let err = reason(Dsn::parse("host=h sslrootcert=system sslmode=require").unwrap_err());
    assert!(err.contains("use verify-full"), "{err}");

    let err = reason(
        Dsn::parse("host=h sslmode=verify-ca")
            .unwrap()
            .pool(1)
            .unwrap_err(),
    );
    assert!(
        err.contains("sslmode=verify-ca needs a root certificate"),
        "{err}"
    );
    let missing = env.home.join("missing.crt");
    let err = reason(
        Dsn::parse(&format!(
            "host=h sslmode=verify-full sslrootcert={}",
            missing.display()
        ))
        .unwrap()
        .pool(1)
        .unwrap_err(),
    );
    assert!(
        err.starts_with(&format!("cannot open sslrootcert {}", missing.display())),
        "{err}"
    );
    let empty = env.home.join("empty.crt");
    fs::write(&empty, "not a certificate\n").unwrap();
    let err = reason(
        Dsn::parse(&format!(
            "host=h sslmode=require sslrootcert={}",
            empty.display()
        ))
        .unwrap()
        .pool(1)
        .unwrap_err(),
    );
    assert!(
        err.starts_with("no PEM certificates found in sslrootcert"),
        "{err}"
    );

    for mode in ["disable", "allow", "prefer", "require"] {
        let dsn = Dsn::parse(&format!("host=h sslmode={mode}")).unwrap();
        assert_eq!(dsn.ssl_mode().to_string(), mode);
        dsn.pool(2).unwrap();
    }
    Dsn::parse("host=h sslrootcert=system")
        .unwrap()
        .pool(1)
        .unwrap();
}
