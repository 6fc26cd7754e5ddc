//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHPACK
import NIOPosix
import Synchronization

@testable import AviaryGateway

// HTTP/2 by hand, for conformance tests of the gateway's listener: frames are written byte by
// byte as RFC 9113 §4.1 lays them out (so a test can send what no well-behaved client library
// would), and the frames that come back are parsed the same way. Nothing here depends on
// NIOHTTP2: only response header blocks are decoded with NIOHPACK's `HPACKDecoder`.

/// One HTTP/2 frame (RFC 9113 §4.1): type, flags, stream and the payload as it is on the wire
/// (padding included).
struct H2Frame: Sendable, CustomStringConvertible {
    /// A frame type (RFC 9113 §6; anything else is an extension frame, to be ignored).
    struct Kind: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        var rawValue: UInt8

        static let data = Kind(rawValue: 0x0)
        static let headers = Kind(rawValue: 0x1)
        static let priority = Kind(rawValue: 0x2)
        static let rstStream = Kind(rawValue: 0x3)
        static let settings = Kind(rawValue: 0x4)
        static let pushPromise = Kind(rawValue: 0x5)
        static let ping = Kind(rawValue: 0x6)
        static let goAway = Kind(rawValue: 0x7)
        static let windowUpdate = Kind(rawValue: 0x8)
        static let continuation = Kind(rawValue: 0x9)

        var description: String {
            let names = [
                "DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING", "GOAWAY",
                "WINDOW_UPDATE", "CONTINUATION",
            ]
            return Int(self.rawValue) < names.count
                ? names[Int(self.rawValue)] : "type 0x\(String(self.rawValue, radix: 16))"
        }
    }

    /// Frame flags; their meaning depends on the type (ACK and END_STREAM share a bit).
    struct Flags: OptionSet, Hashable, Sendable {
        var rawValue: UInt8

        static let endStream = Flags(rawValue: 0x1)
        static let ack = Flags(rawValue: 0x1)
        static let endHeaders = Flags(rawValue: 0x4)
        static let padded = Flags(rawValue: 0x8)
        static let priority = Flags(rawValue: 0x20)
    }

    var kind: Kind
    var flags: Flags
    var stream: UInt32
    var payload: [UInt8]
    /// A received HEADERS frame's field list (its CONTINUATION frames merged into it).
    var fields: [(name: String, value: String)]?

    init(_ kind: Kind, flags: Flags = [], stream: UInt32, payload: [UInt8] = []) {
        self.kind = kind
        self.flags = flags
        self.stream = stream
        self.payload = payload
    }

    /// The frame as bytes: the 9-byte header, then the payload.
    var bytes: [UInt8] {
        let length = self.payload.count
        var out: [UInt8] = [
            UInt8(truncatingIfNeeded: length >> 16), UInt8(truncatingIfNeeded: length >> 8),
            UInt8(truncatingIfNeeded: length), self.kind.rawValue, self.flags.rawValue,
        ]
        out += H2Frame.bigEndian(self.stream & 0x7fff_ffff)
        out += self.payload
        return out
    }

    var description: String {
        var text =
            "\(self.kind)(stream \(self.stream), flags 0x\(String(self.flags.rawValue, radix: 16)), \(self.payload.count) bytes"
        if let code = self.errorCode { text += ", \(code)" }
        if let fields = self.fields {
            // Long values (tests of large blocks) shortened, so that a failure's message stays readable.
            let shown = fields.map { field in
                field.value.utf8.count <= 200
                    ? "\(field.name): \(field.value)"
                    : "\(field.name): \(field.value.prefix(100))... (\(field.value.utf8.count) bytes)"
            }
            text += ", \(shown)"
        }
        return text + ")"
    }

    static func bigEndian(_ value: UInt32) -> [UInt8] {
        [
            UInt8(value >> 24), UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 8),
            UInt8(truncatingIfNeeded: value),
        ]
    }

    private static func readUInt32(_ bytes: ArraySlice<UInt8>) -> UInt32? {
        guard bytes.count >= 4 else { return nil }
        let start = bytes.startIndex
        return bytes[start..<start + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
    }

    // MARK: Building frames

    /// SETTINGS with `values` (identifier, value), or its acknowledgement.
    static func settings(_ values: [(H2Setting, UInt32)] = [], ack: Bool = false) -> H2Frame {
        var payload: [UInt8] = []
        for (setting, value) in values {
            payload += [UInt8(setting.rawValue >> 8), UInt8(truncatingIfNeeded: setting.rawValue)]
            payload += Self.bigEndian(value)
        }
        return H2Frame(.settings, flags: ack ? .ack : [], stream: 0, payload: payload)
    }

    static func ping(_ opaque: [UInt8], ack: Bool = false) -> H2Frame {
        H2Frame(.ping, flags: ack ? .ack : [], stream: 0, payload: opaque)
    }

    static func windowUpdate(stream: UInt32, increment: UInt32) -> H2Frame {
        H2Frame(.windowUpdate, stream: stream, payload: Self.bigEndian(increment))
    }

    static func rstStream(stream: UInt32, _ code: H2ErrorCode) -> H2Frame {
        H2Frame(.rstStream, stream: stream, payload: Self.bigEndian(code.rawValue))
    }

    static func goAway(lastStream: UInt32, _ code: H2ErrorCode) -> H2Frame {
        H2Frame(.goAway, stream: 0, payload: Self.bigEndian(lastStream) + Self.bigEndian(code.rawValue))
    }

    static func priority(stream: UInt32, dependsOn dependency: UInt32, weight: UInt8) -> H2Frame {
        H2Frame(.priority, stream: stream, payload: Self.bigEndian(dependency) + [weight])
    }

    /// HEADERS carrying `block` (a field block fragment); with `padding`, PADDED and that many
    /// zero octets; with `priority`, the PRIORITY flag and its five octets.
    static func headers(
        stream: UInt32, _ block: [UInt8], endStream: Bool, endHeaders: Bool = true, padding: Int? = nil,
        priority: (dependency: UInt32, weight: UInt8)? = nil
    ) -> H2Frame {
        var flags: Flags = []
        if endStream { flags.insert(.endStream) }
        if endHeaders { flags.insert(.endHeaders) }
        var payload: [UInt8] = []
        if let padding {
            flags.insert(.padded)
            payload.append(UInt8(padding))
        }
        if let priority {
            flags.insert(.priority)
            payload += Self.bigEndian(priority.dependency) + [priority.weight]
        }
        payload += block
        if let padding { payload += [UInt8](repeating: 0, count: padding) }
        return H2Frame(.headers, flags: flags, stream: stream, payload: payload)
    }

    static func continuation(stream: UInt32, _ block: [UInt8], endHeaders: Bool) -> H2Frame {
        H2Frame(.continuation, flags: endHeaders ? .endHeaders : [], stream: stream, payload: block)
    }

    /// DATA carrying `bytes`; with `padding`, PADDED and that many zero octets.
    static func data(stream: UInt32, _ bytes: [UInt8], endStream: Bool = false, padding: Int? = nil) -> H2Frame {
        var flags: Flags = endStream ? .endStream : []
        var payload: [UInt8] = []
        if let padding {
            flags.insert(.padded)
            payload.append(UInt8(padding))
        }
        payload += bytes
        if let padding { payload += [UInt8](repeating: 0, count: padding) }
        return H2Frame(.data, flags: flags, stream: stream, payload: payload)
    }

    // MARK: Reading frames

    var isEndStream: Bool {
        (self.kind == .data || self.kind == .headers) && self.flags.contains(.endStream)
    }

    var isAck: Bool { self.flags.contains(.ack) }

    /// The error code of a RST_STREAM or GOAWAY frame.
    var errorCode: H2ErrorCode? {
        switch self.kind {
        case .rstStream: Self.readUInt32(self.payload[...]).map(H2ErrorCode.init(rawValue:))
        case .goAway: Self.readUInt32(self.payload.dropFirst(4)).map(H2ErrorCode.init(rawValue:))
        default: nil
        }
    }

    /// A GOAWAY frame's last stream identifier.
    var lastStreamID: UInt32? {
        self.kind == .goAway ? Self.readUInt32(self.payload[...]).map { $0 & 0x7fff_ffff } : nil
    }

    /// A WINDOW_UPDATE frame's increment.
    var windowIncrement: UInt32? {
        self.kind == .windowUpdate ? Self.readUInt32(self.payload[...]).map { $0 & 0x7fff_ffff } : nil
    }

    /// A SETTINGS frame's parameters, in order.
    var settings: [(setting: H2Setting, value: UInt32)] {
        guard self.kind == .settings else { return [] }
        return stride(from: 0, to: self.payload.count - self.payload.count % 6, by: 6).map {
            offset -> (setting: H2Setting, value: UInt32) in
            let id = UInt16(self.payload[offset]) << 8 | UInt16(self.payload[offset + 1])
            return (H2Setting(rawValue: id), Self.readUInt32(self.payload[(offset + 2)...]) ?? 0)
        }
    }

    /// A DATA frame's data, its padding removed.
    var data: [UInt8] {
        guard self.kind == .data else { return [] }
        return Array(Self.unpadded(self.payload, flags: self.flags))
    }

    /// A payload without its pad length octet and padding (when PADDED is set).
    static func unpadded(_ payload: [UInt8], flags: Flags) -> ArraySlice<UInt8> {
        guard flags.contains(.padded), let padLength = payload.first else { return payload[...] }
        let end = max(1, payload.count - Int(padLength))
        return payload[1..<end]
    }

    /// The `:status` of a decoded HEADERS frame.
    var status: Int? {
        self.fields?.first { $0.name == ":status" }.flatMap { Int($0.value) }
    }
}

/// An HTTP/2 error code (RFC 9113 §7).
struct H2ErrorCode: Hashable, Sendable, CustomStringConvertible {
    var rawValue: UInt32

    static let noError = H2ErrorCode(rawValue: 0x0)
    static let protocolError = H2ErrorCode(rawValue: 0x1)
    static let internalError = H2ErrorCode(rawValue: 0x2)
    static let flowControlError = H2ErrorCode(rawValue: 0x3)
    static let settingsTimeout = H2ErrorCode(rawValue: 0x4)
    static let streamClosed = H2ErrorCode(rawValue: 0x5)
    static let frameSizeError = H2ErrorCode(rawValue: 0x6)
    static let refusedStream = H2ErrorCode(rawValue: 0x7)
    static let cancel = H2ErrorCode(rawValue: 0x8)
    static let compressionError = H2ErrorCode(rawValue: 0x9)
    static let enhanceYourCalm = H2ErrorCode(rawValue: 0xb)

    var description: String {
        let names = [
            "NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
            "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED",
        ]
        return Int(self.rawValue) < names.count
            ? names[Int(self.rawValue)] : "error 0x\(String(self.rawValue, radix: 16))"
    }
}

/// A SETTINGS parameter identifier (RFC 9113 §6.5.2).
struct H2Setting: RawRepresentable, Hashable, Sendable {
    var rawValue: UInt16

    static let headerTableSize = H2Setting(rawValue: 0x1)
    static let enablePush = H2Setting(rawValue: 0x2)
    static let maxConcurrentStreams = H2Setting(rawValue: 0x3)
    static let initialWindowSize = H2Setting(rawValue: 0x4)
    static let maxFrameSize = H2Setting(rawValue: 0x5)
    static let maxHeaderListSize = H2Setting(rawValue: 0x6)
}

/// A minimal HPACK encoder (RFC 7541): every field a literal without indexing with a new name,
/// both strings as plain octets (no Huffman), so a block is the same bytes whatever came before
/// it on the connection and can be split or corrupted at a known place.
enum HPACKLiterals {
    /// The block of `fields`, in order.
    static func block(_ fields: [(String, String)]) -> [UInt8] {
        var out: [UInt8] = []
        for (name, value) in fields {
            // 0000 0000: literal field without indexing, name as a literal (§6.2.2).
            out.append(0)
            Self.string(name, into: &out)
            Self.string(value, into: &out)
        }
        return out
    }

    /// A request's block: the four pseudo-header fields, then `extra`.
    static func request(
        _ method: String, _ path: String, authority: String = "gateway.test", extra: [(String, String)] = []
    ) -> [UInt8] {
        Self.block([(":method", method), (":scheme", "http"), (":authority", authority), (":path", path)] + extra)
    }

    private static func string(_ text: String, into out: inout [UInt8]) {
        let bytes = Array(text.utf8)
        Self.integer(bytes.count, prefixBits: 7, into: &out)  // H = 0: not Huffman-coded
        out += bytes
    }

    /// An integer with an N-bit prefix (§5.1), the prefix's other bits zero.
    static func integer(_ value: Int, prefixBits: Int, into out: inout [UInt8]) {
        let limit = (1 << prefixBits) - 1
        guard value >= limit else {
            out.append(UInt8(value))
            return
        }
        out.append(UInt8(limit))
        var rest = value - limit
        while rest >= 128 {
            out.append(UInt8(rest % 128 + 128))
            rest /= 128
        }
        out.append(UInt8(rest))
    }
}

/// Why reading frames stopped short.
enum H2ReadError: Error, CustomStringConvertible {
    case timedOut(waitingFor: String, seen: [H2Frame])
    case closed(waitingFor: String, seen: [H2Frame])
    case unexpected(H2Frame, expected: String)
    case undecodableHeaderBlock(stream: UInt32, any Error)

    var description: String {
        switch self {
        case .timedOut(let what, let seen): "timed out waiting for \(what); frames seen: \(seen)"
        case .closed(let what, let seen): "the connection closed before \(what); frames seen: \(seen)"
        case .unexpected(let frame, let expected): "expected \(expected), got \(frame)"
        case .undecodableHeaderBlock(let stream, let error): "stream \(stream)'s header block: \(error)"
        }
    }
}

/// A frame's header as it came off the wire: HEADERS and CONTINUATION frames stay apart (the
/// frames ``RawH2Connection`` reads merge them), for tests of how a block was cut into frames.
struct H2WireFrame: Sendable, CustomStringConvertible {
    var kind: H2Frame.Kind
    var flags: H2Frame.Flags
    var stream: UInt32
    var length: Int

    var description: String {
        "\(self.kind)(stream \(self.stream), flags 0x\(String(self.flags.rawValue, radix: 16)), \(self.length) bytes)"
    }
}

/// What one stream got: its frames in order (HEADERS with their fields), until END_STREAM or
/// RST_STREAM.
struct H2StreamResult: Sendable {
    var frames: [H2Frame] = []

    var headers: H2Frame? { self.frames.first { $0.kind == .headers } }
    var status: Int? { self.headers?.status }
    var body: [UInt8] { self.frames.flatMap(\.data) }
    var text: String { String(decoding: self.body, as: UTF8.self) }
    var reset: H2ErrorCode? { self.frames.last { $0.kind == .rstStream }?.errorCode }
    var ended: Bool { self.frames.last?.isEndStream ?? false }
}

/// An HTTP/2 client connection (h2c with prior knowledge) that writes frames exactly as built
/// and reads back whole frames, polling with a deadline.
///
/// ```swift
/// let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
/// try await connection.send(.headers(stream: 1, HPACKLiterals.request("GET", "/a"), endStream: true))
/// let response = try await connection.response(on: 1)
/// ```
/// The HTTP/2 frame tests' gateway in front of one origin (``withOrigins``, ``withGateway``):
/// `listen` and `limits` are added to its `listen` and `limits` maps, and `/held...` requests wait
/// in a fault delay (reads withheld) that ends only if the test's timers are advanced a minute.
func withFrameGateway<T>(
    listen: String = "", limits: String = "", timers: any GatewayTimers = EventLoopTimers(),
    _ body: (GatewayHarness, TestOrigin) async throws -> T
) async throws -> T {
    try await withOrigins(["a"]) { origins in
        let yaml = """
            listen: {address: 127.0.0.1:0, http2: true\(listen)}
            limits: {max_body_bytes: 256MiB\(limits)}
            clusters: {backend: {endpoints: [127.0.0.1:\(origins[0].port)]}}
            routes:
              - match: {path_prefix: /held}
                cluster: backend
                fault: {delay: {percent: 100%, duration: 60s}}
              - {match: {path_prefix: /}, cluster: backend}
            """
        return try await withGateway(yaml, timers: timers) { gateway in try await body(gateway, origins[0]) }
    }
}

final class RawH2Connection: Sendable {
    /// The client connection preface's fixed octets (RFC 9113 §3.4).
    static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    let channel: any Channel
    private let inbox: H2Inbox
    private let serverSettingsBox = Mutex<[(setting: H2Setting, value: UInt32)]>([])

    /// The parameters of the server's first SETTINGS frame (after ``handshake(settings:)``).
    var serverSettings: [(setting: H2Setting, value: UInt32)] { self.serverSettingsBox.withLock { $0 } }

    func serverSetting(_ setting: H2Setting) -> UInt32? {
        self.serverSettings.last { $0.setting == setting }?.value
    }

    private init(channel: any Channel, inbox: H2Inbox) {
        self.channel = channel
        self.inbox = inbox
    }

    /// Connects to 127.0.0.1:`port`; unless `handshake` is false, also sends the preface with
    /// `settings` and completes the SETTINGS exchange (``handshake(settings:)``).
    ///
    /// The response header blocks are decoded as `settings` announce: SETTINGS_HEADER_TABLE_SIZE
    /// sizes the decoder's dynamic table (4,096 octets without it), SETTINGS_MAX_HEADER_LIST_SIZE
    /// the largest list it takes (NIOHPACK's 16 KiB without it). With `handshake` false, pass
    /// the settings that the preface the test sends will carry.
    static func open(
        port: Int, group: any EventLoopGroup, settings: [(H2Setting, UInt32)] = [], handshake: Bool = true
    ) async throws -> RawH2Connection {
        let tableSize = settings.last { $0.0 == .headerTableSize }.map { Int($0.1) }
        let listSize = settings.last { $0.0 == .maxHeaderListSize }.map { Int($0.1) }
        let inbox = H2Inbox(
            decoder: HPACKDecoder(
                allocator: ByteBufferAllocator(), maxDynamicTableSize: tableSize ?? HPACKDecoder.maxDynamicTableSize,
                maxHeaderListSize: listSize ?? HPACKDecoder.defaultMaxHeaderListSize))
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(H2CollectingHandler(inbox: inbox))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let connection = RawH2Connection(channel: channel, inbox: inbox)
        if handshake { try await connection.handshake(settings: settings) }
        return connection
    }

    /// Sends the preface and SETTINGS, reads the server's SETTINGS (which must come first) and
    /// acknowledges it, then waits for the server's acknowledgement of ours. Other frames read
    /// meanwhile are kept for later reads.
    func handshake(settings: [(H2Setting, UInt32)] = []) async throws {
        try await self.send(raw: Self.preface + H2Frame.settings(settings).bytes)
        guard let first = try await self.nextFrame() else {
            throw H2ReadError.closed(waitingFor: "the server's SETTINGS", seen: [])
        }
        guard first.kind == .settings, !first.isAck, first.stream == 0 else {
            throw H2ReadError.unexpected(first, expected: "the server's SETTINGS as its first frame")
        }
        self.serverSettingsBox.withLock { $0 = first.settings }
        try await self.send(.settings(ack: true))
        _ = try await self.frame(where: "the SETTINGS acknowledgement") { $0.kind == .settings && $0.isAck }
    }

    func send(_ frames: H2Frame...) async throws {
        try await self.send(frames)
    }

    /// Sends `frames` in one write.
    func send(_ frames: [H2Frame]) async throws {
        try await self.send(raw: frames.flatMap(\.bytes))
    }

    func send(raw bytes: [UInt8]) async throws {
        try await self.channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    /// The next frame (HEADERS merged with its CONTINUATION frames and decoded), or `nil` once
    /// the server has closed the connection and every frame before that has been read.
    func nextFrame(timeout: Duration = .seconds(5)) async throws -> H2Frame? {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            // Noted before looking: bytes that arrive after the look move it, and end the wait.
            let arrivals = self.inbox.arrivals.count
            switch try self.inbox.take() {
            case .frame(let frame): return frame
            case .closed: return nil
            case .nothing: break
            }
            guard ContinuousClock.now < deadline else { throw H2ReadError.timedOut(waitingFor: "a frame", seen: []) }
            // Woken by the next bytes, the close or the deadline, not by polling.
            await self.inbox.arrivals.wait(after: arrivals, until: deadline)
        }
    }

    /// Reads frames until one matches `predicate` and returns it; the frames before it that
    /// `keep` selects are kept for later reads, the others dropped.
    func frame(
        where what: String, timeout: Duration = .seconds(5), keep: (H2Frame) -> Bool = { _ in true },
        _ predicate: (H2Frame) -> Bool
    ) async throws -> H2Frame {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var skipped: [H2Frame] = []
        defer { self.inbox.putBack(skipped.filter(keep)) }
        while true {
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { throw H2ReadError.timedOut(waitingFor: what, seen: skipped) }
            let next: H2Frame?
            do {
                next = try await self.nextFrame(timeout: remaining)
            } catch H2ReadError.timedOut {
                throw H2ReadError.timedOut(waitingFor: what, seen: skipped)
            }
            guard let frame = next else { throw H2ReadError.closed(waitingFor: what, seen: skipped) }
            if predicate(frame) { return frame }
            skipped.append(frame)
        }
    }

    /// Reads `stream`'s frames until END_STREAM or RST_STREAM; frames of the connection and of
    /// other streams are kept for later reads.
    func response(on stream: UInt32, timeout: Duration = .seconds(5)) async throws -> H2StreamResult {
        var result = H2StreamResult()
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            let frame = try await self.frame(
                where: "the end of stream \(stream) (so far: \(result.frames))", timeout: deadline - ContinuousClock.now
            ) { $0.stream == stream || $0.kind == .goAway }
            if frame.kind == .goAway {
                self.inbox.putBack([frame])
                throw H2ReadError.unexpected(frame, expected: "the end of stream \(stream) (so far: \(result.frames))")
            }
            result.frames.append(frame)
            if frame.isEndStream || frame.kind == .rstStream { return result }
        }
    }

    /// Reads every frame until the server closes the connection.
    func framesUntilClosed(timeout: Duration = .seconds(5)) async throws -> [H2Frame] {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var frames: [H2Frame] = []
        while true {
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { throw H2ReadError.timedOut(waitingFor: "the close", seen: frames) }
            do {
                guard let frame = try await self.nextFrame(timeout: remaining) else { return frames }
                frames.append(frame)
            } catch H2ReadError.timedOut {
                throw H2ReadError.timedOut(waitingFor: "the close", seen: frames)
            }
        }
    }

    /// Reads until the server closes the connection; whether it did (within the default timeout).
    func closes() async -> Bool {
        (try? await self.framesUntilClosed()) != nil
    }

    /// Sends PING and reads until its acknowledgement: every frame the server wrote before it
    /// read the PING has then arrived. Returns the frames read meanwhile (not kept).
    @discardableResult
    func roundTrip(
        _ opaque: [UInt8] = Array("roundtrp".utf8), timeout: Duration = .seconds(5)
    ) async throws
        -> [H2Frame]
    {
        try await self.send(.ping(opaque))
        var seen: [H2Frame] = []
        _ = try await self.frame(where: "the PING acknowledgement", timeout: timeout, keep: { _ in false }) {
            frame in
            if frame.kind == .ping && frame.isAck && frame.payload == opaque { return true }
            seen.append(frame)
            return false
        }
        return seen
    }

    var isClosed: Bool { self.inbox.isClosed }

    /// The headers of every frame parsed so far, in the order they arrived, HEADERS and
    /// CONTINUATION frames apart.
    var wireFrames: [H2WireFrame] { self.inbox.wireFrames }

    func close() async {
        try? await self.channel.close()
    }
}

/// The bytes received on a connection, parsed into frames on demand.
private final class H2Inbox: Sendable {
    enum Taken {
        case frame(H2Frame)
        case closed
        case nothing
    }

    private struct State {
        var bytes: [UInt8] = []
        var closed = false
        /// Frames read and handed back (``RawH2Connection/frame(where:timeout:keep:_:)``).
        var kept: [H2Frame] = []
        /// A HEADERS frame without END_HEADERS, its CONTINUATION fragments appended.
        var partial: H2Frame?
        var decoder: HPACKDecoder
        var wireFrames: [H2WireFrame] = []
    }

    /// Moved by every read and by the close (after the bytes are in): a reader waits on it.
    let arrivals = ArrivalSignal()

    private let state: Mutex<State>

    init(decoder: HPACKDecoder) {
        self.state = Mutex(State(decoder: decoder))
    }

    var wireFrames: [H2WireFrame] { self.state.withLock { $0.wireFrames } }

    func append(_ buffer: ByteBuffer) {
        self.state.withLock { $0.bytes.append(contentsOf: buffer.readableBytesView) }
        self.arrivals.arrived()
    }

    func markClosed() {
        self.state.withLock { $0.closed = true }
        self.arrivals.arrived()
    }

    var isClosed: Bool { self.state.withLock { $0.closed } }

    func putBack(_ frames: [H2Frame]) {
        guard !frames.isEmpty else { return }
        self.state.withLock { $0.kept.insert(contentsOf: frames, at: 0) }
    }

    /// The next frame, or the close, or nothing yet.
    func take() throws -> Taken {
        try self.state.withLock { state in try Self.next(&state) }
    }

    private static func next(_ state: inout State) throws -> Taken {
        if !state.kept.isEmpty { return .frame(state.kept.removeFirst()) }
        while state.bytes.count >= 9 {
            let length = Int(state.bytes[0]) << 16 | Int(state.bytes[1]) << 8 | Int(state.bytes[2])
            guard state.bytes.count >= 9 + length else { break }
            let stream = state.bytes[5..<9].reduce(UInt32(0)) { $0 << 8 | UInt32($1) } & 0x7fff_ffff
            let frame = H2Frame(
                H2Frame.Kind(rawValue: state.bytes[3]), flags: H2Frame.Flags(rawValue: state.bytes[4]),
                stream: stream, payload: Array(state.bytes[9..<(9 + length)]))
            state.bytes.removeFirst(9 + length)
            state.wireFrames.append(
                H2WireFrame(kind: frame.kind, flags: frame.flags, stream: frame.stream, length: length))
            if let complete = try Self.assemble(frame, &state) { return .frame(complete) }
        }
        return state.closed ? .closed : .nothing
    }

    /// Merges CONTINUATION frames into their HEADERS frame and decodes the block once it is whole.
    private static func assemble(_ frame: H2Frame, _ state: inout State) throws -> H2Frame? {
        var frame = frame
        if frame.kind == .continuation, var partial = state.partial {
            partial.payload += frame.payload
            partial.flags.formUnion(frame.flags.intersection(.endHeaders))
            state.partial = nil
            frame = partial
        } else if frame.kind == .headers {
            // Keep only the field block fragment: no pad length, priority or padding.
            var fragment = H2Frame.unpadded(frame.payload, flags: frame.flags)
            if frame.flags.contains(.priority) { fragment = fragment.dropFirst(5) }
            frame.payload = Array(fragment)
            frame.flags.subtract([.padded, .priority])
        } else {
            return frame
        }
        guard frame.flags.contains(.endHeaders) else {
            state.partial = frame
            return nil
        }
        var buffer = ByteBuffer(bytes: frame.payload)
        do {
            let headers = try state.decoder.decodeHeaders(from: &buffer)
            frame.fields = headers.map { (name: $0.name, value: $0.value) }
        } catch {
            throw H2ReadError.undecodableHeaderBlock(stream: frame.stream, error)
        }
        return frame
    }
}

private final class H2CollectingHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let inbox: H2Inbox

    init(inbox: H2Inbox) { self.inbox = inbox }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.inbox.append(self.unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.inbox.markClosed()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
