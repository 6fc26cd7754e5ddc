//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2

// Hot path: one per HTTP/2 stream, inside its `HTTP2ServerStream` (StreamServer.swift). It turns
// the stream's frames into the proxy's HTTP/1 parts and the proxy's response parts into frames,
// with two things that matter per request:
// - the response's last frame carries END_STREAM: the HEADERS or DATA frame written last is
//   held until the next part, a flush or a close, so that `.end` marks it instead of adding an
//   empty DATA frame (a 128-byte response is HEADERS + DATA, as HAProxy and nginx send it, not
//   HEADERS + DATA + an empty DATA);
// - the response head becomes an HPACK block in one pass: names are lower-cased only when they
//   have capitals, and connection-specific fields are dropped by comparing bytes, without the
//   intermediate `HTTPHeaders` and lower-cased copies of every name; a forwarded head that needs
//   no edit is made straight from the upstream's header lines (`block(_:lines:)`).
// - the request's header block is checked in the same walk that makes the request head of it
//   (`requestHead`, `trailers`), and so is the request's `content-length` against its DATA.
//
// It is a value without I/O: it returns what to pass on (at most two parts or two frames per
// call), so the stream writes them itself and no callback runs while the framing is mutated.

/// Translates one HTTP/2 stream's frames to the proxy's HTTP/1 parts and back (server side).
struct HTTP2StreamCodec {
    /// A request HEADERS frame the codec cannot turn into a request head.
    struct MalformedRequest: Error, CustomStringConvertible {
        var description: String
    }

    /// A response frame to pass to the stream's server, with the promise of the part it carries.
    typealias Outbound = (frame: Frame, promise: EventLoopPromise<Void>?)

    /// A HEADERS or DATA frame of the stream, as the server decodes and encodes it. (Not
    /// NIOHTTP2's `FramePayload`: its DATA case boxes its fields, an allocation per frame for a
    /// value that lives a few calls.)
    enum Frame {
        case headers(HPACKHeaders, endStream: Bool)
        case data(ByteBuffer, endStream: Bool)

        /// The same frame with END_STREAM.
        var ending: Frame {
            switch self {
            case .headers(let block, _): .headers(block, endStream: true)
            case .data(let buffer, _): .data(buffer, endStream: true)
            }
        }
    }

    private var sawHead = false
    private var sawTrailers = false
    /// The request's `content-length`, and the DATA bytes that came so far: RFC 9113 (section
    /// 8.1.1) makes a request whose DATA differ from its length malformed, and the origin gets the
    /// length as the HTTP/1.1 request's framing.
    private var expectedLength: Int?
    private var receivedLength = 0
    /// The response frame written last, not yet passed on: `.end` may still mark it END_STREAM.
    private var held: (frame: Frame, promise: EventLoopPromise<Void>?)?

    init() {}

    // MARK: Inbound

    /// The request parts of an inbound HEADERS or DATA frame: a head (and the end, when the
    /// HEADERS frame ended the stream), a body part (and the end), trailers as the end.
    mutating func received(_ frame: Frame) throws -> (HTTPServerRequestPart?, HTTPServerRequestPart?) {
        switch frame {
        case .headers(let block, let endStream):
            if !self.sawHead {
                self.sawHead = true
                let head = try Self.requestHead(block, endStream: endStream, contentLength: &self.expectedLength)
                if endStream, let expected = self.expectedLength, expected != 0 {
                    throw MalformedRequest(description: "content-length \(expected) without DATA")
                }
                return (.head(head), endStream ? .end(nil) : nil)
            } else if !self.sawTrailers {
                // Trailers (the server has checked that they end the stream).
                if let expected = self.expectedLength, self.receivedLength != expected {
                    throw MalformedRequest(description: "DATA of another length than content-length \(expected)")
                }
                self.sawTrailers = true
                return (.end(try Self.trailers(block)), nil)
            } else {
                throw MalformedRequest(description: "HEADERS after the trailers")
            }
        case .data(let buffer, let endStream):
            if let expected = self.expectedLength {
                self.receivedLength += buffer.readableBytes
                guard self.receivedLength <= expected, !endStream || self.receivedLength == expected else {
                    throw MalformedRequest(description: "DATA of another length than content-length \(expected)")
                }
            }
            let body: HTTPServerRequestPart? = buffer.readableBytes > 0 || !endStream ? .body(buffer) : nil
            let end: HTTPServerRequestPart? = endStream ? .end(nil) : nil
            return body == nil ? (end, nil) : (body, end)
        }
    }

    /// The request head of a HEADERS block, as the proxy wants it: version 2.0, `host` from
    /// `:authority` (unless a `host` came too), and for a method that may have a body but came
    /// without `content-length`, `content-length: 0` when the HEADERS frame ended the stream and
    /// `transfer-encoding: chunked` when a body follows (so the proxy streams it upstream).
    ///
    /// The same walk checks the block as RFC 9113 (sections 8.2 and 8.3) wants a request's (the
    /// frame layer, `HTTP2StreamServer`, leaves that to the codec). Each rule keeps a client from adding or splitting a line of
    /// the HTTP/1.1 request the origin gets, or from disagreeing with it about the framing:
    /// - pseudo-header fields come before the regular ones, each at most once, and only
    ///   `:method`, `:path`, `:scheme` and `:authority` (not `:status`, nor `:protocol`: the
    ///   gateway announces no extended CONNECT); their values have no control byte, space or DEL;
    ///   `:method`, `:scheme` and a `:path` that is not empty are required, and CONNECT is refused
    ///   (the proxy does not tunnel, and a CONNECT request has no `:path`);
    /// - regular names are lower-case tokens and none of the connection-specific fields
    ///   (``checkedField(_:_:)``), and `te` is `trailers` or absent;
    /// - no value has CR, LF or NUL.
    static func requestHead(_ block: HPACKHeaders, endStream: Bool) throws -> HTTPRequestHead {
        var contentLength: Int?
        return try Self.requestHead(block, endStream: endStream, contentLength: &contentLength)
    }

    /// ``requestHead(_:endStream:)``, giving the request's `content-length` too (fields that
    /// repeat it must agree, and its value is digits).
    static func requestHead(
        _ block: HPACKHeaders, endStream: Bool, contentLength: inout Int?
    ) throws -> HTTPRequestHead {
        var method: String?
        var path: String?
        var scheme: String?
        var authority: String?
        var hasHost = false
        var hasLength = false
        var regular = 0
        for (name, value, _) in block {
            if name.utf8.first == UInt8(ascii: ":") {
                guard regular == 0 else {
                    throw MalformedRequest(description: "\(name) after a regular field")
                }
                guard Self.isPseudoHeaderValue(value) else {
                    throw MalformedRequest(description: "a control byte or space in \(name)")
                }
                switch name {
                case ":method" where method == nil: method = value
                case ":path" where path == nil: path = value
                case ":scheme" where scheme == nil: scheme = value
                case ":authority" where authority == nil: authority = value
                default: throw MalformedRequest(description: "\(name) is repeated or no request pseudo-header field")
                }
                continue
            }
            regular += 1
            switch Self.checkedField(name, value) {
            case .other: break
            case .host: hasHost = true
            case .contentLength:
                hasLength = true
                guard let length = ProxyHeaders.digits(value), contentLength == nil || contentLength == length else {
                    throw MalformedRequest(description: "content-length \(value)")
                }
                contentLength = length
            case .te:
                guard value == "trailers" else { throw MalformedRequest(description: "te other than trailers") }
            case nil:
                throw MalformedRequest(description: "a field HTTP/2 forbids or a malformed one")
            }
        }
        guard let method, let path, !path.isEmpty, scheme != nil, authority != nil || hasHost else {
            throw MalformedRequest(description: "a request needs :method, :path, :scheme and :authority")
        }
        let httpMethod = HTTPMethod(rawValue: method)
        if httpMethod == .CONNECT { throw MalformedRequest(description: "CONNECT is not proxied") }
        var fields: [(String, String)] = []
        fields.reserveCapacity(regular + 2)
        if !hasHost, let authority { fields.append(("host", authority)) }
        switch httpMethod {
        case .GET, .HEAD, .DELETE, .TRACE:
            break
        default:
            if !hasLength { fields.append(endStream ? ("content-length", "0") : ("transfer-encoding", "chunked")) }
        }
        for (name, value, _) in block where name.utf8.first != UInt8(ascii: ":") {
            fields.append((name, value))
        }
        return HTTPRequestHead(
            version: HTTPVersion(major: 2, minor: 0), method: httpMethod, uri: path, headers: HTTPHeaders(fields))
    }

    /// The fields of a trailer block, checked as ``checkedField(_:_:)`` checks a request's
    /// regular fields (a pseudo-header field is refused: `:` is no token byte).
    static func trailers(_ block: HPACKHeaders) throws -> HTTPHeaders {
        var fields: [(String, String)] = []
        fields.reserveCapacity(block.count)
        for (name, value, _) in block {
            guard Self.checkedField(name, value) != nil else {
                throw MalformedRequest(description: "a trailer field HTTP/2 forbids or a malformed one")
            }
            fields.append((name, value))
        }
        return HTTPHeaders(fields)
    }

    /// What ``checkedField(_:_:)`` found a regular field to be, as far as the request head cares.
    enum FieldKind: Equatable {
        case other, host, contentLength, te
    }

    /// A regular field of a request or trailer block, checked: `nil` when its name is empty, has
    /// a byte that is no token byte or a capital (HTTP/2 names are lower case), or is one of the
    /// connection-specific fields (`connection`, `keep-alive`, `proxy-connection`,
    /// `transfer-encoding`, `upgrade`), or when its value has CR, LF or NUL. Otherwise what the
    /// request head needs to know of it (`te`'s value is the caller's to check: trailers may
    /// carry any).
    ///
    /// Hot path: every field of every request. One pass over each name's and value's bytes.
    static func checkedField(_ name: String, _ value: String) -> FieldKind? {
        let kind: FieldKind? = Self.withBytes(name) { bytes in
            guard !bytes.isEmpty else { return nil }
            for byte in bytes {
                guard HTTP1RequestParser.isTokenByte(byte), byte &- UInt8(ascii: "A") >= 26 else { return nil }
            }
            switch bytes.count {
            case 2: return Self.equal(bytes, "te") ? .te : .other
            case 4: return Self.equal(bytes, "host") ? .host : .other
            case 7: return Self.equal(bytes, "upgrade") ? nil : .other
            case 10: return Self.equal(bytes, "connection") || Self.equal(bytes, "keep-alive") ? nil : .other
            case 14: return Self.equal(bytes, "content-length") ? .contentLength : .other
            case 16: return Self.equal(bytes, "proxy-connection") ? nil : .other
            case 17: return Self.equal(bytes, "transfer-encoding") ? nil : .other
            default: return .other
            }
        }
        guard let kind else { return nil }
        let clean = Self.withBytes(value) { bytes in
            !bytes.contains { $0 == 0x00 || $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\r") }
        }
        return clean ? kind : nil
    }

    /// Whether a pseudo-header field's value has no control byte, space or DEL: none of the four
    /// a request has may contain one, and `:path` and `:method` become the HTTP/1.1 request line,
    /// where a space would split it.
    static func isPseudoHeaderValue(_ value: String) -> Bool {
        Self.withBytes(value) { bytes in !bytes.contains { $0 <= 0x20 || $0 == 0x7F } }
    }

    /// `body` with a string's UTF-8 bytes, without a copy for native and small strings.
    @inline(__always)
    private static func withBytes<Result>(
        _ string: String, _ body: (UnsafeBufferPointer<UInt8>) -> Result
    ) -> Result {
        if let result = string.utf8.withContiguousStorageIfAvailable(body) { return result }
        var copy = string
        return copy.withUTF8(body)
    }

    @inline(__always)
    private static func equal(_ bytes: UnsafeBufferPointer<UInt8>, _ literal: StaticString) -> Bool {
        bytes.count == literal.utf8CodeUnitCount
            && bytes.elementsEqual(UnsafeBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount))
    }

    // MARK: Outbound

    /// The frames to pass on for a response part, in order: the frame held before it when this
    /// part does not end the response with it, then the part's own frame when it is not held.
    mutating func write(
        _ part: HTTPServerResponsePart, promise: EventLoopPromise<Void>?
    ) -> (Outbound?, Outbound?) {
        switch part {
        case .head(let head):
            return self.writeHead(Self.block(head.status, head.headers), status: head.status, promise: promise)
        case .body(let body):
            guard case .byteBuffer(let buffer) = body else {
                preconditionFailure("the proxy writes response bodies as byte buffers")
            }
            if buffer.readableBytes == 0 {
                // An empty DATA frame without END_STREAM says nothing.
                promise?.succeed()
                return (nil, nil)
            }
            return (self.hold(.data(buffer, endStream: false), promise), nil)
        case .end(let trailers):
            if let trailers {
                return (self.takeHeld(), (.headers(Self.block(nil, trailers), endStream: true), promise))
            }
            guard let held = self.held else {
                return ((.data(ByteBuffer(), endStream: true), promise), nil)
            }
            self.held = nil
            if let heldPromise = held.promise, let promise {
                heldPromise.futureResult.cascade(to: promise)
            }
            return ((held.frame.ending, held.promise ?? promise), nil)
        }
    }

    /// The frames to pass on for a response head given as its HPACK block (see
    /// ``block(_:lines:)``), as ``write(_:promise:)`` passes them on for a `.head` part.
    mutating func writeHead(
        _ block: HPACKHeaders, status: HTTPResponseStatus, promise: EventLoopPromise<Void>?
    ) -> (Outbound?, Outbound?) {
        if status.code < 200 {
            // An informational head (100 Continue) never ends the stream: no need to hold it.
            return (self.takeHeld(), (.headers(block, endStream: false), promise))
        }
        return (self.hold(.headers(block, endStream: false), promise), nil)
    }

    /// The held frame, to pass on before a flush or a close.
    mutating func takeHeld() -> Outbound? {
        guard let held = self.held else { return nil }
        self.held = nil
        return (held.frame, held.promise)
    }

    private mutating func hold(_ frame: Frame, _ promise: EventLoopPromise<Void>?) -> Outbound? {
        let previous = self.takeHeld()
        self.held = (frame, promise)
        return previous
    }

    /// An HPACK block of a response head (with `status`) or of trailers (`nil`): names in lower
    /// case, without the fields HTTP/2 forbids (RFC 9113, section 8.2.2). The proxy has already
    /// removed the fields an upstream's `Connection` named.
    static func block(_ status: HTTPResponseStatus?, _ headers: HTTPHeaders) -> HPACKHeaders {
        var block = HPACKHeaders()
        block.reserveCapacity(headers.count + 1)
        if let status { block.add(name: ":status", value: String(status.code)) }
        for (name, value) in headers {
            if Self.isConnectionSpecific(name) { continue }
            block.add(name: Self.lowercased(name), value: value)
        }
        return block
    }

    /// The HPACK block of a forwarded response head straight from the upstream's header lines
    /// (``UpstreamResponseHead/lines``): `:status`, then each field as received, its name in
    /// lower case, without the hop-by-hop fields (which include those HTTP/2 forbids). The same
    /// block as ``block(_:_:)`` makes of the head's `HTTPHeaders` minus the hop-by-hop fields,
    /// without that array of `String` pairs, its copy without the hop-by-hop fields and
    /// `HTTPResponseHead`'s storage in between (three allocations per response).
    static func block(_ status: HTTPResponseStatus, lines: ByteBuffer) -> HPACKHeaders {
        var reuse = HPACKBlockReuse()
        return Self.block(status, lines: lines, reusing: &reuse)
    }

    /// ``block(_:lines:)`` in the storage of a block kept by `reuse`, with the long names and
    /// values `reuse` kept where the fields' bytes are the same (see ``HPACKBlockReuse``).
    static func block(
        _ status: HTTPResponseStatus, lines: ByteBuffer, reusing reuse: inout HPACKBlockReuse
    )
        -> HPACKHeaders
    {
        var block = reuse.take()
        block.add(name: ":status", value: status.code == 200 ? "200" : String(status.code))
        lines.withUnsafeReadableBytes { bytes in
            var framing = HTTP1RequestParser.FramingHeaders()
            var index = 0
            // The lines were checked by the upstream's parser: this walk cannot fail.
            try? HTTP1RequestParser.walkFields(bytes, from: 0, framing: &framing) { name, value in
                if UpstreamResponseHead.isHopByHop(name) { return }
                block.add(name: reuse.name(at: index, name), value: reuse.value(at: index, value))
                index += 1
            }
        }
        return block
    }

    /// A field name's bytes (a token: ASCII) as a `String` in lower case.
    static func lowercased(_ name: UnsafeRawBufferPointer) -> String {
        String(
            unsafeUninitializedCapacity: name.count,
            initializingUTF8With: { buffer in
                for index in 0..<name.count {
                    let byte = name[index]
                    buffer[index] = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
                }
                return name.count
            })
    }

    static func isConnectionSpecific(_ name: String) -> Bool {
        switch name.utf8.count {
        case 7: return name.equalsLowercase("upgrade")
        case 10: return name.equalsLowercase("connection") || name.equalsLowercase("keep-alive")
        case 16: return name.equalsLowercase("proxy-connection")
        case 17: return name.equalsLowercase("transfer-encoding")
        default: return false
        }
    }

    /// `name` in ASCII lower case; the same string when it has no capitals (the usual case for
    /// the proxy's own fields, and for upstreams that write lower-case names).
    static func lowercased(_ name: String) -> String {
        guard name.utf8.contains(where: { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") }) else {
            return name
        }
        return String(
            unsafeUninitializedCapacity: name.utf8.count,
            initializingUTF8With: { buffer in
                var index = 0
                for byte in name.utf8 {
                    buffer[index] =
                        byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
                    index += 1
                }
                return index
            })
    }
}

/// What an HTTP/2 connection keeps of the response head blocks its streams wrote, so that the
/// next block costs fewer allocations.
///
/// Hot path: a forwarded response head became a new HPACK block per stream (its array of fields
/// is one `malloc`) and every field value longer than a small string (15 UTF-8 bytes) one more:
/// an origin's `date` and `server` values, say, which are the same bytes stream after stream (a
/// `date` changes once a second). The connection keeps the block a stream wrote last and the
/// long names and values of its fields, by position: the next block reuses the array's storage
/// once the server has let go of it (it encodes a HEADERS frame as it is written), and a
/// field whose bytes equal the kept string at its position takes that string (one retain)
/// instead of a new one. As with ``LentBuffers``, reuse never changes what another holder sees:
/// `removeAll(keepingCapacity:)` allocates new storage while anything else still holds the old
/// one (copy on write), and a kept `String` is an immutable value equal to the one it replaces.
/// At most ``keptFields`` strings of each kind are kept, each no longer than a field of a head
/// that passed `max_header_bytes`.
///
/// ```swift
/// var block = reuse.take()
/// block.add(name: ":status", value: "200")
/// block.add(name: reuse.name(at: 0, bytes), value: reuse.value(at: 0, valueBytes))
/// // ... once the HEADERS frame is written:
/// reuse.keep(block)
/// ```
struct HPACKBlockReuse {
    /// The most field positions whose long name and value are kept.
    static let keptFields = 32
    /// The most fields of a block kept for its storage.
    static let keptCapacity = 64

    private var kept: HPACKHeaders?
    private var names: [String?] = []
    private var values: [String?] = []

    init() {}

    /// Whether a block is kept (for tests).
    var keepsBlock: Bool { self.kept != nil }

    /// An empty block: the kept block's storage when nothing else holds it any more, otherwise
    /// a new one.
    mutating func take() -> HPACKHeaders {
        guard var block = self.kept.take() else {
            var block = HPACKHeaders()
            block.reserveCapacity(12)
            return block
        }
        block.removeAll(keepingCapacity: true)
        return block
    }

    /// Keeps a written block, for the storage of the next one.
    mutating func keep(_ block: HPACKHeaders) {
        guard block.count <= Self.keptCapacity else { return }
        self.kept = block
    }

    /// The field name `bytes` in lower case, as a `String`: the kept one at `index` when it has
    /// the same bytes (compared in lower case).
    mutating func name(at index: Int, _ bytes: UnsafeRawBufferPointer) -> String {
        guard bytes.count > 15, index < Self.keptFields else { return HTTP2StreamCodec.lowercased(bytes) }
        if index < self.names.count, let kept = self.names[index], Self.equal(kept, bytes, foldingCase: true) {
            return kept
        }
        let name = HTTP2StreamCodec.lowercased(bytes)
        Self.store(name, at: index, in: &self.names)
        return name
    }

    /// The field value `bytes` as a `String`: the kept one at `index` when it has the same bytes.
    mutating func value(at index: Int, _ bytes: UnsafeRawBufferPointer) -> String {
        guard bytes.count > 15, index < Self.keptFields else { return String(decoding: bytes, as: UTF8.self) }
        if index < self.values.count, let kept = self.values[index], Self.equal(kept, bytes, foldingCase: false) {
            return kept
        }
        let value = String(decoding: bytes, as: UTF8.self)
        Self.store(value, at: index, in: &self.values)
        return value
    }

    private static func store(_ string: String, at index: Int, in strings: inout [String?]) {
        while strings.count <= index { strings.append(nil) }
        strings[index] = string
    }

    /// Whether `string`'s UTF-8 bytes are `bytes` (with `bytes` in ASCII lower case when folding).
    private static func equal(_ string: String, _ bytes: UnsafeRawBufferPointer, foldingCase: Bool) -> Bool {
        var string = string
        return string.withUTF8 { utf8 in
            guard utf8.count == bytes.count else { return false }
            for index in 0..<utf8.count {
                var byte = bytes[index]
                if foldingCase && byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") { byte |= 0x20 }
                if utf8[index] != byte { return false }
            }
            return true
        }
    }
}
