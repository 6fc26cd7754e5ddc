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
        return migrations
    }

    /// The SQLSTATE `aviary_publish` raises for a topic that does not exist.
    static let noTopicState = "AV101"

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
    static let publishFunction = """
        CREATE FUNCTION aviary_publish(p_topics TEXT[], p_hash_high BIGINT[], p_hash_low BIGINT[], p_keys TEXT[],
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
                INSERT INTO aviary_messages (topic, partition, msg_offset, key, event, headers, appended_at, bytes)
                SELECT placed.topic, placed.part, placed.off, placed.key, placed.event, placed.headers, p_now,
                    placed.bytes
                FROM placed ORDER BY placed.i
            )
            SELECT placed.i::INTEGER, placed.part, placed.off FROM placed ORDER BY placed.i;
            PERFORM pg_notify(p_channel, t) FROM (SELECT DISTINCT t FROM unnest(p_topics) AS t ORDER BY 1) AS topics;
        END
        $$
        """
}
