-- pgq_ext regression script. Run it as `psql -X -a -q -d DB < pgq_ext.sql`
-- (standard input, so messages carry no file name) in a fresh database
-- holding only the pgq_ext line (no pgq schema needed), with stderr joined
-- to stdout; compare with pgq_ext.out.
\set VERBOSITY terse
\pset null '(null)'

SELECT pgq_ext.version();
SELECT to_regnamespace('pgq') IS NULL AS no_pgq_schema;

-- batch tracking (RemoteConsumer)
SELECT pgq_ext.is_batch_done('c', 1);
SELECT pgq_ext.set_batch_done('c', 1);
SELECT pgq_ext.is_batch_done('c', 1);
SELECT pgq_ext.set_batch_done('c', 1);
SELECT pgq_ext.is_batch_done('c', 2);
SELECT pgq_ext.set_batch_done('c', 2);
SELECT pgq_ext.is_batch_done('c', 1);
SELECT pgq_ext.is_batch_done('c', 2);
-- subconsumers are tracked apart; '' is the short form's subconsumer
SELECT pgq_ext.is_batch_done('c', 'sub', 2);
SELECT pgq_ext.set_batch_done('c', 'sub', 7);
SELECT pgq_ext.is_batch_done('c', 'sub', 7);
SELECT pgq_ext.set_batch_done('c', 'sub', 7);
SELECT pgq_ext.is_batch_done('c', '', 2);
-- batch ids below 1 are answered but not stored
SELECT pgq_ext.set_batch_done('z', 0);
SELECT * FROM pgq_ext.completed_batch ORDER BY 1, 2;

-- event tracking inside a partly applied batch
SELECT pgq_ext.is_event_done('c', 3, 101);
SELECT pgq_ext.set_event_done('c', 3, 101);
SELECT pgq_ext.is_event_done('c', 3, 101);
SELECT pgq_ext.set_event_done('c', 3, 101);
SELECT pgq_ext.set_event_done('c', 3, 102);
SELECT pgq_ext.set_event_done('c', 'sub', 3, 101);
SELECT pgq_ext.is_event_done('c', 'sub', 3, 101);
SELECT pgq_ext.is_event_done('c', 'sub', 3, 102);
SELECT * FROM pgq_ext.partial_batch ORDER BY 1, 2;
SELECT * FROM pgq_ext.completed_event ORDER BY 1, 2, 3, 4;
-- an event of the next batch drops the previous batch's events
SELECT pgq_ext.set_event_done('c', 4, 201);
SELECT pgq_ext.is_event_done('c', 3, 101);
SELECT * FROM pgq_ext.partial_batch ORDER BY 1, 2;
SELECT * FROM pgq_ext.completed_event ORDER BY 1, 2, 3, 4;

-- tick tracking (SerialConsumer); a NULL tick removes the record
SELECT pgq_ext.get_last_tick('c');
SELECT pgq_ext.set_last_tick('c', 10);
SELECT pgq_ext.get_last_tick('c');
SELECT pgq_ext.set_last_tick('c', 11);
SELECT pgq_ext.get_last_tick('c');
SELECT pgq_ext.set_last_tick('c', 'sub', 5);
SELECT pgq_ext.get_last_tick('c', 'sub');
SELECT pgq_ext.get_last_tick('c', '');
SELECT * FROM pgq_ext.completed_tick ORDER BY 1, 2;
SELECT pgq_ext.set_last_tick('c', NULL);
SELECT pgq_ext.get_last_tick('c');
SELECT pgq_ext.set_last_tick('c', 'sub', NULL);
SELECT count(*) AS tick_rows FROM pgq_ext.completed_tick;

-- grants: pgq_writer may track, others may only ask the version
SET ROLE pgq_writer;
SELECT pgq_ext.set_batch_done('w', 1);
SELECT pgq_ext.is_batch_done('w', 1);
RESET ROLE;
SET ROLE pgq_reader;
SELECT pgq_ext.version();
SELECT pgq_ext.is_batch_done('w', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM pgq_ext.completed_batch;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
