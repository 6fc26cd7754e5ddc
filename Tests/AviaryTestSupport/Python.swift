//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation

/// Runs Python scripts for tests that check our output with libraries we did not write
/// (PyJWT, prometheus_client), installed by `.ci/run`.
public enum Python {
    /// A script that exited with a non-zero status.
    public struct Failure: Error, CustomStringConvertible {
        /// What the script is, for the message.
        public var what: String
        /// Its exit status.
        public var status: Int32
        /// What it wrote on stderr.
        public var stderr: String

        public var description: String { "python3 (\(self.what)) exited \(self.status): \(self.stderr)" }
    }

    /// Runs `python3 -c script` with `stdin` as its standard input and returns its standard output.
    ///
    /// Input and outputs go through temporary files, so no pipe can fill up, and the exit is
    /// awaited on a thread of its own (``Spawn``), so no thread of the test pool blocks.
    ///
    /// ```swift
    /// let out = try await Python.run("import sys; print(sys.stdin.read().upper())", stdin: Data("hi".utf8), what: "upper")
    /// ```
    ///
    /// - Throws: ``Failure`` when the script exits with a non-zero status.
    public static func run(_ script: String, stdin: Data, what: String) async throws -> Data {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("aviary-python-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let inputURL = directory.appendingPathComponent("stdin")
        let outputURL = directory.appendingPathComponent("stdout")
        let errorURL = directory.appendingPathComponent("stderr")
        try stdin.write(to: inputURL)
        try Data().write(to: outputURL)
        try Data().write(to: errorURL)

        let input = try FileHandle(forReadingFrom: inputURL)
        let output = try FileHandle(forWritingTo: outputURL)
        let error = try FileHandle(forWritingTo: errorURL)
        defer {
            try? input.close()
            try? output.close()
            try? error.close()
        }
        let status = try await Spawn.run(
            "/usr/bin/env", ["python3", "-c", script], stdin: input.fileDescriptor, stdout: output.fileDescriptor,
            stderr: error.fileDescriptor)
        guard status == 0 else {
            throw Failure(
                what: what, status: status, stderr: String(decoding: try Data(contentsOf: errorURL), as: UTF8.self))
        }
        return try Data(contentsOf: outputURL)
    }
}
