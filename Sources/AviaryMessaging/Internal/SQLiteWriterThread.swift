//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryStorage
import Dispatch
import Foundation
import Synchronization

/// The thread of one ``SQLiteMessageLog`` that runs its write transactions for async callers, one
/// at a time in the order they come, each through GRDB's synchronous `writeWithoutTransaction`.
///
/// A write blocks for its commit's `fdatasync`, so it must not run on the concurrency pool.
/// GRDB's async write hands it to the writer's dispatch queue through an actor on that queue,
/// inside a task cancellation handler: the caller's task hops to a libdispatch worker and, after
/// the commit, back to the pool. Here the caller queues a job, this thread
/// (woken through a semaphore if it sleeps) runs the write with GRDB's synchronous call, which
/// runs on the calling thread when the writer queue is idle, and hands the result over
/// (``CommitHandOff``). While jobs come one right after another the thread waits for the next
/// without sleeping (see ``spinLimit``), and the caller may look for its result for a short while
/// before it suspends (``commitWait``), so that usually no thread is woken either way; the actor,
/// the cancellation handler and the libdispatch queue between them are gone.
///
/// The thread starts with the first write and ends after ``idleLifetime`` without one (the next
/// write starts another), so a log that is not closed leaves no thread behind.
///
/// The thread is also a `TaskExecutor` (``SQLiteMessageLog/writerExecutor``): a task that prefers
/// it runs its code on this thread between the writes, and its writes run where it already is,
/// without either hand-off. That is for a task that mostly writes (a producer publishing one
/// message after another); every other write of the log waits while such a task runs.
final class SQLiteWriterThread: Sendable {
    private struct State {
        var jobs: [@Sendable () -> Void] = []
        /// A thread takes jobs (or is about to start).
        var running = false
        /// The thread waits on ``wakeUp``: whoever adds a job signals it once.
        var sleeping = false
    }

    /// How long the thread waits for a job before it ends.
    let idleLifetime: DispatchTimeInterval

    /// The writer thread's nice value on Linux (see ``takeJobs()``).
    static let niceValue: Int32 = -2

    /// How long, in nanoseconds, the thread waits for the next job without sleeping, when the
    /// last job came within that time of the one before it ended (a caller publishing one
    /// message after another): a thread that sleeps between them must be woken for each job, a
    /// measurable part of a single publish (scripts/bench-broker.sh) on a small virtual machine.
    /// Spinning costs up to this much CPU time after a job; a thread whose jobs come further
    /// apart stops spinning after one wait that found nothing.
    static let spinLimit: UInt64 = 200_000

    private let state = Mutex(State())
    private let wakeUp = DispatchSemaphore(value: 0)
    private let name: String
    /// How callers wait for their jobs' results (see ``CommitWait``).
    let commitWait: CommitWait

    /// - Parameters:
    ///   - name: the thread's name (shown by debuggers and `top -H`; Linux keeps names of at most
    ///     15 bytes and ignores longer ones).
    ///   - idleLifetime: how long the thread waits for a job before it ends.
    ///   - commitWait: how callers of ``run(_:)`` (and ``SQLiteGroupCommit``'s) wait for their
    ///     results; by default they suspend at once.
    init(
        name: String, idleLifetime: DispatchTimeInterval = .seconds(2),
        commitWait: CommitWait = CommitWait(limit: .zero)
    ) {
        self.name = name
        self.idleLifetime = idleLifetime
        self.commitWait = commitWait
    }

    /// Whether a thread is running (or starting) to take jobs, for tests.
    var hasThread: Bool { self.state.withLock { $0.running } }

    /// How many jobs wait for the thread, for tests.
    var pendingJobs: Int { self.state.withLock { $0.jobs.count } }

    /// The thread-local slot in which a writer thread keeps its ``SQLiteWriterThread`` (unretained:
    /// the thread's closure retains the object while the thread runs), so that ``isCurrent`` is
    /// one load and a compare.
    private static let currentKey: pthread_key_t = {
        var key = pthread_key_t()
        precondition(pthread_key_create(&key, nil) == 0, "no thread-local key for the SQLite writer thread")
        return key
    }()

    /// Whether the calling code runs on this writer's thread (in a job, or in a task that prefers
    /// it as its executor).
    var isCurrent: Bool {
        let current: UnsafeMutableRawPointer? = pthread_getspecific(Self.currentKey)
        return current == Unmanaged.passUnretained(self).toOpaque()
    }

    /// Runs `body` on the thread and returns its result: after the jobs submitted before it, or at
    /// once when the caller already runs on the thread (a task that prefers ``SQLiteWriterThread``
    /// as its executor, whose job is the one running, so that no other job can run meanwhile).
    ///
    /// The caller waits as ``commitWait`` says: it may look for the result on its own thread for
    /// a short while, yielding the CPU, before its task suspends (it never blocks for longer);
    /// `body` may block.
    func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        if self.isCurrent { return try body() }
        let handOff = CommitHandOff<T>(self.commitWait)
        self.submit { handOff.complete(Result { try body() }) }
        return try await handOff.value()
    }

    /// Queues `job` to run on the thread after the jobs submitted before it (for work whose
    /// callers wait in their own way, as ``SQLiteGroupCommit``'s).
    func submit(_ job: @escaping @Sendable () -> Void) {
        enum Action { case none, signal, start }
        let action = self.state.withLock { state -> Action in
            state.jobs.append(job)
            if !state.running {
                state.running = true
                return .start
            }
            if state.sleeping {
                state.sleeping = false
                return .signal
            }
            return .none
        }
        switch action {
        case .none: break
        case .signal: self.wakeUp.signal()
        case .start:
            let thread = Thread { self.takeJobs() }
            thread.name = self.name
            thread.start()
        }
    }

    /// The thread: runs the jobs in order; when there are none, waits for one (spinning first if
    /// jobs came in quick succession, see ``spinLimit``), and ends after ``idleLifetime`` of sleep.
    private func takeJobs() {
        #if os(Linux)
        // The nice value libdispatch gives the worker of GRDB's writer queue (default QoS), which
        // ran the writes before: at the default 0, on a machine busy with other work, each
        // wake-up of this thread waited longer for a CPU. Lowering it needs CAP_SYS_NICE; without
        // it, as for libdispatch, the thread keeps 0. (On Linux the nice value is the calling
        // thread's, not the process's.)
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, Self.niceValue)
        #endif
        pthread_setspecific(Self.currentKey, Unmanaged.passUnretained(self).toOpaque())
        defer { pthread_setspecific(Self.currentKey, nil) }
        var batch: [@Sendable () -> Void] = []
        // Whether the last job came within ``spinLimit`` of the one before it ended.
        var spins = false
        while true {
            let found = self.state.withLock { state -> Bool in
                guard !state.jobs.isEmpty else { return false }
                swap(&batch, &state.jobs)
                return true
            }
            if found {
                for job in batch { job() }
                batch.removeAll(keepingCapacity: true)
                continue
            }
            let idleSince = DispatchTime.now().uptimeNanoseconds
            if spins, self.spinForJob(since: idleSince) { continue }
            let sleeps = self.state.withLock { state -> Bool in
                guard state.jobs.isEmpty else { return false }
                state.sleeping = true
                return true
            }
            guard sleeps else { continue }
            if self.wakeUp.wait(timeout: .now() + self.idleLifetime) == .success {
                spins = DispatchTime.now().uptimeNanoseconds - idleSince < Self.spinLimit
                continue
            }
            // A job added since the wait timed out has cleared `sleeping` and signalled (the
            // next wait takes that signal at once); only a thread nobody signalled may end.
            let ends = self.state.withLock { state -> Bool in
                guard state.sleeping, state.jobs.isEmpty else { return false }
                state.sleeping = false
                state.running = false
                return true
            }
            if ends { return }
        }
    }

    /// Waits for a job without sleeping until ``spinLimit`` after `idleSince`, yielding the CPU
    /// between looks; returns whether one came.
    private func spinForJob(since idleSince: UInt64) -> Bool {
        while DispatchTime.now().uptimeNanoseconds - idleSince < Self.spinLimit {
            if self.state.withLock({ !$0.jobs.isEmpty }) { return true }
            sched_yield()
        }
        return false
    }
}

extension SQLiteWriterThread: TaskExecutor {
    /// Runs a job of a task that prefers this executor on the thread, in turn with the writes.
    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        self.submit { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
