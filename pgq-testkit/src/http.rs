//! Plain HTTP/1.0 requests to a daemon's monitoring endpoint (`/metrics`, `/health`, `/`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::Deadline;

/// `GET path` on `address`: the status code and the body.
///
/// # Errors
///
/// Connection errors; an answer that is not HTTP.
pub async fn http_get(address: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {response}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head}"))?;
    Ok((code, body.to_owned()))
}

/// Asks `address` for `/health` until it answers `code` (within `limit`); returns the body.
///
/// # Errors
///
/// A timeout naming the last answer; connection errors.
pub async fn wait_for_health(
    address: SocketAddr,
    code: u16,
    limit: Duration,
) -> anyhow::Result<String> {
    let deadline = Deadline::after(limit);
    loop {
        let (got, body) = http_get(address, "/health").await?;
        if got == code {
            return Ok(body);
        }
        deadline
            .pause(format!(
                "/health to answer {code}; it answers {got}: {body}"
            ))
            .await?;
    }
}
