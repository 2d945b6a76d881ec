-- pgq_coop regression script. Run it as `psql -X -a -q -d DB < pgq_coop.sql`
-- (standard input, so messages carry no file name) in a fresh database
-- holding the pgq schema (pgq-rs's line or the original extension) and the
-- pgq_coop line, with stderr joined to stdout; compare with pgq_coop.out.
\set VERBOSITY terse
\pset null '(null)'

SELECT pgq_coop.version();
SELECT pgq.create_queue('q');
SELECT pgq.set_queue_config('q', 'ticker_max_count', '1');

-- every subscription on queue q, and whether it shares the group's sub_id
CREATE TEMP VIEW coop_state AS
SELECT c.co_name AS consumer,
       s.sub_id = g.sub_id AS in_group,
       s.sub_last_tick, s.sub_next_tick, s.sub_batch
  FROM pgq.subscription s
  JOIN pgq.consumer c ON c.co_id = s.sub_consumer
  JOIN pgq.queue q ON q.queue_id = s.sub_queue
  LEFT JOIN (pgq.subscription g JOIN pgq.consumer gc ON gc.co_id = g.sub_consumer AND gc.co_name = 'grp')
         ON g.sub_queue = s.sub_queue
 WHERE q.queue_name = 'q'
 ORDER BY c.co_name;

-- registration: the group comes with the first sub-consumer
SELECT pgq_coop.register_subconsumer('q', 'grp', 's1');
SELECT pgq_coop.register_subconsumer('q', 'grp', 's1');
SELECT pgq_coop.register_subconsumer('q', 'grp', 's2');
SELECT * FROM coop_state;

-- nothing to do yet
SELECT pgq_coop.next_batch('q', 'grp', 's1');

-- three producer transactions, a tick after each
BEGIN;
SELECT pgq.insert_event('q', 'a', '1');
SELECT pgq.insert_event('q', 'a', '2');
COMMIT;
SELECT pgq.ticker('q');
BEGIN;
SELECT pgq.insert_event('q', 'b', '3');
COMMIT;
SELECT pgq.ticker('q');
BEGIN;
SELECT pgq.insert_event('q', 'c', '4');
SELECT pgq.insert_event('q', 'c', '5');
SELECT pgq.insert_event('q', 'c', '6');
COMMIT;
SELECT pgq.ticker('q');

-- the two sub-consumers take different batches; asking again returns the open one
SELECT batch_id, prev_tick_id, cur_tick_id FROM pgq_coop.next_batch_info('q', 'grp', 's1');
SELECT pgq_coop.next_batch('q', 'grp', 's1');
SELECT batch_id, prev_tick_id, cur_tick_id FROM pgq_coop.next_batch_info('q', 'grp', 's2');
SELECT * FROM coop_state;
SELECT ev_type, ev_data, ev_retry FROM pgq.get_batch_events(1) ORDER BY ev_id;
SELECT ev_type, ev_data, ev_retry FROM pgq.get_batch_events(2) ORDER BY ev_id;

-- s1 sends one event back for retry and finishes; s2 finishes
SELECT pgq.event_retry(1, (SELECT ev_id FROM pgq.get_batch_events(1) WHERE ev_data = '2'), 0);
SELECT pgq_coop.finish_batch(1);
SELECT pgq_coop.finish_batch(1);
SELECT pgq_coop.finish_batch(2);

-- the third batch goes to whoever asks next
SELECT pgq_coop.next_batch('q', 'grp', 's2');
SELECT ev_type, ev_data FROM pgq.get_batch_events(3) ORDER BY ev_id;
SELECT pgq_coop.finish_batch(3);
SELECT pgq_coop.next_batch('q', 'grp', 's1');
SELECT * FROM coop_state;

-- the retried event comes back to the group, for any sub-consumer
SELECT pgq.maint_retry_events();
SELECT pgq.force_tick('q');
SELECT pgq.ticker('q');
SELECT pgq_coop.next_batch('q', 'grp', 's2');
SELECT ev_type, ev_data, ev_retry FROM pgq.get_batch_events(4) ORDER BY ev_id;
SELECT pgq_coop.finish_batch(4);

-- takeover of a silent sub-consumer's batch
BEGIN;
SELECT pgq.insert_event('q', 'd', '7') IS NOT NULL AS inserted;
COMMIT;
SELECT pgq.ticker('q');
SELECT pgq_coop.next_batch('q', 'grp', 's1');
-- s1 was seen just now: s2 gets nothing
SELECT pgq_coop.next_batch('q', 'grp', 's2', '1 hour');
-- s1 goes silent
UPDATE pgq.subscription SET sub_active = now() - interval '2 hours' WHERE sub_batch = 5;
-- s2 takes the batch over under a new id
SELECT batch_id, prev_tick_id, cur_tick_id FROM pgq_coop.next_batch_info('q', 'grp', 's2', '1 hour');
SELECT * FROM coop_state;
SELECT old_batch_id, new_batch_id FROM pgq_coop.batch_takeover;
SELECT ev_type, ev_data FROM pgq.get_batch_events(6) ORDER BY ev_id;
-- the late s1 cannot finish the batch it lost
SELECT pgq_coop.finish_batch(5);
\echo :LAST_ERROR_SQLSTATE
SELECT pgq_coop.finish_batch(6);
-- s1 asks again: the takeover is forgotten
SELECT pgq_coop.next_batch('q', 'grp', 's1', '1 hour');
SELECT count(*) AS takeovers FROM pgq_coop.batch_takeover;

-- batch size tuning: at least 3 events per batch
BEGIN;
SELECT pgq.insert_event('q', 'e', '8') IS NOT NULL AS inserted;
COMMIT;
SELECT pgq.ticker('q');
SELECT pgq_coop.next_batch_custom('q', 'grp', 's1', NULL, 3, NULL);
BEGIN;
SELECT pgq.insert_event('q', 'e', '9') IS NOT NULL AS inserted;
SELECT pgq.insert_event('q', 'e', '10') IS NOT NULL AS inserted;
COMMIT;
SELECT pgq.ticker('q');
SELECT pgq_coop.next_batch_custom('q', 'grp', 's1', NULL, 3, NULL, '1 hour');
SELECT ev_type, ev_data FROM pgq.get_batch_events(7) ORDER BY ev_id;
SELECT pgq_coop.finish_batch(7);

-- unregistering a sub-consumer that holds a batch
BEGIN;
SELECT pgq.insert_event('q', 'f', '11') IS NOT NULL AS inserted;
COMMIT;
SELECT pgq.ticker('q');
SELECT pgq_coop.next_batch('q', 'grp', 's2');
SELECT pgq_coop.unregister_subconsumer('q', 'grp', 's2', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT pgq_coop.unregister_subconsumer('q', 'grp', 's2', 1);
SELECT ev_type, ev_data, ev_retry FROM pgq.retry_queue ORDER BY ev_id;
SELECT pgq_coop.unregister_subconsumer('q', 'grp', 's2', 0);
SELECT * FROM coop_state;
-- its events come back to the group
SELECT pgq.maint_retry_events();
SELECT pgq.force_tick('q');
SELECT pgq.ticker('q');
SELECT pgq_coop.next_batch('q', 'grp', 's1');
SELECT ev_type, ev_data, ev_retry FROM pgq.get_batch_events(9) ORDER BY ev_id;
SELECT pgq_coop.finish_batch(9);

-- pgq_reader may consume; pgq_writer may not
BEGIN;
SELECT pgq.insert_event('q', 'g', '12') IS NOT NULL AS inserted;
COMMIT;
SELECT pgq.ticker('q');
SET ROLE pgq_reader;
SELECT pgq_coop.next_batch('q', 'grp', 's1');
SELECT ev_type, ev_data FROM pgq.get_batch_events(10) ORDER BY ev_id;
SELECT pgq_coop.finish_batch(10);
RESET ROLE;
SET ROLE pgq_writer;
SELECT pgq_coop.next_batch('q', 'grp', 's1');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- next_batch registers an unknown sub-consumer
SELECT pgq_coop.next_batch('q', 'grp', 's3');
SELECT * FROM coop_state;

-- refusals: the group with a batch of its own, a plain consumer named like a sub-consumer
BEGIN;
SELECT pgq.insert_event('q', 'h', '13') IS NOT NULL AS inserted;
COMMIT;
SELECT pgq.ticker('q');
SELECT pgq.next_batch('q', 'grp');
SELECT pgq_coop.next_batch('q', 'grp', 's1');
\echo :LAST_ERROR_SQLSTATE
SELECT pgq.finish_batch(11);
SELECT pgq.register_consumer('q', 'grp.rogue');
SELECT pgq_coop.next_batch('q', 'grp', 'rogue');
\echo :LAST_ERROR_SQLSTATE
SELECT pgq_coop.unregister_subconsumer('q', 'grp', 'rogue', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT pgq_coop.next_batch('nosuch', 'grp', 's1');
\echo :LAST_ERROR_SQLSTATE
SELECT pgq_coop.register_subconsumer('nosuch', 'grp', 's1');
\echo :LAST_ERROR_SQLSTATE

-- the engine behind next_batch: min_lag holds back batches of recent events
BEGIN;
SELECT pgq.insert_event('q', 'i', '14') IS NOT NULL AS inserted;
COMMIT;
SELECT pgq.ticker('q');
SELECT batch_id, prev_tick_id, cur_tick_id
  FROM pgq_coop.next_batch_custom_info('q', 'grp', 's1', '1 hour', NULL, NULL, NULL);
SELECT batch_id, prev_tick_id, cur_tick_id
  FROM pgq_coop.next_batch_custom_info('q', 'grp', 's1', NULL, NULL, NULL, '1 hour');
SELECT pgq_coop.finish_batch(12);

-- finish_batch on a plain consumer's batch closes it as pgq.finish_batch does
SELECT pgq.next_batch('q', 'grp.rogue');
SELECT pgq_coop.finish_batch(13);
SELECT sub_last_tick, sub_next_tick, sub_batch FROM coop_state WHERE consumer = 'grp.rogue';

-- the plain pgq API unregisters sub-consumers and the whole group
SELECT pgq.unregister_consumer('q', 'grp.s3');
SELECT pgq.unregister_consumer('q', 'grp');
SELECT pgq.unregister_consumer('q', 'grp.rogue');
SELECT * FROM coop_state;
