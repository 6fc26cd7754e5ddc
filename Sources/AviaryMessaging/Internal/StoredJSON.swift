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
    /// The stored form of `event`: its attributes, `data` and extensions in name order.
    static func event(_ event: CloudEvent) throws -> String {
        if let data = event.data {
            guard Self.isJSON(event.dataContentType), JSONCheck.isAcceptable(data) else {
                return try Self.slow(event)
            }
        }
        let extensions =
            event.extensions.isEmpty
            ? [] : event.extensions.filter { !Self.reservedNames.contains($0.key) }.sorted { $0.key < $1.key }
        var out = JSONWriter(capacity: 256 + (event.data?.count ?? 0))
        var next = 0
        // Writes the extensions that sort before `name` (all that are left when nil).
        func writeExtensions(before name: String?) {
            while next < extensions.count, name.map({ extensions[next].key < $0 }) ?? true {
                out.key(extensions[next].key)
                out.string(extensions[next].value)
                next += 1
            }
        }
        // A string attribute (when present), after the extensions that sort before it.
        func attribute(_ name: String, _ value: String?) {
            guard let value else { return }
            writeExtensions(before: name)
            out.key(name)
            out.string(value)
        }
        // The CloudEvents attributes in name order: data, datacontenttype, dataschema, id, source,
        // specversion, subject, time, type.
        out.open()
        if let data = event.data {
            writeExtensions(before: "data")
            out.key("data")
            out.raw(data)
        }
        attribute("datacontenttype", event.dataContentType)
        attribute("dataschema", event.dataSchema)
        attribute("id", event.id)
        attribute("source", event.source)
        attribute("specversion", CloudEvent.specVersion)
        attribute("subject", event.subject)
        if let time = event.time {
            writeExtensions(before: "time")
            out.key("time")
            out.time(time)
        }
        attribute("type", event.type)
        writeExtensions(before: nil)
        out.close()
        return out.text
    }

    /// The stored form of headers: a JSON object of strings, keys sorted.
    static func headers(_ headers: [String: String]) -> String {
        guard !headers.isEmpty else { return "{}" }
        var out = JSONWriter(capacity: 64 * headers.count)
        out.open()
        for name in headers.keys.sorted() {
            out.key(name)
            out.string(headers[name] ?? "")
        }
        out.close()
        return out.text
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

}

/// UTF-8 bytes of a JSON object being written, for ``StoredJSON``.
///
/// Written by hand rather than with `JSONEncoder` or string concatenation: appending each piece
/// to one byte buffer (one allocation per message, escapes found in the same pass that copies)
/// halved the encoding's share of a batched SQLite publish in a profile, where Swift `String`
/// appends of the pieces were most of it.
struct JSONWriter {
    private var bytes: [UInt8] = []
    private var fields = 0
    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    init(capacity: Int) {
        self.bytes.reserveCapacity(capacity)
    }

    /// The text written.
    var text: String { String(decoding: self.bytes, as: UTF8.self) }

    mutating func open() {
        self.bytes.append(UInt8(ascii: "{"))
        self.fields = 0
    }

    mutating func close() {
        self.bytes.append(UInt8(ascii: "}"))
    }

    /// A member's name and the colon, after a comma when it is not the first.
    mutating func key(_ name: String) {
        if self.fields > 0 { self.bytes.append(UInt8(ascii: ",")) }
        self.fields += 1
        self.string(name)
        self.bytes.append(UInt8(ascii: ":"))
    }

    /// Bytes that are already JSON.
    mutating func raw(_ data: Data) {
        self.bytes.append(contentsOf: data)
    }

    /// `value` as a JSON string literal: `"` and `\` escaped, `\n`, `\r`, `\t`, other control
    /// characters as `\u00XX`; everything else (non-ASCII included) as it is.
    mutating func string(_ value: String) {
        self.bytes.append(UInt8(ascii: "\""))
        var value = value
        value.withUTF8 { utf8 in
            var copied = 0
            for (index, byte) in utf8.enumerated() where byte < 0x20 || byte == 0x22 || byte == 0x5c {
                self.bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[copied..<index]))
                copied = index + 1
                self.bytes.append(UInt8(ascii: "\\"))
                switch byte {
                case 0x22: self.bytes.append(UInt8(ascii: "\""))
                case 0x5c: self.bytes.append(UInt8(ascii: "\\"))
                case 0x0a: self.bytes.append(UInt8(ascii: "n"))
                case 0x0d: self.bytes.append(UInt8(ascii: "r"))
                case 0x09: self.bytes.append(UInt8(ascii: "t"))
                default:
                    let hex = Self.hexDigits
                    self.bytes.append(contentsOf: [
                        UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)],
                        hex[Int(byte & 0xf)],
                    ])
                }
            }
            self.bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[copied...]))
        }
        self.bytes.append(UInt8(ascii: "\""))
    }

    /// `date` as a JSON string in RFC 3339, UTC, with milliseconds, as `CloudEvent` writes `time`:
    /// whole seconds first, then the fraction, as Foundation's ISO 8601 style does (scaling the
    /// whole interval by 1000 first rounds up now and then: 3107981069.64 → …640 where Foundation
    /// writes …639; a property test found it).
    mutating func time(_ date: Date) {
        let interval = date.timeIntervalSince1970
        let whole = interval.rounded(.down)
        var seconds = time_t(whole)
        let millis = min(999, Int(((interval - whole) * 1000).rounded(.down)))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        self.bytes.append(UInt8(ascii: "\""))
        self.digits(Int(parts.tm_year) + 1900, 4)
        self.bytes.append(UInt8(ascii: "-"))
        self.digits(Int(parts.tm_mon) + 1, 2)
        self.bytes.append(UInt8(ascii: "-"))
        self.digits(Int(parts.tm_mday), 2)
        self.bytes.append(UInt8(ascii: "T"))
        self.digits(Int(parts.tm_hour), 2)
        self.bytes.append(UInt8(ascii: ":"))
        self.digits(Int(parts.tm_min), 2)
        self.bytes.append(UInt8(ascii: ":"))
        self.digits(Int(parts.tm_sec), 2)
        self.bytes.append(UInt8(ascii: "."))
        self.digits(millis, 3)
        self.bytes.append(UInt8(ascii: "Z"))
        self.bytes.append(UInt8(ascii: "\""))
    }

    /// `value` in decimal, padded with zeros to `width` digits (more when it needs them).
    private mutating func digits(_ value: Int, _ width: Int) {
        let text = String(value)
        if text.utf8.count < width {
            self.bytes.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: width - text.utf8.count))
        }
        self.bytes.append(contentsOf: text.utf8)
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
