//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Runs a program to its end without blocking a thread of the test pool.
///
/// Tests that ran a child with `readDataToEndOfFile` and `waitUntilExit` held one of the two
/// cooperative threads of this machine for the child's whole life (and could deadlock when the
/// child filled its other pipe); with several such tests at once the whole test process stalled.
/// Here outputs go to temporary files, so no pipe can fill up, and the exit is awaited on a
/// thread of its own (``Spawn``, which also avoids a crash of Foundation's `Process.run`). For a
/// child that runs alongside the test (a server, a process to kill), use ``Spawn/start(_:_:environment:workingDirectory:stdin:stdout:stderr:)``.
///
/// ```swift
/// let outcome = try await ChildProcess.run(ChildProcess.aviary, ["broker", "topics", "--url", url])
/// #expect(outcome.status == 0)
/// print(outcome.standardOutput)
/// ```
public enum ChildProcess {
    /// What a finished child left.
    public struct Outcome: Sendable {
        /// Its exit status (or the signal that ended it).
        public var status: Int32
        /// Everything it wrote to standard output.
        public var standardOutput: String
        /// Everything it wrote to standard error.
        public var standardError: String
    }

    /// The `aviary` executable that `swift build --build-tests` puts next to the test bundle.
    public static var aviary: URL { Self.builtExecutable("aviary") }

    /// An executable of this package that `swift build --build-tests` puts next to the test
    /// bundle (`aviary`, the fault-test children such as `aviary-shop-fault`).
    ///
    /// ```swift
    /// let child = try Spawn.start(ChildProcess.builtExecutable("aviary-workflows-fault").path, ["run"])
    /// ```
    public static func builtExecutable(_ name: String) -> URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name)
    }

    /// Runs `executable` with `arguments` (and `environment`, the test's own by default), standard
    /// input empty, and returns when it has exited.
    public static func run(
        _ executable: URL, _ arguments: [String], environment: [String: String]? = nil
    ) async throws -> Outcome {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("aviary-child-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let outputURL = directory.appendingPathComponent("stdout")
        let errorURL = directory.appendingPathComponent("stderr")
        let child = try Spawn.start(
            executable.path, arguments, environment: environment, stdout: .appending(to: outputURL.path),
            stderr: .appending(to: errorURL.path))
        let status: Int32
        do {
            status = try await child.exit.status
        } catch {
            // Cancelled: no child outlives its test.
            child.kill(SIGKILL)
            throw error
        }
        return Outcome(
            status: status,
            standardOutput: String(decoding: try Data(contentsOf: outputURL), as: UTF8.self),
            standardError: String(decoding: try Data(contentsOf: errorURL), as: UTF8.self))
    }
}
