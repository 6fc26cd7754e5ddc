//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where formatted log lines go: standard output by default, a test's buffer in tests.
///
/// A sink receives **one whole line at a time**, newline included, so a line is never split
/// between two writes. The file-descriptor sinks also serialise their writes behind one
/// process-wide lock, so lines from concurrent loggers never interleave, however long they are.
///
/// ```swift
/// let lines = Mutex<[String]>([])
/// let sink = LogSink { bytes in
///     lines.withLock { $0.append(String(decoding: bytes, as: UTF8.self)) }
/// }
/// let handler = JSONLogHandler(label: "aviary.test", service: "orders", sink: sink)
/// ```
public struct LogSink: Sendable {
    /// Writes one line (its bytes end with `\n`).
    public let write: @Sendable (_ line: [UInt8]) -> Void

    /// Whether the sink is a terminal, which makes ``LogFormat/automatic`` pick the console format.
    public let isTerminal: Bool

    /// Creates a sink from a closure that receives every line, newline included.
    ///
    /// ```swift
    /// let sink = LogSink { bytes in FileHandle.standardError.write(Data(bytes)) }
    /// ```
    ///
    /// - Parameters:
    ///   - isTerminal: report the sink as a terminal (used by ``LogFormat/automatic``).
    ///   - write: called once per line, possibly from many threads at once.
    public init(isTerminal: Bool = false, write: @escaping @Sendable (_ line: [UInt8]) -> Void) {
        self.isTerminal = isTerminal
        self.write = write
    }

    /// A sink that writes to a file descriptor with `write(2)`, one call per line (retried on a
    /// partial write or `EINTR`), under a process-wide lock.
    ///
    /// ```swift
    /// let sink = LogSink.fileDescriptor(STDERR_FILENO)
    /// ```
    ///
    /// - Parameter descriptor: an open descriptor the sink does not own and never closes.
    public static func fileDescriptor(_ descriptor: Int32) -> LogSink {
        LogSink(isTerminal: isatty(descriptor) != 0) { line in
            FileDescriptorWriter.shared.write(line, to: descriptor)
        }
    }

    /// Standard output, the default sink (twelve-factor: logs are an event stream on stdout).
    ///
    /// ```swift
    /// let handler = JSONLogHandler(label: "aviary.orders", service: "orders", sink: .standardOutput)
    /// ```
    public static var standardOutput: LogSink { .fileDescriptor(STDOUT_FILENO) }

    /// Standard error.
    ///
    /// ```swift
    /// let handler = ConsoleLogHandler(label: "aviary.cli", sink: .standardError)
    /// ```
    public static var standardError: LogSink { .fileDescriptor(STDERR_FILENO) }
}

/// Serialises `write(2)` calls so that a line longer than `PIPE_BUF` (which the kernel may split)
/// is still never interleaved with another thread's line in this process.
final class FileDescriptorWriter: Sendable {
    static let shared = FileDescriptorWriter()

    private let lock = Mutex<Void>(())

    func write(_ bytes: [UInt8], to descriptor: Int32) {
        self.lock.withLock { _ in
            bytes.withUnsafeBytes { buffer in
                var offset = 0
                while offset < buffer.count {
                    // `baseAddress` is non-nil: the buffer is non-empty inside this loop.
                    let start = buffer.baseAddress! + offset
                    #if canImport(Darwin)
                    let written = Darwin.write(descriptor, start, buffer.count - offset)
                    #elseif canImport(Glibc)
                    let written = Glibc.write(descriptor, start, buffer.count - offset)
                    #else
                    let written = Musl.write(descriptor, start, buffer.count - offset)
                    #endif
                    if written > 0 {
                        offset += written
                    } else if written < 0 && errno == EINTR {
                        continue
                    } else {
                        return  // a closed or full descriptor drops the line; logging must not crash
                    }
                }
            }
        }
    }
}
