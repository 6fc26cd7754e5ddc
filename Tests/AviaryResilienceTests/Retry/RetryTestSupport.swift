//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryResilience
import Synchronization

/// An error that names the attempt that threw it.
struct RetryTestError: Error, Equatable {
    var attempt: Int
}

/// An error carrying an upstream's `Retry-After`.
struct RetryAfterTestError: Error, RetryAfterProviding {
    var retryAfter: Duration?
}

/// Records the attempt numbers an operation saw, and cancellations, from any task.
final class AttemptRecorder: Sendable {
    private let state = Mutex<(attempts: [Int], cancelled: [Int])>(([], []))

    func record(_ attempt: Int) {
        self.state.withLock { $0.attempts.append(attempt) }
    }

    func recordCancellation(_ attempt: Int) {
        self.state.withLock { $0.cancelled.append(attempt) }
    }

    var attempts: [Int] { self.state.withLock { $0.attempts } }
    var cancelled: [Int] { self.state.withLock { $0.cancelled } }
    var count: Int { self.attempts.count }
}

/// Takes the first `count` events of a stream (the stream buffers them, so this works after the
/// events were published).
func firstEvents<Event: Sendable>(_ count: Int, of stream: AsyncStream<Event>) async -> [Event] {
    var events: [Event] = []
    var iterator = stream.makeAsyncIterator()
    while events.count < count, let event = await iterator.next() {
        events.append(event)
    }
    return events
}
