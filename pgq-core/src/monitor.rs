//! The daemons' HTTP side (feature `monitor`): `/metrics` in Prometheus' text format, rendered
//! from the process's [`metrics`] recorder; `/health`, 200 or 503 with the reasons; and `/`, a
//! status page. A daemon binds the address of its `listen` setting before it starts its work
//! ([`Monitor::bind`]: a bad address or a taken port is an error then, and nothing has started),
//! and answers from what it last observed: no request runs a query.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Upper bounds of the buckets of every `*_seconds` histogram.
const SECONDS_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What a daemon reports on `/health` and `/`, from its latest observations.
pub trait Status: Send + Sync + 'static {
    /// What is wrong now; empty when all is well (`/health` answers 200, else 503 listing
    /// them).
    fn problems(&self) -> Vec<String>;

    /// The body of the status page (`<body>` content; the page adds the frame and styles).
    fn page(&self) -> String;
}

/// Why the monitoring endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The `listen` setting is not an address and port.
    #[error("listen = {listen:?} is not an address and port such as 127.0.0.1:9187")]
    BadAddress {
        /// The setting.
        listen: String,
    },
    /// The address could not be bound (taken, or not this host's).
    #[error("cannot listen on {listen}")]
    Bind {
        /// The address.
        listen: SocketAddr,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The process has a metrics recorder that is not Prometheus' (an embedding program
    /// installed its own): `/metrics` cannot render it.
    #[error("this process has another metrics recorder; /metrics needs the Prometheus one")]
    Recorder,
}

/// A bound monitoring endpoint, not serving yet.
#[derive(Debug)]
pub struct Monitor {
    listener: TcpListener,
    metrics: PrometheusHandle,
}

impl Monitor {
    /// Binds `listen` (`host:port`) and installs the process's Prometheus recorder (once per
    /// process; later monitors share it).
    ///
    /// # Errors
    ///
    /// [`MonitorError::BadAddress`], [`MonitorError::Bind`], [`MonitorError::Recorder`].
    pub async fn bind(listen: &str) -> Result<Monitor, MonitorError> {
        let address: SocketAddr = listen.parse().map_err(|_| MonitorError::BadAddress {
            listen: listen.to_owned(),
        })?;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| MonitorError::Bind {
                listen: address,
                source,
            })?;
        Ok(Monitor {
            listener,
            metrics: recorder()?,
        })
    }

    /// The address it listens on (the port the system chose, for `:0`).
    ///
    /// # Errors
    ///
    /// The system's, when the socket is gone.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `/metrics`, `/health` and `/` from `status` until `cancel` fires.
    pub fn serve<S: Status>(
        self,
        status: Arc<S>,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let app = Router::new()
            .route("/metrics", get(metrics::<S>))
            .route("/health", get(health::<S>))
            .route("/", get(page::<S>))
            .with_state(Served {
                status,
                metrics: self.metrics,
            });
        let listener = self.listener;
        tokio::spawn(async move {
            let stopped = async move { cancel.cancelled().await };
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(error = %err, "the monitoring endpoint stopped");
            }
        })
    }
}

/// The process's Prometheus recorder, installed the first time.
fn recorder() -> Result<PrometheusHandle, MonitorError> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("seconds".to_owned()), &SECONDS_BUCKETS)
                .ok()?;
            builder.install_recorder().ok()
        })
        .clone()
        .ok_or(MonitorError::Recorder)
}

struct Served<S> {
    status: Arc<S>,
    metrics: PrometheusHandle,
}

impl<S> Clone for Served<S> {
    fn clone(&self) -> Served<S> {
        Served {
            status: Arc::clone(&self.status),
            metrics: self.metrics.clone(),
        }
    }
}

async fn metrics<S: Status>(State(served): State<Served<S>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        served.metrics.render(),
    )
        .into_response()
}

async fn health<S: Status>(State(served): State<Served<S>>) -> Response {
    let problems = served.status.problems();
    if problems.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let mut body = String::new();
        for problem in problems {
            let _ = writeln!(body, "{problem}");
        }
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn page<S: Status>(State(served): State<Served<S>>) -> Html<String> {
    Html(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"30\"><title>pgq-rs</title><style>{STYLE}</style>\
         </head><body>{}</body></html>\n",
        served.status.page()
    ))
}

/// The page's styles: system fonts only, nothing fetched.
const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border-bottom:1px solid #ddd;padding:.25em .75em;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#b00}\
svg{border:1px solid #ddd;background:#fafafa}";

/// `text` with `&`, `<`, `>`, `"` and `'` escaped for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The head of a status page's health: `Healthy.`, or the problems as a list marked bad, all
/// text escaped.
pub fn problems_html(problems: &[String]) -> String {
    if problems.is_empty() {
        return "<p>Healthy.</p>".to_owned();
    }
    let mut html = String::from("<ul class=\"bad\">");
    for p in problems {
        let _ = write!(html, "<li>{}</li>", escape(p));
    }
    html.push_str("</ul>");
    html
}

/// A small SVG line chart of `(seconds ago, value)` points over the last `span_secs`, newest at
/// the right, with the largest value written at the top left.
pub fn sparkline(points: &[(f64, f64)], span_secs: f64, unit: &str) -> String {
    const W: f64 = 360.0;
    const H: f64 = 60.0;
    let top = points.iter().map(|&(_, v)| v).fold(0.0_f64, f64::max);
    let scale = if top > 0.0 { top } else { 1.0 };
    let mut path = String::new();
    for &(ago, value) in points {
        let x = W - (ago / span_secs).clamp(0.0, 1.0) * W;
        let y = H - 4.0 - (value / scale) * (H - 8.0);
        let _ = write!(
            path,
            "{}{x:.1},{y:.1}",
            if path.is_empty() { "" } else { " " }
        );
    }
    format!(
        "<svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\">\
         <polyline fill=\"none\" stroke=\"#36c\" stroke-width=\"1.5\" points=\"{path}\"/>\
         <text x=\"4\" y=\"12\" font-size=\"10\">max {top:.1} {unit}</text></svg>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_html_reads() {
        assert_eq!(
            escape(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_newest_point_is_at_the_right() {
        let svg = sparkline(&[(3600.0, 0.0), (0.0, 2.0)], 3600.0, "s");
        assert!(svg.contains("points=\"0.0,56.0 360.0,4.0\""), "{svg}");
        assert!(svg.contains("max 2.0 s"));
    }
}
