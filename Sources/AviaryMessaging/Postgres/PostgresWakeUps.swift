//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryStorage
import Foundation
import Logging
import PostgresNIO
import Synchronization

/// The wake-up streams of one ``PostgresMessageLog``, fed by one `LISTEN` session.
///
/// The first stream starts a listener on a connection of its own (outside the pool): every
/// notification on the channel carries a topic and wakes that topic's streams. Publishes notify a
/// topic only when some session listens for it, so the listener registers its session for each
/// topic it has streams for (a row in `aviary_listeners`, see `aviary_publish_now`), and wakes a
/// topic's streams once that registration has committed: a consumer looks for messages again
/// after that wake-up, and every publish it could have missed before is either seen by that look
/// or notifies. When the session breaks, the listener reconnects (after a pause that grows to a
/// few seconds), registers again and wakes every stream, since notifications sent meanwhile are
/// lost. Each stream also yields every poll interval, for changes only time makes. Wake-ups
/// coalesce: a busy consumer sees one, not a backlog.
final class PostgresWakeUps: Sendable {
    private struct Subscriber {
        var topic: String
        var continuation: AsyncStream<Void>.Continuation
    }

    private struct State {
        var subscribers: [UUID: Subscriber] = [:]
        var listener: Task<Void, Never>?
        var closed = false
        /// The topics the current `LISTEN` session has registered (committed).
        var registered: Set<String> = []
        /// Rung when a stream starts for a topic the session has not registered; finished at
        /// close. One per session (a stream whose reader is cancelled ends for good).
        var registrations: AsyncStream<Void>.Continuation?
        /// Set when a session has registered, which resets the count of failed sessions.
        var sessionRegistered = false
    }

    private let store: PostgresStore
    private let channel: String
    private let pollInterval: Duration
    private let logger: Logger
    private let state = Mutex(State())

    init(store: PostgresStore, channel: String, pollInterval: Duration, logger: Logger) {
        self.store = store
        self.channel = channel
        self.pollInterval = pollInterval
        self.logger = logger
    }

    /// A stream of wake-ups for `topic`; finished when the log closes.
    func stream(topic: String) -> AsyncStream<Void> {
        let id = UUID()
        let (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let pollInterval = self.pollInterval
        let timer = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: pollInterval)
                continuation.yield()
            }
        }
        continuation.onTermination = { [weak self] _ in
            timer.cancel()
            self?.state.withLock { _ = $0.subscribers.removeValue(forKey: id) }
        }
        let closed = self.state.withLock { state -> Bool in
            guard !state.closed else { return true }
            state.subscribers[id] = Subscriber(topic: topic, continuation: continuation)
            if state.listener == nil {
                state.listener = Task { await self.listen() }
            }
            if !state.registered.contains(topic) { state.registrations?.yield() }
            return false
        }
        if closed { continuation.finish() }
        return stream
    }

    /// Ends every stream and the listener, which first removes its registrations (waiting at most
    /// a few seconds for that; a session that ends without it leaves rows the next registration
    /// anywhere deletes).
    func close() async {
        let (subscribers, listener, registrations) = self.state.withLock { state in
            state.closed = true
            defer {
                state.subscribers.removeAll()
                state.listener = nil
                state.registrations = nil
            }
            return (Array(state.subscribers.values), state.listener, state.registrations)
        }
        for subscriber in subscribers { subscriber.continuation.finish() }
        registrations?.finish()
        guard let listener else { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await listener.value }
            group.addTask { try? await Task.sleep(for: .seconds(3)) }
            await group.next()
            listener.cancel()
            group.cancelAll()
        }
        await listener.value
    }

    private func wake(topic: String?) {
        let continuations = self.state.withLock { state in
            state.subscribers.values.filter { topic == nil || $0.topic == topic }.map(\.continuation)
        }
        for continuation in continuations { continuation.yield() }
    }

    private func wake(topics: Set<String>) {
        let continuations = self.state.withLock { state in
            state.subscribers.values.filter { topics.contains($0.topic) }.map(\.continuation)
        }
        for continuation in continuations { continuation.yield() }
    }

    /// The session ended: its notification stream finished.
    private struct SessionEnded: Error {}

    /// Listens until closed or cancelled, reconnecting after failures.
    private func listen() async {
        var failures = 0
        while !Task.isCancelled, !self.state.withLock({ $0.closed }) {
            do {
                try await self.store.withDedicatedConnection { connection in
                    try await connection.listen(on: self.channel) { notifications in
                        let registrations = AsyncStream.makeStream(
                            of: Void.self, bufferingPolicy: .bufferingNewest(1))
                        let closed = self.state.withLock { state in
                            state.registered = []
                            state.registrations = registrations.continuation
                            return state.closed
                        }
                        if closed { registrations.continuation.finish() }
                        try await self.register(connection)
                        self.state.withLock { $0.sessionRegistered = true }
                        try await withThrowingTaskGroup(of: Void.self) { group in
                            group.addTask {
                                for try await notification in notifications {
                                    self.wake(topic: notification.payload)
                                }
                                throw SessionEnded()
                            }
                            group.addTask {
                                for await _ in registrations.stream {
                                    try await self.register(connection)
                                }
                                // Closing: this session's registrations go with it.
                                try await connection.query(
                                    "DELETE FROM aviary_listeners WHERE pid = pg_backend_pid()", logger: self.logger)
                            }
                            try await group.next()
                            group.cancelAll()
                        }
                    }
                }
            } catch {
                if Task.isCancelled || self.state.withLock({ $0.closed }) { return }
                let registered = self.state.withLock { state in
                    defer { state.sessionRegistered = false }
                    return state.sessionRegistered
                }
                failures = registered ? 1 : failures + 1
                self.logger.warning(
                    "message log notifications interrupted; reconnecting",
                    metadata: ["error.message": "\(PostgresStore.describe(error))", "aviary.attempt": "\(failures)"])
            }
            // A pause before reconnecting that grows to 5 s, so a server that is down is not hammered.
            try? await Task.sleep(for: .milliseconds(min(5000, 100 << min(failures, 6))))
        }
    }

    /// Registers this session (which already listens) for the topics of the streams that it has
    /// not registered, in one transaction, and then wakes those topics' streams: anything published
    /// before that commit is either visible to the consumer's next look or notified.
    ///
    /// The transaction inserts the topics' rows in `aviary_listeners` and locks their partition rows
    /// `FOR SHARE`, in the (topic, partition) order publishes lock them in: it waits for publishes that hold
    /// them (those commit before the consumer looks again), and a publish that locks them after it
    /// sees the rows (`aviary_publish_now`). Rows of sessions that no longer exist are deleted.
    private func register(_ connection: PostgresConnection) async throws {
        let topics = self.state.withLock { state in
            Set(state.subscribers.values.map(\.topic)).subtracting(state.registered)
        }
        guard !topics.isEmpty else { return }
        let names = topics.sorted()
        try await connection.query("BEGIN", logger: self.logger)
        do {
            try await connection.query(
                """
                DELETE FROM aviary_listeners l WHERE NOT EXISTS (
                    SELECT 1 FROM pg_stat_activity a
                    WHERE a.pid = l.pid AND (a.backend_start IS NULL OR a.backend_start = l.started))
                """, logger: self.logger)
            try await connection.query(
                """
                INSERT INTO aviary_listeners (topic, pid, started)
                SELECT t, pg_backend_pid(), (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())
                FROM unnest(\(names)::TEXT[]) AS t
                ON CONFLICT (topic, pid) DO UPDATE SET started = excluded.started
                """, logger: self.logger)
            // Topic by topic in the order publishes lock them (Swift's, which a database collation
            // need not share), partitions in order.
            for name in names {
                _ = try await connection.complete(
                    "SELECT 1 FROM aviary_partitions WHERE topic = \(name) ORDER BY partition FOR SHARE",
                    logger: self.logger)
            }
            try await connection.query("COMMIT", logger: self.logger)
        } catch {
            _ = try? await connection.query("ROLLBACK", logger: self.logger)
            throw error
        }
        self.state.withLock { $0.registered.formUnion(topics) }
        self.wake(topics: topics)
    }
}
