-- The replicator's bookkeeping (the `londiste` crate), on the provider and on the subscriber.
-- Its own schema: PGQ's maintenance probes for a schema named `londiste` (londiste3's).
--
-- Provider side: the tables and sequences a queue carries.
-- Subscriber side: each table's state (in-copy -> catching-up -> ok) with the snapshot of its
-- initial copy, the sequences, and the replay worker's position and pause requests.

CREATE SCHEMA londiste_rs;

CREATE TABLE londiste_rs.provider_table (
    queue_name      text        NOT NULL,
    -- As the capture trigger writes it into ev_extra1: schema.table, unquoted.
    table_name      text        NOT NULL,
    table_oid       oid         NOT NULL,
    added_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue_name, table_name)
);

CREATE TABLE londiste_rs.provider_seq (
    queue_name      text        NOT NULL,
    seq_name        text        NOT NULL,
    seq_oid         oid         NOT NULL,
    PRIMARY KEY (queue_name, seq_name)
);

CREATE TABLE londiste_rs.subscriber_table (
    queue_name      text        NOT NULL,
    table_name      text        NOT NULL,
    dest_table      text        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('in-copy', 'catching-up', 'ok')),
    -- The provider snapshot the initial copy read: events of transactions visible in it are
    -- already in the copy and are skipped while the table is catching up.
    copy_snapshot   txid_snapshot,
    copy_rows       bigint,
    copy_started    timestamptz,
    copy_finished   timestamptz,
    state_changed   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue_name, table_name)
);

CREATE TABLE londiste_rs.subscriber_seq (
    queue_name      text        NOT NULL,
    seq_name        text        NOT NULL,
    dest_seq        text        NOT NULL,
    last_value      bigint,
    PRIMARY KEY (queue_name, seq_name)
);

CREATE TABLE londiste_rs.worker_position (
    queue_name      text        NOT NULL,
    consumer_name   text        NOT NULL,
    -- The tick the last applied batch ended at (its batch id is in pgq_ext).
    last_tick       bigint,
    last_batch_at   timestamptz,
    -- Set by `londiste compare`: stop before any batch that starts at or after pause_at_tick
    -- (at once when it is NULL), so both sides can be read at one tick.
    pause_requested boolean     NOT NULL DEFAULT false,
    pause_at_tick   bigint,
    PRIMARY KEY (queue_name, consumer_name)
);
