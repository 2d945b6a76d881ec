//! What the daemon last saw of each database: the gauges of the metrics, `/health` and the
//! status page all read it, so no request runs a query.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use pgq_core::monitor::{escape, problems_html, sparkline, Status};
use pgq_core::{ConsumerInfo, QueueInfo};

/// How long the lag chart of the status page reaches back.
const HISTORY: Duration = Duration::from_secs(3600);

/// How far past its `ticker_idle_period` a queue's newest tick may be before `/health` fails:
/// the idle back-off ticks within the idle period, a busy queue within `ticker_max_lag`.
const TICK_GRACE: Duration = Duration::from_secs(10);

/// Where the daemon stands with one database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum DbState {
    /// Not connected yet.
    #[default]
    Starting,
    /// Connected, holding the ticker lock.
    Ticking,
    /// Another ticker holds the database's lock.
    StandingBy,
    /// The database has no PGQ (discovery skips it).
    NoSchema,
    /// Cannot connect, or lost the connection: the last error.
    Unreachable(String),
}

#[derive(Debug, Default)]
struct DbView {
    state: DbState,
    observed: Option<Instant>,
    queues: Vec<QueueInfo>,
    consumers: Vec<ConsumerInfo>,
    /// Per (queue, consumer): when, and the lag in seconds then.
    lags: HashMap<(String, String), VecDeque<(Instant, f64)>>,
}

/// The daemon's latest observations of every database it serves.
#[derive(Debug)]
pub(crate) struct Board {
    databases: Mutex<BTreeMap<String, DbView>>,
    observe_period: Duration,
}

impl Board {
    pub(crate) fn new(observe_period: Duration) -> Board {
        Board {
            databases: Mutex::new(BTreeMap::new()),
            observe_period,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, DbView>) -> T) -> T {
        f(&mut self
            .databases
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn set_state(&self, db: &str, state: DbState) {
        metrics::gauge!("pgq_ticker_connected", "db" => db.to_owned())
            .set(f64::from(u8::from(state == DbState::Ticking)));
        self.with(|dbs| dbs.entry(db.to_owned()).or_default().state = state);
    }

    /// A database the daemon no longer serves (discovery lost it).
    pub(crate) fn forget(&self, db: &str) {
        self.with(|dbs| dbs.remove(db));
    }

    /// Records what one observation of `db` read, and sets the gauges from it.
    pub(crate) fn observed(&self, db: &str, queues: Vec<QueueInfo>, consumers: Vec<ConsumerInfo>) {
        let now = Instant::now();
        for q in &queues {
            let labels = [("db", db.to_owned()), ("queue", q.name.clone())];
            if let Some(age) = q.ticker_lag {
                metrics::gauge!("pgq_queue_tick_age_seconds", &labels).set(seconds(age));
            }
            if let Some(events) = q.ev_new {
                #[allow(clippy::cast_precision_loss)] // a gauge
                metrics::gauge!("pgq_queue_events_since_tick", &labels).set(events as f64);
            }
            if let Some(rate) = q.ev_per_sec {
                metrics::gauge!("pgq_queue_events_per_second", &labels).set(rate);
            }
        }
        for c in &consumers {
            let labels = [
                ("db", db.to_owned()),
                ("queue", c.queue_name.clone()),
                ("consumer", c.consumer_name.clone()),
            ];
            if let Some(lag) = c.lag {
                metrics::gauge!("pgq_consumer_lag_seconds", &labels).set(seconds(lag));
            }
            if let Some(events) = c.pending_events {
                #[allow(clippy::cast_precision_loss)] // a gauge
                metrics::gauge!("pgq_consumer_pending_events", &labels).set(events as f64);
            }
        }
        self.with(|dbs| {
            let view = dbs.entry(db.to_owned()).or_default();
            for c in &consumers {
                let samples = view
                    .lags
                    .entry((c.queue_name.clone(), c.consumer_name.clone()))
                    .or_default();
                samples.push_back((now, c.lag.map_or(0.0, seconds)));
                while samples
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > HISTORY)
                {
                    samples.pop_front();
                }
            }
            view.lags.retain(|(queue, consumer), _| {
                consumers
                    .iter()
                    .any(|c| &c.queue_name == queue && &c.consumer_name == consumer)
            });
            view.observed = Some(now);
            view.queues = queues;
            view.consumers = consumers;
        });
    }
}

impl Status for Board {
    fn problems(&self) -> Vec<String> {
        let stale = self.observe_period * 3 + TICK_GRACE;
        self.with(|dbs| {
            let mut problems = Vec::new();
            if dbs.is_empty() {
                problems.push("no database served yet".to_owned());
            }
            for (db, view) in dbs.iter() {
                match &view.state {
                    DbState::Ticking => {}
                    DbState::NoSchema => continue,
                    DbState::Starting => problems.push(format!("{db}: not connected yet")),
                    DbState::StandingBy => problems.push(format!(
                        "{db}: another ticker holds its ticker lock (this one stands by)"
                    )),
                    DbState::Unreachable(error) => {
                        problems.push(format!("{db}: not connected: {error}"));
                    }
                }
                match view.observed {
                    Some(at) if at.elapsed() <= stale => {}
                    _ => {
                        problems.push(format!("{db}: not observed for over {}s", stale.as_secs()));
                        continue;
                    }
                }
                for q in &view.queues {
                    if q.ticker_paused || q.external_ticker {
                        continue;
                    }
                    let limit = q.ticker_idle_period + TICK_GRACE;
                    match q.ticker_lag {
                        Some(age) if seconds(age) <= limit.as_secs_f64() => {}
                        Some(age) => problems.push(format!(
                            "{db}: queue {}: newest tick is {:.0}s old (over {}s)",
                            q.name,
                            seconds(age),
                            limit.as_secs()
                        )),
                        None => problems.push(format!("{db}: queue {}: no tick", q.name)),
                    }
                }
            }
            problems
        })
    }

    fn page(&self) -> String {
        let mut page = String::from("<h1>pgq-ticker</h1>");
        page.push_str(&problems_html(&self.problems()));
        self.with(|dbs| {
            for (db, view) in dbs.iter() {
                let _ = write!(
                    page,
                    "<h2>{}</h2><p>{}</p>",
                    escape(db),
                    escape(&state_text(&view.state))
                );
                if !view.queues.is_empty() {
                    page.push_str(
                        "<table><tr><th>queue</th><th>newest tick</th><th>events since \
                         (estimate)</th><th>events/s</th><th>ticker</th></tr>",
                    );
                    for q in &view.queues {
                        let _ = write!(
                            page,
                            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                             <td class=\"n\">{}</td><td>{}</td></tr>",
                            escape(&q.name),
                            q.ticker_lag
                                .map_or("-".to_owned(), |a| format!("{:.1}s ago", seconds(a))),
                            q.ev_new.map_or("-".to_owned(), |n| n.to_string()),
                            q.ev_per_sec.map_or("-".to_owned(), |r| format!("{r:.1}")),
                            if q.ticker_paused {
                                "paused"
                            } else if q.external_ticker {
                                "external"
                            } else {
                                "ticking"
                            }
                        );
                    }
                    page.push_str("</table>");
                }
                if !view.consumers.is_empty() {
                    page.push_str(
                        "<table><tr><th>queue</th><th>consumer</th><th>lag</th><th>pending \
                         events (estimate)</th><th>lag, last hour</th></tr>",
                    );
                    let now = Instant::now();
                    for c in &view.consumers {
                        let points: Vec<(f64, f64)> = view
                            .lags
                            .get(&(c.queue_name.clone(), c.consumer_name.clone()))
                            .map(|samples| {
                                samples
                                    .iter()
                                    .map(|(at, lag)| (now.duration_since(*at).as_secs_f64(), *lag))
                                    .collect()
                            })
                            .unwrap_or_default();
                        let _ = write!(
                            page,
                            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
                             <td class=\"n\">{}</td><td>{}</td></tr>",
                            escape(&c.queue_name),
                            escape(&c.consumer_name),
                            c.lag
                                .map_or("-".to_owned(), |l| format!("{:.1}s", seconds(l))),
                            c.pending_events.map_or("-".to_owned(), |n| n.to_string()),
                            sparkline(&points, HISTORY.as_secs_f64(), "s")
                        );
                    }
                    page.push_str("</table>");
                }
            }
        });
        page
    }
}

fn state_text(state: &DbState) -> String {
    match state {
        DbState::Starting => "connecting".to_owned(),
        DbState::Ticking => "ticking (holds the ticker lock)".to_owned(),
        DbState::StandingBy => "standing by: another ticker holds the lock".to_owned(),
        DbState::NoSchema => "no PGQ here; skipped".to_owned(),
        DbState::Unreachable(error) => format!("not connected: {error}"),
    }
}

fn seconds(delta: chrono::TimeDelta) -> f64 {
    delta.to_std().map_or(0.0, |d| d.as_secs_f64())
}
