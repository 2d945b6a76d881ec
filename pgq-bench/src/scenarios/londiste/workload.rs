//! The provider's write load: pgbench-like accounts updated one row at a time, or pgbench's
//! TPC-B; the same tables and rows on every replicator's provider.

use anyhow::{ensure, Context as _, Result};
use pgq_core::Dsn;
use pgq_testkit::client_program;

/// Updates per provider transaction of the uniform load.
pub(super) const TXN_SIZE: u64 = 100;
/// Distinct rows per transaction are spread with this stride (as `londiste_ref.py` does).
pub(super) const STRIDE: u64 = 7919;
/// pgbench clients writing the TPC-B backlog.
const TPCB_CLIENTS: u64 = 2;

const UNIFORM_TABLES: [&str; 1] = ["public.accounts"];
/// pgbench's tables with a primary key (`pgbench_history` has none and is left out).
const TPCB_TABLES: [&str; 3] = [
    "public.pgbench_accounts",
    "public.pgbench_branches",
    "public.pgbench_tellers",
];

/// What the provider holds and how its backlog is written.
#[derive(Debug, Clone, Copy)]
pub(super) enum Workload {
    /// `accounts` of `rows` rows; a backlog of `updates` single-row updates, [`TXN_SIZE`] per
    /// transaction, each row touched as often as any other.
    Uniform { rows: u64, updates: u64 },
    /// `pgbench -i -s 1`; a backlog of `transactions` TPC-B transactions, each updating one
    /// account, one teller and one branch (and inserting a `pgbench_history` row, not
    /// replicated).
    Tpcb { transactions: u64 },
}

impl Workload {
    /// A short tag for database names.
    pub(super) fn tag(self) -> &'static str {
        match self {
            Workload::Uniform { .. } => "u",
            Workload::Tpcb { .. } => "t",
        }
    }

    /// The replicated tables.
    pub(super) fn tables(self) -> &'static [&'static str] {
        match self {
            Workload::Uniform { .. } => &UNIFORM_TABLES,
            Workload::Tpcb { .. } => &TPCB_TABLES,
        }
    }

    /// Row changes of replicated tables in one backlog.
    pub(super) fn changes(self) -> u64 {
        match self {
            Workload::Uniform { updates, .. } => updates / TXN_SIZE * TXN_SIZE,
            Workload::Tpcb { transactions } => transactions / TPCB_CLIENTS * TPCB_CLIENTS * 3,
        }
    }

    /// Creates and fills the tables in `dsn`'s database; every fill gives the same rows.
    pub(super) async fn fill(self, dsn: &Dsn) -> Result<()> {
        match self {
            Workload::Uniform { rows, .. } => {
                let client = dsn.connect().await?;
                client
                    .batch_execute(&format!(
                        "CREATE TABLE public.accounts
                           (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
                         INSERT INTO public.accounts
                           SELECT g, 1, 0, '' FROM generate_series(1, {rows}) g;"
                    ))
                    .await
                    .context("filling accounts")?;
                client
                    .batch_execute("VACUUM ANALYZE public.accounts")
                    .await
                    .context("vacuuming accounts")
            }
            Workload::Tpcb { .. } => {
                pgbench(&["-i", "-q", "-s", "1", &dsn.conninfo()], "pgbench -i").await
            }
        }
    }

    /// Commits a backlog in `dsn`'s database; `round` moves the uniform walk on so that
    /// rounds write different values.
    pub(super) async fn write_backlog(self, dsn: &Dsn, round: u64) -> Result<()> {
        match self {
            Workload::Uniform { rows, updates } => {
                let txns = updates / TXN_SIZE;
                let offset = round * txns;
                let client = dsn.connect().await?;
                client
                    .batch_execute(&format!(
                        "DO $$ BEGIN
                           FOR t IN {offset} .. {last} LOOP
                             UPDATE public.accounts SET abalance = abalance + 1
                              WHERE aid = ANY (ARRAY(
                                SELECT ((t::bigint * {TXN_SIZE} + k) * {STRIDE}) % {rows} + 1
                                  FROM generate_series(0, {TXN_SIZE} - 1) k));
                             COMMIT;
                           END LOOP;
                         END $$",
                        last = offset + txns - 1
                    ))
                    .await
                    .context("committing the backlog")
            }
            Workload::Tpcb { transactions } => {
                let per_client = (transactions / TPCB_CLIENTS).to_string();
                let clients = TPCB_CLIENTS.to_string();
                let args = [
                    "-n",
                    "-b",
                    "tpcb-like",
                    "-c",
                    &clients,
                    "-j",
                    &clients,
                    "-t",
                    &per_client,
                    &dsn.conninfo(),
                ];
                pgbench(&args, "pgbench TPC-B").await
            }
        }
    }

    /// The md5 of each replicated table's rows (ordered by their text), to compare the sides.
    pub(super) async fn digest(self, dsn: &Dsn) -> Result<Vec<Option<String>>> {
        let client = dsn.connect().await?;
        let mut digests = Vec::new();
        for table in self.tables() {
            let row = client
                .query_one(
                    &format!(
                        "SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t"
                    ),
                    &[],
                )
                .await
                .with_context(|| format!("reading {table}"))?;
            digests.push(row.get(0));
        }
        Ok(digests)
    }
}

/// Runs the server's pgbench with `args`.
async fn pgbench(args: &[&str], what: &str) -> Result<()> {
    let (code, out, err) = pgq_testkit::run(client_program("pgbench"), args).await?;
    ensure!(code == 0, "{what} failed: {out}{err}");
    Ok(())
}
