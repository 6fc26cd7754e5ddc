//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryStorage
import Logging
import PostgresNIO

extension PostgresMessageLog {
    /// The schema, in the log's own database. Times are milliseconds since 1970 from the log's
    /// ``WallClock`` (shared by processes and machines), never the server's `now()`, so that tests
    /// drive time with a manual clock.
    static var migrations: PostgresMigrations {
        var migrations = PostgresMigrations()
        migrations.add("aviary messaging v1: topics, partitions, messages, schedule, groups, group partitions") {
            connection, logger in
            for statement in [
                """
                CREATE TABLE aviary_topics (
                    name TEXT PRIMARY KEY,
                    partitions INTEGER NOT NULL,
                    max_age_ms BIGINT,
                    max_bytes BIGINT,
                    created_at BIGINT NOT NULL
                )
                """,
                // last_offset: the newest offset ever given (never reused); start_offset: the lowest
                // offset retention has not deleted. Appends lock this row, which orders them.
                """
                CREATE TABLE aviary_partitions (
                    topic TEXT NOT NULL,
                    partition INTEGER NOT NULL,
                    last_offset BIGINT NOT NULL DEFAULT 0,
                    start_offset BIGINT NOT NULL DEFAULT 1,
                    PRIMARY KEY (topic, partition)
                )
                """,
                """
                CREATE TABLE aviary_messages (
                    topic TEXT NOT NULL,
                    partition INTEGER NOT NULL,
                    msg_offset BIGINT NOT NULL,
                    key TEXT NOT NULL,
                    event TEXT NOT NULL,
                    headers TEXT NOT NULL,
                    appended_at BIGINT NOT NULL,
                    bytes BIGINT NOT NULL,
                    PRIMARY KEY (topic, partition, msg_offset)
                )
                """,
                """
                CREATE TABLE aviary_schedule (
                    id BIGSERIAL PRIMARY KEY,
                    topic TEXT NOT NULL,
                    key TEXT NOT NULL,
                    event TEXT NOT NULL,
                    headers TEXT NOT NULL,
                    deliver_at BIGINT NOT NULL
                )
                """,
                "CREATE INDEX aviary_schedule_due ON aviary_schedule (topic, deliver_at, id)",
                """
                CREATE TABLE aviary_groups (
                    name TEXT NOT NULL,
                    topic TEXT NOT NULL,
                    max_deliveries INTEGER NOT NULL,
                    on_poison TEXT NOT NULL,
                    dead_letter_topic TEXT NOT NULL,
                    created_at BIGINT NOT NULL,
                    PRIMARY KEY (name, topic)
                )
                """,
                "CREATE INDEX aviary_groups_dead_letter_topic ON aviary_groups (dead_letter_topic)",
                // One row per (group, topic, partition): the group's cursor and the partition lease,
                // as in the SQLite backend. Receivers lock these rows FOR UPDATE SKIP LOCKED.
                """
                CREATE TABLE aviary_group_partitions (
                    group_name TEXT NOT NULL,
                    topic TEXT NOT NULL,
                    partition INTEGER NOT NULL,
                    next_offset BIGINT NOT NULL,
                    lease_owner TEXT,
                    lease_id TEXT,
                    lease_expires_at BIGINT,
                    lease_through BIGINT,
                    leased_at BIGINT NOT NULL DEFAULT 0,
                    available_at BIGINT NOT NULL DEFAULT 0,
                    deliveries TEXT NOT NULL DEFAULT '',
                    last_error TEXT,
                    stopped BOOLEAN NOT NULL DEFAULT false,
                    stop_reason TEXT,
                    lost_to_retention BIGINT NOT NULL DEFAULT 0,
                    dead_lettered BIGINT NOT NULL DEFAULT 0,
                    PRIMARY KEY (group_name, topic, partition)
                )
                """,
            ] {
                try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
            }
        }
        migrations.add("aviary messaging v2: one-statement publish") { connection, logger in
            try await connection.query(PostgresQuery(unsafeSQL: Self.publishFunction), logger: logger)
        }
        // `aviary_publish` stays as it was, for processes of older versions during an upgrade.
        migrations.add("aviary messaging v3: listeners, compact publish") { connection, logger in
            for statement in [Self.listenersTable, Self.publishNowFunction] {
                try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
            }
        }
        // Both functions keep their signatures, so that producers of the previous version publish
        // into the new layout during an upgrade (their consumers' queries name `topic` and fail
        // until they are upgraded).
        migrations.add("aviary messaging v4: integer topic ids, messages keyed by topic id") { connection, logger in
            for statement in Self.topicIDStatements + [Self.publishNowFunctionV4, Self.publishFunctionV4] {
                try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
            }
        }
        // Same signature and result as v4's, so producers of either version publish during an upgrade.
        migrations.add("aviary messaging v5: publish streams its message arrays") { connection, logger in
            try await connection.query(PostgresQuery(unsafeSQL: Self.publishNowFunctionV5), logger: logger)
        }
        // Only adds a function: producers and consumers of v5 go on working on a v6 database.
        migrations.add("aviary messaging v6: single-message publish") { connection, logger in
            try await connection.query(PostgresQuery(unsafeSQL: Self.publishOneFunction), logger: logger)
        }
        return migrations
    }

    /// v4: every topic gets an integer id (existing topics are numbered as the column is added, and
    /// the identity's sequence continues after them), and `aviary_messages` is rebuilt keyed by
    /// `(topic_id, partition, msg_offset)`: a primary key of three integers, compared and appended
    /// to far more cheaply than one that starts with the topic's name, and a smaller row. The
    /// fixed-width columns come first, in an order that needs no alignment padding. Every message
    /// is copied with its offset; partitions, groups (positions, leases, delivery counts) and the
    /// schedule keep naming their topic and are not touched.
    ///
    /// No foreign key to `aviary_topics`: it would cost a lookup per inserted row, and topics are
    /// never deleted.
    static let topicIDStatements = [
        "ALTER TABLE aviary_topics ADD COLUMN id INTEGER GENERATED BY DEFAULT AS IDENTITY",
        "ALTER TABLE aviary_topics ADD CONSTRAINT aviary_topics_id_key UNIQUE (id)",
        """
        CREATE TABLE aviary_messages_v4 (
            topic_id INTEGER NOT NULL,
            partition INTEGER NOT NULL,
            msg_offset BIGINT NOT NULL,
            appended_at BIGINT NOT NULL,
            bytes INTEGER NOT NULL,
            key TEXT NOT NULL,
            event TEXT NOT NULL,
            headers TEXT NOT NULL
        )
        """,
        """
        INSERT INTO aviary_messages_v4 (topic_id, partition, msg_offset, appended_at, bytes, key, event, headers)
        SELECT t.id, m.partition, m.msg_offset, m.appended_at, m.bytes, m.key, m.event, m.headers
        FROM aviary_messages m JOIN aviary_topics t ON t.name = m.topic
        ORDER BY t.id, m.partition, m.msg_offset
        """,
        "DROP TABLE aviary_messages",
        "ALTER TABLE aviary_messages_v4 RENAME TO aviary_messages",
        "ALTER TABLE aviary_messages ADD CONSTRAINT aviary_messages_pkey PRIMARY KEY (topic_id, partition, msg_offset)",
    ]

    /// The SQLSTATE `aviary_publish` and `aviary_publish_now` raise for a topic that does not exist.
    static let noTopicState = "AV101"
    /// The SQLSTATE `aviary_publish_now` raises when the caller's partition count of a topic is not
    /// the stored one.
    static let partitionCountState = "AV102"

    /// `aviary_listeners`: the sessions that `LISTEN` for a topic's notifications (one row per topic
    /// and listening session, written by ``PostgresWakeUps``). `aviary_publish_now` notifies only
    /// topics that have a row here. Rows of sessions that ended without removing them (a crashed
    /// process) only cost notifications nobody hears; the next registration deletes them.
    static let listenersTable = """
        CREATE TABLE aviary_listeners (
            topic TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started TIMESTAMPTZ,
            PRIMARY KEY (topic, pid)
        )
        """

    /// `aviary_publish_now(...)`: a publish of messages for now in one statement and its own
    /// transaction, with the work split between client and server so that the server does as
    /// little as a plain insert: the caller computes each message's partition (from the partition
    /// counts it read once; the function checks them), groups the messages into slots (topic,
    /// partition; sorted) and gives each message its slot and its rank in the slot. The function
    /// checks the topics (and returns NULL when one has scheduled messages that are due: those must
    /// be appended first, which the multi-statement path does), takes each slot's offsets with one
    /// update of its partition row (in slot order, so concurrent publishes never deadlock),
    /// inserts every row with one statement and returns each slot's base offset: message offset =
    /// base of its slot + its rank.
    ///
    /// It notifies a topic only when some session listens for it (`aviary_listeners`). The check
    /// runs after the partition rows are locked, with a snapshot taken then (READ COMMITTED gives
    /// each statement of the function its own); a listener registers by inserting its row and
    /// locking the topic's partition rows `FOR SHARE` in one transaction. So either the
    /// registration committed before this publish locked a partition row, and the check sees it,
    /// or it waits for this publish to commit, and the consumer's next look for messages (after
    /// its registration) sees the messages. Under another isolation level (a database default),
    /// where the snapshot is older, it notifies every topic.
    static let publishNowFunction = """
        CREATE FUNCTION aviary_publish_now(p_topics TEXT[], p_partition_counts INTEGER[],
            p_slot_topics TEXT[], p_slot_partitions INTEGER[], p_slot_sizes INTEGER[],
            p_slots INTEGER[], p_ranks INTEGER[], p_keys TEXT[], p_events TEXT[], p_headers TEXT[],
            p_bytes INTEGER[], p_now BIGINT, p_channel TEXT)
        RETURNS BIGINT[]
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            v_partitions INTEGER;
            v_due BOOLEAN;
            v_last BIGINT;
            v_bases BIGINT[] := '{}';
        BEGIN
            FOR i IN 1 .. cardinality(p_topics) LOOP
                SELECT t.partitions,
                    EXISTS (SELECT 1 FROM aviary_schedule s WHERE s.topic = t.name AND s.deliver_at <= p_now)
                INTO v_partitions, v_due
                FROM aviary_topics t WHERE t.name = p_topics[i];
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'no topic %', p_topics[i] USING ERRCODE = '\(PostgresMessageLog.noTopicState)';
                END IF;
                IF v_partitions <> p_partition_counts[i] THEN
                    RAISE EXCEPTION 'topic % has % partitions, not %', p_topics[i], v_partitions, p_partition_counts[i]
                        USING ERRCODE = '\(PostgresMessageLog.partitionCountState)';
                END IF;
                IF v_due THEN
                    RETURN NULL;
                END IF;
            END LOOP;
            FOR i IN 1 .. cardinality(p_slot_sizes) LOOP
                UPDATE aviary_partitions p SET last_offset = p.last_offset + p_slot_sizes[i]
                WHERE p.topic = p_slot_topics[i] AND p.partition = p_slot_partitions[i]
                RETURNING p.last_offset INTO v_last;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'no partition % in topic %', p_slot_partitions[i], p_slot_topics[i]
                        USING ERRCODE = '\(PostgresMessageLog.noTopicState)';
                END IF;
                v_bases := v_bases || (v_last - p_slot_sizes[i]);
            END LOOP;
            INSERT INTO aviary_messages (topic, partition, msg_offset, key, event, headers, appended_at, bytes)
            SELECT p_slot_topics[m.slot], p_slot_partitions[m.slot], v_bases[m.slot] + m.rank, m.key, m.event,
                m.headers, p_now, m.bytes
            FROM unnest(p_slots, p_ranks, p_keys, p_events, p_headers, p_bytes) AS m (slot, rank, key, event, headers, bytes);
            IF current_setting('transaction_isolation') = 'read committed' THEN
                PERFORM pg_notify(p_channel, l.topic)
                FROM (SELECT DISTINCT topic FROM aviary_listeners WHERE topic = ANY (p_topics)) AS l;
            ELSE
                PERFORM pg_notify(p_channel, t) FROM unnest(p_topics) AS t;
            END IF;
            RETURN v_bases;
        END
        $$
        """

    /// `aviary_publish_now(...)` since v4: as ``publishNowFunction`` (same arguments and result),
    /// but each message's row names its topic by id. The function reads each topic's id with its
    /// partition count; a slot's topic is found among `p_topics` by position.
    static let publishNowFunctionV4 = publishNowFunction(
        rows:
            "unnest(p_slots, p_ranks, p_keys, p_events, p_headers, p_bytes) AS m (slot, rank, key, event, headers, bytes)"
    )

    /// `aviary_publish_now(...)` since v5: as ``publishNowFunctionV4`` (same arguments, result and
    /// steps), but the rows to insert are read from the message arrays in step rather than first
    /// copied out of them. `unnest` of several arrays in `FROM` is a function scan, which stores
    /// every row it makes (the whole batch: about 340 kB for 1000 messages) before the insert reads
    /// the first; set-returning functions in a select list advance together, a row at a time (a
    /// `ProjectSet` node), and give the same rows for arrays of one length, which these are (one
    /// element per message). On a batch of 1000 messages the backend's CPU time went from about
    /// 4.3 to 3.7 ms (the function called in a loop in one backend, medians of four runs).
    static let publishNowFunctionV5 = publishNowFunction(
        rows: """
            (SELECT unnest(p_slots) AS slot, unnest(p_ranks) AS rank, unnest(p_keys) AS key,
                unnest(p_events) AS event, unnest(p_headers) AS headers, unnest(p_bytes) AS bytes) AS m
            """)

    /// `aviary_publish_one(...)` (v6): a publish of one message for now, in one statement and its
    /// own transaction, with the fewest statements the server can run for it. The caller computes
    /// the message's partition from its partition count, as for `aviary_publish_now`.
    ///
    /// The common case is two statements, where `aviary_publish_now` runs four: one `UPDATE` of the
    /// partition row, joined with the topic's row, which takes the offset only when the topic
    /// exists, has the caller's partition count and has no scheduled messages that are due; then
    /// the `INSERT` of the row, whose statement also notifies the channel when a session listens
    /// for the topic (`aviary_listeners`). That check is in a statement after the one that locked
    /// the partition row, so it has a snapshot taken after the lock, which the listener
    /// registration's argument needs (see ``publishNowFunction``); a single statement with the
    /// update and the insert in CTEs would check with a snapshot taken before the lock. When the
    /// update finds no row, a third statement tells why: `AV101` for a missing topic or partition,
    /// `AV102` for another partition count, and NULL (nothing done) for due scheduled messages,
    /// which the multi-statement path appends first. Returns the message's offset.
    static let publishOneFunction = """
        CREATE FUNCTION aviary_publish_one(p_topic TEXT, p_partition_count INTEGER, p_partition INTEGER,
            p_key TEXT, p_event TEXT, p_headers TEXT, p_bytes INTEGER, p_now BIGINT, p_channel TEXT)
        RETURNS BIGINT
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            v_id INTEGER;
            v_offset BIGINT;
            v_partitions INTEGER;
            v_notified TEXT;
        BEGIN
            UPDATE aviary_partitions p SET last_offset = p.last_offset + 1
            FROM aviary_topics t
            WHERE p.topic = p_topic AND p.partition = p_partition AND t.name = p_topic
                AND t.partitions = p_partition_count
                AND NOT EXISTS (SELECT 1 FROM aviary_schedule s WHERE s.topic = p_topic AND s.deliver_at <= p_now)
            RETURNING p.last_offset, t.id INTO v_offset, v_id;
            IF NOT FOUND THEN
                SELECT t.partitions INTO v_partitions FROM aviary_topics t WHERE t.name = p_topic;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'no topic %', p_topic USING ERRCODE = '\(PostgresMessageLog.noTopicState)';
                END IF;
                IF v_partitions <> p_partition_count THEN
                    RAISE EXCEPTION 'topic % has % partitions, not %', p_topic, v_partitions, p_partition_count
                        USING ERRCODE = '\(PostgresMessageLog.partitionCountState)';
                END IF;
                IF p_partition < 0 OR p_partition >= v_partitions THEN
                    RAISE EXCEPTION 'no partition % in topic %', p_partition, p_topic
                        USING ERRCODE = '\(PostgresMessageLog.noTopicState)';
                END IF;
                RETURN NULL;
            END IF;
            WITH inserted AS (
                INSERT INTO aviary_messages (topic_id, partition, msg_offset, appended_at, bytes, key, event, headers)
                VALUES (v_id, p_partition, v_offset, p_now, p_bytes, p_key, p_event, p_headers)
            )
            SELECT pg_notify(p_channel, p_topic)::TEXT INTO v_notified
            WHERE current_setting('transaction_isolation') <> 'read committed'
                OR EXISTS (SELECT 1 FROM aviary_listeners l WHERE l.topic = p_topic);
            RETURN v_offset;
        END
        $$
        """

    /// The text of `aviary_publish_now` since v4, which inserts the rows of the messages from `rows`
    /// (a `FROM` item of the columns slot, rank, key, event, headers and bytes).
    private static func publishNowFunction(rows: String) -> String {
        """
        CREATE OR REPLACE FUNCTION aviary_publish_now(p_topics TEXT[], p_partition_counts INTEGER[],
            p_slot_topics TEXT[], p_slot_partitions INTEGER[], p_slot_sizes INTEGER[],
            p_slots INTEGER[], p_ranks INTEGER[], p_keys TEXT[], p_events TEXT[], p_headers TEXT[],
            p_bytes INTEGER[], p_now BIGINT, p_channel TEXT)
        RETURNS BIGINT[]
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            v_id INTEGER;
            v_partitions INTEGER;
            v_due BOOLEAN;
            v_last BIGINT;
            v_ids INTEGER[] := '{}';
            v_slot_ids INTEGER[] := '{}';
            v_bases BIGINT[] := '{}';
        BEGIN
            FOR i IN 1 .. cardinality(p_topics) LOOP
                SELECT t.id, t.partitions,
                    EXISTS (SELECT 1 FROM aviary_schedule s WHERE s.topic = t.name AND s.deliver_at <= p_now)
                INTO v_id, v_partitions, v_due
                FROM aviary_topics t WHERE t.name = p_topics[i];
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'no topic %', p_topics[i] USING ERRCODE = '\(PostgresMessageLog.noTopicState)';
                END IF;
                IF v_partitions <> p_partition_counts[i] THEN
                    RAISE EXCEPTION 'topic % has % partitions, not %', p_topics[i], v_partitions, p_partition_counts[i]
                        USING ERRCODE = '\(PostgresMessageLog.partitionCountState)';
                END IF;
                IF v_due THEN
                    RETURN NULL;
                END IF;
                v_ids := v_ids || v_id;
            END LOOP;
            FOR i IN 1 .. cardinality(p_slot_sizes) LOOP
                v_id := v_ids[array_position(p_topics, p_slot_topics[i])];
                IF v_id IS NULL THEN
                    RAISE EXCEPTION 'partition slot of topic %, which is not among the topics', p_slot_topics[i]
                        USING ERRCODE = '\(PostgresMessageLog.noTopicState)';
                END IF;
                UPDATE aviary_partitions p SET last_offset = p.last_offset + p_slot_sizes[i]
                WHERE p.topic = p_slot_topics[i] AND p.partition = p_slot_partitions[i]
                RETURNING p.last_offset INTO v_last;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'no partition % in topic %', p_slot_partitions[i], p_slot_topics[i]
                        USING ERRCODE = '\(PostgresMessageLog.noTopicState)';
                END IF;
                v_slot_ids := v_slot_ids || v_id;
                v_bases := v_bases || (v_last - p_slot_sizes[i]);
            END LOOP;
            INSERT INTO aviary_messages (topic_id, partition, msg_offset, appended_at, bytes, key, event, headers)
            SELECT v_slot_ids[m.slot], p_slot_partitions[m.slot], v_bases[m.slot] + m.rank, p_now, m.bytes, m.key,
                m.event, m.headers
            FROM \(rows);
            IF current_setting('transaction_isolation') = 'read committed' THEN
                PERFORM pg_notify(p_channel, l.topic)
                FROM (SELECT DISTINCT topic FROM aviary_listeners WHERE topic = ANY (p_topics)) AS l;
            ELSE
                PERFORM pg_notify(p_channel, t) FROM unnest(p_topics) AS t;
            END IF;
            RETURN v_bases;
        END
        $$
        """
    }

    /// `aviary_publish(...)`: a publish of messages for now in one statement, so that a standalone
    /// publish is one round trip and its own transaction (what a plain `INSERT` costs), instead of
    /// BEGIN, the topic's partition count, the schedule check, the offset update, the insert,
    /// `pg_notify` and COMMIT. The steps are those of the multi-statement path in
    /// `PostgresMessageLog.publish`: partition rows are locked in (topic, partition) order, each
    /// partition's offsets are taken with one update, all rows go in with one insert, and the
    /// topics' consumers are notified at commit.
    ///
    /// A key's partition is FNV-1a modulo the partition count (``Partitioner``); the caller passes
    /// the 64-bit hash as its high and low 32 bits, so that the modulo works in signed BIGINT.
    ///
    /// When a topic has scheduled messages that are due, the function does nothing and returns
    /// no rows: those messages must be appended first, which the caller's multi-statement path
    /// does under the schedule's lock.
    static let publishFunction = publishFunction(
        create: "CREATE FUNCTION",
        insert: """
                INSERT INTO aviary_messages (topic, partition, msg_offset, key, event, headers, appended_at, bytes)
                SELECT placed.topic, placed.part, placed.off, placed.key, placed.event, placed.headers, p_now,
                    placed.bytes
                FROM placed ORDER BY placed.i
            """)

    /// `aviary_publish(...)` since v4, for producers of versions before v3 during an upgrade: as
    /// ``publishFunction`` (same arguments and result), inserting each message's topic id.
    static let publishFunctionV4 = publishFunction(
        create: "CREATE OR REPLACE FUNCTION",
        insert: """
                INSERT INTO aviary_messages (topic_id, partition, msg_offset, appended_at, bytes, key, event, headers)
                SELECT t.id, placed.part, placed.off, p_now, placed.bytes, placed.key, placed.event, placed.headers
                FROM placed JOIN aviary_topics t ON t.name = placed.topic ORDER BY placed.i
            """)

    /// The text of `aviary_publish` (``publishFunction`` and ``publishFunctionV4``), which differ
    /// only in how the function is created and in the statement that inserts the placed messages.
    private static func publishFunction(create: String, insert: String) -> String {
        """
        \(create) aviary_publish(p_topics TEXT[], p_hash_high BIGINT[], p_hash_low BIGINT[], p_keys TEXT[],
            p_events TEXT[], p_headers TEXT[], p_bytes BIGINT[], p_now BIGINT, p_channel TEXT)
        RETURNS TABLE (n INTEGER, partition INTEGER, msg_offset BIGINT)
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            v_topic TEXT;
            v_partitions INTEGER[];
            v_slot RECORD;
            v_last BIGINT;
            v_slot_topics TEXT[] := '{}';
            v_slot_partitions INTEGER[] := '{}';
            v_slot_bases BIGINT[] := '{}';
        BEGIN
            FOR v_topic IN SELECT DISTINCT t FROM unnest(p_topics) AS t ORDER BY 1 LOOP
                PERFORM 1 FROM aviary_topics WHERE name = v_topic;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'no topic %', v_topic USING ERRCODE = '\(PostgresMessageLog.noTopicState)';
                END IF;
                IF EXISTS (SELECT 1 FROM aviary_schedule s WHERE s.topic = v_topic AND s.deliver_at <= p_now) THEN
                    RETURN;
                END IF;
            END LOOP;
            SELECT array_agg(((((x.high % t.partitions) * (4294967296 % t.partitions)) + x.low) % t.partitions)::INTEGER
                ORDER BY x.i)
            INTO v_partitions
            FROM unnest(p_topics, p_hash_high, p_hash_low) WITH ORDINALITY AS x (topic, high, low, i)
            JOIN aviary_topics t ON t.name = x.topic;
            FOR v_slot IN
                SELECT x.topic, x.part, count(*) AS members
                FROM unnest(p_topics, v_partitions) AS x (topic, part)
                GROUP BY x.topic, x.part ORDER BY x.topic, x.part
            LOOP
                UPDATE aviary_partitions p SET last_offset = p.last_offset + v_slot.members
                WHERE p.topic = v_slot.topic AND p.partition = v_slot.part
                RETURNING p.last_offset INTO v_last;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'no partition % in topic %', v_slot.part, v_slot.topic
                        USING ERRCODE = '\(PostgresMessageLog.noTopicState)';
                END IF;
                v_slot_topics := v_slot_topics || v_slot.topic;
                v_slot_partitions := v_slot_partitions || v_slot.part;
                v_slot_bases := v_slot_bases || (v_last - v_slot.members);
            END LOOP;
            RETURN QUERY
            WITH m AS (
                SELECT x.* FROM unnest(p_topics, v_partitions, p_keys, p_events, p_headers, p_bytes)
                    WITH ORDINALITY AS x (topic, part, key, event, headers, bytes, i)
            ), placed AS (
                SELECT m.*, s.base + row_number() OVER (PARTITION BY m.topic, m.part ORDER BY m.i) AS off
                FROM m JOIN unnest(v_slot_topics, v_slot_partitions, v_slot_bases) AS s (topic, part, base)
                    ON s.topic = m.topic AND s.part = m.part
            ), inserted AS (
        \(insert)
            )
            SELECT placed.i::INTEGER, placed.part, placed.off FROM placed ORDER BY placed.i;
            PERFORM pg_notify(p_channel, t) FROM (SELECT DISTINCT t FROM unnest(p_topics) AS t ORDER BY 1) AS topics;
        END
        $$
        """
    }
}
