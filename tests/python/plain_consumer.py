"""Drains a queue with python3-pgq's pgq.Consumer and prints what it saw.

usage: plain_consumer.py CONFIG [--survive-errors]

The skytools CONFIG has a [plain_consumer] section (db, queue_name,
consumer_name, pgq_lazy_fetch, table_filter, ...). The consumer registers,
then works batches until there is none, printing one JSON line per batch once
the batch is committed: {"batch_id", "prev_tick_id", "tick_id", "events":
[[ev_id, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4,
ev_retry, ev_txid], ...]}. With --survive-errors a database error ends the
run with a line {"error": message} and status 0 (its batch was rolled back).
"""
import json
import sys

import pgq
import psycopg2


class Plain(pgq.Consumer):
    done = None

    def process_batch(self, db, batch_id, ev_list):
        events = []
        for ev in ev_list:
            events.append([ev.id, ev.type, ev.data, ev.extra1, ev.extra2, ev.extra3,
                           ev.extra4, ev.retry, ev.txid])
            ev.tag_done()
        info = self.batch_info
        self.done = {
            "batch_id": batch_id,
            "prev_tick_id": info["prev_tick_id"],
            "tick_id": info["tick_id"],
            "events": events,
        }

    def work(self):
        # The batch is printed after work() has committed it.
        self.done = None
        more = super().work()
        if self.done is not None:
            print(json.dumps(self.done), flush=True)
        return more


def main():
    consumer = Plain("plain_consumer", "db", [sys.argv[1]])
    try:
        consumer.register_consumer()
        while consumer.work():
            pass
    except psycopg2.Error as err:
        if "--survive-errors" not in sys.argv[2:]:
            raise
        print(json.dumps({"error": str(err).strip()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
