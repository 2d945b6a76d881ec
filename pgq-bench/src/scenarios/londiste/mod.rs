//! Scenario `londiste`: table replication, ours vs python3-londiste (londiste3) and
//! PostgreSQL's built-in logical replication.
//!
//! Two shapes of provider load, each written as a backlog while the replicator is stopped and
//! then timed until the replicator caught up: single-row updates spread evenly over a
//! pgbench-like `accounts` table, and pgbench's TPC-B (accounts, tellers, branches). Ours also
//! times `add-table` to ok. Then, with each replicator running, a paced search for the highest
//! provider rate it keeps up with at a lag under five seconds ([`paced`]).

mod builtin;
mod ours;
mod paced;
mod workload;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use londiste::ApplyMode;
use serde::Deserialize;

use crate::harness::{python_command, reference, Bench, Part, Server, WorkDir, PYTHON};
use crate::report::{Limit, Measures, Ratio, Report, Sample, Series};
use ours::Apply;
use paced::{Search, LAG_LIMIT, PROBE, START_RATE};
use workload::{Workload, TXN_SIZE};

const UNIFORM: &str = "replay of single-row updates";
const TPCB: &str = "replay of pgbench TPC-B (accounts, tellers, branches)";
const BATCH: &str = "ours batch-update apply";
const PER_TICK: &str = "ours batch-update apply, a batch per tick (catch_up_events = 0)";
const PER_EVENT: &str = "ours per-event apply";
const REF_DEFAULT: &str = "londiste3 default handler";
const REF_BULK: &str = "londiste3 bulk handler";
const BUILTIN: &str = "built-in logical replication (binary)";
const SUSTAINED: &str = "highest provider rate kept up with at a lag under 5 s";

/// What `londiste_ref.py` prints.
#[derive(Deserialize)]
struct Reference {
    add_table_to_ok_s: f64,
    replay: ReferenceReplay,
    md5_match: bool,
}

#[derive(Deserialize)]
struct ReferenceReplay {
    default: ReferenceRun,
    bulk: Option<ReferenceRun>,
}

#[derive(Deserialize)]
struct ReferenceRun {
    events: u64,
    seconds: f64,
}

/// The sizes of one plan.
struct Sizes {
    uniform: Workload,
    tpcb: Workload,
    rows: u64,
    /// The length of a step of the paced search, and the most steps.
    step: Duration,
    max_steps: usize,
}

impl Sizes {
    fn new(small: bool) -> Sizes {
        let (rows, updates, transactions) = if small {
            (5_000, 5_000, 500)
        } else {
            (100_000, 100_000, 10_000)
        };
        let (step, max_steps) = if small {
            (Duration::from_secs(2), 2)
        } else {
            (Duration::from_secs(8), 6)
        };
        Sizes {
            uniform: Workload::Uniform { rows, updates },
            tpcb: Workload::Tpcb { transactions },
            rows,
            step,
            max_steps,
        }
    }
}

/// How the figures are made.
fn method(sizes: &Sizes) -> Vec<String> {
    let (uniform, tpcb, rows) = (sizes.uniform.changes(), sizes.tpcb.changes(), sizes.rows);
    vec![
        format!(
            "{UNIFORM}: accounts(aid int primary key, bid int, abalance int, filler char(84)), \
             {rows} rows; {uniform} updates committed by a server-side loop in transactions of \
             {TXN_SIZE} rows, each row updated as often as any other. {TPCB}: `pgbench -i -s 1` \
             ({rows} accounts, 10 tellers, 1 branch); `pgbench -n -b tpcb-like -c 2` commits \
             {} transactions, {tpcb} updates of the three keyed tables (`pgbench_history` has \
             no key and is replicated by none). Events per second count those updates.",
            tpcb / 3
        ),
        "Replay: the backlog is committed with the replicator stopped, then the replicator \
         starts and the clock runs until it has applied all of it. Ours and londiste3 run \
         with a ticker every 100 ms (ticker_max_lag 100 ms) while the backlog is written, and \
         are done at the queue's last tick. add-table to ok: from `add-table --create` (one \
         copy connection) to state ok, with the worker running."
            .to_owned(),
        format!(
            "Ours: `londiste::Worker` in this process over TCP, default settings (chunk 5,000 \
             events, 64 MiB merge limit, catch_up_events 20,000: when that many events wait, a \
             batch spans ticks up to about that many); `{PER_TICK}` takes every tick as a batch \
             of its own, as before that setting. londiste3: `python/londiste_ref.py` under {PYTHON} \
             (londiste3 3.11 with pgqd at a 0.1 s period and the same queue settings; its bulk \
             handler after `change-handler --handler=bulk`, single-row updates only)."
        ),
        "Built-in: a publication of the tables and a subscription (`binary = true`, \
         `copy_data = false`: both sides are filled with the same rows, `create_slot = false` \
         on a slot made beforehand) between two databases of the same server, disabled while \
         the backlog is written, then enabled: the clock runs from `ENABLE` until the \
         subscriber shows a marker row the provider updated last, in its own transaction \
         (transactions apply in commit order, so everything before it is there). The tables \
         are then compared (md5 of their rows) on both sides, as for ours and londiste3. Each \
         replicator gets fresh databases per run."
            .to_owned(),
        format!(
            "{SUSTAINED}: with the replicator running, two connections commit transactions of \
             {TXN_SIZE} single-row updates of accounts ({rows} rows) at a paced rate for {} s, \
             starting at {START_RATE} rows/s, doubling while it keeps up, then bisecting, {} \
             steps at most, ending early when the provider cannot write faster (a step that \
             keeps up at less than 95 % of the rate asked). Every {} ms the provider counts up a marker row in its own \
             transaction; the lag is the age of the oldest count the subscriber does not show \
             yet, and after the load the time the last count takes to arrive. A step keeps up \
             when the lag stays under {} s; its rate is what the provider wrote. A step of {} s \
             also passes a replicator that applies slower than the load, by up to {} s of \
             lag's worth. Ours with a ticker every 100 ms.",
            sizes.step.as_secs(),
            sizes.max_steps,
            PROBE.as_millis(),
            LAG_LIMIT.as_secs(),
            sizes.step.as_secs(),
            LAG_LIMIT.as_secs(),
        ),
    ]
}

/// Runs the scenario on scratch databases of the bench's server.
pub(crate) async fn run(bench: &Bench<'_>) -> Result<Report> {
    let (plan, server) = (bench.plan, bench.server);
    let sizes = Sizes::new(plan.small);
    let mut notes = method(&sizes);
    let parts = [Part::Pgqd, Part::PythonLondiste];
    let with_reference = reference(server, &parts, "londiste3 is skipped", &mut notes).await?;
    let with_builtin = builtin::available(server).await?;
    if !with_builtin {
        notes.push(
            "Built-in logical replication is skipped: the server's wal_level is not logical."
                .to_owned(),
        );
    }
    let work_dir = WorkDir::new("londiste")?;
    let mut samples = Samples::default();
    let mut measures = Measures::default();
    let add_table = format!("add-table to ok, {} rows", sizes.rows);
    for run in 1..=plan.runs {
        let (uniform, tpcb) = (sizes.uniform, sizes.tpcb);
        let applies = [
            (BATCH, ApplyMode::Batch, None),
            (PER_TICK, ApplyMode::Batch, Some(0)),
            (PER_EVENT, ApplyMode::PerEvent, None),
        ];
        for (workload, applies) in [(uniform, &applies[..]), (tpcb, &applies[..2])] {
            let asked: Vec<Apply> = applies
                .iter()
                .map(|&(_, mode, catch_up_events)| Apply {
                    mode,
                    catch_up_events,
                })
                .collect();
            let ours = ours::run(server, run, workload, &asked).await?;
            if let Workload::Uniform { .. } = workload {
                measures.push(&add_table, "ours", "seconds", ours.add_table_seconds);
            }
            for (&(variant, ..), seconds) in applies.iter().zip(ours.replay_seconds) {
                samples.push(shape(workload), variant, run, workload.changes(), seconds);
            }
        }
        if with_builtin {
            for workload in [uniform, tpcb] {
                let seconds = builtin::run(server, run, workload).await?;
                samples.push(shape(workload), BUILTIN, run, workload.changes(), seconds);
            }
        }
        if with_reference {
            let r = run_reference(server, run, uniform, &work_dir).await?;
            measures.push(&add_table, "londiste3", "seconds", r.add_table_to_ok_s);
            let default = &r.replay.default;
            samples.push(UNIFORM, REF_DEFAULT, run, default.events, default.seconds);
            if let Some(bulk) = &r.replay.bulk {
                samples.push(UNIFORM, REF_BULK, run, bulk.events, bulk.seconds);
            }
            let r = run_reference(server, run, tpcb, &work_dir).await?;
            let default = &r.replay.default;
            samples.push(TPCB, REF_DEFAULT, run, default.events, default.seconds);
        }
    }
    let searches = [
        (
            "ours",
            Some(ours::paced(server, sizes.rows, sizes.step, sizes.max_steps).await?),
        ),
        (
            "built-in",
            match with_builtin {
                true => {
                    Some(builtin::paced(server, sizes.rows, sizes.step, sizes.max_steps).await?)
                }
                false => None,
            },
        ),
    ];
    for (variant, search) in &searches {
        if let Some(search) = search {
            sustained(variant, search, &mut measures, &mut notes);
        }
    }
    let series = samples.0;
    let find = |shape: &str, variant: &str| {
        series
            .iter()
            .find(|s| s.shape == shape && s.variant == variant)
    };
    let ratios = vec![
        Ratio::of(
            "ours batch-update / londiste3 default handler",
            find(UNIFORM, BATCH),
            find(UNIFORM, REF_DEFAULT),
            Some(5.0),
        ),
        Ratio::of(
            "ours batch-update / ours a batch per tick",
            find(UNIFORM, BATCH),
            find(UNIFORM, PER_TICK),
            None,
        ),
        Ratio::of(
            "ours batch-update / ours a batch per tick, TPC-B",
            find(TPCB, BATCH),
            find(TPCB, PER_TICK),
            None,
        ),
        Ratio::of(
            "ours batch-update / ours per-event",
            find(UNIFORM, BATCH),
            find(UNIFORM, PER_EVENT),
            Some(3.0),
        ),
        Ratio::of(
            "ours batch-update / londiste3 bulk handler",
            find(UNIFORM, BATCH),
            find(UNIFORM, REF_BULK),
            None,
        ),
        Ratio::of(
            "ours batch-update / built-in logical replication, single-row updates",
            find(UNIFORM, BATCH),
            find(UNIFORM, BUILTIN),
            Some(1.0),
        ),
        Ratio::of(
            "ours batch-update / built-in logical replication, TPC-B",
            find(TPCB, BATCH),
            find(TPCB, BUILTIN),
            Some(2.0),
        ),
        Ratio::of(
            "ours batch-update / londiste3 default handler, TPC-B",
            find(TPCB, BATCH),
            find(TPCB, REF_DEFAULT),
            None,
        ),
    ];
    let measures = measures.into_vec();
    let limits = vec![Limit::of(
        "ours add-table to ok (s)",
        measures
            .iter()
            .find(|m| m.what == add_table && m.variant == "ours"),
        3.0,
    )];
    Ok(Report {
        scenario: "londiste",
        notes,
        series,
        ratios,
        measures,
        limits,
    })
}

fn shape(workload: Workload) -> &'static str {
    match workload {
        Workload::Uniform { .. } => UNIFORM,
        Workload::Tpcb { .. } => TPCB,
    }
}

/// Series collected run by run, in first-measured order.
#[derive(Default)]
struct Samples(Vec<Series>);

impl Samples {
    fn push(
        &mut self,
        shape: &'static str,
        variant: &'static str,
        run: u32,
        events: u64,
        seconds: f64,
    ) {
        let sample = Sample::new(run, events, seconds);
        match self
            .0
            .iter_mut()
            .find(|s| s.shape == shape && s.variant == variant)
        {
            Some(series) => series.samples.push(sample),
            None => self.0.push(Series {
                shape,
                variant,
                reps: 1,
                events_per_rep: events,
                samples: vec![sample],
            }),
        }
    }
}

/// Reports one replicator's paced search: its best rate as a measure, its steps as a note.
fn sustained(
    variant: &'static str,
    search: &Search,
    measures: &mut Measures,
    notes: &mut Vec<String>,
) {
    notes.push(format!(
        "{SUSTAINED}, {variant}'s steps: {}.",
        search.describe()
    ));
    if let Some(best) = search.best() {
        measures.push(SUSTAINED, variant, "rows/s", best.achieved);
        measures.push(SUSTAINED, variant, "lag at that rate (s)", best.max_lag);
    }
}

async fn run_reference(
    server: &Server,
    run: u32,
    workload: Workload,
    work_dir: &WorkDir,
) -> Result<Reference> {
    let tag = workload.tag();
    let provider = server.scratch_db(&format!("r{tag}p{run}")).await?;
    let subscriber = server.scratch_db(&format!("r{tag}s{run}")).await?;
    let dir = work_dir.join(format!("ref{tag}{run}"));
    let mut args = vec![
        "--provider".to_owned(),
        provider.conninfo(),
        "--subscriber".to_owned(),
        subscriber.conninfo(),
        "--create".to_owned(),
        "--skip-trigger-tps".to_owned(),
    ];
    match workload {
        Workload::Uniform { rows, updates } => args.extend([
            "--rows".to_owned(),
            rows.to_string(),
            "--updates".to_owned(),
            updates.to_string(),
        ]),
        Workload::Tpcb { transactions } => args.extend([
            "--tpcb".to_owned(),
            transactions.to_string(),
            "--skip-bulk".to_owned(),
        ]),
    }
    let out = python_command("londiste_ref.py", args, &provider)
        .arg("--workdir")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running londiste_ref.py")?;
    ensure!(
        out.status.success(),
        "londiste_ref.py failed: {}",
        out.status
    );
    let reference: Reference =
        serde_json::from_slice(&out.stdout).context("reading londiste_ref.py's JSON")?;
    ensure!(reference.md5_match, "londiste3 left the tables different");
    Ok(reference)
}
