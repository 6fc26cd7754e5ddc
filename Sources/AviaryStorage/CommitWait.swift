//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Dispatch
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Why a caller may wait for its commit without suspending:
//
// Some writes run on another thread than their caller's: a SQLite message log's on its writer
// thread (a commit blocks for its fdatasync, which the concurrency pool must not), a PostgreSQL
// store's lean calls on a connection's event loop. A caller that suspends until the commit is
// resumed through the pool: its thread has gone to sleep meanwhile, and on a small virtual machine
// waking it (a futex, the scheduler, an idle virtual CPU) costs tens of microseconds, a third of a
// single SQLite publish on a quick disk (messaging performance notes, twenty-third session). When
// commits are quick, the caller's thread instead looks for the result for a short while, yielding
// the CPU between looks, and suspends only if it has not come. The look is bounded
// (`CommitWait.limit`), taken by one caller of a log or store at a time (other callers suspend as
// before, so concurrent writers cannot fill the pool with waiting threads), and skipped while
// commits take longer than the limit (a slow disk), where it would only burn CPU.

/// The policy of one log or store: how long a caller may wait for its commit on its own thread, and
/// whether one does now.
///
/// ```swift
/// let wait = CommitWait(limit: .microseconds(250))
/// let handOff = CommitHandOff<Int>(wait)
/// writer.submit { handOff.complete(.success(42)) }
/// let value = try await handOff.value()   // 42, usually without suspending
/// ```
package final class CommitWait: Sendable {
    /// What the waits have done so far, for tests and measurements.
    package struct Statistics: Sendable, Equatable {
        /// Waits that found their result while looking.
        package var found = 0
        /// Waits that looked for the whole limit and then suspended.
        package var timedOut = 0
        /// Waits that suspended at once (another caller was looking, the limit is zero, or the
        /// last commit took longer than the limit).
        package var suspended = 0

        package init(found: Int = 0, timedOut: Int = 0, suspended: Int = 0) {
            self.found = found
            self.timedOut = timedOut
            self.suspended = suspended
        }
    }

    /// The longest a caller looks for its result, in nanoseconds; zero: never.
    package let limit: UInt64
    private let looking = Atomic<Bool>(false)
    /// How long the last commit took, from its submission to its result, in nanoseconds.
    private let lastLatency = Atomic<UInt64>(0)
    /// The counts of ``statistics``.
    private let found = Atomic<Int>(0)
    private let timedOut = Atomic<Int>(0)
    private let suspended = Atomic<Int>(0)

    /// - Parameter limit: the longest a caller looks for its result; zero or less: never; more
    ///   than an hour: an hour.
    package init(limit: Duration) {
        let (seconds, attoseconds) = min(limit, .seconds(3600)).components
        self.limit = limit <= .zero ? 0 : UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
    }

    /// The waits so far.
    package var statistics: Statistics {
        Statistics(
            found: self.found.load(ordering: .relaxed), timedOut: self.timedOut.load(ordering: .relaxed),
            suspended: self.suspended.load(ordering: .relaxed))
    }

    /// Whether the caller may look now; if so, it must call ``endLook(found:)``. Never on a NIO
    /// event loop's thread (a task preferring a loop's executor): looking there would hold up
    /// every channel of the loop.
    package func beginLook() -> Bool {
        guard self.limit > 0, self.lastLatency.load(ordering: .relaxed) < self.limit,
            MultiThreadedEventLoopGroup.currentEventLoop == nil,
            self.looking.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
        else {
            self.suspended.add(1, ordering: .relaxed)
            return false
        }
        return true
    }

    /// Ends a look that ``beginLook()`` allowed, noting whether it found the result.
    package func endLook(found: Bool) {
        self.looking.store(false, ordering: .releasing)
        if found {
            self.found.add(1, ordering: .relaxed)
        } else {
            self.timedOut.add(1, ordering: .relaxed)
        }
    }

    /// Notes how long a commit took (every commit, looked for or not, so that looking starts
    /// again when commits are quick again).
    package func record(latency: UInt64) {
        self.lastLatency.store(latency, ordering: .relaxed)
    }

    package static var now: UInt64 { DispatchTime.now().uptimeNanoseconds }
}

/// One caller's wait for the result of a write another thread runs: the thread calls
/// ``complete(_:)`` once; the caller calls ``value()`` once.
///
/// Its state is behind a lock (taken once per look, a few tens of nanoseconds, against the
/// commit's tens of microseconds): pending, completed with the result, or suspended with the
/// caller's continuation. Whichever side comes second finds the other's part and finishes the
/// hand-off.
package final class CommitHandOff<T: Sendable>: Sendable {
    private enum State {
        case pending
        case completed(Result<T, any Error>)
        case suspended(UnsafeContinuation<T, any Error>)

        /// The result, once it has been handed over.
        var result: Result<T, any Error>? {
            if case .completed(let result) = self { return result }
            return nil
        }
    }

    private let wait: CommitWait
    private let submitted = CommitWait.now
    private let state = Mutex(State.pending)

    package init(_ wait: CommitWait) {
        self.wait = wait
    }

    /// Hands the result over (on the writer thread, once).
    package func complete(_ result: Result<T, any Error>) {
        self.wait.record(latency: CommitWait.now &- self.submitted)
        let suspended: UnsafeContinuation<T, any Error>? = self.state.withLock { state in
            defer { state = .completed(result) }
            if case .suspended(let continuation) = state { return continuation }
            return nil
        }
        suspended?.resume(with: result)
    }

    /// The result: looked for on the caller's thread for up to the policy's limit if it allows,
    /// else (or then) waited for suspended.
    package func value() async throws -> T {
        if self.wait.beginLook() {
            let deadline = CommitWait.now &+ self.wait.limit
            var found: Result<T, any Error>?
            repeat {
                found = self.state.withLock { $0.result }
                if found != nil { break }
                sched_yield()
            } while CommitWait.now < deadline
            self.wait.endLook(found: found != nil)
            if let found { return try found.get() }
        }
        return try await withUnsafeThrowingContinuation { continuation in
            let completed: Result<T, any Error>? = self.state.withLock { state in
                if let result = state.result { return result }
                state = .suspended(continuation)
                return nil
            }
            if let completed { continuation.resume(with: completed) }
        }
    }
}
