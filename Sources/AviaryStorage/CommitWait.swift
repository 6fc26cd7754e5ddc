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
    private let counts = Mutex(Statistics())

    /// - Parameter limit: the longest a caller looks for its result; zero or less: never; more
    ///   than an hour: an hour.
    package init(limit: Duration) {
        let (seconds, attoseconds) = min(limit, .seconds(3600)).components
        self.limit = limit <= .zero ? 0 : UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
    }

    /// The waits so far.
    package var statistics: Statistics { self.counts.withLock { $0 } }

    /// Whether the caller may look now; if so, it must call ``endLook(found:)``. Never on a NIO
    /// event loop's thread (a task preferring a loop's executor): looking there would hold up
    /// every channel of the loop.
    package func beginLook() -> Bool {
        guard self.limit > 0, self.lastLatency.load(ordering: .relaxed) < self.limit,
            MultiThreadedEventLoopGroup.currentEventLoop == nil,
            self.looking.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
        else {
            self.counts.withLock { $0.suspended += 1 }
            return false
        }
        return true
    }

    package func endLook(found: Bool) {
        self.looking.store(false, ordering: .releasing)
        self.counts.withLock {
            if found { $0.found += 1 } else { $0.timedOut += 1 }
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
/// `@unchecked Sendable`, proof: `result` is written only by ``complete(_:)``, once, before the
/// releasing exchange of `state` (0 to 1, or finding 2); the caller reads it only after an
/// acquiring load found 1 or its own exchange failed because the state was 1. `continuation` is
/// written only by the caller, before its releasing exchange of `state` (0 to 2), and read by
/// ``complete(_:)`` only when its exchange failed because the state was 2 (an acquiring failure).
/// So each field is written before it is read, by one thread each, with the atomic between.
package final class CommitHandOff<T: Sendable>: @unchecked Sendable {
    private static var pending: UInt8 { 0 }
    private static var completed: UInt8 { 1 }
    private static var suspended: UInt8 { 2 }

    private let wait: CommitWait
    private let submitted = CommitWait.now
    private let state = Atomic<UInt8>(0)
    private var result: Result<T, any Error>?
    private var continuation: UnsafeContinuation<T, any Error>?

    package init(_ wait: CommitWait) {
        self.wait = wait
    }

    /// Hands the result over (on the writer thread, once).
    package func complete(_ result: Result<T, any Error>) {
        self.wait.record(latency: CommitWait.now &- self.submitted)
        self.result = result
        let (exchanged, _) = self.state.compareExchange(
            expected: Self.pending, desired: Self.completed, successOrdering: .releasing, failureOrdering: .acquiring)
        if !exchanged, let continuation = self.continuation {
            continuation.resume(with: result)
        }
    }

    /// The result: looked for on the caller's thread for up to the policy's limit if it allows,
    /// else (or then) waited for suspended.
    package func value() async throws -> T {
        if self.wait.beginLook() {
            let deadline = CommitWait.now &+ self.wait.limit
            var found = false
            repeat {
                if self.state.load(ordering: .acquiring) == Self.completed {
                    found = true
                    break
                }
                sched_yield()
            } while CommitWait.now < deadline
            self.wait.endLook(found: found)
            if found, let result = self.result { return try result.get() }
        }
        return try await withUnsafeThrowingContinuation { continuation in
            self.continuation = continuation
            let (exchanged, _) = self.state.compareExchange(
                expected: Self.pending, desired: Self.suspended, successOrdering: .releasing,
                failureOrdering: .acquiring)
            if !exchanged, let result = self.result {
                continuation.resume(with: result)
            }
        }
    }
}
