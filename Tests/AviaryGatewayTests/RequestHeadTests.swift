//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHTTP1
import Testing

@testable import AviaryGateway

/// A request head kept as bytes (`RequestHead` from `HTTP1RequestParser.nextPart`): what the
/// parser's walk notes must be what the proxy read from NIO's head before, and the fields it
/// writes upstream must be the ones NIO's head would have written.
@Suite("Request head as bytes")
struct RequestHeadTests {
    /// The first head parsed from `input`.
    static func head(_ input: String) throws -> RequestHead {
        var parser = HTTP1RequestParser(maxHeadBytes: 65_536)
        var buffer = ByteBuffer(string: input)
        guard case .head(let head)? = try parser.nextPart(&buffer) else {
            Issue.record("no head in \(input)")
            throw HTTP1RequestError.badRequestLine
        }
        return head
    }

    static let heads: [String] = [
        "GET /small HTTP/1.1\r\nHost: 127.0.0.1:8304\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        "GET /a?b=c HTTP/1.1\r\nHost:  example \r\nX-Empty:\r\nx-tab:\ta \tb\t\r\n\r\n",
        "GET / HTTP/1.1\r\nHOST: First\r\nhost: second\r\nX-Empty: \r\n\r\n",
        "POST /up HTTP/1.1\r\nContent-Length: 11\r\nExpect: 100-Continue\r\n\r\n",
        "POST /up HTTP/1.1\r\nExpect: 100-continue\r\nExpect: nothing\r\nContent-Length: 1\r\n\r\n",
        "PUT /c HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nconnection: Keep-Alive, X-Other\r\nX-Other: 1\r\n\r\n",
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n",
        "GET / HTTP/1.1\r\nTE: trailers\r\nUpgrade: x\r\nProxy-Connection: y\r\nKeep-Alive: 5\r\nTrailer: z\r\n\r\n",
        "GET / HTTP/1.1\r\nProxy-Authorization: a\r\nProxy-Authenticate: b\r\n\r\n",
        "GET / HTTP/1.1\r\nForwarded: for=1.2.3.4\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
        "GET / HTTP/1.1\r\nx-forwarded-host: h\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Forwarded-Proto: https\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Aviary-Subject: admin\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Forwarded-Client-Cert: Hash=1\r\n\r\n",
        "DELETE /x HTTP/1.1\r\nIdempotency-Key: k1\r\nAuthorization: Bearer t\r\n\r\n",
        "PURGE /cache HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Utf8: caf\u{E9}\r\n\r\n",
    ]

    @Test("the walk finds what ProxyHeaders.inspect finds in NIO's head", arguments: heads)
    func inspectionAsBefore(input: String) throws {
        let head = try Self.head(input)
        let nio = head.nio
        #expect(head.inspection == ProxyHeaders.inspect(nio))
        #expect(head.host == nio.headers.first(name: "host"))
        #expect(head.hasIdempotencyKey == nio.headers.contains(name: "idempotency-key"))
        #expect(head.isKeepAlive == nio.isKeepAlive)
        #expect(head.method == nio.method)
        #expect(head.uri == nio.uri)
        #expect(head.version == nio.version)
        // And a head NIO's way (an HTTP/2 stream's) says the same.
        let given = RequestHead(nio)
        #expect(given.inspection == head.inspection)
        #expect(given.host == head.host)
        #expect(given.hasIdempotencyKey == head.hasIdempotencyKey)
        #expect(given.isKeepAlive == head.isKeepAlive)
    }

    @Test("the fields written upstream are those NIO's head writes", arguments: heads)
    func writtenAsBefore(input: String) throws {
        let head = try Self.head(input)
        var expected = ByteBuffer()
        expected.writeHTTPFields(head.nio.headers)
        var written = ByteBuffer()
        head.writeFields(into: &written)
        #expect(String(buffer: written) == String(buffer: expected))
        // Materialized, the same.
        var materialized = head
        materialized.materialize()
        #expect(materialized.isMaterialized)
        var again = ByteBuffer()
        materialized.writeFields(into: &again)
        #expect(String(buffer: again) == String(buffer: expected))
    }

    @Test("lines are copied as one block only when each is exactly name, colon, space, value")
    func canonicalLines() throws {
        #expect(try Self.head("GET / HTTP/1.1\r\nHost: a\r\nX-Empty: \r\n\r\n").linesAreCanonical)
        #expect(try Self.head("GET / HTTP/1.1\r\n\r\n").linesAreCanonical)
        for line in ["Host:a", "Host:  a", "Host: a ", "Host:\ta", "Host: a\t", "X-Empty:"] {
            #expect(try !Self.head("GET / HTTP/1.1\r\nX-First: 1\r\n\(line)\r\n\r\n").linesAreCanonical, "\(line)")
        }
    }

    @Test("Host is the first one, in any case; its absence is nil")
    func host() throws {
        #expect(try Self.head("GET / HTTP/1.1\r\nhOsT: One\r\nHost: two\r\n\r\n").host == "One")
        #expect(try Self.head("GET / HTTP/1.1\r\nX-Host: no\r\nHosts: no\r\n\r\n").host == nil)
        #expect(try Self.head("GET / HTTP/1.1\r\nHost:\r\n\r\n").host == "")
    }

    @Test("a head is made of the lines only when asked; the lines stay a slice of the read")
    func lazy() throws {
        let head = try Self.head("GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n")
        #expect(!head.isMaterialized)
        #expect(head.lines.map { String(buffer: $0) } == "Host: a\r\nAccept: */*\r\n")
        #expect(head.nio.headers.map { "\($0.name)=\($0.value)" } == ["Host=a", "Accept=*/*"])
        // A `Connection` field makes it at once: its keep-alive is NIO's.
        #expect(try Self.head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").isMaterialized)
    }

    @Test("invalid heads are refused by nextPart as by next", arguments: HTTP1RequestParserTests.malformed)
    func refused(name: String, input: String, error: HTTP1RequestError) {
        #expect(throws: error, "\(name)") {
            var parser = HTTP1RequestParser(maxHeadBytes: 65_536)
            var buffer = ByteBuffer(string: input)
            while try parser.nextPart(&buffer) != nil {}
        }
    }
}
