"""Drains a ticker outage's backlog with python3-pgq's Consumer, for pgq-bench backlog.

usage: backlog_consumer.py CONFIG EVENTS

The skytools CONFIG has a [backlog_consumer] section (db, queue_name, consumer_name). The
consumer must be registered already. The script connects, prints "ready", waits for a line
on stdin, then works batches (polling every 5 ms while there is none, as the ticker catches
up) until it has seen EVENTS events, and prints one JSON line: {"events", "sizes", "end",
"peak_rss_kb"}; sizes lists the events of each batch and end is wall-clock seconds since
the epoch. Each event's ev_data is read, as a real handler would.
"""
import sys
import time

import pgq

import bench_worker


class Drain(pgq.Consumer):
    events = 0
    sizes = []

    def process_batch(self, db, batch_id, ev_list):
        size = 0
        for ev in ev_list:
            size += 1
            len(ev.data or "")
        self.events += size
        self.sizes.append(size)


def main():
    conf, wanted = sys.argv[1], int(sys.argv[2])
    consumer = Drain("backlog_consumer", "db", [conf])
    consumer.get_database("db")
    bench_worker.wait_for_go()
    while consumer.events < wanted:
        if not consumer.work():
            time.sleep(0.005)
    end = time.time()
    bench_worker.report(events=consumer.events, sizes=consumer.sizes, end=end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
