"""Reference figures from python3-londiste (londiste3) for the replicator benchmark.

usage: londiste_ref.py --provider DSN --subscriber DSN --workdir DIR [--rows N]
       [--updates N] [--txn-size N] [--tpcb N] [--create] [--skip-bulk] [--skip-trigger-tps]
       ...

PROVIDER and SUBSCRIBER are existing empty databases on one server (superuser). The script
installs pgq, pgq_node and londiste in both, makes a root node on the provider and a leaf
on the subscriber, starts pgqd (on both databases) and the leaf worker as subprocesses,
and writes their configs and logs into DIR. It then measures:

  add_table_to_ok_s  `add-table public.accounts` on both nodes until the leaf shows the
                     table "ok" (ROWS pgbench-like rows on the provider);
  replay             with the worker paused, UPDATES single-row updates in transactions
                     of TXN_SIZE rows are committed and ticked; the worker is resumed and
                     timed until its last tick on the provider reaches the backlog's tick;
                     once with the default handler and once with handler=bulk;

With --tpcb N the provider is `pgbench -i -s 1` instead, its three keyed tables are added
(pgbench_history has no key and stays out) and the backlog is N pgbench TPC-B transactions
(2 clients), three replicated updates each.

  md5_match          ordered md5 of the table on both sides at the end;
  trigger_tps        pgbench UPDATE-only TPS on a copy of the table without a trigger and
                     with the C pgq.logutriga trigger.

Prints one JSON object on stdout; progress goes to stderr. Every subprocess it starts is
stopped before it exits, also on failure.
"""
import argparse
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import psycopg2
import psycopg2.extensions

QUEUE = "lref_q"
ROOT = "lref_root"
LEAF = "lref_leaf"
TABLE = "public.accounts"
TPCB_TABLES = ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers"]
TPCB_CLIENTS = 2
TPS_TABLE = "accounts_tps"
TPS_QUEUE = "lref_tps_q"
# Multiplier of the update walk: prime and coprime with any sane row count, so that one
# transaction's rows are distinct and the updates spread over the whole table.
STRIDE = 7919

ACCOUNTS_DDL = ("CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, "
                "filler char(84))")


def log(msg, *args):
    print("[londiste_ref %s] %s" % (time.strftime("%H:%M:%S"), msg % args),
          file=sys.stderr, flush=True)


def connect(dsn):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def query(conn, sql, params=None):
    with conn.cursor() as curs:
        curs.execute(sql, params)
        return curs.fetchall() if curs.description else None


def query_one(conn, sql, params=None):
    rows = query(conn, sql, params)
    return rows[0] if rows else None


def ini_value(value):
    """Skytools configs interpolate %(name)s, so a literal percent sign is doubled."""
    return str(value).replace("%", "%%")


class Bench:
    def __init__(self, opts):
        self.opts = opts
        self.workdir = os.path.abspath(opts.workdir)
        self.provider_ini = os.path.join(self.workdir, "provider.ini")
        self.leaf_ini = os.path.join(self.workdir, "leaf.ini")
        self.pgqd_ini = os.path.join(self.workdir, "pgqd.ini")
        self.cmd_log = os.path.join(self.workdir, "londiste_cmds.log")
        self.pgqd = None
        self.worker = None
        self.pdb = None
        self.sdb = None
        self.tables = TPCB_TABLES if opts.tpcb else [TABLE]

    # --- setup -------------------------------------------------------------------------

    def write_configs(self):
        os.makedirs(self.workdir, exist_ok=True)
        pparts = psycopg2.extensions.parse_dsn(self.opts.provider)
        sparts = psycopg2.extensions.parse_dsn(self.opts.subscriber)
        pdb, sdb = pparts.pop("dbname"), sparts.pop("dbname")
        if pparts != sparts:
            raise SystemExit("provider and subscriber must differ only in dbname (one pgqd)")
        base = " ".join("%s=%s" % kv for kv in sorted(pparts.items()))
        with open(self.pgqd_ini, "w") as f:
            f.write("[pgqd]\n"
                    "logfile = %s/pgqd.log\n"
                    "pidfile = %s/pgqd.pid\n"
                    "base_connstr = %s\n"
                    "initial_database = %s\n"
                    "database_list = %s, %s\n"
                    "ticker_period = %s\n"
                    "check_period = 5\n"
                    % (self.workdir, self.workdir, base, pdb, pdb, sdb,
                       self.opts.ticker_period))
        for path, job, dsn in ((self.provider_ini, ROOT, self.opts.provider),
                               (self.leaf_ini, LEAF, self.opts.subscriber)):
            with open(path, "w") as f:
                f.write("[londiste]\n"
                        "job_name = %s\n"
                        "db = %s\n"
                        "queue_name = %s\n"
                        "logfile = %s/%s.log\n"
                        "pidfile = %s/%s.pid\n"
                        "loop_delay = %s\n"
                        "handler_modules = londiste.handlers.bulk\n"
                        % (job, ini_value(dsn), QUEUE, self.workdir, job, self.workdir, job,
                           self.opts.loop_delay))

    def londiste(self, ini, *args):
        cmd = ["londiste", ini] + list(args)
        log("$ %s", " ".join(cmd))
        with open(self.cmd_log, "a") as out:
            out.write("$ %s\n" % " ".join(cmd))
            out.flush()
            res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir)
        if res.returncode != 0:
            raise RuntimeError("%s failed (%d), see %s" % (" ".join(cmd), res.returncode,
                                                          self.cmd_log))

    def setup(self):
        self.write_configs()
        self.pdb = connect(self.opts.provider)
        self.sdb = connect(self.opts.subscriber)
        for conn in (self.pdb, self.sdb):
            for ext in ("pgq", "pgq_node", "londiste"):
                query(conn, "CREATE EXTENSION IF NOT EXISTS %s" % ext)
        if self.opts.tpcb:
            log("filling the provider with pgbench -i -s 1")
            subprocess.run(["pgbench", "-i", "-q", "-s", "1", self.opts.provider], check=True,
                           capture_output=True)
            if not self.opts.create:
                raise SystemExit("--tpcb needs --create")
        else:
            log("filling %s with %d rows on the provider", TABLE, self.opts.rows)
            query(self.pdb, ACCOUNTS_DDL)
            query(self.pdb, "INSERT INTO accounts SELECT g, (g - 1) / 100000 + 1, 0, '' "
                            "FROM generate_series(1, %s) g", [self.opts.rows])
            query(self.pdb, "VACUUM ANALYZE accounts")
            if not self.opts.create:
                query(self.sdb, ACCOUNTS_DDL)
        self.londiste(self.provider_ini, "create-root", ROOT, self.opts.provider)
        self.londiste(self.leaf_ini, "create-leaf", LEAF, self.opts.subscriber,
                      "--provider=" + self.opts.provider)
        # Short ticks on the provider queue: londiste's own state changes and the backlog's
        # tail do not wait for the default 3 s max lag / 60 s idle period.
        query(self.pdb, "SELECT pgq.set_queue_config(%s, 'ticker_max_lag', %s), "
                        "pgq.set_queue_config(%s, 'ticker_idle_period', %s)",
              [QUEUE, self.opts.ticker_max_lag, QUEUE, self.opts.ticker_idle_period])
        self.start_pgqd()
        self.start_worker()

    def start_pgqd(self):
        out = open(os.path.join(self.workdir, "pgqd.stdout"), "a")
        self.pgqd = subprocess.Popen(["pgqd", self.pgqd_ini], stdout=out,
                                     stderr=subprocess.STDOUT, cwd=self.workdir)
        out.close()
        log("pgqd started, pid %d", self.pgqd.pid)

    def start_worker(self):
        out = open(os.path.join(self.workdir, "worker.stdout"), "a")
        self.worker = subprocess.Popen(["londiste", self.leaf_ini, "worker"], stdout=out,
                                       stderr=subprocess.STDOUT, cwd=self.workdir)
        out.close()
        log("leaf worker started, pid %d", self.worker.pid)

    @staticmethod
    def stop(proc, name, grace=30.0):
        if proc is None or proc.poll() is not None:
            return
        # SIGINT is the safe stop of both skytools scripts and pgqd.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            log("%s did not stop on SIGINT, sending SIGTERM", name)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log("%s (pid %d) stopped", name, proc.pid)

    def stop_worker(self):
        self.stop(self.worker, "leaf worker")
        self.worker = None

    def stop_copy_daemons(self):
        """Copy processes are daemons forked by our worker; their pidfiles are in workdir."""
        known = {os.path.join(self.workdir, n) for n in ("pgqd.pid", ROOT + ".pid",
                                                         LEAF + ".pid")}
        for pidfile in glob.glob(os.path.join(self.workdir, "*.pid*")):
            if pidfile in known:
                continue
            try:
                with open(pidfile) as f:
                    pid = int(f.read().strip())
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    cmdline = f.read().decode(errors="replace")
            except (OSError, ValueError):
                continue
            if "londiste" in cmdline and self.leaf_ini in cmdline:
                log("stopping copy process %d", pid)
                os.kill(pid, signal.SIGTERM)

    def cleanup(self):
        self.stop_worker()
        self.stop_copy_daemons()
        self.stop(self.pgqd, "pgqd")
        for conn in (self.pdb, self.sdb):
            if conn is not None:
                conn.close()

    # --- helpers -----------------------------------------------------------------------

    def wait_for(self, what, check, timeout=None):
        deadline = time.monotonic() + (timeout or self.opts.timeout)
        while True:
            res = check()
            if res:
                return res
            if self.worker is not None and self.worker.poll() is not None:
                raise RuntimeError("leaf worker exited (%s) while waiting for %s"
                                   % (self.worker.returncode, what))
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for %s" % what)
            time.sleep(self.opts.poll)

    def all_ok(self):
        rows = query(self.sdb, "SELECT merge_state FROM londiste.get_table_list(%s) "
                               "WHERE table_name = ANY(%s)", [QUEUE, self.tables])
        return len(rows) == len(self.tables) and all(r[0] == "ok" for r in rows)

    def consumer_info(self):
        """(last_tick, pending_events) of the leaf worker's subscription on the provider."""
        return query_one(self.pdb, "SELECT last_tick, pending_events "
                                   "FROM pgq.get_consumer_info(%s, %s)", [QUEUE, LEAF])

    def ticked_queue_tick(self):
        """The queue's last tick once every committed event is in a tick, else None."""
        row = query_one(self.pdb, "SELECT last_tick_id, ev_new FROM pgq.get_queue_info(%s)",
                        [QUEUE])
        return row[0] if row[1] == 0 else None

    def caught_up(self):
        last_tick, pending = self.consumer_info()
        target = self.ticked_queue_tick()
        return target is not None and pending == 0 and last_tick >= target

    def table_md5(self, conn):
        return [list(query_one(conn, "SELECT count(*), md5(string_agg(t::text, ',' "
                                     "ORDER BY t::text)) FROM %s t" % table))
                for table in self.tables]

    # --- measurements ------------------------------------------------------------------

    def add_table(self):
        leaf_args = ["add-table"] + self.tables
        if self.opts.create:
            leaf_args.append("--create")
        start = time.monotonic()
        self.londiste(self.provider_ini, "add-table", *self.tables)
        self.londiste(self.leaf_ini, *leaf_args)
        self.wait_for("tables ok", self.all_ok)
        secs = time.monotonic() - start
        log("add-table to ok: %.2f s", secs)
        return secs

    def backlog_events(self):
        """Replicated row changes in one backlog."""
        if self.opts.tpcb:
            return self.opts.tpcb // TPCB_CLIENTS * TPCB_CLIENTS * 3
        return self.opts.updates // self.opts.txn_size * self.opts.txn_size

    def backlog(self):
        """Commits the updates as one UPDATE of txn_size distinct rows per transaction (or
        pgbench's TPC-B); the londiste row trigger logs one event per row."""
        start = time.monotonic()
        if self.opts.tpcb:
            clients = str(TPCB_CLIENTS)
            subprocess.run(["pgbench", "-n", "-b", "tpcb-like", "-c", clients, "-j", clients,
                            "-t", str(self.opts.tpcb // TPCB_CLIENTS), self.opts.provider],
                           check=True, capture_output=True)
            log("backlog of %d TPC-B transactions committed in %.2f s", self.opts.tpcb,
                time.monotonic() - start)
            return self.wait_for("backlog ticked", self.ticked_queue_tick)
        n, size, rows = self.opts.updates, self.opts.txn_size, self.opts.rows
        query(self.pdb, """
            DO $$
            DECLARE
                txns int := %(n)s / %(size)s;
            BEGIN
                FOR t IN 0 .. txns - 1 LOOP
                    UPDATE accounts SET abalance = abalance + 1
                     WHERE aid = ANY (ARRAY(
                         SELECT ((t::bigint * %(size)s + k) * %(stride)s) %% %(rows)s + 1
                           FROM generate_series(0, %(size)s - 1) k));
                    COMMIT;
                END LOOP;
            END $$""" % {"n": int(n), "size": int(size), "rows": int(rows),
                         "stride": STRIDE})
        log("backlog of %d updates (%d transactions) committed in %.2f s",
            n // size * size, n // size, time.monotonic() - start)
        # No pgq.force_tick(): it bumps the event sequence, which would inflate
        # pending_events; the short ticker_max_lag ticks the tail anyway.
        return self.wait_for("backlog ticked", self.ticked_queue_tick)

    def replay(self, handler):
        if handler == "bulk":
            self.stop_worker()
            self.londiste(self.leaf_ini, "change-handler", TABLE, "--handler=bulk")
            self.start_worker()
        self.wait_for("worker idle", self.caught_up)
        self.londiste(self.leaf_ini, "pause")
        target = self.backlog()
        last_tick, pending = self.consumer_info()
        log("replay (%s): %d events pending, consumer at tick %d, target tick %d",
            handler, pending, last_tick, target)
        # The `resume` command's own statement; the clock starts at its commit.
        query(self.sdb, "SELECT pgq_node.set_consumer_paused(%s, %s, false)", [QUEUE, LEAF])
        start = time.monotonic()
        self.wait_for("replay caught up",
                      lambda: self.consumer_info()[0] >= target)
        secs = time.monotonic() - start
        updates = self.backlog_events()
        log("replay (%s): %.2f s, %.0f events/s", handler, secs, updates / secs)
        return {"events": updates, "pending_events": pending, "ticks": target - last_tick,
                "seconds": round(secs, 3),
                "events_per_sec": round(updates / secs, 1)}

    def trigger_tps(self):
        query(self.pdb, "CREATE TABLE %s AS SELECT * FROM accounts" % TPS_TABLE)
        query(self.pdb, "ALTER TABLE %s ADD PRIMARY KEY (aid)" % TPS_TABLE)
        query(self.pdb, "VACUUM ANALYZE %s" % TPS_TABLE)
        query(self.pdb, "SELECT pgq.create_queue(%s)", [TPS_QUEUE])
        script = os.path.join(self.workdir, "update_only.sql")
        with open(script, "w") as f:
            f.write("\\set aid random(1, %d)\n"
                    "UPDATE %s SET abalance = abalance + 1 WHERE aid = :aid;\n"
                    % (self.opts.rows, TPS_TABLE))
        query(self.pdb, "CREATE TRIGGER lref_logu AFTER INSERT OR UPDATE OR DELETE ON %s "
                        "FOR EACH ROW EXECUTE FUNCTION pgq.logutriga(%%s)" % TPS_TABLE,
              [TPS_QUEUE])
        res = {"seconds": self.opts.pgbench_seconds, "clients": self.opts.pgbench_clients,
               "rounds": self.opts.pgbench_rounds}
        # With synchronous_commit on, the commit's WAL flush dominates on a shared disk;
        # off shows the trigger's CPU cost. Rounds alternate to even out neighbours' load.
        for sync in ("on", "off"):
            runs = {"no_trigger": [], "logutriga": []}
            env = dict(os.environ, PGOPTIONS="-c synchronous_commit=" + sync)
            for _ in range(self.opts.pgbench_rounds):
                for name in runs:
                    action = "ENABLE" if name == "logutriga" else "DISABLE"
                    query(self.pdb, "ALTER TABLE %s %s TRIGGER lref_logu" % (TPS_TABLE, action))
                    query(self.pdb, "CHECKPOINT")
                    cmd = ["pgbench", "-n", "-T", str(self.opts.pgbench_seconds),
                           "-c", str(self.opts.pgbench_clients), "-f", script,
                           self.opts.provider]
                    log("$ PGOPTIONS='%s' %s", env["PGOPTIONS"], " ".join(cmd))
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                         env=env).stdout
                    with open(os.path.join(self.workdir, "pgbench.out"), "a") as f:
                        f.write("# synchronous_commit=%s %s\n%s" % (sync, name, out))
                    tps = [line for line in out.splitlines() if line.startswith("tps")]
                    runs[name].append(float(tps[-1].split()[2]))
                    log("pgbench sync_commit=%s %s: %.1f tps", sync, name, runs[name][-1])
            med = {name: round(statistics.median(v), 1) for name, v in runs.items()}
            res["sync_commit_" + sync] = {
                "no_trigger": med["no_trigger"], "logutriga": med["logutriga"],
                "logutriga_vs_none": round(med["logutriga"] / med["no_trigger"], 3),
                "runs": runs}
        return res

    def run(self):
        self.setup()
        result = {"rows": self.opts.rows, "updates": self.opts.updates, "tpcb": self.opts.tpcb,
                  "txn_size": self.opts.txn_size,
                  "config": {"pgqd_ticker_period_s": self.opts.ticker_period,
                             "ticker_max_lag": self.opts.ticker_max_lag,
                             "ticker_idle_period": self.opts.ticker_idle_period,
                             "worker_loop_delay_s": self.opts.loop_delay,
                             "create": self.opts.create}}
        result["add_table_to_ok_s"] = round(self.add_table(), 3)
        result["replay"] = {"default": self.replay("default")}
        if not self.opts.skip_bulk:
            result["replay"]["bulk"] = self.replay("bulk")
        self.wait_for("final catch-up", self.caught_up)
        pmd5, smd5 = self.table_md5(self.pdb), self.table_md5(self.sdb)
        result["md5_match"] = pmd5 == smd5
        result["md5"] = {"provider": list(pmd5), "subscriber": list(smd5)}
        log("md5 provider %s, subscriber %s", pmd5, smd5)
        self.stop_worker()
        if not self.opts.skip_trigger_tps and not self.opts.tpcb:
            result["trigger_tps"] = self.trigger_tps()
        trig = query_one(self.pdb, "SELECT string_agg(pg_get_triggerdef(oid), '; ') "
                                   "FROM pg_trigger WHERE tgrelid = %s::regclass",
                         [self.tables[0]])
        result["londiste_triggers"] = trig[0]
        return result


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--provider", required=True, help="provider (root) DSN")
    p.add_argument("--subscriber", required=True, help="subscriber (leaf) DSN")
    p.add_argument("--workdir", required=True, help="configs and logs go here")
    p.add_argument("--rows", type=int, default=100000)
    p.add_argument("--updates", type=int, default=200000)
    p.add_argument("--txn-size", type=int, default=100, help="updates per transaction")
    p.add_argument("--tpcb", type=int, default=0,
                   help="pgbench -i -s 1 and a backlog of this many TPC-B transactions")
    p.add_argument("--create", action="store_true",
                   help="let the leaf add-table create the table (--create)")
    p.add_argument("--skip-bulk", action="store_true")
    p.add_argument("--skip-trigger-tps", action="store_true")
    p.add_argument("--pgbench-seconds", type=int, default=10)
    p.add_argument("--pgbench-clients", type=int, default=2)
    p.add_argument("--pgbench-rounds", type=int, default=2,
                   help="alternating runs per variant; the median is reported")
    p.add_argument("--ticker-period", type=float, default=0.1, help="pgqd ticker_period, s")
    p.add_argument("--ticker-max-lag", default="100 ms", help="queue ticker_max_lag")
    p.add_argument("--ticker-idle-period", default="1 s", help="queue ticker_idle_period")
    p.add_argument("--loop-delay", type=float, default=0.1, help="worker loop_delay, s")
    p.add_argument("--poll", type=float, default=0.02, help="progress polling period, s")
    p.add_argument("--timeout", type=float, default=900, help="per wait, s")
    opts = p.parse_args()
    if opts.updates < opts.txn_size or opts.txn_size > opts.rows:
        p.error("need txn-size <= updates and txn-size <= rows")
    return opts


def main():
    opts = parse_args()
    # SIGTERM must unwind through cleanup() like an error does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(opts)
    try:
        result = bench.run()
    finally:
        bench.cleanup()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
