//! What every connection made through `Dsn` gets: TCP keepalives and `tcp_user_timeout` that
//! notice a silent peer, and (for daemons) a `search_path` the database owner cannot change.
//!
//! The dead-peer test needs a link that really drops packets: a user-space proxy that stops
//! forwarding would not do (its kernel still answers keepalive probes). So the server side of
//! the connection is a forwarder in a network namespace of its own, reached over a veth pair;
//! taking the namespace's end of the link down makes every packet to it vanish.

use std::io::{BufRead as _, BufReader};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use pgq_core::Dsn;
use pgq_testkit::{Cluster, ClusterOptions, Deadline, TestDb};

/// Set (to `listen-address target-socket`) in the forwarder child.
const FORWARD: &str = "PGQ_CORE_NETNS_FORWARD";
/// Set to 1 (CI does) to fail instead of skipping where network namespaces are unavailable.
const REQUIRE_NETNS: &str = "PGQ_REQUIRE_NETNS";
/// The `application_name` of the connections the test cuts off, to clean up their backends.
const APP: &str = "pgq-dead-peer-test";

/// Runs `ip` with `args`; `Err` carries what it printed.
async fn ip(args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .context("running ip (iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A network namespace joined to this one by a veth pair; removed on drop.
struct Netns {
    name: String,
    here: String,
    inside: String,
    peer_ip: String,
}

impl Netns {
    /// Creates the namespace, or says why it cannot. First removes those left by test
    /// processes that were killed.
    async fn create() -> Result<Netns> {
        if let Ok(out) = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or_default();
                let owner = name
                    .strip_prefix("pgqka")
                    .and_then(|pid| pid.parse::<u32>().ok());
                if owner.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
                {
                    let _ = ip(&["netns", "delete", name]).await;
                    let _ = ip(&["link", "delete", &format!("{name}h")]).await;
                }
            }
        }
        let pid = std::process::id();
        let name = format!("pgqka{pid}");
        // A /30 of its own per process in the benchmarking range 198.18.0.0/15, which no real
        // network uses.
        let net = format!("198.{}.{}", 18 + (pid >> 14) % 2, (pid >> 6) & 0xff);
        let host = (pid & 0x3f) * 4;
        let (here_ip, peer_ip) = (format!("{net}.{}", host + 1), format!("{net}.{}", host + 2));
        ip(&["netns", "add", &name]).await?;
        let netns = Netns {
            here: format!("{name}h"),
            inside: format!("{name}n"),
            name,
            peer_ip,
        };
        let ns = netns.name.as_str();
        ip(&[
            "link",
            "add",
            &netns.here,
            "type",
            "veth",
            "peer",
            "name",
            &netns.inside,
        ])
        .await?;
        ip(&["link", "set", &netns.inside, "netns", ns]).await?;
        ip(&["addr", "add", &format!("{here_ip}/30"), "dev", &netns.here]).await?;
        ip(&["link", "set", &netns.here, "up"]).await?;
        let peer_cidr = format!("{}/30", netns.peer_ip);
        ip(&["-n", ns, "addr", "add", &peer_cidr, "dev", &netns.inside]).await?;
        ip(&["-n", ns, "link", "set", &netns.inside, "up"]).await?;
        ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
        Ok(netns)
    }

    /// Takes the namespace's end of the link down: from now on every packet to it is dropped,
    /// without an answer of any kind.
    async fn cut(&self) -> Result<()> {
        ip(&["-n", &self.name, "link", "set", &self.inside, "down"]).await
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Either end's deletion deletes the pair; the namespace goes once no process is in it.
        for args in [
            ["link", "delete", self.here.as_str()],
            ["netns", "delete", self.name.as_str()],
        ] {
            let _ = std::process::Command::new("ip").args(args).status();
        }
    }
}

/// The forwarder child: accepts TCP connections on the address given and relays each to the
/// server's unix socket. Does nothing unless started by `a_silent_peer_is_noticed_in_time`.
#[test]
#[ignore = "the forwarder child of the dead-peer test"]
fn forwarder_child() -> Result<()> {
    let Ok(spec) = std::env::var(FORWARD) else {
        return Ok(());
    };
    let (listen, target) = spec.split_once(' ').context("listen and target")?;
    let listener = std::net::TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    println!("\nforwarding {listen}");
    for client in listener.incoming() {
        let client = client?;
        let server = UnixStream::connect(target).with_context(|| format!("connect {target}"))?;
        let (mut client_in, mut server_out) = (client.try_clone()?, server.try_clone()?);
        std::thread::spawn(move || std::io::copy(&mut client_in, &mut server_out));
        let (mut server_in, mut client_out) = (server, client);
        std::thread::spawn(move || std::io::copy(&mut server_in, &mut client_out));
    }
    Ok(())
}

/// Starts the forwarder child inside `netns`, relaying `peer_ip:port` to `socket`, and waits
/// until it listens.
fn spawn_forwarder(netns: &Netns, port: u16, socket: &str) -> Result<std::process::Child> {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &netns.name])
        .arg(std::env::current_exe()?)
        .args([
            "--exact",
            "connections::forwarder_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FORWARD, format!("{}:{port} {socket}", netns.peer_ip))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the forwarder in the namespace")?;
    let stdout = child.stdout.take().context("forwarder stdout")?;
    for line in BufReader::new(stdout).lines() {
        if line?.contains("forwarding ") {
            return Ok(child);
        }
    }
    anyhow::bail!("the forwarder exited before listening")
}

/// Kills the child on drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether the environment can run the namespace test; `Ok(None)` after a loud skip.
async fn netns_or_skip() -> Result<Option<Netns>> {
    match Netns::create().await {
        Ok(netns) => Ok(Some(netns)),
        Err(err) if std::env::var(REQUIRE_NETNS).is_ok_and(|v| v.trim() == "1") => {
            Err(err.context(format!("{REQUIRE_NETNS}=1 requires a network namespace")))
        }
        Err(err) => {
            eprintln!(
                "SKIPPED: a_silent_peer_is_noticed_in_time needs root and iproute2 to make a \
                 network namespace with a veth pair ({err:#}); set {REQUIRE_NETNS}=1 to fail \
                 instead"
            );
            Ok(None)
        }
    }
}

/// Whether the connections to `peer` have nothing unacknowledged in their send queues.
async fn all_acknowledged(peer: &str) -> Result<bool> {
    let out = tokio::process::Command::new("ss")
        .args(["-tnH", "dst", peer])
        .output()
        .await
        .context("running ss (iproute2)")?;
    let shown = String::from_utf8_lossy(&out.stdout);
    Ok(shown
        .lines()
        .all(|line| line.split_whitespace().nth(2) == Some("0")))
}

/// How long a statement took to fail with a closed connection after the link was cut, or
/// `None` if still waiting at `limit`.
async fn failure_time(
    statement: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    cut_at: Instant,
    limit: Duration,
) -> Result<Option<Duration>> {
    match tokio::time::timeout_at((cut_at + limit).into(), statement).await {
        Err(_) => Ok(None),
        Ok(joined) => match joined? {
            Ok(()) => anyhow::bail!("the statement succeeded over a cut link"),
            Err(err) if err.is_closed() => Ok(Some(cut_at.elapsed())),
            Err(err) => anyhow::bail!("expected the connection to be closed: {err:#}"),
        },
    }
}

/// Three connections through a link that is then cut, measured with real time:
/// - keepalives (1 s idle, 1 s apart, 2 probes; no user timeout) while a statement runs: the
///   statement fails with a timeout after about 3 s;
/// - `tcp_user_timeout=3000` (keepalives off) when a statement is sent after the cut: it fails
///   after about 3 s of unacknowledged data;
/// - neither (what libpq does by default): the statement is still waiting at 8 s.
#[tokio::test]
async fn a_silent_peer_is_noticed_in_time() -> Result<()> {
    let db = TestDb::new().await?;
    let control = db.client().await?;
    let row = control
        .query_one(
            "SELECT pg_catalog.split_part(pg_catalog.current_setting('unix_socket_directories'), \
             ',', 1), pg_catalog.current_setting('port')",
            &[],
        )
        .await?;
    let (dir, port): (String, String) = (row.get(0), row.get(1));
    let socket = format!("{}/.s.PGSQL.{port}", dir.trim());
    if UnixStream::connect(&socket).is_err() {
        eprintln!(
            "SKIPPED: a_silent_peer_is_noticed_in_time relays to the server's unix socket, and \
             {socket} is not reachable from here"
        );
        return Ok(());
    }
    let Some(netns) = netns_or_skip().await? else {
        return Ok(());
    };
    let listen_port = 15432;
    let _forwarder = KillOnDrop(spawn_forwarder(&netns, listen_port, &socket)?);
    let base = Dsn::parse(&db.dsn())?;
    let connect = |settings: &'static str| {
        let text = format!(
            "host={} port={listen_port} user={} dbname={} sslmode=disable application_name={APP} \
             {settings}",
            netns.peer_ip,
            base.user(),
            base.dbname()
        );
        async move {
            Dsn::parse(&text)?
                .connect()
                .await
                .map_err(anyhow::Error::from)
        }
    };
    let keepalive =
        connect("keepalives_idle=1 keepalives_interval=1 keepalives_count=2 tcp_user_timeout=0")
            .await?;
    let user_timeout = connect("keepalives=0 tcp_user_timeout=3000").await?;
    let neither = connect("keepalives=0 tcp_user_timeout=0").await?;
    for client in [&keepalive, &user_timeout, &neither] {
        client.simple_query("SELECT 1").await?;
    }

    let sleep = |client: tokio_postgres::Client| {
        tokio::spawn(async move {
            let result = client.simple_query("SELECT pg_catalog.pg_sleep(30)").await;
            result.map(drop)
        })
    };
    let with_keepalive = sleep(keepalive);
    let without = sleep(neither);
    let deadline = Deadline::after(Duration::from_secs(10));
    while control
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity \
              WHERE application_name = $1 AND query LIKE '%pg_sleep%' AND state = 'active'",
            &[&APP],
        )
        .await?
        .get::<_, i64>(0)
        < 2
    {
        deadline.pause("the statements to start").await?;
    }
    // The peer acknowledges a statement that sends no answer with a delayed ACK: cut only once
    // every byte sent was acknowledged, so that the keepalive probes (which wait for that) run.
    while !all_acknowledged(&netns.peer_ip).await? {
        deadline.pause("the statements to be acknowledged").await?;
    }
    netns.cut().await?;
    let cut_at = Instant::now();
    let sent_after = tokio::spawn(async move {
        let result = user_timeout.simple_query("SELECT 1").await;
        result.map(drop)
    });

    let bound = Duration::from_secs(3);
    let slack = Duration::from_secs(2);
    let took = failure_time(with_keepalive, cut_at, bound + slack)
        .await?
        .context("keepalives did not notice the silent peer within 3 s + 2 s")?;
    println!("keepalives: the running statement failed after {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "too early to be the probes: {took:?}"
    );

    let took = failure_time(sent_after, cut_at, bound + slack)
        .await?
        .context("tcp_user_timeout did not fire within 3 s + 2 s")?;
    println!("tcp_user_timeout: the statement sent after the cut failed after {took:?}");
    assert!(took >= Duration::from_millis(2500), "too early: {took:?}");

    let waiting = failure_time(without, cut_at, Duration::from_secs(8)).await?;
    assert!(
        waiting.is_none(),
        "without keepalives the statement should still hang, so the link really drops \
         packets: {waiting:?}"
    );
    println!("neither: the statement was still waiting 8 s after the cut");
    control
        .execute(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
              WHERE application_name = $1",
            &[&APP],
        )
        .await?;
    Ok(())
}

/// The defaults, seen on a real TCP connection by the operating system: `ss` shows the
/// keepalive timer armed for the 60 s idle time.
#[tokio::test]
async fn keepalives_are_on_by_default_on_a_real_connection() -> Result<()> {
    let _serial = pgq_testkit::serial().await;
    let cluster = Cluster::start(ClusterOptions {
        listen_tcp: true,
        ..Default::default()
    })
    .await?;
    let dsn = Dsn::parse(&cluster.tcp_dsn("postgres").context("listens on TCP")?)?;
    let client = dsn.connect().await?;
    let port: i32 = client
        .query_one("SELECT pg_catalog.inet_client_port()", &[])
        .await?
        .get(0);
    // Right after a statement, the timer may still be the retransmission timer for bytes the
    // server has not acknowledged yet (delayed ACKs): look until the keepalive timer shows.
    let deadline = Deadline::after(Duration::from_secs(5));
    let timer = loop {
        let out = tokio::process::Command::new("ss")
            .args([
                "-tno",
                "state",
                "established",
                &format!("( sport = :{port} )"),
            ])
            .output()
            .await
            .context("running ss (iproute2)")?;
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        let timer = shown
            .split("timer:(")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .map(str::to_owned);
        match timer {
            Some(timer) if timer.starts_with("keepalive,") => break timer,
            _ => {
                deadline
                    .pause(format!(
                        "a keepalive timer on the connection from port {port}: {shown}"
                    ))
                    .await?;
            }
        }
    };
    let secs: u64 = timer
        .split(',')
        .nth(1)
        .and_then(|s| s.strip_suffix("sec"))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("timer {timer}"))?;
    assert!(
        (50..=60).contains(&secs),
        "the first probe is due within the 60 s idle time: {timer}"
    );
    Ok(())
}

/// A database owner's `search_path` (`ALTER DATABASE`, `ALTER ROLE`) and the user's own
/// `options` reach ordinary sessions, but not a daemon's, even after `RESET ALL`.
#[tokio::test]
async fn daemon_sessions_pin_their_search_path() -> Result<()> {
    let db = TestDb::new().await?;
    let client = db.client().await?;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA evil; ALTER DATABASE \"{}\" SET search_path = evil, pg_catalog",
            db.name()
        ))
        .await?;
    let show = |client: tokio_postgres::Client| async move {
        client.batch_execute("RESET ALL").await?;
        let row = client.query_one("SHOW search_path", &[]).await?;
        Ok::<String, anyhow::Error>(row.get(0))
    };
    let user = Dsn::parse(&format!("{} options='-c search_path=app'", db.dsn()))?;
    assert_eq!(show(user.connect().await?).await?, "app");
    let plain = Dsn::parse(&db.dsn())?;
    assert_eq!(show(plain.connect().await?).await?, "evil, pg_catalog");
    for dsn in [plain, user] {
        let session = dsn.with_pinned_search_path().connect().await?;
        assert_eq!(show(session).await?, "pg_catalog,pg_temp", "{dsn}");
    }
    Ok(())
}
