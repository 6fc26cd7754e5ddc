//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import PostgresNIO

/// A Swift `TaskExecutor` that runs its jobs on one SwiftNIO event loop.
///
/// SwiftNIO's event loops are serial executors for actors, not task executors. A task that prefers
/// this executor (`withTaskExecutorPreference`, `Task(executorPreference:)`) runs its
/// nonisolated code on the loop's thread: a job queued from that thread runs in the same turn of
/// the loop, and a channel write from it goes straight into the pipeline, so a task that talks to
/// connections on this loop never waits for another thread to wake up. A
/// ``PostgresStore`` made with ``PostgresStore/Options/eventLoop`` offers one as
/// ``PostgresStore/executor``.
///
/// Everything such a task runs between its suspensions runs on the event loop and delays the
/// loop's other channels meanwhile: prefer it for tasks that mostly wait on the loop's
/// connections (a producer publishing one message after another), and never block in them.
///
/// ```swift
/// let executor = EventLoopTaskExecutor(MultiThreadedEventLoopGroup.singleton.next())
/// try await withTaskExecutorPreference(executor) {
///     precondition(executor.eventLoop.inEventLoop)
/// }
/// ```
public final class EventLoopTaskExecutor: TaskExecutor {
    /// The loop the jobs run on.
    public let eventLoop: any EventLoop

    /// Creates an executor that runs jobs on `eventLoop`.
    ///
    /// ```swift
    /// let executor = EventLoopTaskExecutor(MultiThreadedEventLoopGroup.singleton.next())
    /// ```
    public init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Runs `body` on the loop: in place when the caller is on it already, otherwise in the
    /// caller's task preferring this executor, which hops there for `body` and back after it.
    ///
    /// ```swift
    /// let executor = EventLoopTaskExecutor(MultiThreadedEventLoopGroup.singleton.next())
    /// let onLoop = try await executor.run { executor.eventLoop.inEventLoop }  // true
    /// ```
    public func run<T>(_ body: () async throws -> T) async throws -> T {
        if self.eventLoop.inEventLoop { return try await body() }
        return try await withTaskExecutorPreference(self) { try await body() }
    }

    /// Queues `job` on the loop; from the loop's own thread it runs later in the same turn.
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        self.eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
