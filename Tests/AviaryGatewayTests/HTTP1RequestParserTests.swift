//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHTTP1
import Testing

@testable import AviaryGateway

/// The proxy's own request parser, fed directly: well-formed requests in one piece, byte by byte
/// and pipelined, and every malformed input it must refuse.
@Suite("HTTP/1 request parser")
struct HTTP1RequestParserTests {
    /// What the parser made of some bytes, in a form that is easy to compare.
    enum Part: Equatable {
        case head(method: String, uri: String, version: String, headers: [String])
        case body(String)
        case end(trailers: [String]?)
    }

    static func describe(_ part: HTTPServerRequestPart) -> Part {
        switch part {
        case .head(let head):
            return .head(
                method: head.method.rawValue, uri: head.uri, version: "\(head.version.major).\(head.version.minor)",
                headers: head.headers.map { "\($0.name)=\($0.value)" })
        case .body(let buffer):
            return .body(String(buffer: buffer))
        case .end(let trailers):
            return .end(trailers: trailers.map { $0.map { "\($0.name)=\($0.value)" } })
        }
    }

    /// Parses `input` given all at once; body parts are joined.
    static func parse(_ input: String, maxHeadBytes: Int = 65_536) throws(HTTP1RequestError) -> [Part] {
        var parser = HTTP1RequestParser(maxHeadBytes: maxHeadBytes)
        var buffer = ByteBuffer(string: input)
        var parts: [Part] = []
        while let part = try parser.next(&buffer) { parts.append(describe(part)) }
        return joined(parts)
    }

    /// Parses `input` arriving one byte at a time; body parts are joined.
    static func parseBytewise(_ input: String, maxHeadBytes: Int = 65_536) throws(HTTP1RequestError) -> [Part] {
        var parser = HTTP1RequestParser(maxHeadBytes: maxHeadBytes)
        var buffer = ByteBuffer()
        var parts: [Part] = []
        for byte in input.utf8 {
            buffer.writeInteger(byte)
            while let part = try parser.next(&buffer) { parts.append(describe(part)) }
        }
        return joined(parts)
    }

    static func joined(_ parts: [Part]) -> [Part] {
        var result: [Part] = []
        for part in parts {
            if case .body(let more) = part, case .body(let earlier) = result.last {
                result[result.count - 1] = .body(earlier + more)
            } else {
                result.append(part)
            }
        }
        return result
    }

    @Test("a GET: its head, then its end; header values lose surrounding whitespace")
    func get() throws {
        let expected: [Part] = [
            .head(method: "GET", uri: "/a?b=c", version: "1.1", headers: ["Host=example", "X-Empty=", "x-tab=a \tb"]),
            .end(trailers: nil),
        ]
        let input = "GET /a?b=c HTTP/1.1\r\nHost:  example \r\nX-Empty:\r\nx-tab:\ta \tb\t\r\n\r\n"
        #expect(try Self.parse(input) == expected)
        #expect(try Self.parseBytewise(input) == expected)
    }

    @Test("a body framed by Content-Length, whole or byte by byte, and the pipelined request after it")
    func contentLengthAndPipelining() throws {
        let input =
            "POST /up HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello worldDELETE /x HTTP/1.0\r\n\r\nOPTIONS * HTTP/1.1\r\n\r\n"
        let expected: [Part] = [
            .head(method: "POST", uri: "/up", version: "1.1", headers: ["Content-Length=11"]),
            .body("hello world"), .end(trailers: nil),
            .head(method: "DELETE", uri: "/x", version: "1.0", headers: []), .end(trailers: nil),
            .head(method: "OPTIONS", uri: "*", version: "1.1", headers: []), .end(trailers: nil),
        ]
        #expect(try Self.parse(input) == expected)
        #expect(try Self.parseBytewise(input) == expected)
    }

    @Test("a chunked body with extensions and trailers")
    func chunked() throws {
        let input =
            "PUT /c HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n5;name=value\r\nhello\r\n1 \r\n \r\nA\r\n0123456789\r\n"
            + "0\r\nX-Checksum: 42\r\n\r\nGET /next HTTP/1.1\r\n\r\n"
        let expected: [Part] = [
            .head(method: "PUT", uri: "/c", version: "1.1", headers: ["Transfer-Encoding=Chunked"]),
            .body("hello 0123456789"), .end(trailers: ["X-Checksum=42"]),
            .head(method: "GET", uri: "/next", version: "1.1", headers: []), .end(trailers: nil),
        ]
        #expect(try Self.parse(input) == expected)
        #expect(try Self.parseBytewise(input) == expected)
    }

    @Test("empty lines before a request line are skipped; other methods keep their name")
    func leadingEmptyLinesAndMethods() throws {
        let input = "\r\n\r\nPURGE /cache HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\n\r\n"
        let expected: [Part] = [
            .head(method: "PURGE", uri: "/cache", version: "1.1", headers: []), .end(trailers: nil),
            .head(method: "HEAD", uri: "/", version: "1.1", headers: []), .end(trailers: nil),
        ]
        #expect(try Self.parse(input) == expected)
        #expect(try Self.parseBytewise(input) == expected)
    }

    @Test("the end of a request is due with its last byte, before any byte of the next one")
    func endIsDueWithoutMoreBytes() throws {
        // The decoder hands the end on in the same read as the last bytes; it relies on this.
        var parser = HTTP1RequestParser(maxHeadBytes: 1024)
        var buffer = ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n")
        #expect(
            try parser.next(&buffer).map(Self.describe) == .head(method: "GET", uri: "/", version: "1.1", headers: []))
        #expect(parser.endIsDue)
        #expect(try parser.next(&buffer).map(Self.describe) == .end(trailers: nil))
        #expect(!parser.endIsDue)
        buffer.writeString("POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\na")
        #expect(try parser.next(&buffer) != nil)  // the head
        #expect(!parser.endIsDue)
        #expect(try parser.next(&buffer).map(Self.describe) == .body("a"))
        #expect(!parser.endIsDue)
        #expect(try parser.next(&buffer) == nil)
        buffer.writeString("b")
        #expect(try parser.next(&buffer).map(Self.describe) == .body("b"))
        #expect(parser.endIsDue)
        #expect(try parser.next(&buffer).map(Self.describe) == .end(trailers: nil))
        #expect(buffer.readableBytes == 0)
    }

    @Test("an incomplete request gives nothing yet, and no error")
    func incomplete() throws {
        #expect(try Self.parse("GET / HTTP/1.1\r\nHost: a\r\n").isEmpty)
        #expect(
            try Self.parse("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab") == [
                .head(method: "POST", uri: "/", version: "1.1", headers: ["Content-Length=5"]), .body("ab"),
            ])
    }

    static let malformed: [(String, String, HTTP1RequestError)] = [
        ("LF without CR", "GET / HTTP/1.1\nHost: a\n\n", .badLineEnding),
        ("LF without CR after a header", "GET / HTTP/1.1\r\nHost: a\n\r\n", .badLineEnding),
        ("CR without LF in a value", "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", .badLineEnding),
        ("a lone LF before the request", "\nGET / HTTP/1.1\r\n\r\n", .badLineEnding),
        ("garbage", "\u{1}\u{2}GARBAGE\r\n\r\n", .badMethod),
        ("no target", "GET  HTTP/1.1\r\n\r\n", .badTarget),
        ("two words", "GET /\r\n\r\n", .badRequestLine),
        ("a control character in the target", "GET /a\u{7F}b HTTP/1.1\r\n\r\n", .badTarget),
        ("HTTP/2.0", "GET / HTTP/2.0\r\n\r\n", .unsupportedVersion),
        ("lower-case version", "GET / http/1.1\r\n\r\n", .unsupportedVersion),
        ("text after the version", "GET / HTTP/1.1x\r\n\r\n", .badRequestLine),
        ("a space before the colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", .badHeaderName),
        ("no colon", "GET / HTTP/1.1\r\nHost a\r\n\r\n", .badHeaderName),
        ("an empty name", "GET / HTTP/1.1\r\n: a\r\n\r\n", .badHeaderName),
        ("obs-fold", "GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", .foldedHeader),
        ("NUL in a value", "GET / HTTP/1.1\r\nX-A: a\u{0}b\r\n\r\n", .badHeaderValue),
        (
            "two equal Content-Lengths", "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            .multipleContentLengths
        ),
        ("a list Content-Length", "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc", .badContentLength),
        ("a signed Content-Length", "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc", .badContentLength),
        ("an empty Content-Length", "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", .badContentLength),
        (
            "a huge Content-Length", "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            .badContentLength
        ),
        (
            "Content-Length with chunked", "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            .contentLengthWithTransferEncoding
        ),
        (
            "chunked with Content-Length", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            .contentLengthWithTransferEncoding
        ),
        ("gzip", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", .unsupportedTransferEncoding),
        ("gzip, chunked", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", .unsupportedTransferEncoding),
        (
            "chunked twice", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            .unsupportedTransferEncoding
        ),
        ("chunked on HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", .unsupportedTransferEncoding),
        (
            "a chunk size that is not hex", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
            .badChunkSize
        ),
        (
            "a negative chunk size", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n",
            .badChunkSize
        ),
        (
            "a chunk size over Int", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            .badChunkSize
        ),
        (
            "text after a chunk size", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n",
            .badChunkSize
        ),
        (
            "a chunk longer than its size", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello!\r\n",
            .badChunkEnd
        ),
        (
            "a chunk size line ending with LF", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n",
            .badLineEnding
        ),
    ]

    @Test("malformed requests are refused, whole or byte by byte", arguments: malformed)
    func refused(name: String, input: String, error: HTTP1RequestError) {
        #expect(throws: error, "\(name)") { try Self.parse(input) }
        #expect(throws: error, "\(name), byte by byte") { try Self.parseBytewise(input) }
    }

    @Test("a head over the limit is refused, complete or not; one at the limit passes")
    func headLimit() throws {
        let head = "GET / HTTP/1.1\r\nX-Big: \(String(repeating: "a", count: 100))\r\n"
        let limit = head.utf8.count
        #expect(try Self.parse(head + "\r\n", maxHeadBytes: limit).count == 2)
        #expect(throws: HTTP1RequestError.headTooLarge(limit: limit - 1)) {
            try Self.parse(head + "\r\n", maxHeadBytes: limit - 1)
        }
        #expect(throws: HTTP1RequestError.headTooLarge(limit: 50)) {
            try Self.parseBytewise(head, maxHeadBytes: 50)
        }
        #expect(throws: HTTP1RequestError.headTooLarge(limit: 50)) {
            try Self.parse(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;\(String(repeating: "a", count: 100))\r\n",
                maxHeadBytes: 50)
        }
    }

    @Test("field-name bytes are exactly RFC 9110's tchar: letters, digits and !#$%&'*+-.^_`|~")
    func tokenBytes() {
        let specials = Set("!#$%&'*+-.^_`|~".utf8)
        for value in 0...255 {
            let byte = UInt8(value)
            let isLetter = (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte | 0x20)
            let isDigit = (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
            let expected = byte < 0x80 && (isLetter || isDigit || specials.contains(byte))
            #expect(HTTP1RequestParser.isTokenByte(byte) == expected, "byte \(value)")
        }
    }

    @Test("the word-at-a-time check finds exactly the bytes a value may not hold: below 0x20 and DEL")
    func controlBytesInWords() {
        func expected(_ word: UInt64) -> Bool {
            (0..<8).contains { shift in
                let byte = UInt8(truncatingIfNeeded: word >> (8 * shift))
                return byte < 0x20 || byte == 0x7F
            }
        }
        // Every byte value at every position, among fillers at the edges of the allowed range.
        for filler: UInt8 in [0x20, 0x61, 0x7E, 0x80, 0xA0, 0xFF] {
            for position in 0..<8 {
                for value in 0...255 {
                    var word: UInt64 = 0
                    for index in 0..<8 {
                        word |= UInt64(index == position ? UInt8(value) : filler) << (8 * index)
                    }
                    #expect(HTTP1RequestParser.hasControlByte(word) == expected(word), "word \(word)")
                }
            }
        }
        // Random words, and random words of mostly high bytes (where borrows could mislead).
        var generator = SystemRandomNumberGenerator()
        for round in 0..<200_000 {
            var word = UInt64.random(in: .min ... .max, using: &generator)
            if round % 2 == 1 { word |= 0x8080_8080_8080_8080 & UInt64.random(in: .min ... .max, using: &generator) }
            if HTTP1RequestParser.hasControlByte(word) != expected(word) {
                Issue.record("word \(String(word, radix: 16))")
                return
            }
        }
    }

    @Test("a bad byte is found at any offset of a long value; tabs and obs-text pass; blanks are trimmed")
    func longValues() throws {
        let long = String(repeating: "abcdefgh", count: 5)
        for offset in 0..<long.utf8.count {
            for bad in ["\u{0}", "\u{1F}", "\u{7F}", "\u{B}"] {
                var value = Array(long)
                value[offset] = Character(bad)
                #expect(throws: HTTP1RequestError.badHeaderValue) {
                    try Self.parse("GET / HTTP/1.1\r\nX-A: \(String(value))\r\n\r\n")
                }
            }
            var withTab = Array(long)
            withTab[offset] = "\t"
            let tabbed = String(withTab)
            // A tab at either end is trimmed with the blanks around it; one inside stays.
            let kept =
                offset == 0
                ? String(tabbed.dropFirst()) : offset == long.utf8.count - 1 ? String(tabbed.dropLast()) : tabbed
            #expect(
                try Self.parse("GET / HTTP/1.1\r\nX-A: \(tabbed) \t \r\n\r\n").first
                    == .head(method: "GET", uri: "/", version: "1.1", headers: ["X-A=\(kept)"]))
        }
        // A CR that is not followed by LF, in the middle of a word-sized stretch.
        #expect(throws: HTTP1RequestError.badLineEnding) {
            try Self.parse("GET / HTTP/1.1\r\nX-A: abcdefghij\rklmnopqrstuvwxyz\r\n\r\n")
        }
        let utf8 = "caf\u{E9} \u{1F426} na\u{EF}ve " + long
        #expect(
            try Self.parse("GET / HTTP/1.1\r\nX-A: \(utf8)\r\n\r\n").first
                == .head(method: "GET", uri: "/", version: "1.1", headers: ["X-A=\(utf8)"]))
        #expect(
            try Self.parse("GET / HTTP/1.1\r\nX-A:  \t \t  \r\n\r\n").first
                == .head(method: "GET", uri: "/", version: "1.1", headers: ["X-A="]))
    }
}
