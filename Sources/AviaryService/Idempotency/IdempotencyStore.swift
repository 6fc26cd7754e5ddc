//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import AviaryStorage
import Foundation
import GRDB

/// Where ``IdempotencyMiddleware`` keeps the first response to each `Idempotency-Key`: a table
/// (`aviary_idempotency_keys`) in the service's own database, so that a stored response commits
/// or rolls back with nothing else and survives restarts.
///
/// ```swift
/// let keys = try await IdempotencyStore(store: store)
/// router.add(middleware: IdempotencyMiddleware(store: keys))
/// ```
public struct IdempotencyStore: Sendable {
    let store: SQLiteStore

    /// Uses `store`, creating the table if it does not exist.
    ///
    /// - Throws: the database's error when the table cannot be created.
    public init(store: SQLiteStore) async throws {
        self.store = store
        try await store.write { db in
            try db.execute(
                sql: """
                    CREATE TABLE IF NOT EXISTS aviary_idempotency_keys (
                        key TEXT PRIMARY KEY,
                        fingerprint TEXT NOT NULL,
                        state TEXT NOT NULL,            -- 'in_progress' or 'completed'
                        locked_at_ms INTEGER NOT NULL,  -- wall clock, for abandoned locks
                        expires_at_ms INTEGER NOT NULL,
                        status INTEGER,
                        content_type TEXT,
                        body BLOB
                    )
                    """)
            try db.execute(
                sql:
                    "CREATE INDEX IF NOT EXISTS aviary_idempotency_keys_expiry ON aviary_idempotency_keys (expires_at_ms)"
            )
        }
    }

    /// A stored response.
    struct StoredResponse: Sendable, Equatable {
        var status: Int
        var contentType: String?
        var body: [UInt8]
    }

    /// What the store says about a key when a request arrives.
    enum Claim: Sendable, Equatable {
        /// The key is new (or expired, or its holder was abandoned): the caller now holds it.
        case acquired
        /// The key is held by a request still in progress.
        case inProgress
        /// The key was used with a different request.
        case mismatch
        /// The key's first request completed with this response.
        case completed(StoredResponse)
    }

    /// Claims `key` for a request with `fingerprint` at `now` (milliseconds since 1970).
    func claim(
        key: String, fingerprint: String, now: Int64, ttlMilliseconds: Int64, lockTimeoutMilliseconds: Int64
    )
        async throws -> Claim
    {
        try await self.store.write { db in
            // Bounded housekeeping: drop a few expired keys on each claim.
            try db.execute(
                sql: """
                    DELETE FROM aviary_idempotency_keys WHERE rowid IN
                      (SELECT rowid FROM aviary_idempotency_keys WHERE expires_at_ms <= ? LIMIT 16)
                    """,
                arguments: [now])
            if let row = try Row.fetchOne(
                db, sql: "SELECT * FROM aviary_idempotency_keys WHERE key = ?", arguments: [key])
            {
                let expired = (row["expires_at_ms"] as Int64) <= now
                let abandoned =
                    (row["state"] as String) == "in_progress"
                    && (row["locked_at_ms"] as Int64) + lockTimeoutMilliseconds <= now
                if !expired && !abandoned {
                    if (row["fingerprint"] as String) != fingerprint { return .mismatch }
                    if (row["state"] as String) == "in_progress" { return .inProgress }
                    let body: [UInt8] = (row["body"] as Data?).map { Array($0) } ?? []
                    return .completed(
                        StoredResponse(status: row["status"], contentType: row["content_type"], body: body))
                }
                try db.execute(sql: "DELETE FROM aviary_idempotency_keys WHERE key = ?", arguments: [key])
            }
            try db.execute(
                sql: """
                    INSERT INTO aviary_idempotency_keys (key, fingerprint, state, locked_at_ms, expires_at_ms)
                    VALUES (?, ?, 'in_progress', ?, ?)
                    """,
                arguments: [key, fingerprint, now, now + ttlMilliseconds])
            return .acquired
        }
    }

    /// Stores the response of the request holding `key`.
    func complete(key: String, response: StoredResponse) async throws {
        try await self.store.write { db in
            try db.execute(
                sql: """
                    UPDATE aviary_idempotency_keys SET state = 'completed', status = ?, content_type = ?, body = ?
                    WHERE key = ?
                    """,
                arguments: [response.status, response.contentType, Data(response.body), key])
        }
    }

    /// Gives `key` up (the request failed in a way worth retrying), so that a retry runs again.
    func release(key: String) async throws {
        try await self.store.write { db in
            try db.execute(sql: "DELETE FROM aviary_idempotency_keys WHERE key = ?", arguments: [key])
        }
    }

    /// The number of keys stored (for tests and metrics).
    public func count() async throws -> Int {
        try await self.store.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM aviary_idempotency_keys") ?? 0
        }
    }
}

extension IdempotencyStore {
    /// Claims `key` as a request would, without finishing it: tests use it to leave a lock behind
    /// as a crashed process would. Not API.
    public func claimForTesting(key: String, now: Int64) async throws -> String {
        switch try await self.claim(
            key: key, fingerprint: "test", now: now, ttlMilliseconds: 3_600_000, lockTimeoutMilliseconds: 60_000)
        {
        case .acquired: "acquired"
        case .inProgress: "inProgress"
        case .mismatch: "mismatch"
        case .completed: "completed"
        }
    }
}
