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
/// notification on the channel carries a topic and wakes that topic's streams. When the session
/// breaks, the listener reconnects (after a pause that grows to a few seconds) and wakes every
/// stream, since notifications sent meanwhile are lost. Each stream also yields every poll
/// interval, for changes only time makes. Wake-ups coalesce: a busy consumer sees one, not a backlog.
final class PostgresWakeUps: Sendable {
    private struct Subscriber {
        var topic: String
        var continuation: AsyncStream<Void>.Continuation
    }

    private struct State {
        var subscribers: [UUID: Subscriber] = [:]
        var listener: Task<Void, Never>?
        var closed = false
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
            return false
        }
        if closed { continuation.finish() }
        return stream
    }

    /// Ends every stream and the listener.
    func close() async {
        let (subscribers, listener) = self.state.withLock { state in
            state.closed = true
            defer {
                state.subscribers.removeAll()
                state.listener = nil
            }
            return (Array(state.subscribers.values), state.listener)
        }
        for subscriber in subscribers { subscriber.continuation.finish() }
        listener?.cancel()
        await listener?.value
    }

    private func wake(topic: String?) {
        let continuations = self.state.withLock { state in
            state.subscribers.values.filter { topic == nil || $0.topic == topic }.map(\.continuation)
        }
        for continuation in continuations { continuation.yield() }
    }

    /// Listens until cancelled, reconnecting after failures.
    private func listen() async {
        var failures = 0
        while !Task.isCancelled {
            do {
                try await self.store.withDedicatedConnection { connection in
                    try await connection.listen(on: self.channel) { notifications in
                        failures = 0
                        // Anything published while no session listened went unheard.
                        self.wake(topic: nil)
                        for try await notification in notifications {
                            self.wake(topic: notification.payload)
                        }
                    }
                }
            } catch {
                if Task.isCancelled { return }
                failures += 1
                self.logger.warning(
                    "message log notifications interrupted; reconnecting",
                    metadata: ["error.message": "\(PostgresStore.describe(error))", "aviary.attempt": "\(failures)"])
            }
            // A pause before reconnecting that grows to 5 s, so a server that is down is not hammered.
            try? await Task.sleep(for: .milliseconds(min(5000, 100 << min(failures, 6))))
        }
    }
}
