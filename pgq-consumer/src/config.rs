//! Runner settings.

use std::time::Duration;

use pgq_core::{ConsumerName, QueueName, TickId};

/// How a runner consumes: which queue and consumer, chunk size, waits, retry policy.
///
/// Built with [`ConsumerConfig::builder`]; every setting has a documented default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The queue.
    pub queue: QueueName,
    /// The consumer name (for a cooperative consumer: the group's name).
    pub consumer: ConsumerName,
    /// Register the consumer on start (when it is not registered yet). Off, an unknown or
    /// unregistered consumer is an error ([`pgq_core::Error::ConsumerNotRegistered`]). Default
    /// on.
    pub register: bool,
    /// Register at this tick instead of the newest one, when not registered yet. Default: none.
    pub register_at: Option<TickId>,
    /// Events read per round trip from the batch cursor; bounds memory. Default 1,000.
    pub chunk_size: u32,
    /// When at least this many events wait past the consumer's position, a batch spans
    /// several ticks to hold about this many (`pgq.next_batch_custom`'s `min_count`); below
    /// it, each tick is a batch of its own, so a consumer that keeps up waits for nothing.
    /// Fewer, larger batches cost fewer round trips and merge more when catching up. Every
    /// batch is still whole transactions between two ticks, handled as one. Default none:
    /// one tick per batch.
    pub catch_up_events: Option<u32>,
    /// How long to wait for a tick notification before looking for a batch anyway. Default 1 s.
    pub poll_interval: Duration,
    /// After a stop is requested, how long the batch in hand may run before it is rolled back.
    /// Default 30 s.
    pub shutdown_timeout: Duration,
    /// How many times one event may be handed back for a retry before it goes to the failed
    /// events (`pgq.failed_queue`). Default 5.
    pub max_event_retries: u32,
    /// The delay of a retry the runner makes for a failed event. Default 60 s.
    pub event_retry_delay: Duration,
    /// After this many failures of the same batch, the runner processes it event by event, so
    /// one bad event is retried or failed alone and the rest proceeds. Default 3.
    pub batch_failures_before_per_event: u32,
    /// The first wait after a failed batch or a lost connection; waits double up to
    /// `backoff_max`, with jitter. Default 100 ms.
    pub backoff_min: Duration,
    /// The longest wait between attempts. Default 30 s.
    pub backoff_max: Duration,
    /// How often the running runner asks the queue how far behind it is, for the gauges
    /// `pgq_runner_pending_events` and `pgq_runner_oldest_event_age_seconds` (one cheap
    /// `pgq.get_consumer_info` call). Default 10 s.
    pub observe_period: Duration,
}

impl ConsumerConfig {
    /// A builder with the defaults for this queue and consumer.
    pub fn builder(queue: QueueName, consumer: ConsumerName) -> ConsumerConfigBuilder {
        ConsumerConfigBuilder {
            config: ConsumerConfig {
                queue,
                consumer,
                register: true,
                register_at: None,
                chunk_size: 1000,
                catch_up_events: None,
                poll_interval: Duration::from_secs(1),
                shutdown_timeout: Duration::from_secs(30),
                max_event_retries: 5,
                event_retry_delay: Duration::from_secs(60),
                batch_failures_before_per_event: 3,
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_secs(30),
                observe_period: Duration::from_secs(10),
            },
        }
    }
}

/// Builds a [`ConsumerConfig`]; see its fields for what each setting means.
#[derive(Debug, Clone)]
#[must_use]
pub struct ConsumerConfigBuilder {
    config: ConsumerConfig,
}

impl ConsumerConfigBuilder {
    /// See [`ConsumerConfig::register`].
    pub fn register(mut self, register: bool) -> Self {
        self.config.register = register;
        self
    }

    /// See [`ConsumerConfig::register_at`].
    pub fn register_at(mut self, tick: TickId) -> Self {
        self.config.register_at = Some(tick);
        self
    }

    /// See [`ConsumerConfig::chunk_size`]; 0 counts as 1.
    pub fn chunk_size(mut self, events: u32) -> Self {
        self.config.chunk_size = events.max(1);
        self
    }

    /// See [`ConsumerConfig::catch_up_events`]; 0 counts as none.
    pub fn catch_up_events(mut self, events: u32) -> Self {
        self.config.catch_up_events = (events > 0).then_some(events);
        self
    }

    /// See [`ConsumerConfig::poll_interval`].
    pub fn poll_interval(mut self, wait: Duration) -> Self {
        self.config.poll_interval = wait;
        self
    }

    /// See [`ConsumerConfig::shutdown_timeout`].
    pub fn shutdown_timeout(mut self, wait: Duration) -> Self {
        self.config.shutdown_timeout = wait;
        self
    }

    /// See [`ConsumerConfig::max_event_retries`].
    pub fn max_event_retries(mut self, retries: u32) -> Self {
        self.config.max_event_retries = retries;
        self
    }

    /// See [`ConsumerConfig::event_retry_delay`].
    pub fn event_retry_delay(mut self, delay: Duration) -> Self {
        self.config.event_retry_delay = delay;
        self
    }

    /// See [`ConsumerConfig::batch_failures_before_per_event`]; 0 counts as 1.
    pub fn batch_failures_before_per_event(mut self, failures: u32) -> Self {
        self.config.batch_failures_before_per_event = failures.max(1);
        self
    }

    /// See [`ConsumerConfig::backoff_min`] and [`ConsumerConfig::backoff_max`].
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.backoff_min = min;
        self.config.backoff_max = max.max(min);
        self
    }

    /// See [`ConsumerConfig::observe_period`]; zero counts as 1 ms.
    pub fn observe_period(mut self, period: Duration) -> Self {
        self.config.observe_period = period.max(Duration::from_millis(1));
        self
    }

    /// The settings.
    pub fn build(self) -> ConsumerConfig {
        self.config
    }
}
