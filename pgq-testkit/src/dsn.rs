//! Connection strings and connections: rendering a parsed configuration back into a libpq
//! keyword/value string (values quoted by pgq-core), and connecting without TLS.

use std::error::Error as _;
use std::fmt::Write as _;

use pgq_core::quote_conninfo_value;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};

use crate::TestkitError;

/// Renders `config` as a keyword/value string for `dbname`, as `user` when given.
pub(crate) fn render(config: &Config, user: Option<&str>, dbname: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(format!("host={}", quote_conninfo_value(&hosts.join(","))));
    }
    let hostaddrs: Vec<String> = config
        .get_hostaddrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    if !hostaddrs.is_empty() {
        parts.push(format!("hostaddr={}", hostaddrs.join(",")));
    }
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        parts.push(format!("port={}", ports.join(",")));
    }
    if let Some(user) = user.or(config.get_user()) {
        parts.push(format!("user={}", quote_conninfo_value(user)));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!(
            "password={}",
            quote_conninfo_value(&String::from_utf8_lossy(password))
        ));
    }
    parts.push(format!("dbname={}", quote_conninfo_value(dbname)));
    match config.get_ssl_mode() {
        SslMode::Disable => parts.push("sslmode=disable".to_owned()),
        SslMode::Require => parts.push("sslmode=require".to_owned()),
        _ => {}
    }
    if let Some(options) = config.get_options() {
        parts.push(format!("options={}", quote_conninfo_value(options)));
    }
    if let Some(name) = config.get_application_name() {
        parts.push(format!("application_name={}", quote_conninfo_value(name)));
    }
    if let Some(timeout) = config.get_connect_timeout() {
        parts.push(format!("connect_timeout={}", timeout.as_secs().max(1)));
    }
    parts.join(" ")
}

/// The message of a driver error: the server's message and SQLSTATE, or the whole source chain.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{db} (SQLSTATE {})", db.code().code());
    }
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(message, ": {cause}");
        source = cause.source();
    }
    message
}

/// Wraps a driver error with what was being done.
pub(crate) fn pg_error(context: impl Into<String>, source: tokio_postgres::Error) -> TestkitError {
    TestkitError::Postgres {
        context: context.into(),
        message: describe(&source),
        source,
    }
}

/// Connects without TLS and spawns the connection task on the current runtime.
pub(crate) async fn connect(config: &Config, what: &str) -> Result<Client, TestkitError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| pg_error(format!("connecting to {what}"), e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %describe(&e), "pgq-testkit connection ended");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_round_trips() {
        let config: Config = "postgres://bob:p%20w@db.example:6543/main?sslmode=disable"
            .parse()
            .unwrap();
        let rendered = render(&config, None, "other db");
        assert_eq!(
            rendered,
            "host=db.example port=6543 user=bob password='p w' dbname='other db' sslmode=disable"
        );
        let again: Config = rendered.parse().unwrap();
        assert_eq!(again.get_dbname(), Some("other db"));
        assert_eq!(again.get_password(), Some(&b"p w"[..]));
        assert_eq!(
            render(&config, Some("alice"), "x"),
            "host=db.example port=6543 user=alice password='p w' dbname=x sslmode=disable"
        );
    }
}
