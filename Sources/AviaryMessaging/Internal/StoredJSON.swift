//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The JSON a log stores for an event and for headers, written without `JSONEncoder`.
///
/// `CloudEvent`'s `Encodable` conformance parses JSON `data` into a tree and writes it again (to
/// embed it as JSON rather than base64); with `JSONEncoder` around it that was nearly all of a
/// batched publish's CPU time (about 100 µs per message, scripts/bench-broker.sh). This writer
/// produces the same CloudEvents JSON format, which `CloudEvent`'s `Decodable` reads back to an
/// equal event, and embeds JSON `data` as it is once ``JSONCheck`` has found it to be JSON that
/// the decoder accepts. Anything else (data that is not such JSON) goes through the
/// `Encodable` conformance, as before, so the stored form of an unusual event is exactly what it was.
enum StoredJSON {
    /// The stored form of `event`.
    static func event(_ event: CloudEvent) throws -> String {
        var fields: [(name: String, json: String)] = [
            ("specversion", Self.string(CloudEvent.specVersion)), ("id", Self.string(event.id)),
            ("source", Self.string(event.source)), ("type", Self.string(event.type)),
        ]
        if let subject = event.subject { fields.append(("subject", Self.string(subject))) }
        if let time = event.time { fields.append(("time", Self.string(Self.time(time)))) }
        if let contentType = event.dataContentType { fields.append(("datacontenttype", Self.string(contentType))) }
        if let schema = event.dataSchema { fields.append(("dataschema", Self.string(schema))) }
        if let data = event.data {
            guard Self.isJSON(event.dataContentType), JSONCheck.isAcceptable(data) else {
                return try Self.slow(event)
            }
            fields.append(("data", String(decoding: data, as: UTF8.self)))
        }
        for (name, value) in event.extensions where !Self.reservedNames.contains(name) {
            fields.append((name, Self.string(value)))
        }
        fields.sort { $0.name < $1.name }
        var out = "{"
        out.reserveCapacity(256 + (event.data?.count ?? 0))
        for (index, field) in fields.enumerated() {
            if index > 0 { out += "," }
            out += Self.string(field.name)
            out += ":"
            out += field.json
        }
        out += "}"
        return out
    }

    /// The stored form of headers: a JSON object of strings, keys sorted.
    static func headers(_ headers: [String: String]) -> String {
        guard !headers.isEmpty else { return "{}" }
        var out = "{"
        for (index, name) in headers.keys.sorted().enumerated() {
            if index > 0 { out += "," }
            out += Self.string(name)
            out += ":"
            out += Self.string(headers[name] ?? "")
        }
        out += "}"
        return out
    }

    /// `CloudEvent`'s own encoding, for events the fast path does not take.
    static func slow(_ event: CloudEvent) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(event), as: UTF8.self)
    }

    /// Names the CloudEvents JSON format gives a meaning (never extensions).
    static let reservedNames: Set<String> = [
        "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data",
        "data_base64",
    ]

    /// Whether `contentType` is JSON (no content type means JSON, as in the CloudEvents spec).
    static func isJSON(_ contentType: String?) -> Bool {
        guard let contentType else { return true }
        if contentType == "application/json" { return true }
        let first = contentType.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let base = first.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed()
        let text = String(base)
        return text == "application/json" || text.hasSuffix("+json") || text == "text/json"
    }

    /// A JSON string literal.
    static func string(_ value: String) -> String {
        // Most values need no escaping: copy them whole.
        if !value.utf8.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5c }) { return "\"" + value + "\"" }
        var out = "\""
        out.unicodeScalars.reserveCapacity(value.utf8.count + 2)
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
        return out
    }

    /// RFC 3339 in UTC with milliseconds, as `CloudEvent` writes `time` (`2026-03-01T12:00:00.250Z`).
    static func time(_ date: Date) -> String {
        // Whole seconds first, then the fraction, as Foundation's ISO 8601 style does: scaling the
        // whole interval by 1000 first rounds up now and then (3107981069.64 → …640 where
        // Foundation writes …639; a property test found it).
        let interval = date.timeIntervalSince1970
        let whole = interval.rounded(.down)
        var seconds = time_t(whole)
        let millis = min(999, Int(((interval - whole) * 1000).rounded(.down)))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(millis), 3))Z"
    }
}

/// A strict check that bytes are one JSON value (RFC 8259, UTF-8) that `JSONDecoder` reads into
/// `CloudEvent`'s data: numbers that fit a finite `Double`, escapes with paired surrogates,
/// nesting no deeper than 256.
enum JSONCheck {
    static func isAcceptable(_ data: Data) -> Bool {
        data.withUnsafeBytes { raw in
            guard String(validating: raw.bindMemory(to: UInt8.self), as: UTF8.self) != nil else { return false }
            var scanner = Scanner(bytes: raw.bindMemory(to: UInt8.self))
            scanner.skipSpace()
            guard scanner.value(depth: 0) else { return false }
            scanner.skipSpace()
            return scanner.index == scanner.bytes.count
        }
    }

    struct Scanner {
        let bytes: UnsafeBufferPointer<UInt8>
        var index = 0

        init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

        var peek: UInt8? { self.index < self.bytes.count ? self.bytes[self.index] : nil }

        mutating func skipSpace() {
            while let byte = self.peek, byte == 0x20 || byte == 0x0a || byte == 0x0d || byte == 0x09 { self.index += 1 }
        }

        mutating func literal(_ text: StaticString) -> Bool {
            let count = text.utf8CodeUnitCount
            guard self.index + count <= self.bytes.count else { return false }
            for offset in 0..<count where self.bytes[self.index + offset] != text.utf8Start[offset] { return false }
            self.index += count
            return true
        }

        mutating func value(depth: Int) -> Bool {
            guard depth <= 256, let byte = self.peek else { return false }
            switch byte {
            case UInt8(ascii: "{"):
                self.index += 1
                self.skipSpace()
                if self.peek == UInt8(ascii: "}") {
                    self.index += 1
                    return true
                }
                while true {
                    guard self.peek == UInt8(ascii: "\""), self.string() else { return false }
                    self.skipSpace()
                    guard self.peek == UInt8(ascii: ":") else { return false }
                    self.index += 1
                    self.skipSpace()
                    guard self.value(depth: depth + 1) else { return false }
                    self.skipSpace()
                    guard let next = self.peek else { return false }
                    self.index += 1
                    if next == UInt8(ascii: "}") { return true }
                    guard next == UInt8(ascii: ",") else { return false }
                    self.skipSpace()
                }
            case UInt8(ascii: "["):
                self.index += 1
                self.skipSpace()
                if self.peek == UInt8(ascii: "]") {
                    self.index += 1
                    return true
                }
                while true {
                    guard self.value(depth: depth + 1) else { return false }
                    self.skipSpace()
                    guard let next = self.peek else { return false }
                    self.index += 1
                    if next == UInt8(ascii: "]") { return true }
                    guard next == UInt8(ascii: ",") else { return false }
                    self.skipSpace()
                }
            case UInt8(ascii: "\""): return self.string()
            case UInt8(ascii: "t"): return self.literal("true")
            case UInt8(ascii: "f"): return self.literal("false")
            case UInt8(ascii: "n"): return self.literal("null")
            default: return self.number()
            }
        }

        /// A string at `index` (which holds its opening quote).
        mutating func string() -> Bool {
            self.index += 1
            while let byte = self.peek {
                self.index += 1
                switch byte {
                case UInt8(ascii: "\""): return true
                case UInt8(ascii: "\\"):
                    guard let escape = self.peek else { return false }
                    self.index += 1
                    switch escape {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"),
                        UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                        continue
                    case UInt8(ascii: "u"):
                        guard let unit = self.hex4() else { return false }
                        if (0xDC00...0xDFFF).contains(unit) { return false }
                        if (0xD800...0xDBFF).contains(unit) {
                            guard self.literal("\\u"), let low = self.hex4(), (0xDC00...0xDFFF).contains(low) else {
                                return false
                            }
                        }
                    default: return false
                    }
                case 0..<0x20: return false
                default: continue
                }
            }
            return false
        }

        mutating func hex4() -> UInt32? {
            guard self.index + 4 <= self.bytes.count else { return nil }
            var value: UInt32 = 0
            for _ in 0..<4 {
                let byte = self.bytes[self.index]
                let digit: UInt8
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
                default: return nil
                }
                value = value * 16 + UInt32(digit)
                self.index += 1
            }
            return value
        }

        /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, finite as a `Double`.
        mutating func number() -> Bool {
            let start = self.index
            func digits(_ scanner: inout Scanner) -> Int {
                var count = 0
                while let byte = scanner.peek, byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") {
                    scanner.index += 1
                    count += 1
                }
                return count
            }
            if self.peek == UInt8(ascii: "-") { self.index += 1 }
            if self.peek == UInt8(ascii: "0") {
                self.index += 1
            } else {
                guard digits(&self) > 0 else { return false }
            }
            var simple = true
            if self.peek == UInt8(ascii: ".") {
                self.index += 1
                guard digits(&self) > 0 else { return false }
                simple = false
            }
            if let byte = self.peek, byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E") {
                self.index += 1
                if let sign = self.peek, sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") { self.index += 1 }
                guard digits(&self) > 0 else { return false }
                simple = false
            }
            // Short integers are always fine; anything else must be a finite Double.
            if simple && self.index - start <= 15 { return true }
            let text = String(decoding: UnsafeBufferPointer(rebasing: self.bytes[start..<self.index]), as: UTF8.self)
            guard let value = Double(text) else { return false }
            return value.isFinite
        }
    }
}
