"""Drains a pre-filled queue with python3-pgq's Consumer or CoopConsumer, for pgq-bench e2e.

usage: e2e_consumer.py plain|coop CONFIG

The skytools CONFIG has an [e2e_consumer] section (db, queue_name, consumer_name and,
for coop, subconsumer_name). The consumer must be registered already. The script
connects, prints "ready", waits for a line on stdin, then works batches until there
is none left and prints one JSON line: {"events", "bytes", "batches", "start", "end",
"peak_rss_kb"}; start and end are wall-clock seconds since the epoch, so that the
caller can time several workers together. Each event's ev_data is read (its length
summed), as a real handler would.
"""
import sys
import time

import pgq

import bench_worker


class Tally:
    events = 0
    bytes = 0

    def process_batch(self, db, batch_id, ev_list):
        for ev in ev_list:
            self.events += 1
            self.bytes += len(ev.data or "")


class Plain(Tally, pgq.Consumer):
    pass


class Coop(Tally, pgq.CoopConsumer):
    pass


def main():
    kind, conf = sys.argv[1], sys.argv[2]
    consumer = {"plain": Plain, "coop": Coop}[kind]("e2e_consumer", "db", [conf])
    consumer.get_database("db")
    bench_worker.wait_for_go()
    batches = 0
    start = time.time()
    while consumer.work():
        batches += 1
    end = time.time()
    bench_worker.report(events=consumer.events, bytes=consumer.bytes, batches=batches,
                        start=start, end=end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
