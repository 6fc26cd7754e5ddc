//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation

/// Reads stored events and headers back without `JSONDecoder`, for the consumer's hot path.
///
/// Written by hand because `CloudEvent`'s `Decodable` reads JSON `data` into a tree of values and
/// encodes that tree again to get its bytes: a profile of SQLite consume-and-ack
/// (scripts/bench-broker.sh) had half of the consumer's CPU time in decoding events, most of it in
/// that round trip, and the headers' `[String: String]` decode took a sixth more. This reader
/// checks the text with ``JSONCheck/Scanner`` (the same strict grammar the producer checks data
/// with) and takes JSON `data` as the stored bytes, which are the producer's bytes (``StoredJSON``
/// embeds them as they are); the decoder returned them re-encoded with sorted keys. Anything it
/// does not read itself (`data_base64`, an extension that is not a string, a member given twice,
/// a wrong `specversion`, malformed text) returns `nil`, and the caller decodes with
/// `JSONDecoder` as before, which also reports what is wrong.
enum StoredEventReader {
    /// The event stored as `text`: read here, or by `JSONDecoder` when this reader declines.
    static func decodeEvent(_ text: String) throws -> CloudEvent {
        if let event = Self.event(text) { return event }
        return try JSONDecoder().decode(CloudEvent.self, from: Data(text.utf8))
    }

    /// The headers stored as `text`: read here, or by `JSONDecoder` when this reader declines.
    static func decodeHeaders(_ text: String) throws -> [String: String] {
        if let headers = Self.headers(text) { return headers }
        return try JSONDecoder().decode([String: String].self, from: Data(text.utf8))
    }

    /// The event stored as `text`, or `nil` for `JSONDecoder` to read.
    static func event(_ text: String) -> CloudEvent? {
        var text = text
        return text.withUTF8 { Self.event($0) }
    }

    /// The headers stored as `text` (an object of strings), or `nil` for `JSONDecoder` to read.
    static func headers(_ text: String) -> [String: String]? {
        var text = text
        return text.withUTF8 { bytes in
            var headers: [String: String] = [:]
            let complete = Self.members(bytes) { name, value, scanner in
                guard scanner.peek == UInt8(ascii: "\""), let string = Self.string(&scanner),
                    headers.updateValue(string, forKey: name) == nil
                else { return false }
                return true
            }
            return complete ? headers : nil
        }
    }

    static func event(_ bytes: UnsafeBufferPointer<UInt8>) -> CloudEvent? {
        var strings: [String: String] = [:]
        var data: Range<Int>?
        let complete = Self.members(bytes) { name, start, scanner in
            if name == "data" {
                guard data == nil, scanner.value(depth: 0) else { return false }
                data = start..<scanner.index
                return true
            }
            guard scanner.peek == UInt8(ascii: "\""), let string = Self.string(&scanner),
                strings.updateValue(string, forKey: name) == nil
            else { return false }
            return true
        }
        guard complete, strings["specversion"] == CloudEvent.specVersion, strings["data_base64"] == nil,
            let id = strings["id"], let source = strings["source"], let type = strings["type"]
        else { return nil }
        var time: Date?
        if let text = strings["time"] {
            guard let parsed = CloudEvent.parseTime(text) else { return nil }
            time = parsed
        }
        let contentType = strings["datacontenttype"]
        var payload: Data?
        if let data {
            if StoredJSON.isJSON(contentType) {
                payload = Data(UnsafeBufferPointer(rebasing: bytes[data]))
            } else {
                // Data of another content type is a JSON string.
                var scanner = JSONCheck.Scanner(bytes: bytes)
                scanner.index = data.lowerBound
                guard scanner.peek == UInt8(ascii: "\""), let string = Self.string(&scanner) else { return nil }
                payload = Data(string.utf8)
            }
        }
        var extensions: [String: String] = [:]
        for (name, value) in strings where !StoredJSON.reservedNames.contains(name) {
            extensions[name] = value
        }
        return CloudEvent(
            id: id, source: source, type: type, subject: strings["subject"], time: time,
            dataContentType: contentType, dataSchema: strings["dataschema"], data: payload, extensions: extensions)
    }

    /// Walks the members of the one JSON object that `bytes` hold; `member` reads each value
    /// (given the name, the value's start and the scanner there) and moves the scanner past it, or
    /// returns false. True when the whole text was one object and every member was read.
    private static func members(
        _ bytes: UnsafeBufferPointer<UInt8>,
        _ member: (_ name: String, _ start: Int, _ scanner: inout JSONCheck.Scanner) -> Bool
    ) -> Bool {
        var scanner = JSONCheck.Scanner(bytes: bytes)
        scanner.skipSpace()
        guard scanner.peek == UInt8(ascii: "{") else { return false }
        scanner.index += 1
        scanner.skipSpace()
        if scanner.peek == UInt8(ascii: "}") {
            scanner.index += 1
        } else {
            while true {
                guard scanner.peek == UInt8(ascii: "\""), let name = Self.string(&scanner) else { return false }
                scanner.skipSpace()
                guard scanner.peek == UInt8(ascii: ":") else { return false }
                scanner.index += 1
                scanner.skipSpace()
                guard member(name, scanner.index, &scanner) else { return false }
                scanner.skipSpace()
                guard let next = scanner.peek else { return false }
                scanner.index += 1
                if next == UInt8(ascii: "}") { break }
                guard next == UInt8(ascii: ",") else { return false }
                scanner.skipSpace()
            }
        }
        scanner.skipSpace()
        return scanner.index == bytes.count
    }

    /// The JSON string at the scanner (its opening quote), checked and unescaped; the scanner
    /// moves past it.
    static func string(_ scanner: inout JSONCheck.Scanner) -> String? {
        let start = scanner.index
        guard scanner.string() else { return nil }
        let content = UnsafeBufferPointer(rebasing: scanner.bytes[(start + 1)..<(scanner.index - 1)])
        // Checked: well-formed UTF-8 and escapes, so only the escapes need work.
        guard content.contains(UInt8(ascii: "\\")) else { return String(decoding: content, as: UTF8.self) }
        var utf8: [UInt8] = []
        utf8.reserveCapacity(content.count)
        // The content again, for the checked escapes' hex digits (``JSONCheck/Scanner/hex4()``).
        var escapes = JSONCheck.Scanner(bytes: content)
        while escapes.index < content.count {
            let byte = content[escapes.index]
            escapes.index += 1
            guard byte == UInt8(ascii: "\\") else {
                utf8.append(byte)
                continue
            }
            let escape = content[escapes.index]
            escapes.index += 1
            switch escape {
            case UInt8(ascii: "b"): utf8.append(0x08)
            case UInt8(ascii: "f"): utf8.append(0x0C)
            case UInt8(ascii: "n"): utf8.append(0x0A)
            case UInt8(ascii: "r"): utf8.append(0x0D)
            case UInt8(ascii: "t"): utf8.append(0x09)
            case UInt8(ascii: "u"):
                guard var value = escapes.hex4() else { return nil }
                if (0xD800...0xDBFF).contains(value) {
                    // The scanner checked that a low surrogate's "\u" follows.
                    guard escapes.literal("\\u"), let low = escapes.hex4() else { return nil }
                    value = 0x10000 + ((value - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let scalar = Unicode.Scalar(value) else { return nil }
                UTF8.encode(scalar) { utf8.append($0) }
            default: utf8.append(escape)  // " \ /
            }
        }
        return String(decoding: utf8, as: UTF8.self)
    }
}
