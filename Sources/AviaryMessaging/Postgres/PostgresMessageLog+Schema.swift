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
        return migrations
    }
}
