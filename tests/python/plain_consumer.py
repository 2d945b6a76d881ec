"""Drains a queue with python3-pgq's pgq.Consumer and prints what it saw.

usage: plain_consumer.py CONFIG

The skytools CONFIG has a [plain_consumer] section (db, queue_name,
consumer_name, pgq_lazy_fetch, table_filter, ...). The consumer registers,
then works batches until there is none, printing one JSON line per batch:
{"batch_id", "prev_tick_id", "tick_id", "events": [[ev_id, ev_type, ev_data,
ev_extra1, ev_extra2, ev_extra3, ev_extra4, ev_retry, ev_txid], ...]}.
"""
import json
import sys

import pgq


class Plain(pgq.Consumer):
    def process_batch(self, db, batch_id, ev_list):
        events = []
        for ev in ev_list:
            events.append([ev.id, ev.type, ev.data, ev.extra1, ev.extra2, ev.extra3,
                           ev.extra4, ev.retry, ev.txid])
            ev.tag_done()
        info = self.batch_info
        print(json.dumps({
            "batch_id": batch_id,
            "prev_tick_id": info["prev_tick_id"],
            "tick_id": info["tick_id"],
            "events": events,
        }), flush=True)


def main():
    consumer = Plain("plain_consumer", "db", [sys.argv[1]])
    consumer.register_consumer()
    while consumer.work():
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
