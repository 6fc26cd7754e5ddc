//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing

@testable import AviaryGateway

/// The proxy's own upstream response parser, fed directly (in one piece and byte by byte);
/// `GatewayUpstreamResponseTests` has the gateway's behaviour with such upstreams over sockets.
@Suite("HTTP/1 response parser")
struct HTTP1ResponseParserTests {
    enum Part: Equatable {
        case head(status: Int, version: String, headers: [String])
        case body(String)
        case end(trailers: [String]?)
    }

    static func describe(_ part: UpstreamResponsePart) -> Part {
        switch part {
        case .head(let head):
            return .head(
                status: Int(head.status.code), version: "\(head.version.major).\(head.version.minor)",
                headers: head.headers.map { "\($0.name)=\($0.value)" })
        case .body(let buffer):
            return .body(String(buffer: buffer))
        case .end(let trailers):
            return .end(trailers: trailers.map { $0.map { "\($0.name)=\($0.value)" } })
        }
    }

    /// Parses `input` (answers to requests that were HEAD or not, in order), all at once or one
    /// byte at a time, then the connection's close; body parts are joined.
    static func parse(
        _ input: String, heads: [Bool] = [false], bytewise: Bool = false, maxHeadBytes: Int = 65_536
    ) throws(HTTP1ResponseError) -> [Part] {
        var parser = HTTP1ResponseParser(maxHeadBytes: maxHeadBytes)
        for isHead in heads { parser.requestSent(isHead: isHead) }
        var buffer = ByteBuffer()
        var parts: [Part] = []
        if bytewise {
            for byte in input.utf8 {
                buffer.writeInteger(byte)
                while let part = try parser.next(&buffer) { parts.append(describe(part)) }
            }
        } else {
            buffer.writeString(input)
            while let part = try parser.next(&buffer) { parts.append(describe(part)) }
        }
        if let last = try parser.finish(buffer) { parts.append(describe(last)) }
        var joined: [Part] = []
        for part in parts {
            if case .body(let more) = part, case .body(let earlier) = joined.last {
                joined[joined.count - 1] = .body(earlier + more)
            } else {
                joined.append(part)
            }
        }
        return joined
    }

    static let valid: [(String, [Bool], [Part])] = [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello", [false],
            [
                .head(status: 200, version: "1.1", headers: ["Content-Length=5", "X-A=b"]), .body("hello"),
                .end(trailers: nil),
            ]
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\n",
            [false],
            [
                .head(status: 200, version: "1.1", headers: ["Transfer-Encoding=chunked"]), .body("hello!"),
                .end(trailers: ["X-T=1"]),
            ]
        ),
        // Ends with the connection.
        (
            "HTTP/1.0 200 OK\r\nServer: old\r\n\r\nuntil the end", [false],
            [.head(status: 200, version: "1.0", headers: ["Server=old"]), .body("until the end"), .end(trailers: nil)]
        ),
        // A HEAD's, a 204's and a 304's length is not followed by a body; the next response is.
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n"
                + "HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            [true, false, false, false],
            [
                .head(status: 200, version: "1.1", headers: ["Content-Length=5"]), .end(trailers: nil),
                .head(status: 204, version: "1.1", headers: ["Content-Length=3"]), .end(trailers: nil),
                .head(status: 304, version: "1.1", headers: ["Content-Length=4"]), .end(trailers: nil),
                .head(status: 200, version: "1.1", headers: ["Content-Length=2"]), .body("ok"), .end(trailers: nil),
            ]
        ),
        // Interim responses are skipped.
        (
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                + "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            [false], [.head(status: 201, version: "1.1", headers: ["Content-Length=0"]), .end(trailers: nil)]
        ),
        // No reason phrase, with and without its space; an unknown status keeps its phrase.
        (
            "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\nHTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n"
                + "HTTP/1.1 599 Odd Thing\r\nContent-Length: 0\r\n\r\n",
            [false, false, false],
            [
                .head(status: 200, version: "1.1", headers: ["Content-Length=0"]), .end(trailers: nil),
                .head(status: 404, version: "1.1", headers: ["Content-Length=0"]), .end(trailers: nil),
                .head(status: 599, version: "1.1", headers: ["Content-Length=0"]), .end(trailers: nil),
            ]
        ),
    ]

    @Test("valid responses decode the same whole and byte by byte", arguments: 0..<Self.valid.count)
    func validResponses(index: Int) throws {
        let (input, heads, expected) = Self.valid[index]
        #expect(try Self.parse(input, heads: heads) == expected)
        #expect(try Self.parse(input, heads: heads, bytewise: true) == expected)
    }

    @Test("an unknown status keeps its reason phrase")
    func customReason() throws {
        var parser = HTTP1ResponseParser()
        var buffer = ByteBuffer(string: "HTTP/1.1 599 Odd Thing\r\nContent-Length: 0\r\n\r\n")
        guard case .head(let head) = try parser.next(&buffer) else {
            Issue.record("no head")
            return
        }
        #expect(head.status.reasonPhrase == "Odd Thing")
    }

    static let malformed: [(String, String, HTTP1ResponseError)] = [
        ("not HTTP", "SSH-2.0-OpenSSH_9.2\r\n\r\n", .badStatusLine),
        ("HTTP/2 status line", "HTTP/2.0 200 OK\r\n\r\n", .unsupportedVersion),
        ("status with a letter", "HTTP/1.1 2x0 OK\r\n\r\n", .badStatusLine),
        ("two-digit status", "HTTP/1.1 20 OK\r\n\r\n", .badStatusLine),
        ("status below 100", "HTTP/1.1 099 Low\r\n\r\n", .badStatusLine),
        ("no space after the version", "HTTP/1.1\t200 OK\r\n\r\n", .badStatusLine),
        ("control character in the reason", "HTTP/1.1 200 O\u{1}K\r\n\r\n", .badStatusLine),
        ("LF line ending", "HTTP/1.1 200 OK\nContent-Length: 0\n\n", .badHeader(.badLineEnding)),
        ("folded header", "HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n", .badHeader(.foldedHeader)),
        ("space before the colon", "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", .badHeader(.badHeaderName)),
        (
            "conflicting lengths", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            .multipleContentLengths
        ),
        (
            "repeated length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            .multipleContentLengths
        ),
        ("negative length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", .badContentLength),
        ("length with a sign", "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", .badContentLength),
        (
            "length and chunked", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            .contentLengthWithTransferEncoding
        ),
        (
            "gzip transfer coding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            .unsupportedTransferEncoding
        ),
        ("switching protocols", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", .unexpectedUpgrade),
        ("chunk size not hex", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", .badChunkSize),
        ("chunk size empty", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", .badChunkSize),
        (
            "chunk size overflowing", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
            .badChunkSize
        ),
        ("chunk without CRLF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n", .badChunkEnd),
        ("closed inside the head", "HTTP/1.1 200 OK\r\nContent-Le", .truncated),
        ("closed inside the body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", .truncated),
        ("closed inside a chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", .truncated),
        (
            "closed before the last chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
            .truncated
        ),
    ]

    @Test("malformed responses are refused, whole and byte by byte", arguments: 0..<Self.malformed.count)
    func malformedResponses(index: Int) {
        let (name, input, expected) = Self.malformed[index]
        #expect(throws: expected, "\(name)") { try Self.parse(input) }
        #expect(throws: expected, "\(name), byte by byte") { try Self.parse(input, bytewise: true) }
    }

    @Test("a head over the limit is refused before its end arrives")
    func headTooLarge() {
        let input = "HTTP/1.1 200 OK\r\nX-Big: " + String(repeating: "a", count: 200)
        #expect(throws: HTTP1ResponseError.headTooLarge(limit: 100)) { try Self.parse(input, maxHeadBytes: 100) }
    }

    @Test("a clean close between responses is no error")
    func closeBetweenResponses() throws {
        #expect(try Self.parse("") == [])
        #expect(try Self.parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").count == 2)
    }

    @Test("keep-alive follows the version and the Connection tokens")
    func keepAlive() throws {
        let cases: [(String, Bool, Bool)] = [
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true, false),
            ("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false, false),
            ("HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nContent-Length: 0\r\n\r\n", false, false),
            ("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false, false),
            ("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", true, false),
            ("HTTP/1.1 200 OK\r\nConnection: keep-alive, x-secret\r\nContent-Length: 0\r\n\r\n", true, true),
        ]
        for (input, keepAlive, namesOthers) in cases {
            var parser = HTTP1ResponseParser()
            parser.requestSent(isHead: false)
            var buffer = ByteBuffer(string: input)
            guard case .head(let head) = try parser.next(&buffer) else {
                Issue.record("no head for \(input)")
                continue
            }
            #expect(head.isKeepAlive == keepAlive, "\(input)")
            #expect(head.connectionNamesOthers == namesOthers, "\(input)")
        }
    }

    @Test("the end-to-end header lines are kept byte for byte, the hop-by-hop ones dropped")
    func endToEndLines() throws {
        var parser = HTTP1ResponseParser()
        parser.requestSent(isHead: false)
        var buffer = ByteBuffer(
            string: "HTTP/1.1 200 OK\r\nServer: Origin/1\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
                + "X-Mixed-Case:  spaced value\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n"
                + "Proxy-Connection: x\r\nUpgrade: h2c\r\nTrailer: x-t\r\nContent-Type: text/plain\r\n\r\n0\r\n\r\n")
        guard case .head(let head) = try parser.next(&buffer) else {
            Issue.record("no head")
            return
        }
        #expect(head.hasHopByHop)
        #expect(head.hasTransferEncoding && !head.hasContentLength)
        var out = ByteBuffer()
        head.writeEndToEndLines(into: &out)
        #expect(
            String(buffer: out)
                == "Server: Origin/1\r\nX-Mixed-Case:  spaced value\r\nContent-Type: text/plain\r\n")
        // The parsed form has every field, hop-by-hop ones included, for the features that edit.
        #expect(head.headers.count == 10)
        #expect(head.headers.first(name: "x-mixed-case") == "spaced value")
    }

    @Test(
        "one or two hop-by-hop lines, first, between or last, empty or with trailing blanks, are left out and nothing else",
        arguments: [
            ("Connection: keep-alive\r\nServer: a\r\nContent-Length: 0\r\n", "Server: a\r\nContent-Length: 0\r\n"),
            ("Server: a\r\nConnection: keep-alive  \r\nContent-Length: 0\r\n", "Server: a\r\nContent-Length: 0\r\n"),
            ("Server: a\r\nContent-Length: 0\r\nKeep-Alive:\r\n", "Server: a\r\nContent-Length: 0\r\n"),
            (
                "Keep-Alive: timeout=5\r\nServer: a\r\nCONNECTION:\tclose\t\r\nContent-Length: 0\r\nX: y\r\n",
                "Server: a\r\nContent-Length: 0\r\nX: y\r\n"
            ),
            ("Connection: close\r\nKeep-Alive: a\r\nContent-Length: 0\r\n", "Content-Length: 0\r\n"),
        ])
    func fewHopByHopLines(lines: String, endToEnd: String) throws {
        var parser = HTTP1ResponseParser()
        parser.requestSent(isHead: false)
        var buffer = ByteBuffer(string: "HTTP/1.1 200 OK\r\n" + lines + "\r\n")
        guard case .head(let head) = try parser.next(&buffer) else {
            Issue.record("no head")
            return
        }
        #expect(head.hasHopByHop)
        var out = ByteBuffer()
        head.writeEndToEndLines(into: &out)
        #expect(String(buffer: out) == endToEnd)
    }
}
