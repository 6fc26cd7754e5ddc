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
        var out = JSONWriter(capacity: 256 + (event.data?.count ?? 0))
        defer { out.deallocate() }
        return try Self.event(event, into: &out)
    }

    /// The stored form of `event`, written with `out`, whose buffer (and the digits of the last
    /// time it wrote) the events of a batch share: one writer per batch instead of a byte array
    /// grown per event.
    static func event(_ event: CloudEvent, into out: inout JSONWriter) throws -> String {
        if let data = event.data {
            guard Self.isJSON(event.dataContentType), JSONCheck.isAcceptable(data) else {
                return try Self.slow(event)
            }
        }
        let extensions =
            event.extensions.isEmpty
            ? [] : event.extensions.filter { !Self.reservedNames.contains($0.key) }.sorted { $0.key < $1.key }
        // The extensions are written among the attributes, in name order; `next` is the first not
        // written yet. (Static helpers with `inout` arguments, not nested functions capturing
        // `out` and `next`: captured variables are checked for exclusive access at run time,
        // a few percent of encoding an event in a profile.)
        var next = 0
        out.clear()
        // The CloudEvents attributes in name order: data, datacontenttype, dataschema, id, source,
        // specversion, subject, time, type.
        out.open()
        if let data = event.data {
            Self.extensions(extensions, &next, before: "data", into: &out)
            out.key(written: #""data":"#)
            out.raw(data)
        }
        Self.attribute("datacontenttype", #""datacontenttype":"#, event.dataContentType, extensions, &next, &out)
        Self.attribute("dataschema", #""dataschema":"#, event.dataSchema, extensions, &next, &out)
        Self.attribute("id", #""id":"#, event.id, extensions, &next, &out)
        Self.attribute("source", #""source":"#, event.source, extensions, &next, &out)
        Self.attribute("specversion", #""specversion":"#, CloudEvent.specVersion, extensions, &next, &out)
        Self.attribute("subject", #""subject":"#, event.subject, extensions, &next, &out)
        if let time = event.time {
            Self.extensions(extensions, &next, before: "time", into: &out)
            out.key(written: #""time":"#)
            out.time(time)
        }
        Self.attribute("type", #""type":"#, event.type, extensions, &next, &out)
        Self.extensions(extensions, &next, before: nil, into: &out)
        out.close()
        return out.text
    }

    /// Writes the extensions from `next` on that sort before `name` (all that are left when nil).
    @inline(__always)
    private static func extensions(
        _ extensions: [(key: String, value: String)], _ next: inout Int, before name: String?,
        into out: inout JSONWriter
    ) {
        while next < extensions.count, name.map({ extensions[next].key < $0 }) ?? true {
            out.key(extensions[next].key)
            out.string(extensions[next].value)
            next += 1
        }
    }

    /// A string attribute (when present), after the extensions that sort before it; `key` is its
    /// name as written (quoted, with the colon).
    @inline(__always)
    private static func attribute(
        _ name: String, _ key: StaticString, _ value: String?, _ extensions: [(key: String, value: String)],
        _ next: inout Int, _ out: inout JSONWriter
    ) {
        guard let value else { return }
        if next < extensions.count { Self.extensions(extensions, &next, before: name, into: &out) }
        out.key(written: key)
        out.string(value)
    }

    /// The stored form of headers: a JSON object of strings, keys sorted.
    static func headers(_ headers: [String: String]) -> String {
        guard !headers.isEmpty else { return "{}" }
        var out = JSONWriter(capacity: 64 * headers.count)
        defer { out.deallocate() }
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
/// to one byte buffer (escapes found in the same pass that copies) halved the encoding's share of
/// a batched SQLite publish in a profile, where Swift `String` appends of the pieces were most of
/// it. The buffer is raw memory that grows only when a piece does not fit (room for a string is
/// made once for its longest escaped form), so that a piece is a bounds check and a copy: as a
/// `[UInt8]` appended to byte by byte, each append checked the array's uniqueness and capacity,
/// and `Data` was copied through its iterator, which together were about a third of encoding an
/// event in a profile of batches of 100 (twelfth session, Performance.md). Call ``deallocate()``
/// when done; a copy of a writer shares its buffer, so only one of them may be used.
struct JSONWriter {
    private var start: UnsafeMutablePointer<UInt8>
    private var capacity: Int
    private var count = 0
    private var fields = 0
    /// The whole second ``time(_:)`` wrote last, and its 19 characters `YYYY-MM-DDTHH:MM:SS`
    /// (the events of a batch mostly share their second).
    private var lastSecond = Int64.min
    private var lastSecondText: (UInt64, UInt64, UInt64) = (0, 0, 0)
    private static let hexDigits: StaticString = "0123456789abcdef"

    init(capacity: Int) {
        self.capacity = max(64, capacity)
        self.start = .allocate(capacity: self.capacity)
    }

    /// Frees the buffer; the writer must not be used afterwards.
    func deallocate() {
        self.start.deallocate()
    }

    /// Forgets the bytes written (the buffer and the last time's digits stay).
    mutating func clear() {
        self.count = 0
        self.fields = 0
    }

    /// The text written.
    var text: String {
        // The closure captures copies, not the writer (see ``string(_:)``).
        let start = self.start
        let count = self.count
        return String(unsafeUninitializedCapacity: count) { buffer in
            guard let base = buffer.baseAddress else { return 0 }
            base.initialize(from: start, count: count)
            return count
        }
    }

    /// Makes room for `extra` more bytes.
    @inline(__always)
    private mutating func reserve(_ extra: Int) {
        if self.count + extra > self.capacity { self.grow(to: self.count + extra) }
    }

    private mutating func grow(to needed: Int) {
        let capacity = max(needed, 2 * self.capacity)
        let start = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
        start.initialize(from: self.start, count: self.count)
        self.start.deallocate()
        self.start = start
        self.capacity = capacity
    }

    @inline(__always)
    private mutating func byte(_ byte: UInt8) {
        self.reserve(1)
        self.start[self.count] = byte
        self.count += 1
    }

    @inline(__always)
    private mutating func bytes(_ source: UnsafeRawBufferPointer) {
        guard let base = source.baseAddress, !source.isEmpty else { return }
        self.reserve(source.count)
        UnsafeMutableRawPointer(self.start + self.count).copyMemory(from: base, byteCount: source.count)
        self.count += source.count
    }

    mutating func open() {
        self.byte(UInt8(ascii: "{"))
        self.fields = 0
    }

    mutating func close() {
        self.byte(UInt8(ascii: "}"))
    }

    /// A member's name and the colon, after a comma when it is not the first.
    mutating func key(_ name: String) {
        if self.fields > 0 { self.byte(UInt8(ascii: ",")) }
        self.fields += 1
        self.string(name)
        self.byte(UInt8(ascii: ":"))
    }

    /// A member's name as written (quoted, with the colon: a name known to need no escape), after
    /// a comma when it is not the first.
    mutating func key(written: StaticString) {
        if self.fields > 0 { self.byte(UInt8(ascii: ",")) }
        self.fields += 1
        self.bytes(UnsafeRawBufferPointer(start: written.utf8Start, count: written.utf8CodeUnitCount))
    }

    /// Bytes that are already JSON.
    mutating func raw(_ data: Data) {
        self.reserve(data.count)
        data.copyBytes(to: self.start + self.count, count: data.count)
        self.count += data.count
    }

    /// `value` as a JSON string literal: `"` and `\` escaped, `\n`, `\r`, `\t`, other control
    /// characters as `\u00XX`; everything else (non-ASCII included) as it is.
    ///
    /// The closure that reads the string's bytes captures only the address to write at, not the
    /// writer: a closure capturing `self` made the compiler box the writer and check each access
    /// to it at run time (a few percent of encoding an event in a profile).
    mutating func string(_ value: String) {
        // Room for the longest form: every byte a `\u00XX`, and the quotes.
        self.reserve(6 * value.utf8.count + 2)
        // Capacity is reserved: the stores below need no checks.
        let destination = self.start + self.count
        var value = value
        let written = value.withUTF8 { utf8 in
            var out = destination
            out.pointee = UInt8(ascii: "\"")
            out += 1
            // Most strings need no escape: find that out first and copy them in one piece.
            var clean = 0
            while clean < utf8.count {
                let byte = utf8[clean]
                if byte < 0x20 || byte == 0x22 || byte == 0x5c { break }
                clean += 1
            }
            if let base = utf8.baseAddress, clean > 0 {
                out.initialize(from: base, count: clean)
                out += clean
            }
            for index in clean..<utf8.count {
                let byte = utf8[index]
                guard byte < 0x20 || byte == 0x22 || byte == 0x5c else {
                    out.pointee = byte
                    out += 1
                    continue
                }
                out.pointee = UInt8(ascii: "\\")
                out += 1
                switch byte {
                case 0x22: out.pointee = UInt8(ascii: "\"")
                case 0x5c: out.pointee = UInt8(ascii: "\\")
                case 0x0a: out.pointee = UInt8(ascii: "n")
                case 0x0d: out.pointee = UInt8(ascii: "r")
                case 0x09: out.pointee = UInt8(ascii: "t")
                default:
                    let hex = Self.hexDigits.utf8Start
                    out[0] = UInt8(ascii: "u")
                    out[1] = UInt8(ascii: "0")
                    out[2] = UInt8(ascii: "0")
                    out[3] = hex[Int(byte >> 4)]
                    out += 4
                    out.pointee = hex[Int(byte & 0xf)]
                }
                out += 1
            }
            out.pointee = UInt8(ascii: "\"")
            out += 1
            return destination.distance(to: out)
        }
        self.count += written
    }

    /// `date` as a JSON string in RFC 3339, UTC, with milliseconds, as `CloudEvent` writes `time`:
    /// whole seconds first, then the fraction, as Foundation's ISO 8601 style does (scaling the
    /// whole interval by 1000 first rounds up now and then: 3107981069.64 → …640 where Foundation
    /// writes …639; a property test found it).
    ///
    /// The calendar date comes from the day number by arithmetic (``civil(days:)``), not
    /// `gmtime_r`, which takes glibc's time zone lock on every call: with the digits written
    /// without making `String`s, that took the time's share of encoding an event from about a
    /// fifth to a few percent in a profile of batched publishes. The digits of the whole second
    /// are kept for the next time of the same second.
    mutating func time(_ date: Date) {
        let interval = date.timeIntervalSince1970
        let whole = interval.rounded(.down)
        let seconds = Int64(whole)
        let millis = min(999, Int(((interval - whole) * 1000).rounded(.down)))
        self.byte(UInt8(ascii: "\""))
        if seconds == self.lastSecond {
            self.reserve(19)
            let destination = UnsafeMutableRawPointer(self.start + self.count)
            withUnsafeBytes(of: self.lastSecondText) { destination.copyMemory(from: $0.baseAddress!, byteCount: 19) }
            self.count += 19
        } else {
            let first = self.count
            let (days, secondOfDay) = seconds.quotientAndRemainder(dividingBy: 86_400)
            let (day, second) = secondOfDay < 0 ? (days - 1, secondOfDay + 86_400) : (days, secondOfDay)
            let (year, month, dayOfMonth) = Self.civil(days: day)
            self.digits(Int(year), 4)
            self.byte(UInt8(ascii: "-"))
            self.digits(Int(month), 2)
            self.byte(UInt8(ascii: "-"))
            self.digits(Int(dayOfMonth), 2)
            self.byte(UInt8(ascii: "T"))
            self.digits(Int(second / 3600), 2)
            self.byte(UInt8(ascii: ":"))
            self.digits(Int(second / 60 % 60), 2)
            self.byte(UInt8(ascii: ":"))
            self.digits(Int(second % 60), 2)
            // Years beyond 9999 write more digits: those are not kept.
            if self.count - first == 19 {
                self.lastSecond = seconds
                let written = UnsafeRawBufferPointer(start: self.start + first, count: 19)
                withUnsafeMutableBytes(of: &self.lastSecondText) { $0.copyMemory(from: written) }
            }
        }
        self.byte(UInt8(ascii: "."))
        self.digits(millis, 3)
        self.byte(UInt8(ascii: "Z"))
        self.byte(UInt8(ascii: "\""))
    }

    /// The proleptic Gregorian date (year, month 1–12, day 1–31) of `days` since 1970-01-01,
    /// counted in 400-year eras of 146,097 days from 0000-03-01 (so that a leap day ends its
    /// year), the way `gmtime` does.
    static func civil(days: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let shifted = days + 719_468  // days from 0000-03-01 to 1970-01-01
        let era = (shifted >= 0 ? shifted : shifted - 146_096) / 146_097
        let dayOfEra = shifted - era * 146_097  // 0...146096
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365  // 0...399
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)  // 0...365, from March 1
        let monthFromMarch = (5 * dayOfYear + 2) / 153  // 0...11
        let day = dayOfYear - (153 * monthFromMarch + 2) / 5 + 1
        let month = monthFromMarch < 10 ? monthFromMarch + 3 : monthFromMarch - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        return (year, month, day)
    }

    /// `value` in decimal, padded with zeros to `width` digits (more when it needs them).
    private mutating func digits(_ value: Int, _ width: Int) {
        if value >= 0 && value < 10_000 && width <= 4 {
            // The common case, without making a `String`.
            let count = value >= 1000 ? 4 : value >= 100 ? 3 : value >= 10 ? 2 : 1
            for _ in count..<max(count, width) { self.byte(UInt8(ascii: "0")) }
            var divisor = count == 4 ? 1000 : count == 3 ? 100 : count == 2 ? 10 : 1
            while divisor > 0 {
                self.byte(UInt8(ascii: "0") + UInt8(value / divisor % 10))
                divisor /= 10
            }
            return
        }
        let text = String(value)
        for _ in text.utf8.count..<max(text.utf8.count, width) { self.byte(UInt8(ascii: "0")) }
        for byte in text.utf8 { self.byte(byte) }
    }
}

/// A strict check that bytes are one JSON value (RFC 8259, UTF-8) that `JSONDecoder` reads into
/// `CloudEvent`'s data: numbers that fit a finite `Double`, escapes with paired surrogates,
/// nesting no deeper than 256.
enum JSONCheck {
    static func isAcceptable(_ data: Data) -> Bool {
        data.withUnsafeBytes { raw in
            // Well-formed UTF-8 is checked as the scanner goes: bytes above 0x7F can only be in
            // strings (anywhere else the grammar rejects them), where `string()` checks each sequence.
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
                case 0x80...: guard self.utf8Sequence(lead: byte) else { return false }
                default: continue
                }
            }
            return false
        }

        /// The rest of a UTF-8 sequence whose first byte, `lead`, is at `index - 1`: well-formed as
        /// the Unicode standard's table 3-7 has it (no overlong forms, no surrogates, nothing above
        /// U+10FFFF), as `String(validating:)` checks it.
        mutating func utf8Sequence(lead: UInt8) -> Bool {
            let continuations: Int
            var low: UInt8 = 0x80
            var high: UInt8 = 0xBF
            switch lead {
            case 0xC2...0xDF: continuations = 1
            case 0xE0:
                continuations = 2
                low = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: continuations = 2
            case 0xED:
                continuations = 2
                high = 0x9F
            case 0xF0:
                continuations = 3
                low = 0x90
            case 0xF1...0xF3: continuations = 3
            case 0xF4:
                continuations = 3
                high = 0x8F
            default: return false
            }
            guard self.index + continuations <= self.bytes.count else { return false }
            // Only the first continuation byte has a narrower range.
            let first = self.bytes[self.index]
            guard first >= low, first <= high else { return false }
            for offset in 1..<continuations {
                let byte = self.bytes[self.index + offset]
                guard byte >= 0x80, byte <= 0xBF else { return false }
            }
            self.index += continuations
            return true
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
