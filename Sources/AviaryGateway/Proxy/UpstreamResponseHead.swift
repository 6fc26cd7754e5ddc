//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHTTP1

// Hot path: an upstream's response head stays bytes. The proxy decides on the status, keep-alive
// and framing, which the parser found in its one walk, and copies the header lines to the client
// minus the hop-by-hop ones (an HTTP/2 stream's HPACK block is made from them as well);
// `HTTPHeaders` (a `String` pair per field) is built only for the features that read or change
// fields (caching, response header rewrites, policy headers).

/// What an upstream connection hands the exchange using it.
enum UpstreamResponsePart {
    case head(UpstreamResponseHead)
    /// Body bytes, without any chunk framing.
    case body(ByteBuffer)
    /// The end of the response, with the trailers of a chunked or HTTP/2 body.
    case end(HTTPHeaders?)
}

/// A response head from an upstream: its status and framing as parsed, and its header lines as
/// received (HTTP/1.x) or as NIO's HTTP/2 codec gave them.
///
/// ```swift
/// var parser = HTTP1ResponseParser()
/// parser.requestSent(isHead: false)
/// var bytes = ByteBuffer(string: "HTTP/1.1 200 OK\r\nServer: a\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
/// if case .head(let head) = try parser.next(&bytes) {
///     var out = ByteBuffer()
///     head.writeEndToEndLines(into: &out)  // "Server: a\r\nContent-Length: 0\r\n"
/// }
/// ```
struct UpstreamResponseHead {
    var version: HTTPVersion
    var status: HTTPResponseStatus
    /// Whether the upstream keeps the connection open after this response (its version and
    /// `Connection` tokens).
    var isKeepAlive: Bool
    var hasContentLength: Bool
    var hasTransferEncoding: Bool
    /// Whether a header line is hop-by-hop (RFC 9110 section 7.6.1).
    var hasHopByHop: Bool
    /// Whether `Connection` names fields other than `close` and `keep-alive`, which are then
    /// hop-by-hop too: the head is then edited through ``headers``.
    var connectionNamesOthers: Bool
    /// The header lines as received, each `name: value` CRLF (checked by the parser), or `nil`
    /// for a head that came as `HTTPHeaders`.
    var lines: ByteBuffer?
    /// Where the parser found the hop-by-hop lines among ``lines``, when it did.
    var hopByHopLines = HopByHopLines()
    private let given: HTTPHeaders?

    /// The byte ranges of the first two hop-by-hop lines among a head's lines (each from its
    /// name to its LF), noted by the parser's walk. Hot path: most responses have one
    /// (`Connection`), and ``writeEndToEndLines(into:)`` copies the lines around them instead of
    /// walking every line again; with more of them, or none noted, it walks.
    struct HopByHopLines {
        var first: Range<Int>?
        var second: Range<Int>?
        /// More than two, or one whose place is not known: the lines are walked.
        var unknown = false

        mutating func add(_ range: Range<Int>) {
            if self.first == nil {
                self.first = range
            } else if self.second == nil {
                self.second = range
            } else {
                self.unknown = true
            }
        }
    }

    init(
        version: HTTPVersion, status: HTTPResponseStatus, isKeepAlive: Bool, hasContentLength: Bool,
        hasTransferEncoding: Bool, hasHopByHop: Bool, connectionNamesOthers: Bool
    ) {
        self.version = version
        self.status = status
        self.isKeepAlive = isKeepAlive
        self.hasContentLength = hasContentLength
        self.hasTransferEncoding = hasTransferEncoding
        self.hasHopByHop = hasHopByHop
        self.connectionNamesOthers = connectionNamesOthers
        self.lines = nil
        self.given = nil
    }

    /// A head that came as NIO's type (from an HTTP/2 upstream stream's codec).
    init(_ head: HTTPResponseHead) {
        self.version = head.version
        self.status = head.status
        self.isKeepAlive = head.isKeepAlive
        self.hasContentLength = head.headers.contains(name: "content-length")
        self.hasTransferEncoding = head.headers.contains(name: "transfer-encoding")
        self.hasHopByHop = head.headers.contains { ProxyHeaders.isHopByHop($0.name) }
        self.connectionNamesOthers = self.hasHopByHop
        self.lines = nil
        self.given = head.headers
    }

    /// Whether the body's end is known without the connection closing.
    var isFramed: Bool { self.hasContentLength || self.hasTransferEncoding }

    /// The fields as `HTTPHeaders`, hop-by-hop ones included: built from the lines on each call,
    /// so only for the features that need them.
    var headers: HTTPHeaders {
        if let given = self.given { return given }
        guard let lines = self.lines else { return HTTPHeaders() }
        return HTTP1RequestParser.headers(ofCheckedLines: lines)
    }

    /// Writes the header lines that are not hop-by-hop, as received. Only for heads with
    /// ``lines`` and without ``connectionNamesOthers``.
    func writeEndToEndLines(into buffer: inout ByteBuffer) {
        guard let lines = self.lines else { return }
        guard self.hasHopByHop else {
            buffer.writeImmutableBuffer(lines)
            return
        }
        if !self.hopByHopLines.unknown, let first = self.hopByHopLines.first {
            // The parser noted where the hop-by-hop lines are: the rest goes around them.
            let second = self.hopByHopLines.second
            lines.withUnsafeReadableBytes { bytes in
                buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[..<first.lowerBound]))
                var start = first.upperBound
                if let second {
                    buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[start..<second.lowerBound]))
                    start = second.upperBound
                }
                buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[start...]))
            }
            return
        }
        lines.withUnsafeReadableBytes { bytes in
            var lineStart = 0
            while lineStart < bytes.count {
                var colon = lineStart
                while bytes[colon] != UInt8(ascii: ":") { colon += 1 }
                var lineEnd = colon
                while bytes[lineEnd] != UInt8(ascii: "\n") { lineEnd += 1 }
                lineEnd += 1
                if !Self.isHopByHop(UnsafeRawBufferPointer(rebasing: bytes[lineStart..<colon])) {
                    buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[lineStart..<lineEnd]))
                }
                lineStart = lineEnd
            }
        }
    }

    /// Whether a field name is hop-by-hop (any case): ``ProxyHeaders/isHopByHop(_:)`` on bytes.
    static func isHopByHop(_ name: UnsafeRawBufferPointer) -> Bool {
        switch name.count {
        case 2: HTTP1RequestParser.equalsLowercase(name, "te")
        case 7:
            HTTP1RequestParser.equalsLowercase(name, "trailer") || HTTP1RequestParser.equalsLowercase(name, "upgrade")
        case 10:
            HTTP1RequestParser.equalsLowercase(name, "connection")
                || HTTP1RequestParser.equalsLowercase(name, "keep-alive")
        case 16: HTTP1RequestParser.equalsLowercase(name, "proxy-connection")
        case 17: HTTP1RequestParser.equalsLowercase(name, "transfer-encoding")
        case 18: HTTP1RequestParser.equalsLowercase(name, "proxy-authenticate")
        case 19: HTTP1RequestParser.equalsLowercase(name, "proxy-authorization")
        default: false
        }
    }
}
