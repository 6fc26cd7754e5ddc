//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
import Synchronization

/// Wake-ups for consumers of a SQLite log: a publish through any log instance of this process
/// wakes the consumers of the same store and topic at once, and on Linux a publish in another
/// process does too, through the topic's ``SQLiteDoorbell``; the poll timer covers the rest.
final class WakeUpHub: Sendable {
    /// One hub per process: several log instances may open the same file.
    static let shared = WakeUpHub()

    private struct Subscriber {
        var key: String
        var continuation: AsyncStream<Void>.Continuation
    }

    private let subscribers = Mutex<[UUID: Subscriber]>([:])

    /// A stream that yields every `poll` and whenever ``notify(store:topic:)`` names its store and
    /// topic. Wake-ups coalesce (a consumer that is busy sees one, not a backlog). `register` gets
    /// the stream's id so its owner can finish it on close.
    func stream(store: String, topic: String, poll: Duration, register: (UUID) -> Void) -> AsyncStream<Void> {
        let id = UUID()
        let (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        self.subscribers.withLock { $0[id] = Subscriber(key: Self.key(store, topic), continuation: continuation) }
        SQLiteDoorbell.shared.watch(store: store)
        let timer = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: poll)
                continuation.yield()
            }
        }
        continuation.onTermination = { [weak self] _ in
            timer.cancel()
            self?.subscribers.withLock { _ = $0.removeValue(forKey: id) }
            SQLiteDoorbell.shared.unwatch(store: store)
        }
        register(id)
        return stream
    }

    /// Wakes every stream on `topic` of `store`.
    func notify(store: String, topic: String) {
        let key = Self.key(store, topic)
        let continuations = self.subscribers.withLock { subscribers in
            subscribers.values.filter { $0.key == key }.map(\.continuation)
        }
        for continuation in continuations { continuation.yield() }
    }

    /// Ends the streams with these ids (their log closed).
    func finish(_ ids: [UUID]) {
        let continuations = self.subscribers.withLock { subscribers in
            ids.compactMap { subscribers.removeValue(forKey: $0)?.continuation }
        }
        for continuation in continuations { continuation.finish() }
    }

    private static func key(_ store: String, _ topic: String) -> String { "\(store)\u{0}\(topic)" }
}
