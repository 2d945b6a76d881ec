//! A slow network link on loopback: a TCP proxy that delays every byte by a fixed time in each
//! direction and caps the rate of each connection and of the whole link with token buckets
//! (the kernel here has no netem). It runs on a tokio runtime of its own, on one thread, so
//! its CPU time is that thread's.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The bytes one read forwards at most: small against a rate times the delay, so the delay
/// and the caps hold to within a fraction of a millisecond.
const READ_SIZE: usize = 16 * 1024;

/// Reads in flight per direction of a connection, waiting out their delay; enough for the
/// per-connection rate times the delay.
const IN_FLIGHT: usize = 1024;

/// How the link behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkShape {
    /// Added to every byte, in each direction.
    pub(crate) delay: Duration,
    /// Bytes per second of one connection, in each direction.
    pub(crate) connection_rate: f64,
    /// Bytes per second of all connections together, in each direction.
    pub(crate) link_rate: f64,
}

/// A running proxy to `target`; stops when dropped.
pub(crate) struct DelayedLink {
    port: u16,
    requests: mpsc::UnboundedSender<oneshot::Sender<Result<f64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayedLink {
    /// Starts the proxy's thread, listening on an ephemeral port of 127.0.0.1.
    pub(crate) fn start(target: SocketAddr, shape: LinkShape) -> Result<DelayedLink> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the proxy's runtime")?;
        // Bound with std and registered with the proxy's runtime by entering it: blocking on it
        // here would panic when the caller is async.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener).context("registering the proxy's listener")?
        };
        let port = listener.local_addr()?.port();
        let (requests, mut asked) = mpsc::unbounded_channel::<oneshot::Sender<Result<f64>>>();
        let thread = std::thread::Builder::new()
            .name("delayed-link".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let link = Arc::new(Buckets::new(shape.link_rate));
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => {
                                let Ok((client, _)) = accepted else { continue };
                                tokio::spawn(proxy(client, target, shape, Arc::clone(&link)));
                            }
                            request = asked.recv() => {
                                // The requests end when the handle is dropped.
                                let Some(reply) = request else { return };
                                let _ = reply.send(thread_cpu_seconds());
                            }
                        }
                    }
                });
            })
            .context("starting the proxy's thread")?;
        Ok(DelayedLink {
            port,
            requests,
            thread: Some(thread),
        })
    }

    /// The port clients connect to instead of the target's.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The CPU seconds the proxy's thread has used so far.
    pub(crate) async fn cpu_seconds(&self) -> Result<f64> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(reply)
            .ok()
            .context("the proxy stopped")?;
        answer.await.context("the proxy stopped")?
    }
}

impl Drop for DelayedLink {
    fn drop(&mut self) {
        // Closing the request channel ends the accept loop; dropping the runtime with it
        // aborts the connections still open.
        let (closed, _) = mpsc::unbounded_channel();
        self.requests = closed;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The on-CPU seconds of the calling thread, from `/proc/thread-self/schedstat`.
fn thread_cpu_seconds() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("reading /proc/thread-self/schedstat")?;
    let nanos: u64 = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("no CPU time in /proc/thread-self/schedstat")?;
    Ok(nanos as f64 / 1e9)
}

/// One token bucket per direction.
struct Buckets {
    up: TokenBucket,
    down: TokenBucket,
}

impl Buckets {
    fn new(rate: f64) -> Buckets {
        Buckets {
            up: TokenBucket::new(rate),
            down: TokenBucket::new(rate),
        }
    }
}

/// How long a bucket may save up: it must outlast a timer's overshoot (tokio's timers tick in
/// milliseconds), or the rate comes out lower than asked.
const BURST_TIME: f64 = 0.005;

/// A rate cap. A taker takes what it needs at once and then waits until the bucket is out of
/// debt, so concurrent takers share the rate in the order they came.
struct TokenBucket {
    rate: f64,
    /// At most this many bytes pass at once after an idle spell.
    burst: f64,
    /// Bytes available (negative: owed), as of an instant.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(rate: f64) -> TokenBucket {
        let burst = (rate * BURST_TIME).max(READ_SIZE as f64);
        TokenBucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes `bytes`, waiting as long as the rate says.
    async fn take(&self, bytes: usize) {
        let wait = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let (tokens, last) = *state;
            let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate)
                .min(self.burst)
                - bytes as f64;
            *state = (tokens, now);
            (tokens < 0.0).then(|| Duration::from_secs_f64(-tokens / self.rate))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Forwards one client connection to `target` and back until either side closes.
async fn proxy(client: TcpStream, target: SocketAddr, shape: LinkShape, link: Arc<Buckets>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let own = Arc::new(Buckets::new(shape.connection_rate));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = direction(
        client_read,
        server_write,
        shape.delay,
        Arc::clone(&own),
        Arc::clone(&link),
        true,
    );
    let down = direction(server_read, client_write, shape.delay, own, link, false);
    let _ = tokio::join!(up, down);
}

/// Copies one direction: each read waits for both buckets, then reaches the other side
/// `delay` after it was read.
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    own: Arc<Buckets>,
    link: Arc<Buckets>,
    up: bool,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = async move {
        let (own, link) = if up {
            (&own.up, &link.up)
        } else {
            (&own.down, &link.down)
        };
        loop {
            let mut buf = vec![0; READ_SIZE];
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.truncate(n);
            own.take(n).await;
            link.take(n).await;
            if tx.send((Instant::now() + delay, buf)).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2 MB through a link of 10 ms each way capped at 20 MB/s per connection: the first byte
    /// comes back after about 20 ms, and the whole after about 0.1 s.
    #[tokio::test]
    async fn delays_and_caps_an_echo() -> Result<()> {
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let target = echo.local_addr()?;
        tokio::spawn(async move {
            while let Ok((stream, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let link = DelayedLink::start(
            target,
            LinkShape {
                delay: Duration::from_millis(10),
                connection_rate: 20e6,
                link_rate: 100e6,
            },
        )?;
        let mut stream = TcpStream::connect(("127.0.0.1", link.port())).await?;
        let started = std::time::Instant::now();
        stream.write_all(b"x").await?;
        let mut byte = [0_u8; 1];
        stream.read_exact(&mut byte).await?;
        let round_trip = started.elapsed();
        assert!(
            round_trip >= Duration::from_millis(20) && round_trip < Duration::from_millis(200),
            "{round_trip:?}"
        );

        let data = vec![7_u8; 2_000_000];
        let (mut r, mut w) = stream.into_split();
        let started = std::time::Instant::now();
        let sender = tokio::spawn(async move { w.write_all(&data).await.map(|()| w) });
        let mut back = vec![0_u8; 2_000_000];
        r.read_exact(&mut back).await?;
        let elapsed = started.elapsed();
        sender.await??;
        assert!(back.iter().all(|&b| b == 7));
        assert!(
            elapsed >= Duration::from_millis(95) && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
        assert!(link.cpu_seconds().await? > 0.0);
        Ok(())
    }
}
