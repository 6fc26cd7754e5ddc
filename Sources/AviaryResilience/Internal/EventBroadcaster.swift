//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Synchronization

/// Fans events (state changes) out to any number of `AsyncStream` subscribers.
///
/// Publishing with no subscriber costs one uncontended lock; each subscriber buffers the newest
/// `bufferSize` events so that a slow subscriber never blocks the policy. Policies publish from
/// their rare paths (transitions), never per successful call.
@usableFromInline
final class EventBroadcaster<Event: Sendable>: Sendable {
    private struct State {
        var nextID = 0
        var subscribers: [Int: AsyncStream<Event>.Continuation] = [:]
    }

    private let state = Mutex(State())
    private let bufferSize: Int

    init(bufferSize: Int = 64) {
        self.bufferSize = bufferSize
    }

    /// A new stream of the events published from now on. The stream ends when the subscriber
    /// stops iterating (the subscription is removed on termination).
    func subscribe() -> AsyncStream<Event> {
        let (stream, continuation) = AsyncStream<Event>.makeStream(bufferingPolicy: .bufferingNewest(self.bufferSize))
        let id = self.state.withLock { state -> Int in
            state.nextID += 1
            state.subscribers[state.nextID] = continuation
            return state.nextID
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Delivers `event` to every current subscriber.
    func publish(_ event: Event) {
        let subscribers = self.state.withLock { Array($0.subscribers.values) }
        for subscriber in subscribers {
            subscriber.yield(event)
        }
    }

    /// Ends every subscriber's stream.
    func finish() {
        let subscribers = self.state.withLock { state -> [AsyncStream<Event>.Continuation] in
            defer { state.subscribers.removeAll() }
            return Array(state.subscribers.values)
        }
        for subscriber in subscribers { subscriber.finish() }
    }
}
