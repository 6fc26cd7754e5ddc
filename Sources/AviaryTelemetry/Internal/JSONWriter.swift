//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Logging

/// Appends JSON to a byte buffer without building an intermediate object graph: log lines are on
/// every request's path, so `JSONSerialization` (boxing, key sorting) is not used here.
struct JSONWriter {
    var bytes: [UInt8]
    private var needsComma = false

    init(capacity: Int = 256) {
        self.bytes = []
        self.bytes.reserveCapacity(capacity)
    }

    mutating func beginObject() {
        self.bytes.append(UInt8(ascii: "{"))
        self.needsComma = false
    }

    mutating func endObject() {
        self.bytes.append(UInt8(ascii: "}"))
        self.needsComma = true
    }

    mutating func beginArray() {
        self.bytes.append(UInt8(ascii: "["))
        self.needsComma = false
    }

    mutating func endArray() {
        self.bytes.append(UInt8(ascii: "]"))
        self.needsComma = true
    }

    /// Writes `"key":` (with a leading comma when needed); the value follows.
    mutating func key(_ key: String) {
        self.separate()
        self.appendEscaped(key)
        self.bytes.append(UInt8(ascii: ":"))
        self.needsComma = false
    }

    /// Records that a value was appended to `bytes` directly.
    mutating func markValueWritten() {
        self.needsComma = true
    }

    mutating func string(_ value: String) {
        self.separate()
        self.appendEscaped(value)
        self.needsComma = true
    }

    /// Writes a `"key":"value"` member.
    mutating func member(_ key: String, _ value: String) {
        self.key(key)
        self.string(value)
    }

    /// Writes swift-log metadata: strings and string-convertibles as strings, arrays and
    /// dictionaries as nested JSON (dictionary keys sorted, so output is deterministic).
    mutating func metadataValue(_ value: Logger.MetadataValue) {
        switch value {
        case .string(let string):
            self.string(string)
        case .stringConvertible(let convertible):
            self.string(convertible.description)
        case .array(let values):
            self.separate()
            self.beginArray()
            for element in values {
                self.metadataValue(element)
            }
            self.endArray()
        case .dictionary(let dictionary):
            self.separate()
            self.metadataObject(dictionary)
        }
    }

    /// Writes a metadata dictionary as a JSON object with sorted keys.
    mutating func metadataObject(_ metadata: Logger.Metadata) {
        self.beginObject()
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            self.key(key)
            self.metadataValue(value)
        }
        self.endObject()
    }

    /// Writes entries already in key order, leaving out `skipping` keys.
    mutating func metadataObject(_ entries: [(key: String, value: Logger.MetadataValue)], skipping: (String, String)) {
        self.beginObject()
        for (key, value) in entries where key != skipping.0 && key != skipping.1 {
            self.key(key)
            self.metadataValue(value)
        }
        self.endObject()
    }

    private mutating func separate() {
        if self.needsComma {
            self.bytes.append(UInt8(ascii: ","))
        }
    }

    /// RFC 8259 string: `"` and `\` escaped, control characters as `\n`, `\t`, ... or `\u00XX`;
    /// everything else (non-ASCII included) as its UTF-8 bytes, which JSON allows.
    ///
    /// Runs of bytes that need no escape are copied in bulk (this was 30% of a log line's cost
    /// when appended byte by byte).
    private mutating func appendEscaped(_ string: String) {
        self.bytes.append(UInt8(ascii: "\""))
        var string = string
        string.withUTF8 { utf8 in
            var runStart = 0
            for index in utf8.indices {
                let byte = utf8[index]
                guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
                self.bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<index]))
                runStart = index + 1
                self.appendEscape(for: byte)
            }
            self.bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart...]))
        }
        self.bytes.append(UInt8(ascii: "\""))
    }

    private mutating func appendEscape(for byte: UInt8) {
        self.bytes.append(UInt8(ascii: "\\"))
        switch byte {
        case UInt8(ascii: "\""): self.bytes.append(UInt8(ascii: "\""))
        case UInt8(ascii: "\\"): self.bytes.append(UInt8(ascii: "\\"))
        case UInt8(ascii: "\n"): self.bytes.append(UInt8(ascii: "n"))
        case UInt8(ascii: "\r"): self.bytes.append(UInt8(ascii: "r"))
        case UInt8(ascii: "\t"): self.bytes.append(UInt8(ascii: "t"))
        case 0x08: self.bytes.append(UInt8(ascii: "b"))
        case 0x0C: self.bytes.append(UInt8(ascii: "f"))
        default:
            self.bytes.append(contentsOf: "u00".utf8)
            self.bytes.append(Self.hexDigits[Int(byte >> 4)])
            self.bytes.append(Self.hexDigits[Int(byte & 0x0F)])
        }
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)
}
