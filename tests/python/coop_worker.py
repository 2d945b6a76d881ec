"""One sub-consumer of a cooperative consumer group, on python3-pgq's pgq.CoopConsumer.

usage: coop_worker.py CONFIG EXPECTED_EVENTS DEADLINE_SECONDS

The skytools CONFIG has a [coop_worker] section (db, queue_name, consumer_name,
subconsumer_name, ...). The worker registers its sub-consumer, prints "ready",
then works batches: an event whose data starts with "retry" is handed back once
(ev.tag_retry(0)); every other event, and a retried one when it comes back, is
logged into table coop_done in the batch's own transaction. It exits 0 once
coop_done holds EXPECTED_EVENTS distinct events, 1 when the deadline passes.
"""
import sys
import time

import pgq


class Worker(pgq.CoopConsumer):
    def process_batch(self, db, batch_id, ev_list):
        curs = db.cursor()
        for ev in ev_list:
            if ev.data.startswith("retry") and not ev.retry:
                ev.tag_retry(0)
                continue
            curs.execute(
                "insert into coop_done (ev_id, ev_data, ev_retry, sub, batch_id)"
                " values (%s, %s, %s, %s, %s)",
                [ev.id, ev.data, ev.retry, self.subconsumer_name, batch_id])
            ev.tag_done()


def main():
    conf, expected = sys.argv[1], int(sys.argv[2])
    deadline = time.monotonic() + float(sys.argv[3])
    worker = Worker("coop_worker", "db", [conf])
    worker.register_consumer()
    print("ready", flush=True)
    batches = 0
    while time.monotonic() < deadline:
        if worker.work():
            batches += 1
            continue
        db = worker.get_database("db")
        curs = db.cursor()
        curs.execute("select count(distinct ev_id) from coop_done")
        done = curs.fetchone()[0]
        db.commit()
        if done >= expected:
            print(f"{worker.subconsumer_name}: {batches} batches, all {done} events done",
                  flush=True)
            return 0
        time.sleep(0.02)
    print(f"{worker.subconsumer_name}: deadline passed after {batches} batches", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
