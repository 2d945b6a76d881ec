//! What the replay worker last saw of itself, read every `observe_period` over connections of
//! its own: the lag and pending events gauges, `/health` and the status page all read it, so
//! no request runs a query.
//!
//! `/health` answers 200 while the observer holds its connections to both databases, the
//! worker holds its consumer's lock on the provider (its runner is connected there), the latest
//! observation is fresh, and the lag is at most [`Config::max_lag`]; else 503 with the reasons.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pgq_consumer::CancellationToken;
use pgq_core::monitor::{escape, problems_html, sparkline, Status};
use pgq_core::{ConsumerName, Dsn};
use tokio_postgres::Client;

use crate::admin::{list_tables, worker_running, TableStatus};
use crate::config::Config;
use crate::error::LondisteError;

/// How long the lag chart of the status page reaches back.
const HISTORY: Duration = Duration::from_secs(3600);

/// How late an observation may be, past three periods, before `/health` fails.
const OBSERVE_GRACE: Duration = Duration::from_secs(10);

/// Where the observer stands with one database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Link {
    /// Not connected yet.
    #[default]
    Starting,
    Connected,
    /// Cannot connect, or lost the connection: the last error.
    Lost(String),
}

#[derive(Debug, Default)]
struct View {
    provider: Link,
    subscriber: Link,
    observed: Option<Instant>,
    worker_running: bool,
    lag: Option<f64>,
    pending_events: Option<i64>,
    tables: Vec<TableStatus>,
    /// When, and the lag in seconds then.
    lags: VecDeque<(Instant, f64)>,
}

/// The worker's latest observations.
#[derive(Debug)]
pub(crate) struct Board {
    queue: String,
    consumer: String,
    observe_period: Duration,
    max_lag: Duration,
    view: Mutex<View>,
}

impl Board {
    pub(crate) fn new(config: &Config, consumer: &ConsumerName) -> Board {
        Board {
            queue: config.queue.to_string(),
            consumer: consumer.to_string(),
            observe_period: config.observe_period,
            max_lag: config.max_lag,
            view: Mutex::new(View::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut View) -> T) -> T {
        f(&mut self.view.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn labels(&self) -> [(&'static str, String); 2] {
        [
            ("queue", self.queue.clone()),
            ("consumer", self.consumer.clone()),
        ]
    }

    fn set_link(&self, side: Side, link: Link) {
        let mut labels = self.labels().to_vec();
        labels.push(("db", side.name().to_owned()));
        metrics::gauge!("pgq_londiste_connected", &labels)
            .set(f64::from(u8::from(link == Link::Connected)));
        self.with(|view| match side {
            Side::Provider => view.provider = link,
            Side::Subscriber => view.subscriber = link,
        });
    }

    /// Records one observation and sets the gauges from it.
    fn observed(
        &self,
        running: bool,
        info: Option<&pgq_core::ConsumerInfo>,
        tables: Vec<TableStatus>,
    ) {
        let now = Instant::now();
        let labels = self.labels();
        let lag = info.and_then(|i| i.lag).map(|l| l.as_seconds_f64());
        let pending = info.and_then(|i| i.pending_events);
        if let Some(lag) = lag {
            metrics::gauge!("pgq_londiste_lag_seconds", &labels).set(lag);
        }
        if let Some(pending) = pending {
            #[allow(clippy::cast_precision_loss)] // a gauge
            metrics::gauge!("pgq_londiste_pending_events", &labels).set(pending as f64);
        }
        for state in crate::TableState::ALL {
            let mut labels = labels.to_vec();
            labels.push(("state", state.as_str().to_owned()));
            #[allow(clippy::cast_precision_loss)] // a handful of tables
            let count = tables.iter().filter(|t| t.state == state).count() as f64;
            metrics::gauge!("pgq_londiste_tables", &labels).set(count);
        }
        self.with(|view| {
            view.lags.push_back((now, lag.unwrap_or(0.0)));
            while view
                .lags
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > HISTORY)
            {
                view.lags.pop_front();
            }
            view.observed = Some(now);
            view.worker_running = running;
            view.lag = lag;
            view.pending_events = pending;
            view.tables = tables;
        });
    }
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Provider,
    Subscriber,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Provider => "provider",
            Side::Subscriber => "subscriber",
        }
    }
}

impl Status for Board {
    fn problems(&self) -> Vec<String> {
        let stale = self.observe_period * 3 + OBSERVE_GRACE;
        self.with(|view| {
            let mut problems = Vec::new();
            for (side, link) in [
                (Side::Provider, &view.provider),
                (Side::Subscriber, &view.subscriber),
            ] {
                match link {
                    Link::Connected => {}
                    Link::Starting => problems.push(format!("{}: not connected yet", side.name())),
                    Link::Lost(error) => {
                        problems.push(format!("{}: not connected: {error}", side.name()));
                    }
                }
            }
            match view.observed {
                Some(at) if at.elapsed() <= stale => {}
                Some(_) => {
                    problems.push(format!("not observed for over {}s", stale.as_secs()));
                    return problems;
                }
                None => {
                    problems.push("not observed yet".to_owned());
                    return problems;
                }
            }
            if !view.worker_running {
                problems.push(format!(
                    "the worker does not hold consumer {}'s lock on the provider (its runner is \
                     not connected)",
                    self.consumer
                ));
            }
            if let Some(lag) = view.lag.filter(|l| *l > self.max_lag.as_secs_f64()) {
                problems.push(format!(
                    "lag is {lag:.0}s (over {}s)",
                    self.max_lag.as_secs()
                ));
            }
            problems
        })
    }

    fn page(&self) -> String {
        let mut page = format!(
            "<h1>londiste worker</h1><p>queue <b>{}</b>, consumer <b>{}</b></p>",
            escape(&self.queue),
            escape(&self.consumer)
        );
        page.push_str(&problems_html(&self.problems()));
        self.with(|view| {
            let now = Instant::now();
            let points: Vec<(f64, f64)> = view
                .lags
                .iter()
                .map(|(at, lag)| (now.duration_since(*at).as_secs_f64(), *lag))
                .collect();
            let _ = write!(
                page,
                "<table><tr><th>lag</th><th>pending events (estimate)</th><th>lag, last hour\
                 </th></tr><tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>\
                 </table>",
                view.lag.map_or("-".to_owned(), |l| format!("{l:.1}s")),
                view.pending_events
                    .map_or("-".to_owned(), |n| n.to_string()),
                sparkline(&points, HISTORY.as_secs_f64(), "s")
            );
            if !view.tables.is_empty() {
                page.push_str(
                    "<table><tr><th>table</th><th>subscriber table</th><th>state</th>\
                     <th>since</th><th>copied rows</th></tr>",
                );
                for t in &view.tables {
                    let _ = write!(
                        page,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
                         </tr>",
                        escape(&t.table),
                        escape(&t.dest_table),
                        escape(t.state.as_str()),
                        escape(&t.state_changed),
                        t.copy_rows.map_or("-".to_owned(), |n| n.to_string())
                    );
                }
                page.push_str("</table>");
            }
        });
        page
    }
}

/// The observer's connections, opened again when lost.
struct Observer {
    board: Arc<Board>,
    config: Config,
    consumer: ConsumerName,
    provider: Option<Client>,
    subscriber: Option<Client>,
}

impl Observer {
    /// A connection to `side`, opened now if there is none; on failure the board says why.
    async fn client(&mut self, side: Side) -> Option<&Client> {
        let (slot, dsn): (&mut Option<Client>, &Dsn) = match side {
            Side::Provider => (&mut self.provider, &self.config.provider),
            Side::Subscriber => (&mut self.subscriber, &self.config.subscriber),
        };
        if slot.as_ref().is_some_and(Client::is_closed) {
            *slot = None;
        }
        if slot.is_none() {
            match dsn.with_pinned_search_path().connect().await {
                Ok(client) => {
                    *slot = Some(client);
                    self.board.set_link(side, Link::Connected);
                }
                Err(err) => {
                    self.board.set_link(side, Link::Lost(chain(&err)));
                    return None;
                }
            }
        }
        slot.as_ref()
    }

    fn lost(&mut self, side: Side, err: &LondisteError) {
        match side {
            Side::Provider => self.provider = None,
            Side::Subscriber => self.subscriber = None,
        }
        self.board.set_link(side, Link::Lost(chain(err)));
    }

    async fn observe(&mut self) {
        let (queue, consumer) = (self.config.queue.clone(), self.consumer.clone());
        let provider = match self.client(Side::Provider).await {
            Some(client) => {
                let read = async {
                    let info = pgq_core::consumer_info(client, Some(&queue), Some(&consumer))
                        .await?
                        .into_iter()
                        .next();
                    Ok::<_, LondisteError>((worker_running(client, &queue, &consumer).await?, info))
                };
                read.await
            }
            None => return,
        };
        let (running, info) = match provider {
            Ok(read) => read,
            Err(err) => return self.lost(Side::Provider, &err),
        };
        let config = self.config.clone();
        let tables = match self.client(Side::Subscriber).await {
            Some(client) => list_tables(client, &config).await,
            None => return,
        };
        match tables {
            Ok(tables) => self.board.observed(running, info.as_ref(), tables),
            Err(err) => self.lost(Side::Subscriber, &err),
        }
    }
}

/// Observes every [`Config::observe_period`] until `cancel` fires.
pub(crate) async fn observe(
    board: Arc<Board>,
    config: Config,
    consumer: ConsumerName,
    cancel: CancellationToken,
) {
    let mut observer = Observer {
        board,
        config,
        consumer,
        provider: None,
        subscriber: None,
    };
    let mut every = tokio::time::interval(observer.config.observe_period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => observer.observe().await,
        }
    }
}

/// An error and its sources, `: `-joined.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        let _ = write!(text, ": {err}");
        source = err.source();
    }
    text
}
