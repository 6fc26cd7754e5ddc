//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHTTP1

// Hot path: a request head of an HTTP/1.x connection stays the bytes it arrived as. The parser
// notes, in the one walk that checks the lines, what the proxy reads of every request (framing,
// the fields the gateway must edit or may not forward, `Host`, `Idempotency-Key`), so routing
// and forwarding a request whose route has no policies need no `HTTPRequestHead`: no `String`
// per field, no CoW storage, no fields array (two `malloc`s a request fewer). The features that
// read or edit fields (CORS, authentication, rate limits keyed by header, caching, composition,
// local answers, header rewrites and variables, mirrors, trace context, ring hashing, routes
// matching `host` or headers, hop-by-hop removal) ask for ``nio``, made from the lines once per
// request (``materialize()``).

/// A request head as the proxy takes it: from the HTTP/1 parser as the bytes of its lines with
/// what one walk over them found, or NIO's head (an HTTP/2 stream's, made by its codec).
///
/// ```swift
/// var parser = HTTP1RequestParser(maxHeadBytes: 65_536)
/// var bytes = ByteBuffer(string: "GET /a HTTP/1.1\r\nHost: example\r\n\r\n")
/// if case .head(let head) = try parser.nextPart(&bytes) {
///     head.host            // "example"
///     head.nio.headers     // [("Host", "example")], made from the lines on demand
/// }
/// ```
struct RequestHead {
    let method: HTTPMethod
    let version: HTTPVersion
    let uri: String
    /// What ``ProxyHeaders/inspect(_:)`` finds in the head (the parser's walk finds the same).
    let inspection: ProxyHeaders.RequestInspection
    /// The first `Host` field's value.
    let host: String?
    /// Whether an `Idempotency-Key` field came.
    let hasIdempotencyKey: Bool
    /// NIO's `isKeepAlive`: HTTP/1.1 without `Connection: close`, HTTP/1.0 with
    /// `Connection: keep-alive`.
    let isKeepAlive: Bool
    /// The header lines as received, each ending with CRLF (a slice of the read buffer), for a
    /// head from the HTTP/1 parser; `nil` for NIO's heads.
    let lines: ByteBuffer?
    /// Whether every one of ``lines`` is `name: value` CRLF exactly as
    /// `ByteBuffer.writeHTTPField` writes it (one space after the colon, none at the end), so
    /// that the lines can be copied upstream as one block.
    let linesAreCanonical: Bool
    /// NIO's head: given, or made from the lines by ``materialize()``.
    private var made: HTTPRequestHead?

    /// A head NIO's way (an HTTP/2 stream's): the inspection is ``ProxyHeaders/inspect(_:)``'s.
    init(_ head: HTTPRequestHead) {
        self.method = head.method
        self.version = head.version
        self.uri = head.uri
        self.inspection = ProxyHeaders.inspect(head)
        self.host = head.headers.first(name: "host")
        self.hasIdempotencyKey = head.headers.contains(name: "idempotency-key")
        self.isKeepAlive = head.isKeepAlive
        self.lines = nil
        self.linesAreCanonical = false
        self.made = head
    }

    /// A head from the HTTP/1 parser: `lines` were checked by its walk, which found the rest.
    /// With a `Connection` field, NIO's head is made at once (the field makes the request take
    /// the path that edits fields anyway), and its `isKeepAlive` decides.
    init(
        method: HTTPMethod, version: HTTPVersion, uri: String, lines: ByteBuffer, linesAreCanonical: Bool,
        inspection: ProxyHeaders.RequestInspection, host: String?, hasIdempotencyKey: Bool, hasConnection: Bool
    ) {
        self.method = method
        self.version = version
        self.uri = uri
        self.lines = lines
        self.linesAreCanonical = linesAreCanonical
        self.inspection = inspection
        self.host = host
        self.hasIdempotencyKey = hasIdempotencyKey
        if hasConnection {
            let head = Self.make(method: method, version: version, uri: uri, lines: lines)
            self.made = head
            self.isKeepAlive = head.isKeepAlive
        } else {
            self.made = nil
            self.isKeepAlive = version.major == 1 && version.minor >= 1
        }
    }

    /// NIO's head, fields as parsed (names as sent, values without surrounding whitespace):
    /// made from the lines on each call until ``materialize()`` keeps one.
    var nio: HTTPRequestHead {
        if let made = self.made { return made }
        return Self.make(method: self.method, version: self.version, uri: self.uri, lines: self.lines)
    }

    /// Whether NIO's head is at hand without making it.
    var isMaterialized: Bool { self.made != nil }

    /// Makes NIO's head once, for a request whose route reads or edits its fields.
    mutating func materialize() {
        if self.made == nil { self.made = self.nio }
    }

    private static func make(
        method: HTTPMethod, version: HTTPVersion, uri: String, lines: ByteBuffer?
    ) -> HTTPRequestHead {
        guard let lines, lines.readableBytes > 0 else {
            return HTTPRequestHead(version: version, method: method, uri: uri)
        }
        return HTTPRequestHead(
            version: version, method: method, uri: uri, headers: HTTP1RequestParser.headers(ofCheckedLines: lines))
    }

    /// Writes the client's fields as `name: value` CRLF lines, as `writeHTTPFields` writes NIO's:
    /// canonical lines as one block, others field by field.
    func writeFields(into buffer: inout ByteBuffer) {
        guard let lines = self.lines else {
            buffer.writeHTTPFields(self.nio.headers)
            return
        }
        if self.linesAreCanonical {
            buffer.writeImmutableBuffer(lines)
            return
        }
        lines.withUnsafeReadableBytes { bytes in
            var framing = HTTP1RequestParser.FramingHeaders()
            // Checked by the parser already: this walk cannot fail.
            try? HTTP1RequestParser.walkFields(bytes, from: 0, framing: &framing) { name, value in
                buffer.writeHTTPField(name, value)
            }
        }
    }
}

/// A request part as the proxy takes it: a head from the HTTP/1 parser stays bytes.
enum RequestPart {
    case head(RequestHead)
    case body(ByteBuffer)
    case end(HTTPHeaders?)

    init(_ part: HTTPServerRequestPart) {
        switch part {
        case .head(let head): self = .head(RequestHead(head))
        case .body(let body): self = .body(body)
        case .end(let trailers): self = .end(trailers)
        }
    }
}

extension ByteBuffer {
    /// Writes one `name: value` CRLF line from bytes.
    mutating func writeHTTPField(_ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) {
        let count = name.count + value.count + 4
        self.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { out in
            out.copyMemory(from: name)
            out[name.count] = UInt8(ascii: ":")
            out[name.count + 1] = UInt8(ascii: " ")
            UnsafeMutableRawBufferPointer(rebasing: out[(name.count + 2)...]).copyMemory(from: value)
            out[count - 2] = UInt8(ascii: "\r")
            out[count - 1] = UInt8(ascii: "\n")
            return count
        }
    }
}
