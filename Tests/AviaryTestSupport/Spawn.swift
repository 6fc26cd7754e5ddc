//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Starts programs with `posix_spawn` for tests, and awaits their exit on a thread of its own.
///
/// Why not Foundation's `Process`: on Linux, `Process.run()` lists `/proc/self/fd` to close
/// inherited descriptors and copies each entry's whole 256-byte name, reading past short
/// records (swift-corelibs-foundation PR #5472, fixed after Swift 6.3.1). With more than ~1,350
/// descriptors open, which the parallel test process reaches (1,700 measured), the last record
/// can sit at the end of glibc's 32 KiB buffer, and CI runs died with SIGSEGV in `Process.run()`.
/// Every child of the tests starts here instead; descriptors beyond the three standard ones are
/// closed in the child with glibc's `posix_spawn_file_actions_addclosefrom_np`.
///
/// ``start(_:_:environment:workingDirectory:stdin:stdout:stderr:)`` returns a ``Child`` to signal,
/// poll and await; a thread per child waits for it (the only place that reaps it), so awaiting
/// its exit never holds a thread of the cooperative pool.
///
/// ```swift
/// let child = try Spawn.start("/usr/bin/sleep", ["60"], stdout: .appending(to: log), stderr: .standardOutput)
/// child.kill(SIGKILL)
/// #expect(try await child.exit == .signaled(SIGKILL))
/// ```
public enum Spawn {
    /// A child that could not be started.
    public struct Failure: Error, CustomStringConvertible {
        /// What could not be done, and why.
        public var description: String
    }

    /// Where a child's standard input comes from.
    ///
    /// ```swift
    /// let child = try Spawn.start("/usr/bin/wc", ["-l"], stdin: .file("/etc/passwd"))
    /// ```
    public enum Input: Sendable, Hashable {
        /// `/dev/null`: the child reads end of file at once.
        case null
        /// A descriptor of this process (the caller keeps it open until the child has started).
        case descriptor(Int32)
        /// A file, opened for reading in the child.
        case file(String)
    }

    /// Where a child's standard output or standard error goes.
    ///
    /// ```swift
    /// let child = try Spawn.start(tool, [], stdout: .appending(to: "/tmp/tool.log"), stderr: .standardOutput)
    /// ```
    public enum Output: Sendable, Hashable {
        /// `/dev/null`.
        case null
        /// This process's own descriptor of the same number (the test's standard output or error).
        case inherit
        /// A descriptor of this process (the caller keeps it open until the child has started).
        case descriptor(Int32)
        /// A file, opened in the child to append (created when missing), so that no pipe can fill up
        /// and a restarted child adds to the same log.
        case appending(to: String)
        /// For standard error only: wherever standard output goes.
        case standardOutput
    }

    /// How a child ended.
    ///
    /// ```swift
    /// switch try await child.exit {
    /// case .exited(let status): print("exited with \(status)")
    /// case .signaled(let signal): print("killed by signal \(signal)")
    /// }
    /// ```
    public enum Exit: Sendable, Hashable, CustomStringConvertible {
        /// It exited with this status (0–255; -1 when its status was lost, which only happens
        /// if something else in this process reaped it).
        case exited(Int32)
        /// A signal ended it.
        case signaled(Int32)

        /// The shell's number for it: the exit status, or 128 + the signal.
        ///
        /// ```swift
        /// #expect(Spawn.Exit.signaled(SIGKILL).status == 137)
        /// ```
        public var status: Int32 {
            switch self {
            case .exited(let status): status
            case .signaled(let signal): 128 + signal
            }
        }

        /// The signal that ended it, nil when it exited.
        ///
        /// ```swift
        /// #expect(try await child.stop().signal == SIGKILL)
        /// ```
        public var signal: Int32? {
            if case .signaled(let signal) = self { signal } else { nil }
        }

        /// For messages: "exited with status 3", "killed by signal 9".
        ///
        /// ```swift
        /// Issue.record("the runner \(exit)")
        /// ```
        public var description: String {
            switch self {
            case .exited(let status): "exited with status \(status)"
            case .signaled(let signal): "killed by signal \(signal)"
            }
        }

        /// Decodes a status from `waitpid` (without `WUNTRACED`, so never a stopped child).
        init(waitStatus: Int32) {
            let signal = waitStatus & 0x7f
            self = signal == 0 ? .exited((waitStatus >> 8) & 0xff) : .signaled(signal)
        }
    }

    /// A started child: its pid, signals to it, whether it still runs, and how it ended.
    ///
    /// A thread of its own waits for the child and reaps it, and is the only place that does:
    /// it waits with `WNOWAIT` (the child stays a zombie, so its pid cannot be reused), then takes
    /// the lock, reaps it and records its ``Exit``. ``kill(_:)`` signals under the same lock, so a
    /// signal never reaches another process that got the pid later. ``isRunning`` and
    /// ``exitIfFinished`` read what the thread recorded; ``exit`` suspends until then.
    ///
    /// ```swift
    /// let child = try Spawn.start(server, ["--port", "8080"], stdout: .appending(to: log), stderr: .standardOutput)
    /// defer { child.kill(SIGKILL) }
    /// let exit = try await child.exit   // resumed by the waiter thread; no polling
    /// ```
    public final class Child: Sendable {
        /// The child's process ID (for messages and `/proc`; signal it with ``kill(_:)``, which
        /// never reaches a later process with the same ID).
        ///
        /// ```swift
        /// print("started \(child.pid)")
        /// ```
        public let pid: pid_t
        private let state = Mutex(State())

        private struct State {
            /// Set once, when the waiter thread has reaped the child.
            var exit: Exit?
            /// Tasks awaiting ``exit``, by an ID that their cancellation handler finds them by.
            var waiters: [UInt64: CheckedContinuation<Exit, any Error>] = [:]
            var nextWaiter: UInt64 = 0
        }

        fileprivate init(pid: pid_t) {
            self.pid = pid
        }

        /// True until the waiter thread has reaped the child, which it does as soon as the child
        /// has ended. Never blocks.
        ///
        /// ```swift
        /// if child.isRunning { child.kill(SIGTERM) }
        /// ```
        public var isRunning: Bool { self.state.withLock { $0.exit == nil } }

        /// How the child ended, or nil while it runs. Never blocks.
        ///
        /// ```swift
        /// if let exit = child.exitIfFinished, exit != .exited(0) { Issue.record("\(exit)") }
        /// ```
        public var exitIfFinished: Exit? { self.state.withLock { $0.exit } }

        /// Sends `signal` (`SIGKILL`, `SIGTERM`, `SIGINT`, …) to the child unless it has already
        /// been reaped, and says whether it was sent.
        ///
        /// ```swift
        /// child.kill(SIGTERM)
        /// ```
        @discardableResult
        public func kill(_ signal: Int32) -> Bool {
            // Under the lock: the waiter thread reaps under it too, so the pid is still this child's.
            self.state.withLock { state in
                guard state.exit == nil else { return false }
                return sendSignal(signal, to: self.pid) == 0
            }
        }

        /// How the child ended, once it has (at once if it already has). Suspends without holding
        /// a thread: the waiter thread resumes the caller.
        ///
        /// ```swift
        /// let exit = try await child.exit   // .exited(0), .signaled(SIGKILL), …
        /// ```
        ///
        /// - Throws: `CancellationError` when the awaiting task is cancelled (the child keeps running).
        public var exit: Exit {
            get async throws {
                let id = self.state.withLock { state in
                    defer { state.nextWaiter += 1 }
                    return state.nextWaiter
                }
                return try await withTaskCancellationHandler {
                    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Exit, any Error>) in
                        let now: Result<Exit, any Error>? = self.state.withLock { state in
                            if let exit = state.exit { return .success(exit) }
                            // The handler below may have run before the continuation was stored.
                            if Task.isCancelled { return .failure(CancellationError()) }
                            state.waiters[id] = continuation
                            return nil
                        }
                        if let now { continuation.resume(with: now) }
                    }
                } onCancel: {
                    self.state.withLock { $0.waiters.removeValue(forKey: id) }?.resume(throwing: CancellationError())
                }
            }
        }

        /// How the child ended, or nil when it still runs after `limit` (a deadline for a child
        /// that should finish by itself; it keeps running).
        ///
        /// ```swift
        /// guard let exit = try await child.exit(within: .seconds(90)) else {
        ///     Issue.record("the runner did not finish")
        ///     return
        /// }
        /// ```
        ///
        /// - Throws: `CancellationError` when the awaiting task is cancelled.
        public func exit(within limit: Duration) async throws -> Exit? {
            try await withThrowingTaskGroup(of: Exit?.self) { group in
                group.addTask { try await self.exit }
                group.addTask {
                    try await Task.sleep(for: limit)
                    return nil
                }
                defer { group.cancelAll() }
                return try await group.next() ?? nil
            }
        }

        /// Sends `signal` (unless the child has already ended) and returns how the child ended.
        ///
        /// ```swift
        /// let exit = try await child.stop()   // SIGKILL, then .signaled(SIGKILL) (or how it ended before)
        /// ```
        ///
        /// - Throws: `CancellationError` when the awaiting task is cancelled.
        @discardableResult
        public func stop(_ signal: Int32 = SIGKILL) async throws -> Exit {
            self.kill(signal)
            return try await self.exit
        }

        /// The waiter thread's body: waits until the child has ended, reaps it, records how it
        /// ended and resumes the tasks awaiting that.
        fileprivate func waitAndReap() {
            var info = siginfo_t()
            var waited: Int32
            repeat {
                waited = waitid(P_PID, id_t(self.pid), &info, WEXITED | WNOWAIT)
            } while waited == -1 && errno == EINTR
            let (exit, waiters) = self.state.withLock { state in
                var status: Int32 = 0
                var reaped: pid_t = -1
                if waited == 0 {
                    // A zombie now: WNOHANG returns at once, with its status.
                    repeat {
                        reaped = waitpid(self.pid, &status, WNOHANG)
                    } while reaped == -1 && errno == EINTR
                }
                let exit = reaped == self.pid ? Exit(waitStatus: status) : .exited(-1)
                state.exit = exit
                let waiters = Array(state.waiters.values)
                state.waiters = [:]
                return (exit, waiters)
            }
            for waiter in waiters { waiter.resume(returning: exit) }
        }
    }

    /// Starts `executable` (an absolute path) with `arguments` and returns at once.
    ///
    /// - Parameters:
    ///   - environment: The child's whole environment; nil passes this process's own.
    ///   - workingDirectory: Where the child starts (after its outputs are opened, so relative
    ///     output paths are this process's); nil keeps this process's.
    ///   - stdin: Its standard input, `/dev/null` by default.
    ///   - stdout: Its standard output, `/dev/null` by default.
    ///   - stderr: Its standard error, `/dev/null` by default.
    ///
    /// Signal dispositions and the signal mask start from the defaults, whatever this process
    /// set (NIO ignores SIGPIPE, service lifecycles ignore the signals they watch), and the child
    /// stays in this process's process group.
    ///
    /// ```swift
    /// var environment = ProcessInfo.processInfo.environment
    /// environment["AVIARY_CHILD"] = "1"
    /// let child = try Spawn.start(
    ///     "/usr/bin/env", ["python3", "worker.py"], environment: environment, workingDirectory: "/tmp",
    ///     stdout: .appending(to: "/tmp/worker.log"), stderr: .standardOutput)
    /// ```
    ///
    /// - Throws: ``Failure`` when the child cannot be started (no such program, a file that
    ///   cannot be opened, …).
    public static func start(
        _ executable: String, _ arguments: [String] = [], environment: [String: String]? = nil,
        workingDirectory: String? = nil, stdin: Input = .null, stdout: Output = .null, stderr: Output = .null
    ) throws -> Child {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        switch stdin {
        case .null: try Self.check(posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0), "stdin")
        case .descriptor(let descriptor):
            try Self.check(posix_spawn_file_actions_adddup2(&actions, descriptor, 0), "stdin")
        case .file(let path): try Self.check(posix_spawn_file_actions_addopen(&actions, 0, path, O_RDONLY, 0), "stdin")
        }
        try Self.add(stdout, as: 1, to: &actions)
        try Self.add(stderr, as: 2, to: &actions)
        if let workingDirectory {
            guard let addChangeDirectory = Self.addChangeDirectory else {
                throw Failure(description: "this glibc has no posix_spawn_file_actions_addchdir_np (2.29+)")
            }
            try Self.check(addChangeDirectory(&actions, workingDirectory), "the working directory")
        }
        guard let addCloseFrom = Self.addCloseFrom else {
            throw Failure(description: "this glibc has no posix_spawn_file_actions_addclosefrom_np (2.34+)")
        }
        try Self.check(addCloseFrom(&actions, 3), "closing inherited descriptors")

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let envp: [UnsafeMutablePointer<CChar>?]? = environment.map { environment in
            environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        }
        defer { for pointer in envp ?? [] { free(pointer) } }
        var pid: pid_t = 0
        let result =
            if let envp {
                posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
            } else {
                posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
            }
        guard result == 0 else {
            throw Failure(description: "cannot start \(executable): \(String(cString: strerror(result)))")
        }

        let child = Child(pid: pid)
        let waiter = Thread { child.waitAndReap() }
        waiter.name = "aviary.test.spawn-wait"
        waiter.start()
        return child
    }

    /// Runs `executable` with `arguments` and the given standard descriptors (this process's
    /// environment) and returns its exit status (128 + the signal when a signal ended it).
    ///
    /// ```swift
    /// let status = try await Spawn.run("/usr/bin/env", ["python3", "-V"], stdin: input, stdout: output, stderr: output)
    /// ```
    ///
    /// - Throws: ``Failure`` when it cannot start; `CancellationError` when the calling task is
    ///   cancelled (the child is then killed).
    static func run(
        _ executable: String, _ arguments: [String], stdin: Int32, stdout: Int32, stderr: Int32
    ) async throws -> Int32 {
        let child = try Self.start(
            executable, arguments, stdin: .descriptor(stdin), stdout: .descriptor(stdout),
            stderr: .descriptor(stderr))
        do {
            return try await child.exit.status
        } catch {
            child.kill(SIGKILL)
            throw error
        }
    }

    // MARK: File actions

    private static func add(
        _ output: Output, as descriptor: Int32, to actions: inout posix_spawn_file_actions_t
    ) throws {
        let name = descriptor == 1 ? "stdout" : "stderr"
        switch output {
        case .null:
            try Self.check(posix_spawn_file_actions_addopen(&actions, descriptor, "/dev/null", O_WRONLY, 0), name)
        case .inherit:
            break
        case .descriptor(let source):
            try Self.check(posix_spawn_file_actions_adddup2(&actions, source, descriptor), name)
        case .appending(let path):
            try Self.check(
                posix_spawn_file_actions_addopen(&actions, descriptor, path, O_WRONLY | O_CREAT | O_APPEND, 0o644),
                "\(name) to \(path)")
        case .standardOutput:
            guard descriptor == 2 else { throw Failure(description: "stdout cannot be .standardOutput") }
            try Self.check(posix_spawn_file_actions_adddup2(&actions, 1, 2), name)
        }
    }

    private static func check(_ result: Int32, _ what: String) throws {
        guard result == 0 else {
            throw Failure(description: "cannot arrange \(what) for a child: \(String(cString: strerror(result)))")
        }
    }

    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34+), which the Glibc module does not export.
    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private static let addCloseFrom: AddCloseFrom? = Self.glibcFunction(
        "posix_spawn_file_actions_addclosefrom_np", as: AddCloseFrom.self)

    /// glibc's `posix_spawn_file_actions_addchdir_np` (2.29+), which the Glibc module does not export.
    private typealias AddChangeDirectory =
        @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
    private static let addChangeDirectory: AddChangeDirectory? = Self.glibcFunction(
        "posix_spawn_file_actions_addchdir_np", as: AddChangeDirectory.self)

    private static func glibcFunction<Function>(_ name: String, as type: Function.Type) -> Function? {
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, name) else { return nil }
        return unsafeBitCast(symbol, to: type)
    }
}

/// `kill(2)`, out of reach by that name inside ``Spawn/Child``, whose method is called `kill`.
private func sendSignal(_ signal: Int32, to pid: pid_t) -> Int32 {
    kill(pid, signal)
}
