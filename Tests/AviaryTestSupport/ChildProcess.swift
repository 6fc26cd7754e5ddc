//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Foundation

/// Runs a program to its end without blocking a thread of the test pool.
///
/// Tests that ran a child with `readDataToEndOfFile` and `waitUntilExit` held one of the two
/// cooperative threads of this machine for the child's whole life (and could deadlock when the
/// child filled its other pipe); with several such tests at once the whole test process stalled.
/// Here outputs go to temporary files, so no pipe can fill up, and the exit is awaited on a
/// thread of its own (``Spawn``, which also avoids a crash of Foundation's `Process.run`).
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
    public static var aviary: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("aviary")
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
        try Data().write(to: outputURL)
        try Data().write(to: errorURL)
        let output = try FileHandle(forWritingTo: outputURL)
        let error = try FileHandle(forWritingTo: errorURL)
        defer {
            try? output.close()
            try? error.close()
        }

        let input = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/null"))
        defer { try? input.close() }
        var command = executable.path
        var commandArguments = arguments
        if let environment {
            command = "/usr/bin/env"
            commandArguments = ["-i"] + environment.map { "\($0)=\($1)" } + [executable.path] + arguments
        }
        let status = try await Spawn.run(
            command, commandArguments, stdin: input.fileDescriptor, stdout: output.fileDescriptor,
            stderr: error.fileDescriptor)
        return Outcome(
            status: status,
            standardOutput: String(decoding: try Data(contentsOf: outputURL), as: UTF8.self),
            standardError: String(decoding: try Data(contentsOf: errorURL), as: UTF8.self))
    }
}
