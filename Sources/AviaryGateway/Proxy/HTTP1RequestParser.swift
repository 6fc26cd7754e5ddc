//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHTTP1

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// Hot path: hand-written on purpose. Every downstream byte goes through this decoder, and NIO's
// `HTTPRequestDecoder` (llhttp behind C callbacks, with a state machine of its own on top and a
// second pass to build the head) costs the proxy more per request than the proxying around it.
// A proxy needs less than a general server: the request line, the header lines as sent, and
// framing it can trust. This parser walks the head once, straight from the `ByteBuffer`, and
// hands body bytes on as slices of the read buffer (no copy). Where leniency would help request
// smuggling it is strict: CRLF line endings only, no obs-fold, nothing between a header name and
// its colon, no control characters, one `Content-Length` of digits only, `Transfer-Encoding`
// exactly `chunked` (never with `Content-Length`, never on HTTP/1.0), chunk sizes in hex that
// fit an `Int`, CRLF after every chunk. Any of those is an `HTTP1RequestError`, and the proxy
// answers 400 (431 for a head over the limit) and closes the connection.

/// Why a request could not be decoded; the proxy answers 400 (431 for ``headTooLarge``) and
/// closes the connection.
enum HTTP1RequestError: Error, Equatable, CustomStringConvertible {
    /// The request line and headers (or a chunk's size line, or trailers) are longer than
    /// `limits.max_header_bytes`.
    case headTooLarge(limit: Int)
    /// A line ends with LF alone, or a CR is not followed by LF.
    case badLineEnding
    case badRequestLine
    case badMethod
    case badTarget
    case unsupportedVersion
    /// A header name with characters outside `token`, whitespace before the colon, or no colon.
    case badHeaderName
    /// A header value with control characters.
    case badHeaderValue
    /// A header line that starts with whitespace (obs-fold, RFC 9112 section 5.2).
    case foldedHeader
    case multipleContentLengths
    case badContentLength
    case contentLengthWithTransferEncoding
    case unsupportedTransferEncoding
    case badChunkSize
    case badChunkEnd

    var description: String {
        switch self {
        case .headTooLarge(let limit): "the request head is larger than \(limit) bytes"
        case .badLineEnding: "a line does not end with CRLF"
        case .badRequestLine: "the request line is not method, target and version"
        case .badMethod: "the method is not a token"
        case .badTarget: "the request target has invalid characters"
        case .unsupportedVersion: "the version is not HTTP/1.0 or HTTP/1.1"
        case .badHeaderName: "a header name is not a token followed by a colon"
        case .badHeaderValue: "a header value has control characters"
        case .foldedHeader: "a header line is folded (obs-fold)"
        case .multipleContentLengths: "more than one Content-Length"
        case .badContentLength: "Content-Length is not a number"
        case .contentLengthWithTransferEncoding: "both Content-Length and Transfer-Encoding"
        case .unsupportedTransferEncoding: "Transfer-Encoding other than chunked"
        case .badChunkSize: "a chunk size is not a hexadecimal number"
        case .badChunkEnd: "a chunk does not end with CRLF"
        }
    }
}

/// Decodes HTTP/1.x requests into `HTTPServerRequestPart`s for the proxy: `.head`, body slices,
/// `.end` (with the trailers of a chunked body, if any). Pipelined requests follow one another.
///
/// ```swift
/// var parser = HTTP1RequestParser(maxHeadBytes: 65_536)
/// var buffer = ByteBuffer(string: "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
/// while let part = try parser.next(&buffer) { print(part) }  // .head, then .end(nil)
/// ```
struct HTTP1RequestParser {
    private enum State {
        case head
        /// After a head without a body, or the last body bytes: the `.end` is due.
        case endDue
        case body(remaining: Int)
        case chunked(HTTP1ChunkedBody)
    }

    private enum Framing {
        case length(Int)
        case chunked
    }

    private var state = State.head
    private var scanner: HTTP1Scanner
    /// The longest request head, chunk size line and trailer section accepted.
    var maxHeadBytes: Int { self.scanner.limit }

    init(maxHeadBytes: Int) {
        self.scanner = HTTP1Scanner(limit: maxHeadBytes)
    }

    /// The next part decoded from `buffer` (its bytes consumed), or `nil` when more bytes are
    /// needed; a head as NIO's type (``nextPart(_:)`` keeps it as bytes).
    mutating func next(_ buffer: inout ByteBuffer) throws(HTTP1RequestError) -> HTTPServerRequestPart? {
        switch try self.nextPart(&buffer) {
        case .head(let head)?: .head(head.nio)
        case .body(let body)?: .body(body)
        case .end(let trailers)?: .end(trailers)
        case nil: nil
        }
    }

    /// The next part decoded from `buffer` (its bytes consumed), or `nil` when more bytes are
    /// needed. A head is the bytes of its lines (a slice of `buffer`) with what the walk that
    /// checked them found: no `String` per field, no `HTTPHeaders`.
    mutating func nextPart(_ buffer: inout ByteBuffer) throws(HTTP1RequestError) -> RequestPart? {
        switch self.state {
        case .head:
            if self.scanner.scanned == 0 {
                // Empty lines before a request line are ignored (RFC 9112 section 2.2).
                while let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
                    first == UInt8(ascii: "\r") || first == UInt8(ascii: "\n")
                {
                    guard let pair = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self) else { return nil }
                    guard pair == 0x0D0A else { throw .badLineEnding }
                    buffer.moveReaderIndex(forwardBy: 2)
                }
            }
            guard let end = try self.scanner.section(buffer) else { return nil }
            let (head, framing) = try buffer.withUnsafeReadableBytes { bytes throws(HTTP1RequestError) in
                try Self.parseHead(UnsafeRawBufferPointer(rebasing: bytes[..<end]))
            }
            // The lines stay where they arrived: a slice of the read buffer, no copy.
            let lines = buffer.getSlice(at: buffer.readerIndex + head.linesStart, length: end - head.linesStart)!
            buffer.moveReaderIndex(forwardBy: end + 2)
            self.scanner.reset()
            switch framing {
            case .length(0): self.state = .endDue
            case .length(let length): self.state = .body(remaining: length)
            case .chunked: self.state = .chunked(HTTP1ChunkedBody())
            }
            return .head(
                RequestHead(
                    method: head.method, version: head.version, uri: head.uri, lines: lines,
                    linesAreCanonical: head.canonical, inspection: head.inspection, host: head.host,
                    hasIdempotencyKey: head.hasIdempotencyKey, hasConnection: head.hasConnection))
        case .endDue:
            self.state = .head
            return .end(nil)
        case .body(let remaining):
            let count = min(remaining, buffer.readableBytes)
            guard count > 0, let slice = buffer.readSlice(length: count) else { return nil }
            self.state = remaining == count ? .endDue : .body(remaining: remaining - count)
            return .body(slice)
        case .chunked(var body):
            let step = try body.next(&buffer, scanner: &self.scanner)
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

    /// Whether the next part is an `.end` that needs no more bytes (after a head without a
    /// body, or the last bytes of a body framed by length).
    var endIsDue: Bool {
        if case .endDue = self.state { return true }
        return false
    }

    // MARK: Parsing a complete head

    /// What the framing headers of a head said (the response parser's too).
    struct FramingHeaders {
        var contentLengths = 0
        var contentLength: Int?
        var badContentLength = false
        var transferEncodings = 0
        var chunked = false
    }

    /// What ``parseHead(_:)`` found: the request line, where the header lines start and what
    /// the proxy reads of them.
    private struct ParsedHead {
        var method: HTTPMethod
        var version: HTTPVersion
        var uri: String
        var linesStart: Int
        var canonical = true
        var inspection = ProxyHeaders.RequestInspection()
        var host: String?
        var hasIdempotencyKey = false
        var hasConnection = false
    }

    /// Parses a head (request line and header lines, each ending with CRLF, without the empty
    /// line).
    private static func parseHead(
        _ bytes: UnsafeRawBufferPointer
    ) throws(HTTP1RequestError) -> (ParsedHead, Framing) {
        // Method: a token up to one space.
        var index = 0
        while index < bytes.count && isTokenByte(bytes[index]) { index += 1 }
        guard index > 0 else { throw .badMethod }
        guard index < bytes.count else { throw .badRequestLine }
        guard bytes[index] == UInt8(ascii: " ") else {
            throw bytes[index] == UInt8(ascii: "\r") ? .badRequestLine : .badMethod
        }
        let method = Self.method(UnsafeRawBufferPointer(rebasing: bytes[..<index]))
        index += 1
        // Target: visible characters up to one space.
        let targetStart = index
        while index < bytes.count && bytes[index] > 0x20 && bytes[index] != 0x7F { index += 1 }
        guard index > targetStart, index < bytes.count else { throw .badTarget }
        guard bytes[index] == UInt8(ascii: " ") else {
            throw bytes[index] == UInt8(ascii: "\r") ? .badRequestLine : .badTarget
        }
        let uri = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[targetStart..<index]), as: UTF8.self)
        index += 1
        // Version: exactly HTTP/1.0 or HTTP/1.1, then CRLF.
        guard index + 10 <= bytes.count else { throw .badRequestLine }
        let version: HTTPVersion
        switch Self.load8(bytes, at: index) {
        case Self.http11: version = .http1_1
        case Self.http10: version = .http1_0
        default: throw .unsupportedVersion
        }
        index += 8
        guard bytes[index] == UInt8(ascii: "\r"), bytes[index + 1] == UInt8(ascii: "\n") else {
            throw .badRequestLine
        }
        index += 2
        var head = ParsedHead(method: method, version: version, uri: uri, linesStart: index)
        // As `ProxyHeaders.inspect` counts it: method, target, fields as `writeHTTPField` writes them.
        head.inspection.headBytes = uri.utf8.count + targetStart - 1 + 12
        var framing = FramingHeaders()
        try Self.walkFields(bytes, from: index, framing: &framing) { name, value in
            Self.note(name, value, in: bytes, into: &head)
        }
        // Request smuggling defences (RFC 9112 section 6.3).
        if framing.transferEncodings > 0 {
            guard framing.transferEncodings == 1, framing.chunked else { throw .unsupportedTransferEncoding }
            guard framing.contentLengths == 0 else { throw .contentLengthWithTransferEncoding }
            guard version == .http1_1 else { throw .unsupportedTransferEncoding }
            head.inspection.isChunked = true
            head.inspection.hasHopByHop = true
            return (head, .chunked)
        }
        if framing.contentLengths > 1 { throw .multipleContentLengths }
        if framing.badContentLength { throw .badContentLength }
        head.inspection.contentLength = framing.contentLength
        return (head, .length(framing.contentLength ?? 0))
    }

    /// Notes what the proxy reads of one field of a request head: what
    /// ``ProxyHeaders/inspect(_:)`` finds (framing aside, which the walk notes), `Host`,
    /// `Idempotency-Key`, `Connection`, and whether the line is `name: value` CRLF exactly.
    @inline(__always)
    private static func note(
        _ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer, in bytes: UnsafeRawBufferPointer,
        into head: inout ParsedHead
    ) {
        head.inspection.headBytes += name.count + value.count + 4
        if head.canonical {
            // One space after the colon, the value up to the CR: what `writeHTTPField` writes.
            let nameEnd = bytes.baseAddress!.distance(to: name.baseAddress!) + name.count
            let valueStart = nameEnd + 2
            head.canonical =
                bytes[nameEnd + 1] == UInt8(ascii: " ")
                && bytes.baseAddress! + valueStart == (value.baseAddress ?? bytes.baseAddress! + valueStart)
                && bytes[valueStart + value.count] == UInt8(ascii: "\r")
        }
        switch name.count {
        case 4 where Self.equalsLowercase(name, "host"):
            if head.host == nil { head.host = String(decoding: value, as: UTF8.self) }
        case 6 where Self.equalsLowercase(name, "expect"):
            head.inspection.expectsContinue = Self.equalsLowercase(value, "100-continue")
        case 9 where Self.equalsLowercase(name, "forwarded"):
            head.inspection.hasForwardedHeaders = true
        case 10 where Self.equalsLowercase(name, "connection"):
            head.hasConnection = true
            head.inspection.hasHopByHop = true
        case 14 where Self.equalsLowercase(name, "content-length"):
            break
        case 15 where Self.equalsLowercase(name, "x-forwarded-for"):
            head.inspection.hasForwardedHeaders = true
        case 15 where Self.equalsLowercase(name, "idempotency-key"):
            head.hasIdempotencyKey = true
        case 16 where Self.equalsLowercase(name, "x-forwarded-host"):
            head.inspection.hasForwardedHeaders = true
        case 16 where Self.equalsLowercase(name, "x-aviary-subject"):
            head.inspection.hasSubjectHeader = true
        case 17 where Self.equalsLowercase(name, "x-forwarded-proto"):
            head.inspection.hasForwardedHeaders = true
        case 23 where Self.equalsLowercase(name, "x-forwarded-client-cert"):
            head.inspection.hasClientCertificateHeader = true
        default:
            if UpstreamResponseHead.isHopByHop(name) { head.inspection.hasHopByHop = true }
        }
    }

    /// Parses header lines from `start` to the end of `bytes`, each ending with CRLF, into
    /// strings (shared with ``HTTP1ResponseParser`` for trailers).
    static func parseFields(
        _ bytes: UnsafeRawBufferPointer, from start: Int, into headers: inout [(String, String)],
        framing: inout FramingHeaders
    ) throws(HTTP1RequestError) {
        try Self.walkFields(bytes, from: start, framing: &framing) { name, value in
            // Appended to a plain array: `HTTPHeaders.add` checks each name for non-ASCII bytes,
            // which a token cannot have.
            headers.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
    }

    /// The fields of header lines this parser (or ``HTTP1ResponseParser``) has already checked,
    /// each ending with CRLF, as `HTTPHeaders`: for the features that read fields of a head kept
    /// as bytes.
    static func headers(ofCheckedLines lines: ByteBuffer) -> HTTPHeaders {
        var fields: [(String, String)] = []
        fields.reserveCapacity(8)
        var framing = FramingHeaders()
        lines.withUnsafeReadableBytes { bytes in
            // Checked by the parser already: this walk cannot fail.
            try? Self.parseFields(bytes, from: 0, into: &fields, framing: &framing)
        }
        return HTTPHeaders(fields)
    }

    /// Checks header lines from `start` to the end of `bytes`, each ending with CRLF, notes the
    /// framing headers and hands each field's name and value (without surrounding whitespace) to
    /// `field`: the one walk that both parsers' strictness lives in.
    @inline(__always)
    static func walkFields(
        _ bytes: UnsafeRawBufferPointer, from start: Int, framing: inout FramingHeaders,
        _ field: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void
    ) throws(HTTP1RequestError) {
        var index = start
        while index < bytes.count {
            let nameStart = index
            while index < bytes.count && isTokenByte(bytes[index]) { index += 1 }
            guard index > nameStart else {
                throw bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: "\t")
                    ? .foldedHeader : .badHeaderName
            }
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw .badHeaderName }
            let name = UnsafeRawBufferPointer(rebasing: bytes[nameStart..<index])
            index += 1
            while index < bytes.count && (bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: "\t")) {
                index += 1
            }
            let valueStart = index
            // Hot path: eight bytes at a time while a word has no control byte, which is all of
            // a common value up to the word that holds its CR (a `User-Agent`, a cookie); that
            // word, and any with a tab or a bad byte, is walked byte by byte from its start.
            while index &+ 8 <= bytes.count, !Self.hasControlByte(Self.load8(bytes, at: index)) { index &+= 8 }
            // The scan stopped at a CR followed by LF: the section's lines all end that way.
            while bytes[index] != UInt8(ascii: "\r") {
                let byte = bytes[index]
                if byte < 0x20 && byte != UInt8(ascii: "\t") || byte == 0x7F { throw .badHeaderValue }
                index += 1
            }
            var valueEnd = index
            while valueEnd > valueStart
                && (bytes[valueEnd - 1] == UInt8(ascii: " ") || bytes[valueEnd - 1] == UInt8(ascii: "\t"))
            {
                valueEnd -= 1
            }
            guard bytes[index + 1] == UInt8(ascii: "\n") else { throw .badLineEnding }
            let value = UnsafeRawBufferPointer(rebasing: bytes[valueStart..<valueEnd])
            index += 2
            switch name.count {
            case 14 where Self.equalsLowercase(name, "content-length"):
                framing.contentLengths += 1
                if let length = Self.decimal(value) {
                    framing.contentLength = length
                } else {
                    framing.badContentLength = true
                }
            case 17 where Self.equalsLowercase(name, "transfer-encoding"):
                framing.transferEncodings += 1
                framing.chunked = Self.equalsLowercase(value, "chunked")
            default:
                break
            }
            field(name, value)
        }
    }

    /// Parses a chunk size line (without its CRLF): hex digits, then optional extensions, which
    /// are ignored.
    static func parseChunkSize(_ bytes: UnsafeRawBufferPointer) throws(HTTP1RequestError) -> Int {
        var size = 0
        var index = 0
        while index < bytes.count, let digit = hexValue(bytes[index]) {
            // 15 hex digits always fit an Int; more must be leading zeros to be accepted.
            guard size <= (Int.max >> 4) else { throw .badChunkSize }
            size = size << 4 | digit
            index += 1
        }
        guard index > 0 else { throw .badChunkSize }
        while index < bytes.count && (bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: "\t")) {
            index += 1
        }
        if index < bytes.count {
            guard bytes[index] == UInt8(ascii: ";") else { throw .badChunkSize }
            for byte in bytes[index...] where byte < 0x20 && byte != UInt8(ascii: "\t") || byte == 0x7F {
                throw .badChunkSize
            }
        }
        return size
    }

    // MARK: Bytes

    /// `HTTP/1.1` and `HTTP/1.0` as little-endian 64-bit loads.
    /// Computed, not `static let`s: `UInt64(littleEndian:)` is not folded into a constant, so a
    /// stored one is a lazily initialised global, checked (`swift_once`) on every access.
    static var http11: UInt64 { UInt64(littleEndian: 0x312E_312F_5054_5448) }
    static var http10: UInt64 { UInt64(littleEndian: 0x302E_312F_5054_5448) }

    static func load8(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> UInt64 {
        UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    /// Whether any of the eight bytes of `word` is a control byte of a field value's rules:
    /// below 0x20 (tab, CR and the forbidden ones alike) or DEL (0x7F). Bytes from 0x80 up
    /// (obs-text) are not. Exact as a yes or no, though not as to which byte: subtracting 0x20
    /// from every byte borrows only at a byte below 0x20, so without one no byte's high bit is
    /// set in `word - 0x20…` while clear in `word` (a byte from 0xA0 up has it set in both), and
    /// the lowest such byte always has; DEL is a zero byte of `word ^ 0x7F…`, found the same way.
    @inline(__always)
    static func hasControlByte(_ word: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highs: UInt64 = 0x8080_8080_8080_8080
        let below = (word &- ones &* 0x20) & ~word & highs
        let del = word ^ (ones &* 0x7F)
        return below | ((del &- ones) & ~del & highs) != 0
    }

    private static func method(_ bytes: UnsafeRawBufferPointer) -> HTTPMethod {
        switch bytes.count {
        case 3 where bytes[0] == UInt8(ascii: "G") && bytes[1] == UInt8(ascii: "E") && bytes[2] == UInt8(ascii: "T"):
            return .GET
        case 4 where Self.equals(bytes, "POST"): return .POST
        case 4 where Self.equals(bytes, "HEAD"): return .HEAD
        case 3 where Self.equals(bytes, "PUT"): return .PUT
        case 6 where Self.equals(bytes, "DELETE"): return .DELETE
        case 5 where Self.equals(bytes, "PATCH"): return .PATCH
        case 7 where Self.equals(bytes, "OPTIONS"): return .OPTIONS
        default: return HTTPMethod(rawValue: String(decoding: bytes, as: UTF8.self))
        }
    }

    private static func equals(_ bytes: UnsafeRawBufferPointer, _ literal: StaticString) -> Bool {
        let other = UnsafeRawBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount)
        return bytes.elementsEqual(other)
    }

    /// ASCII case-insensitive equality with a lower-case literal.
    static func equalsLowercase(_ bytes: UnsafeRawBufferPointer, _ literal: StaticString) -> Bool {
        guard bytes.count == literal.utf8CodeUnitCount else { return false }
        let other = literal.utf8Start
        for index in 0..<bytes.count {
            let byte = bytes[index]
            let lowered = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
            guard lowered == other[index] else { return false }
        }
        return true
    }

    /// Digits only, at least one, fitting an `Int`; otherwise `nil`.
    private static func decimal(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard !bytes.isEmpty else { return nil }
        var value = 0
        for byte in bytes {
            guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else { return nil }
            let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times.addingReportingOverflow(Int(byte &- UInt8(ascii: "0")))
            if overflow1 || overflow2 { return nil }
            value = sum
        }
        return value
    }

    private static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(byte &- UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(byte &- UInt8(ascii: "a") &+ 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(byte &- UInt8(ascii: "A") &+ 10)
        default: nil
        }
    }

    /// Whether `byte` is a `tchar` (RFC 9110 section 5.6.2): a letter, a digit or one of
    /// `!#$%&'*+-.^_`|~`.
    ///
    /// Hot path: called for every byte of every field name, in both parsers and in the HPACK
    /// block made from an upstream's lines. Two 64-bit masks (bytes 0–63 and 64–127) in the
    /// instruction stream rather than a `static let` table: a global's lazy initializer is
    /// checked (`swift_once`) on each access, a call per byte that was about 0.6% of the HTTP/2
    /// path's CPU samples. `HTTP1RequestParserTests` checks the masks against the definition.
    @inline(__always)
    static func isTokenByte(_ byte: UInt8) -> Bool {
        if byte < 64 { return (0x03FF_6CFA_0000_0000 as UInt64) >> byte & 1 == 1 }
        if byte < 128 { return (0x57FF_FFFF_C7FF_FFFE as UInt64) >> (byte &- 64) & 1 == 1 }
        return false
    }
}

/// A chunked body (RFC 9112 section 7.1): size lines, data, the CRLF after each chunk and the
/// trailer section, decoded the same way for requests (``HTTP1RequestParser``) and upstream
/// responses (``HTTP1ResponseParser``), with the parser's scanner and limits.
///
/// ```swift
/// var body = HTTP1ChunkedBody()
/// var scanner = HTTP1Scanner(limit: 1024)
/// var bytes = ByteBuffer(string: "2\r\nhi\r\n0\r\n\r\n")
/// while let step = try body.next(&bytes, scanner: &scanner) { print(step) }  // .body("hi"), .end(nil)
/// ```
struct HTTP1ChunkedBody {
    enum Step {
        /// Chunk data (a slice of the read buffer).
        case body(ByteBuffer)
        /// The last chunk and its trailers, if any: the body is over.
        case end(HTTPHeaders?)
    }

    private enum State {
        case size
        case data(remaining: Int)
        case dataEnd
        case trailers
    }

    private var state = State.size

    /// The next step decoded from `buffer` (its bytes consumed), or `nil` when more bytes are
    /// needed.
    mutating func next(
        _ buffer: inout ByteBuffer, scanner: inout HTTP1Scanner
    ) throws(HTTP1RequestError) -> Step? {
        while true {
            switch self.state {
            case .size:
                guard let lineEnd = try scanner.line(buffer) else { return nil }
                let size = try buffer.withUnsafeReadableBytes { bytes throws(HTTP1RequestError) in
                    try HTTP1RequestParser.parseChunkSize(UnsafeRawBufferPointer(rebasing: bytes[..<lineEnd]))
                }
                buffer.moveReaderIndex(forwardBy: lineEnd + 2)
                scanner.reset()
                self.state = size == 0 ? .trailers : .data(remaining: size)
            case .data(let remaining):
                let count = min(remaining, buffer.readableBytes)
                guard count > 0, let slice = buffer.readSlice(length: count) else { return nil }
                self.state = remaining == count ? .dataEnd : .data(remaining: remaining - count)
                return .body(slice)
            case .dataEnd:
                guard let pair = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self) else {
                    if buffer.readableBytes == 1 && buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) != 0x0D {
                        throw .badChunkEnd
                    }
                    return nil
                }
                guard pair == 0x0D0A else { throw .badChunkEnd }
                buffer.moveReaderIndex(forwardBy: 2)
                self.state = .size
            case .trailers:
                guard let end = try scanner.section(buffer) else { return nil }
                var trailers: [(String, String)] = []
                if end > 0 {
                    try buffer.withUnsafeReadableBytes { bytes throws(HTTP1RequestError) in
                        var framing = HTTP1RequestParser.FramingHeaders()
                        try HTTP1RequestParser.parseFields(
                            UnsafeRawBufferPointer(rebasing: bytes[..<end]), from: 0, into: &trailers,
                            framing: &framing)
                    }
                }
                buffer.moveReaderIndex(forwardBy: end + 2)
                scanner.reset()
                self.state = .size
                return .end(trailers.isEmpty ? nil : HTTPHeaders(trailers))
            }
        }
    }
}

/// Finds the ends of lines and of header sections in a `ByteBuffer` that fills up read by read,
/// remembering how far it looked so that a head arriving in pieces is scanned once. Shared by
/// ``HTTP1RequestParser`` and ``HTTP1ResponseParser``.
struct HTTP1Scanner {
    /// The longest section or line accepted (without the CRLF that ends it).
    let limit: Int
    /// Bytes of the current section or line already scanned (from the reader index).
    private(set) var scanned = 0
    /// Where the line being scanned starts (from the reader index).
    private var lineStart = 0

    init(limit: Int) {
        self.limit = limit
    }

    /// Forgets the scan (after the section or line was consumed).
    mutating func reset() {
        self.scanned = 0
        self.lineStart = 0
    }

    /// Scans for the empty line that ends a head or a trailer section: returns the offset of its
    /// CR (the length of the section before it), or `nil` when it has not arrived yet.
    mutating func section(_ buffer: ByteBuffer) throws(HTTP1RequestError) -> Int? {
        let limit = self.limit
        var lineStart = self.lineStart
        var scanned = self.scanned
        let end = try buffer.withUnsafeReadableBytes { bytes throws(HTTP1RequestError) -> Int? in
            guard let base = bytes.baseAddress else { return nil }
            var index = scanned
            // Bytes past the limit are never looked at, however they arrive.
            let scanEnd = min(bytes.count, limit + 2)
            // A trailer section may be empty: its first line is the empty one.
            while index < scanEnd {
                // Hot path: each line's LF is found by libc's vectorised `memchr` rather than by
                // a bounds-checked loop over every byte of the head. It reads only
                // `base + index ..< base + scanEnd`, inside `bytes`.
                guard let found = memchr(base + index, Int32(UInt8(ascii: "\n")), scanEnd - index) else {
                    index = scanEnd
                    break
                }
                index = base.distance(to: UnsafeRawPointer(found))
                guard index > lineStart, bytes[index - 1] == UInt8(ascii: "\r") else { throw .badLineEnding }
                if index - 1 == lineStart {
                    return lineStart
                }
                lineStart = index + 1
                index += 1
            }
            scanned = index
            return nil
        }
        self.lineStart = lineStart
        if end == nil { self.scanned = scanned }
        guard let end else {
            // The limit counts the lines, not the CRLF of the empty line that ends them.
            if buffer.readableBytes > limit + 2 { throw .headTooLarge(limit: limit) }
            return nil
        }
        if end > limit { throw .headTooLarge(limit: limit) }
        return end
    }

    /// Scans for the end of one line: returns the offset of its CR, or `nil`.
    mutating func line(_ buffer: ByteBuffer) throws(HTTP1RequestError) -> Int? {
        let limit = self.limit
        let end = try buffer.withUnsafeReadableBytes { bytes throws(HTTP1RequestError) -> Int? in
            var index = self.scanned
            let scanEnd = min(bytes.count, limit + 2)
            while index < scanEnd {
                if bytes[index] == UInt8(ascii: "\n") {
                    guard index > 0, bytes[index - 1] == UInt8(ascii: "\r") else { throw .badLineEnding }
                    return index - 1
                }
                index += 1
            }
            self.scanned = index
            return nil
        }
        guard let end else {
            if buffer.readableBytes > limit + 2 { throw .headTooLarge(limit: limit) }
            return nil
        }
        if end > limit { throw .headTooLarge(limit: limit) }
        return end
    }
}
