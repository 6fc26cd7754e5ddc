//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHTTP1

// Hot path: hand-written on purpose, like `HTTP1RequestParser` on the downstream side. Every
// upstream byte goes through this parser. With NIO's `HTTPResponseDecoder` and
// `HTTPResponseEncoder`, a response head became an `HTTPHeaders` of `String`s and was written out
// again field by field, each part boxed on its way through two pipelines; measured on 2026-12-01,
// NIO's four HTTP/1 codecs cost a byte relay about 10 µs of CPU per request, half of nginx's
// whole cost per proxied request. The proxy needs the status, framing it can trust and the header
// lines as sent: this parser walks the head once, keeps its header lines as a slice of the read
// buffer (``UpstreamResponseHead``), which the proxy copies to the client minus the hop-by-hop
// lines, and hands body bytes on as slices too (no copy).
// It is strict where a lenient proxy could be confused about where a response ends: CRLF line
// endings only, no obs-fold, one `Content-Length` of digits only, `Transfer-Encoding` exactly
// `chunked` and never with `Content-Length`, chunk sizes in hex that fit an `Int`, CRLF after
// every chunk, no `101` (the proxy never asks for an upgrade). Any of those is an
// `HTTP1ResponseError`, which the proxy answers with a `502` (or a cut connection once the
// response head went out); the upstream connection is closed.

/// Why an upstream response could not be decoded.
enum HTTP1ResponseError: Error, Equatable, CustomStringConvertible {
    /// The status line and headers (or a chunk's size line, or trailers) are longer than the limit.
    case headTooLarge(limit: Int)
    case badStatusLine
    case unsupportedVersion
    /// A header line that is not `name: value` CRLF (the request parser's reason).
    case badHeader(HTTP1RequestError)
    case multipleContentLengths
    case badContentLength
    case contentLengthWithTransferEncoding
    case unsupportedTransferEncoding
    /// `101 Switching Protocols`, which the proxy never asks for.
    case unexpectedUpgrade
    case badChunkSize
    case badChunkEnd
    /// The connection closed inside a response (its head or its body).
    case truncated

    var description: String {
        switch self {
        case .headTooLarge(let limit): "the response head is larger than \(limit) bytes"
        case .badStatusLine: "the status line is not version, three-digit status and reason"
        case .unsupportedVersion: "the version is not HTTP/1.0 or HTTP/1.1"
        case .badHeader(let reason): "\(reason)"
        case .multipleContentLengths: "more than one Content-Length"
        case .badContentLength: "Content-Length is not a number"
        case .contentLengthWithTransferEncoding: "both Content-Length and Transfer-Encoding"
        case .unsupportedTransferEncoding: "Transfer-Encoding other than chunked"
        case .unexpectedUpgrade: "101 Switching Protocols without an upgrade request"
        case .badChunkSize: "a chunk size is not a hexadecimal number"
        case .badChunkEnd: "a chunk does not end with CRLF"
        case .truncated: "the connection closed inside the response"
        }
    }

    init(_ error: HTTP1RequestError, limit: Int) {
        switch error {
        case .headTooLarge: self = .headTooLarge(limit: limit)
        case .badChunkSize: self = .badChunkSize
        case .badChunkEnd: self = .badChunkEnd
        default: self = .badHeader(error)
        }
    }
}

/// Decodes the HTTP/1.x responses of one upstream connection into ``UpstreamResponsePart``s:
/// `.head` (the header lines kept as received), body slices, `.end` (with the trailers of a
/// chunked body, if any).
///
/// Interim `1xx` responses are skipped (the proxy has already answered `Expect: 100-continue`
/// itself). Responses to `HEAD`, `204` and `304` have no body whatever their headers say; a
/// response with neither `Content-Length` nor `Transfer-Encoding` ends when the connection does
/// (``finish(_:)``).
///
/// ```swift
/// var parser = HTTP1ResponseParser()
/// parser.requestSent(isHead: false)
/// var buffer = ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
/// while let part = try parser.next(&buffer) { print(part) }  // .head, .body("hi"), .end(nil)
/// ```
struct HTTP1ResponseParser {
    private enum State {
        case head
        /// After a head without a body, or the last body bytes: the `.end` is due.
        case endDue
        case body(remaining: Int)
        /// A body that ends with the connection.
        case untilClose
        case chunked(HTTP1ChunkedBody)
    }

    /// The default limit of a response head: llhttp's, which the proxy used before.
    static let defaultMaxHeadBytes = 80 * 1024

    private var state = State.head
    private var scanner: HTTP1Scanner
    /// Whether the oldest request sent and not answered yet was a `HEAD`; `nil` when none waits.
    /// Hot path: the proxy sends one request at a time, so this is all there is, with no array
    /// appended to and emptied per request.
    private var oldest: Bool?
    /// The same for requests sent after the oldest one (pipelined), oldest first.
    private var later: [Bool] = []
    private var laterStart = 0

    init(maxHeadBytes: Int = Self.defaultMaxHeadBytes) {
        self.scanner = HTTP1Scanner(limit: maxHeadBytes)
    }

    /// Notes a request head written on the connection: its response is decoded next (after the
    /// responses of earlier requests).
    mutating func requestSent(isHead: Bool) {
        if self.oldest == nil {
            self.oldest = isHead
        } else {
            self.later.append(isHead)
        }
    }

    /// Whether the response being decoded answers a `HEAD`; consumed with its final head.
    private mutating func answeringHead() -> Bool {
        guard let isHead = self.oldest else { return false }
        if self.laterStart < self.later.count {
            self.oldest = self.later[self.laterStart]
            self.laterStart += 1
            if self.laterStart == self.later.count {
                self.later.removeAll(keepingCapacity: true)
                self.laterStart = 0
            }
        } else {
            self.oldest = nil
        }
        return isHead
    }

    /// The next part decoded from `buffer` (its bytes consumed), or `nil` when more bytes are
    /// needed.
    mutating func next(_ buffer: inout ByteBuffer) throws(HTTP1ResponseError) -> UpstreamResponsePart? {
        switch self.state {
        case .head:
            while true {
                guard let end = try self.scan(buffer, section: true) else { return nil }
                let limit = self.scanner.limit
                var (head, framing, linesStart) = try buffer.withUnsafeReadableBytes {
                    bytes throws(HTTP1ResponseError) in
                    try Self.parseHead(UnsafeRawBufferPointer(rebasing: bytes[..<end]), limit: limit)
                }
                head.lines = buffer.getSlice(at: buffer.readerIndex + linesStart, length: end - linesStart)
                buffer.moveReaderIndex(forwardBy: end + 2)
                self.scanner.reset()
                let code = head.status.code
                if code < 200 {
                    // Interim: skipped; the final response follows on the same connection.
                    if code == 101 { throw .unexpectedUpgrade }
                    continue
                }
                let bodyless = self.answeringHead() || code == 204 || code == 304
                switch framing {
                case _ where bodyless: self.state = .endDue
                case .length(0): self.state = .endDue
                case .length(let length): self.state = .body(remaining: length)
                case .chunked: self.state = .chunked(HTTP1ChunkedBody())
                case .close: self.state = .untilClose
                }
                return .head(head)
            }
        case .endDue:
            self.state = .head
            return .end(nil)
        case .body(let remaining):
            let count = min(remaining, buffer.readableBytes)
            guard count > 0, let slice = buffer.readSlice(length: count) else { return nil }
            self.state = remaining == count ? .endDue : .body(remaining: remaining - count)
            return .body(slice)
        case .untilClose:
            guard buffer.readableBytes > 0, let slice = buffer.readSlice(length: buffer.readableBytes) else {
                return nil
            }
            return .body(slice)
        case .chunked(var body):
            let step: HTTP1ChunkedBody.Step?
            do {
                step = try body.next(&buffer, scanner: &self.scanner)
            } catch {
                throw HTTP1ResponseError(error, limit: self.scanner.limit)
            }
            switch step {
            case .body(let slice)?:
                self.state = .chunked(body)
                return .body(slice)
            case .end(let trailers)?:
                self.state = .head
                return .end(trailers)
            case nil:
                self.state = .chunked(body)
                return nil
            }
        }
    }

    /// Whether the next part is an `.end` that needs no more bytes.
    var endIsDue: Bool {
        if case .endDue = self.state { return true }
        return false
    }

    /// The connection closed after `buffer`'s bytes (which ``next(_:)`` left): the `.end` of a
    /// body delimited by the close, `nil` between responses, or ``HTTP1ResponseError/truncated``
    /// inside one.
    mutating func finish(_ buffer: ByteBuffer) throws(HTTP1ResponseError) -> UpstreamResponsePart? {
        switch self.state {
        case .untilClose:
            self.state = .head
            return .end(nil)
        case .endDue:
            self.state = .head
            return .end(nil)
        case .head where buffer.readableBytes == 0:
            return nil
        default:
            throw .truncated
        }
    }

    private mutating func scan(_ buffer: ByteBuffer, section: Bool) throws(HTTP1ResponseError) -> Int? {
        do {
            return section ? try self.scanner.section(buffer) : try self.scanner.line(buffer)
        } catch {
            throw HTTP1ResponseError(error, limit: self.scanner.limit)
        }
    }

    // MARK: Parsing a complete head

    private enum Framing {
        case length(Int)
        case chunked
        case close
    }

    /// Parses a head (status line and header lines, each ending with CRLF, without the empty line).
    private static func parseHead(
        _ bytes: UnsafeRawBufferPointer, limit: Int
    ) throws(HTTP1ResponseError) -> (UpstreamResponseHead, Framing, linesStart: Int) {
        // `HTTP/1.x SP 3DIGIT SP reason CRLF`; the reason may be empty, and so may the space
        // before it (which servers leave out often enough).
        guard bytes.count >= 14 else { throw .badStatusLine }
        let version: HTTPVersion
        switch HTTP1RequestParser.load8(bytes, at: 0) {
        case HTTP1RequestParser.http11: version = .http1_1
        case HTTP1RequestParser.http10: version = .http1_0
        default:
            throw bytes[0] == UInt8(ascii: "H") && bytes[4] == UInt8(ascii: "/") ? .unsupportedVersion : .badStatusLine
        }
        guard bytes[8] == UInt8(ascii: " ") else { throw .badStatusLine }
        var code = 0
        for index in 9..<12 {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else { throw .badStatusLine }
            code = code * 10 + Int(digit)
        }
        guard code >= 100 else { throw .badStatusLine }
        var index = 12
        var reasonStart = 12
        if bytes[index] == UInt8(ascii: " ") {
            index += 1
            reasonStart = index
            while bytes[index] != UInt8(ascii: "\r") {
                let byte = bytes[index]
                if byte < 0x20 && byte != UInt8(ascii: "\t") || byte == 0x7F { throw .badStatusLine }
                index += 1
            }
        }
        guard bytes[index] == UInt8(ascii: "\r"), bytes[index + 1] == UInt8(ascii: "\n") else {
            throw .badStatusLine
        }
        var status = HTTPResponseStatus(statusCode: code)
        if case .custom = status {
            let reason = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[reasonStart..<index]), as: UTF8.self)
            status = HTTPResponseStatus(statusCode: code, reasonPhrase: reason)
        }
        index += 2
        let linesStart = index
        var framing = HTTP1RequestParser.FramingHeaders()
        var connection = ConnectionTokens()
        var hasHopByHop = false
        var hopByHopLines = UpstreamResponseHead.HopByHopLines()
        do {
            try HTTP1RequestParser.walkFields(bytes, from: index, framing: &framing) { name, value in
                guard UpstreamResponseHead.isHopByHop(name) else { return }
                hasHopByHop = true
                // Where the line lies among the lines (from its name to its LF), so that the
                // proxy copies the others around it without walking them again. `name` and
                // `value` point into `bytes`, and the walk checked that the line ends with CRLF.
                if let base = bytes.baseAddress, let nameStart = name.baseAddress, let valueStart = value.baseAddress {
                    var lineEnd = base.distance(to: valueStart) + value.count
                    while bytes[lineEnd] != UInt8(ascii: "\n") { lineEnd += 1 }
                    hopByHopLines.add((base.distance(to: nameStart) - linesStart)..<(lineEnd + 1 - linesStart))
                } else {
                    hopByHopLines.unknown = true
                }
                if name.count == 10 && HTTP1RequestParser.equalsLowercase(name, "connection") {
                    connection.add(value)
                }
            }
        } catch {
            throw HTTP1ResponseError(error, limit: limit)
        }
        var head = UpstreamResponseHead(
            version: version, status: status,
            isKeepAlive: version.minor >= 1 ? !connection.close : connection.keepAlive && !connection.close,
            hasContentLength: framing.contentLengths > 0, hasTransferEncoding: framing.transferEncodings > 0,
            hasHopByHop: hasHopByHop, connectionNamesOthers: connection.others)
        head.hopByHopLines = hopByHopLines
        // Where the body ends must be beyond doubt (RFC 9112 section 6.3), or the next response
        // on the connection could be taken from this one's body.
        if framing.transferEncodings > 0 {
            guard framing.transferEncodings == 1, framing.chunked else { throw .unsupportedTransferEncoding }
            guard framing.contentLengths == 0 else { throw .contentLengthWithTransferEncoding }
            return (head, .chunked, linesStart)
        }
        if framing.contentLengths > 1 { throw .multipleContentLengths }
        if framing.badContentLength { throw .badContentLength }
        return (head, framing.contentLength.map { .length($0) } ?? .close, linesStart)
    }

    /// What the `Connection` headers of a response say, token by token.
    private struct ConnectionTokens {
        var close = false
        var keepAlive = false
        /// Whether a token names another header, which is then hop-by-hop too.
        var others = false

        mutating func add(_ value: UnsafeRawBufferPointer) {
            var start = 0
            while start <= value.count {
                var end = start
                while end < value.count && value[end] != UInt8(ascii: ",") { end += 1 }
                var first = start
                var last = end
                while first < last && (value[first] == UInt8(ascii: " ") || value[first] == UInt8(ascii: "\t")) {
                    first += 1
                }
                while last > first && (value[last - 1] == UInt8(ascii: " ") || value[last - 1] == UInt8(ascii: "\t")) {
                    last -= 1
                }
                let token = UnsafeRawBufferPointer(rebasing: value[first..<last])
                if HTTP1RequestParser.equalsLowercase(token, "close") {
                    self.close = true
                } else if HTTP1RequestParser.equalsLowercase(token, "keep-alive") {
                    self.keepAlive = true
                } else if !token.isEmpty {
                    self.others = true
                }
                start = end + 1
            }
        }
    }
}
