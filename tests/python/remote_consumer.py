"""Applies a queue's events to a second database with python3-pgq's RemoteConsumer
or SerialConsumer, which track finished batches there in schema pgq_ext.

usage: remote_consumer.py CONFIG remote|serial drain|crash

The skytools CONFIG has a [remote_consumer] section (src_db, dst_db,
queue_name, consumer_name, ...). Each event is written to table applied
(who, ev_id, ev_data, batch_id) in dst_db, in the transaction that marks the
batch done there. The consumer registers, then works batches until there is
none and prints "drained N" (N batches). In crash mode, the first batch with
an event whose data starts with "crash" stops between the commit in dst_db
and pgq.finish_batch in src_db: the worker prints "committed-remote BATCH_ID"
and waits to be killed.
"""
import sys
import time

import pgq


class Applier:
    crash = False
    crash_now = False

    def process_remote_batch(self, db, batch_id, ev_list, dst_db):
        curs = dst_db.cursor()
        for ev in ev_list:
            self.crash_now = self.crash_now or (self.crash and ev.data.startswith("crash"))
            curs.execute(
                "insert into applied (who, ev_id, ev_data, batch_id) values (%s, %s, %s, %s)",
                [self.consumer_name, ev.id, ev.data, batch_id])
            ev.tag_done()

    def _finish_batch(self, curs, batch_id, ev_list):
        if self.crash_now:
            print(f"committed-remote {batch_id}", flush=True)
            time.sleep(60)
            raise RuntimeError("not killed within 60 s")
        super()._finish_batch(curs, batch_id, ev_list)


class Remote(Applier, pgq.RemoteConsumer):
    pass


class Serial(Applier, pgq.SerialConsumer):
    pass


def main():
    conf, kind, mode = sys.argv[1:4]
    cls = {"remote": Remote, "serial": Serial}[kind]
    consumer = cls("remote_consumer", "src_db", "dst_db", [conf])
    consumer.crash = mode == "crash"
    consumer.register_consumer()
    batches = 0
    while consumer.work():
        batches += 1
    print(f"drained {batches}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
