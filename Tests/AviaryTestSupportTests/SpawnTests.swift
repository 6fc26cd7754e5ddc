//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// ``Spawn``: children started with `posix_spawn`, reaped by a thread of their own, signalled
/// and awaited from tests.
@Suite("Spawn", .timeLimit(.minutes(1)))
struct SpawnTests {
    /// A fresh folder, removed by the caller.
    static func makeDirectory() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aviary-spawn-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    static func contents(_ url: URL) throws -> String {
        String(decoding: try Data(contentsOf: url), as: UTF8.self)
    }

    @Test("an exit status is reported as exited, and the handle stops running")
    func exitStatus() async throws {
        let child = try Spawn.start("/bin/sh", ["-c", "exit 3"])
        let exit = try await child.exit
        #expect(exit == .exited(3))
        #expect(exit.status == 3)
        #expect(exit.signal == nil)
        #expect(!child.isRunning)
        #expect(child.exitIfFinished == .exited(3))
        #expect(child.pid > 0)
        // Awaiting again answers at once, with the same exit.
        #expect(try await child.exit == .exited(3))
    }

    @Test("kill sends the signal while the child runs, exit says which signal ended it, later kills are refused")
    func killedBySignal() async throws {
        for signal in [SIGTERM, SIGINT, SIGKILL] {
            let child = try Spawn.start("/usr/bin/sleep", ["60"])
            #expect(child.isRunning)
            #expect(child.exitIfFinished == nil)
            #expect(child.kill(signal))
            let exit = try await child.exit
            #expect(exit == .signaled(signal))
            #expect(exit.signal == signal)
            #expect(exit.status == 128 + signal)
            #expect(!child.isRunning)
            // Reaped: its pid may belong to another process by now, so nothing is sent.
            #expect(!child.kill(SIGKILL))
        }
    }

    @Test("stop kills and returns how the child ended; a finished child keeps its own exit")
    func stop() async throws {
        let sleeper = try Spawn.start("/usr/bin/sleep", ["60"])
        #expect(try await sleeper.stop() == .signaled(SIGKILL))
        let finished = try Spawn.start("/bin/true")
        _ = try await finished.exit
        #expect(try await finished.stop() == .exited(0))
    }

    @Test("exit(within:) returns nil for a child still running at the deadline, and its exit when it ends in time")
    func exitWithin() async throws {
        let sleeper = try Spawn.start("/usr/bin/sleep", ["60"])
        defer { sleeper.kill(SIGKILL) }
        #expect(try await sleeper.exit(within: .milliseconds(50)) == nil)
        #expect(sleeper.isRunning, "the deadline leaves the child running")
        let quick = try Spawn.start("/bin/sh", ["-c", "exit 4"])
        #expect(try await quick.exit(within: .seconds(50)) == .exited(4))
        sleeper.kill(SIGTERM)
        #expect(try await sleeper.exit(within: .seconds(50)) == .signaled(SIGTERM))
    }

    @Test("every task awaiting the same child is resumed, more of them than the pool has threads")
    func manyAwaiters() async throws {
        // Children that block reading a pipe until its write end closes. Spawn closes every
        // descriptor beyond 0–2 in its children, so none of them keeps the write end open;
        // close-on-exec keeps it from other programs this process starts meanwhile.
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        let children: [Spawn.Child]
        do {
            defer { close(fds[0]) }
            children = try (0..<6).map { _ in try Spawn.start("/usr/bin/cat", stdin: .descriptor(fds[0])) }
        } catch {
            close(fds[1])
            throw error
        }
        try await withThrowingTaskGroup(of: Spawn.Exit.self) { group in
            for child in children {
                group.addTask { try await child.exit }
                group.addTask { try await child.exit }
            }
            #expect(children.allSatisfy { $0.isRunning })
            close(fds[1])
            var exits: [Spawn.Exit] = []
            for try await exit in group { exits.append(exit) }
            #expect(exits == Array(repeating: .exited(0), count: 12))
        }
    }

    @Test("a cancelled wait throws CancellationError and leaves the child running")
    func cancelledWait() async throws {
        let child = try Spawn.start("/usr/bin/sleep", ["60"])
        defer { child.kill(SIGKILL) }
        let waiting = Task { try await child.exit }
        waiting.cancel()
        await #expect(throws: CancellationError.self) { try await waiting.value }
        #expect(child.isRunning)
        #expect(try await child.stop() == .signaled(SIGKILL))
    }

    @Test("a program that does not exist is a Failure, not a child")
    func missingProgram() {
        #expect(throws: Spawn.Failure.self) { try Spawn.start("/nonexistent/aviary-spawn-test") }
    }

    @Test("stdout and stderr append to one log, across restarts, in order")
    func appendingLog() async throws {
        let directory = try Self.makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let log = directory.appendingPathComponent("child.log")
        for run in 1...2 {
            let child = try Spawn.start(
                "/bin/sh", ["-c", "echo out \(run); echo err \(run) >&2"], stdout: .appending(to: log.path),
                stderr: .standardOutput)
            #expect(try await child.exit == .exited(0))
        }
        #expect(try Self.contents(log) == "out 1\nerr 1\nout 2\nerr 2\n")
    }

    @Test("stdout and stderr to files of their own, stdin from a file")
    func separateFiles() async throws {
        let directory = try Self.makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let input = directory.appendingPathComponent("in")
        try Data("line one\nline two\n".utf8).write(to: input)
        let output = directory.appendingPathComponent("out")
        let error = directory.appendingPathComponent("err")
        let child = try Spawn.start(
            "/bin/sh", ["-c", "cat; echo done >&2"], stdin: .file(input.path), stdout: .appending(to: output.path),
            stderr: .appending(to: error.path))
        #expect(try await child.exit == .exited(0))
        #expect(try Self.contents(output) == "line one\nline two\n")
        #expect(try Self.contents(error) == "done\n")
    }

    @Test("an explicit environment replaces this process's; nil passes it on")
    func environment() async throws {
        let directory = try Self.makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let explicit = directory.appendingPathComponent("explicit")
        let child = try Spawn.start(
            "/usr/bin/env", environment: ["B": "two words", "A": "1"], stdout: .appending(to: explicit.path))
        #expect(try await child.exit == .exited(0))
        #expect(try Self.contents(explicit) == "A=1\nB=two words\n")

        let inherited = directory.appendingPathComponent("inherited")
        let path = try #require(ProcessInfo.processInfo.environment["PATH"])
        let second = try Spawn.start("/usr/bin/env", stdout: .appending(to: inherited.path))
        #expect(try await second.exit == .exited(0))
        #expect(try Self.contents(inherited).split(separator: "\n").contains("PATH=\(path)"))
    }

    @Test("a working directory applies to the child only, after its outputs are opened")
    func workingDirectory() async throws {
        let directory = try Self.makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let log = directory.appendingPathComponent("pwd")
        let child = try Spawn.start(
            "/usr/bin/pwd", ["-P"], workingDirectory: "/usr/bin", stdout: .appending(to: log.path))
        #expect(try await child.exit == .exited(0))
        #expect(try Self.contents(log) == "/usr/bin\n")
        #expect(FileManager.default.currentDirectoryPath != "/usr/bin")
        #expect(throws: Spawn.Failure.self) { try Spawn.start("/usr/bin/pwd", workingDirectory: "/nonexistent") }
    }

    @Test("the child inherits no descriptor beyond 0–2")
    func descriptorsClosed() async throws {
        let directory = try Self.makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        // A descriptor without FD_CLOEXEC, which exec alone would pass on.
        let descriptor = open("/dev/null", O_RDONLY)
        try #require(descriptor >= 3)
        defer { close(descriptor) }
        let log = directory.appendingPathComponent("fd")
        let child = try Spawn.start(
            "/bin/sh", ["-c", "if [ -e /proc/$$/fd/\(descriptor) ]; then echo inherited; else echo closed; fi"],
            stdout: .appending(to: log.path))
        #expect(try await child.exit == .exited(0))
        #expect(try Self.contents(log) == "closed\n")
    }

    @Test("the child starts with no signal blocked and no standard signal ignored")
    func signalsReset() async throws {
        let directory = try Self.makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        // NIO ignores SIGPIPE in this process anyway; the child must start with the default.
        signal(SIGPIPE, SIG_IGN)
        let log = directory.appendingPathComponent("status")
        // grep reads its own status (through a shell, the shell's mask would show it waiting).
        let child = try Spawn.start(
            "/usr/bin/grep", ["-E", "^Sig(Blk|Ign):", "/proc/self/status"], stdout: .appending(to: log.path))
        #expect(try await child.exit == .exited(0))
        let masks = Dictionary(
            uniqueKeysWithValues: try Self.contents(log).split(separator: "\n").map { line in
                let parts = line.split(separator: ":")
                return (String(parts[0]), UInt64(parts[1].trimmingCharacters(in: .whitespaces), radix: 16) ?? .max)
            })
        #expect(masks["SigBlk"] == 0)
        // Signals 1–31 must all have their default action. From 32 up they are real-time signals
        // and glibc's own (thread cancellation, setxid), which its posix_spawn leaves ignored.
        #expect(masks["SigIgn"].map { $0 & 0x7fff_ffff } == 0)
    }

    @Test(".standardOutput is for stderr only")
    func standardOutputForStdout() {
        #expect(throws: Spawn.Failure.self) { try Spawn.start("/bin/true", stdout: .standardOutput) }
    }
}
