//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Dispatch
import Foundation
import Logging

#if canImport(SwiftOverlayShims)
// Some builds resolve `timespec` to the runtime shims' declaration, whose members
// MemberImportVisibility hides unless that module is imported too (as in AviaryCore's Clock).
import SwiftOverlayShims
#endif

/// The JSON access log: one line per request, written off the event loops.
///
/// Each loop collects the lines of one loop iteration and hands them over as one batch; a serial
/// queue writes batches in order, so an event loop never blocks on a slow disk or a full pipe.
final class AccessLog: Sendable {
    /// `stdout`, `stderr` or a path, as configured.
    let destination: String
    private let handle: FileHandle?
    private let queue = DispatchQueue(label: "aviary.gateway.access-log")

    init(destination: String, logger: Logger) {
        self.destination = destination
        switch destination {
        case "stdout": self.handle = FileHandle.standardOutput
        case "stderr": self.handle = FileHandle.standardError
        default:
            if !FileManager.default.fileExists(atPath: destination) {
                _ = FileManager.default.createFile(atPath: destination, contents: nil)
            }
            let handle = FileHandle(forWritingAtPath: destination)
            if let handle {
                _ = try? handle.seekToEnd()
            } else {
                logger.error("cannot open the access log", metadata: ["file.path": "\(destination)"])
            }
            self.handle = handle
        }
    }

    /// Writes a batch of lines (each ending in a line feed).
    func write(_ bytes: [UInt8]) {
        guard let handle = self.handle else { return }
        self.queue.async {
            try? handle.write(contentsOf: bytes)
        }
    }

    /// Returns once every batch handed over so far is written (tests, shutdown).
    func flush() {
        self.queue.sync {}
    }
}

/// One access log line as JSON, built without Foundation's encoder.
struct AccessLogLine {
    private(set) var bytes: [UInt8] = []
    private var first = true

    init() {
        self.bytes.reserveCapacity(320)
        self.bytes.append(UInt8(ascii: "{"))
    }

    mutating func field(_ name: StaticString, _ value: String) {
        self.key(name)
        Self.appendQuoted(value, to: &self.bytes)
    }

    mutating func field(_ name: StaticString, _ value: Int) {
        self.key(name)
        self.bytes.append(contentsOf: String(value).utf8)
    }

    mutating func field(_ name: StaticString, milliseconds nanoseconds: Int64) {
        self.key(name)
        let micros = nanoseconds / 1000
        let fraction = micros % 1000
        var text = String(micros / 1000) + "."
        if fraction < 100 { text += fraction < 10 ? "00" : "0" }
        text += String(fraction)
        self.bytes.append(contentsOf: text.utf8)
    }

    private mutating func key(_ name: StaticString) {
        if !self.first { self.bytes.append(UInt8(ascii: ",")) }
        self.first = false
        self.bytes.append(UInt8(ascii: "\""))
        name.withUTF8Buffer { self.bytes.append(contentsOf: $0) }
        self.bytes.append(contentsOf: "\":".utf8)
    }

    mutating func finish() -> [UInt8] {
        self.bytes.append(contentsOf: "}\n".utf8)
        return self.bytes
    }

    static func appendQuoted(_ text: String, to bytes: inout [UInt8]) {
        bytes.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: "\\\"".utf8)
            case UInt8(ascii: "\\"): bytes.append(contentsOf: "\\\\".utf8)
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: "\\u00".utf8)
                bytes.append(hex[Int(byte >> 4)])
                bytes.append(hex[Int(byte & 0xF)])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// The current time as RFC 3339 UTC with milliseconds: `2026-11-29T23:05:01.123Z`.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let millis = Int(now.tv_nsec / 1_000_000)
        let fraction = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return
            "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(fraction)Z"
    }
}
