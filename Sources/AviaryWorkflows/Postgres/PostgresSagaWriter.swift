//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryStorage
import Foundation
import Logging
import NIOCore
import PostgresNIO
import Synchronization

/// The write path of ``PostgresSagaStore``: calls submitted while a batch is in flight wait and go
/// together in the next one, as **one** statement (a data-modifying `WITH` over `unnest`ed
/// arrays): one round trip and one commit for the whole batch, where the SQLite store needs a
/// transaction with a savepoint per call.
///
/// A batch holds at most one call per saga (a later call of the same saga waits for the next
/// batch), so the version check of each call is exact and a saga's events keep their order.
final class PostgresSagaWriter: Sendable {
    enum Operation: Sendable {
        case create(SagaInstance, [SagaEvent], owner: String?, leaseUntil: Date?)
        case update(SagaInstance, expectedVersion: Int, [SagaEvent])

        var id: String {
            switch self {
            case .create(let instance, _, _, _), .update(let instance, _, _): instance.id
            }
        }
    }

    private struct Pending: Sendable {
        var operation: Operation
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct Queue: Sendable {
        var pending: [Pending] = []
        var draining = false
    }

    /// The most calls one statement carries.
    static let maximumBatch = 512

    private let store: PostgresStore
    private let queue = Mutex(Queue())

    init(store: PostgresStore) {
        self.store = store
    }

    func submit(_ operation: Operation) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let startDraining = self.queue.withLock { queue -> Bool in
                queue.pending.append(Pending(operation: operation, continuation: continuation))
                if queue.draining { return false }
                queue.draining = true
                return true
            }
            if startDraining {
                Task { await self.drain() }
            }
        }
    }

    private func drain() async {
        while true {
            let batch = self.queue.withLock { queue -> [Pending] in
                var batch: [Pending] = []
                var ids = Set<String>()
                var rest: [Pending] = []
                for pending in queue.pending {
                    if batch.count < Self.maximumBatch && ids.insert(pending.operation.id).inserted {
                        batch.append(pending)
                    } else {
                        rest.append(pending)
                    }
                }
                queue.pending = rest
                if batch.isEmpty { queue.draining = false }
                return batch
            }
            if batch.isEmpty { return }
            let results = await self.write(batch.map(\.operation))
            for (pending, result) in zip(batch, results) {
                pending.continuation.resume(with: result)
            }
        }
    }

    /// Writes `operations` (distinct sagas) in one statement; when the statement fails as a
    /// whole, writes them one by one so that each gets its own outcome.
    private func write(_ operations: [Operation]) async -> [Result<Void, any Error>] {
        do {
            return try await self.statement(operations)
        } catch {
            guard operations.count > 1 else {
                return [.failure(self.wrap(error))]
            }
            var results: [Result<Void, any Error>] = []
            for operation in operations {
                results.append(contentsOf: await self.write([operation]))
            }
            return results
        }
    }

    private func wrap(_ error: any Error) -> any Error {
        if error is AviaryError || error is SagaError { return error }
        return AviaryError(
            .unavailable, "saga store \(self.store.address): \(PostgresStore.describe(error))", cause: error)
    }

    /// Nullable values travel in arrays (which postgres-nio encodes without NULL elements) as a
    /// sentinel: NaN for times, a parallel flag for text and bytes.
    private static let noTime = Double.nan

    private func statement(_ operations: [Operation]) async throws -> [Result<Void, any Error>] {
        var creates = Columns()
        var updates = Columns()
        var events = EventColumns()
        for operation in operations {
            switch operation {
            case .create(let instance, let list, let owner, let leaseUntil):
                creates.add(instance, expected: 0)
                creates.leaseOwner.append(owner ?? "")
                creates.leaseUntil.append(leaseUntil?.timeIntervalSince1970 ?? Self.noTime)
                events.add(list, of: instance.id)
            case .update(let instance, let expected, let list):
                updates.add(instance, expected: expected)
                events.add(list, of: instance.id)
            }
        }
        let query: PostgresQuery = """
            WITH c_in AS (
                SELECT * FROM unnest(
                    \(creates.id)::text[], \(creates.name)::text[], \(creates.status)::text[], \(creates.step)::int8[],
                    \(creates.attempt)::int8[], \(creates.state)::bytea[], \(creates.wakeAt)::float8[],
                    \(creates.awaitingReply)::bool[], \(creates.lastError)::text[], \(creates.hasLastError)::bool[],
                    \(creates.createdAt)::float8[], \(creates.updatedAt)::float8[], \(creates.leaseOwner)::text[],
                    \(creates.leaseUntil)::float8[]
                ) AS t(id, name, status, step, attempt, state, wake_at, awaiting_reply, last_error, has_last_error,
                    created_at, updated_at, lease_owner, lease_until)
            ),
            c AS (
                INSERT INTO aviary_sagas (
                    id, name, status, step, attempt, state, wake_at, awaiting_reply, last_error, version, created_at,
                    updated_at, lease_owner, lease_until)
                SELECT id, name, status, step, attempt, state, NULLIF(wake_at, 'NaN'), awaiting_reply,
                    CASE WHEN has_last_error THEN last_error END, 1, created_at, updated_at, NULLIF(lease_owner, ''),
                    NULLIF(lease_until, 'NaN')
                FROM c_in
                ON CONFLICT (id) DO NOTHING
                RETURNING id
            ),
            u_in AS (
                SELECT * FROM unnest(
                    \(updates.id)::text[], \(updates.expected)::int8[], \(updates.status)::text[],
                    \(updates.step)::int8[], \(updates.attempt)::int8[], \(updates.state)::bytea[],
                    \(updates.wakeAt)::float8[], \(updates.awaitingReply)::bool[], \(updates.lastError)::text[],
                    \(updates.hasLastError)::bool[], \(updates.updatedAt)::float8[]
                ) AS t(id, expected, status, step, attempt, state, wake_at, awaiting_reply, last_error,
                    has_last_error, updated_at)
            ),
            u AS (
                UPDATE aviary_sagas s SET status = u_in.status, step = u_in.step, attempt = u_in.attempt,
                    state = u_in.state, wake_at = NULLIF(u_in.wake_at, 'NaN'), awaiting_reply = u_in.awaiting_reply,
                    last_error = CASE WHEN u_in.has_last_error THEN u_in.last_error END,
                    version = u_in.expected + 1, updated_at = u_in.updated_at,
                    lease_owner = CASE WHEN u_in.status IN ('running', 'compensating') THEN s.lease_owner END,
                    lease_until = CASE WHEN u_in.status IN ('running', 'compensating') THEN s.lease_until END
                FROM u_in
                WHERE s.id = u_in.id AND s.version = u_in.expected
                RETURNING s.id
            ),
            e AS (
                INSERT INTO aviary_saga_events (saga_id, step, step_name, kind, attempt, output, error, at)
                SELECT saga_id, step, step_name, kind, attempt, CASE WHEN has_output THEN output END,
                    CASE WHEN has_error THEN error END, at
                FROM unnest(
                    \(events.sagaID)::text[], \(events.step)::int8[], \(events.stepName)::text[],
                    \(events.kind)::text[], \(events.attempt)::int8[], \(events.output)::bytea[],
                    \(events.hasOutput)::bool[], \(events.error)::text[], \(events.hasError)::bool[],
                    \(events.at)::float8[]
                ) WITH ORDINALITY AS t(saga_id, step, step_name, kind, attempt, output, has_output, error, has_error,
                    at, ord)
                WHERE saga_id IN (SELECT id FROM c UNION ALL SELECT id FROM u)
                ORDER BY ord
            )
            SELECT c_in.id, (c.id IS NOT NULL) AS ok, true AS present FROM c_in LEFT JOIN c ON c.id = c_in.id
            UNION ALL
            SELECT u_in.id, (u.id IS NOT NULL) AS ok,
                EXISTS (SELECT 1 FROM aviary_sagas x WHERE x.id = u_in.id) AS present
            FROM u_in LEFT JOIN u ON u.id = u_in.id
            """
        let logger = self.store.logger
        let rows = try await self.store.withConnection { connection in
            try await Self.rows(connection, query, logger)
        }
        var outcomes: [String: (ok: Bool, present: Bool)] = [:]
        for row in rows {
            outcomes[try row["id"].decode(String.self)] = (
                try row["ok"].decode(Bool.self), try row["present"].decode(Bool.self)
            )
        }
        return operations.map { operation in
            guard let outcome = outcomes[operation.id] else {
                return .failure(
                    AviaryError(.internal, "saga store \(self.store.address): no outcome for saga \(operation.id)"))
            }
            if outcome.ok { return .success(()) }
            switch operation {
            case .create(let instance, _, _, _):
                return .failure(SagaError(.duplicate, "saga \(instance.id) exists already"))
            case .update(let instance, let expected, _):
                return .failure(
                    outcome.present
                        ? SagaError(.conflict, "saga \(instance.id) changed since version \(expected)")
                        : SagaError(.notFound, "no saga \(instance.id)"))
            }
        }
    }

    /// Runs `query` to its end and returns its rows, each with access by column name.
    static func rows(
        _ connection: PostgresConnection, _ query: PostgresQuery, _ logger: Logger
    ) async throws -> [PostgresRandomAccessRow] {
        var result: [PostgresRandomAccessRow] = []
        for try await row in try await connection.query(query, logger: logger) {
            result.append(row.makeRandomAccess())
        }
        return result
    }

    /// The instance columns of a batch, one array per column.
    private struct Columns {
        var id: [String] = []
        var expected: [Int] = []
        var name: [String] = []
        var status: [String] = []
        var step: [Int] = []
        var attempt: [Int] = []
        var state: [ByteBuffer] = []
        var wakeAt: [Double] = []
        var awaitingReply: [Bool] = []
        var lastError: [String] = []
        var hasLastError: [Bool] = []
        var createdAt: [Double] = []
        var updatedAt: [Double] = []
        var leaseOwner: [String] = []
        var leaseUntil: [Double] = []

        mutating func add(_ instance: SagaInstance, expected: Int) {
            self.id.append(instance.id)
            self.expected.append(expected)
            self.name.append(instance.name)
            self.status.append(instance.status.rawValue)
            self.step.append(instance.step)
            self.attempt.append(instance.attempt)
            self.state.append(ByteBuffer(bytes: instance.state))
            self.wakeAt.append(instance.wakeAt?.timeIntervalSince1970 ?? PostgresSagaWriter.noTime)
            self.awaitingReply.append(instance.awaitingReply)
            self.lastError.append(instance.lastError ?? "")
            self.hasLastError.append(instance.lastError != nil)
            self.createdAt.append(instance.createdAt.timeIntervalSince1970)
            self.updatedAt.append(instance.updatedAt.timeIntervalSince1970)
        }
    }

    /// The event columns of a batch, in append order.
    private struct EventColumns {
        var sagaID: [String] = []
        var step: [Int] = []
        var stepName: [String] = []
        var kind: [String] = []
        var attempt: [Int] = []
        var output: [ByteBuffer] = []
        var hasOutput: [Bool] = []
        var error: [String] = []
        var hasError: [Bool] = []
        var at: [Double] = []

        mutating func add(_ events: [SagaEvent], of id: String) {
            for event in events {
                self.sagaID.append(id)
                self.step.append(event.step)
                self.stepName.append(event.stepName)
                self.kind.append(event.kind.rawValue)
                self.attempt.append(event.attempt)
                self.output.append(ByteBuffer(bytes: event.output ?? Data()))
                self.hasOutput.append(event.output != nil)
                self.error.append(event.error ?? "")
                self.hasError.append(event.error != nil)
                self.at.append(event.at.timeIntervalSince1970)
            }
        }
    }
}
