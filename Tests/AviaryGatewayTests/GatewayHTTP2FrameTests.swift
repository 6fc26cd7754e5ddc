//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Synchronization
import Testing

@testable import AviaryGateway

/// RFC 9113 conformance of the gateway's HTTP/2 listener (h2c by prior knowledge), frame by
/// frame over a raw socket (`RawH2Connection`).
///
/// The tests hold whatever implements the listener's frame layer to what the RFC requires a
/// server to do, as a client sees it, and no more: where the RFC lets a server choose (a stream
/// error may be treated as a connection error, RFC 9113 §5.4.1; the last stream ID of a GOAWAY
/// sent for a connection error; how DATA is cut into frames), every choice it allows passes.
@Suite("Gateway HTTP/2 frames (RFC 9113)", .timeLimit(.minutes(1)))
struct GatewayHTTP2FrameTests {
    /// Reads until the server's GOAWAY and the close that follows: a connection error (RFC 9113
    /// §5.4.1) carries `code`, and the server closes the connection after it.
    static func expectConnectionError(
        _ connection: RawH2Connection, _ code: H2ErrorCode, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let frames = try await connection.framesUntilClosed()
        let goAway = try #require(
            frames.first { $0.kind == .goAway }, "no GOAWAY before the close; frames: \(frames)",
            sourceLocation: sourceLocation)
        #expect(goAway.stream == 0, sourceLocation: sourceLocation)
        #expect(goAway.errorCode == code, "GOAWAY: \(goAway); frames: \(frames)", sourceLocation: sourceLocation)
    }

    /// Reads until `stream` is reset or the connection gets GOAWAY: a stream error (RFC 9113
    /// §5.4.2) is RST_STREAM on that stream with one of `codes`, and a server may treat any
    /// stream error as a connection error (§5.4.1), GOAWAY with the same code.
    @discardableResult
    static func expectStreamError(
        _ connection: RawH2Connection, stream: UInt32, _ codes: Set<H2ErrorCode>,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> H2Frame {
        let frame = try await connection.frame(where: "RST_STREAM on stream \(stream) or GOAWAY") {
            ($0.kind == .rstStream && $0.stream == stream) || $0.kind == .goAway
        }
        #expect(
            frame.errorCode.map(codes.contains) == true, "\(frame), expected one of \(codes)",
            sourceLocation: sourceLocation)
        if frame.kind == .goAway {
            #expect(await connection.closes(), "the server closes after GOAWAY", sourceLocation: sourceLocation)
        }
        return frame
    }

    // MARK: Connection preface, SETTINGS, PING

    @Test("the server's first frame is SETTINGS with its limits; it acknowledges ours and answers PING with its data")
    func prefaceSettingsAndPing() async throws {
        try await withFrameGateway(listen: ", max_concurrent_streams: 7") { gateway, _ in
            let connection = try await RawH2Connection.open(
                port: gateway.port, group: gateway.clients, handshake: false)
            defer { Task { await connection.close() } }
            try await connection.send(
                raw: RawH2Connection.preface + H2Frame.settings([(.enablePush, 0), (.initialWindowSize, 65_535)]).bytes)
            // RFC 9113 §3.4: the server's preface is a SETTINGS frame, its first frame.
            let first = try #require(try await connection.nextFrame())
            #expect(first.kind == .settings && !first.isAck && first.stream == 0, "\(first)")
            let settings = Dictionary(first.settings.map { ($0.setting.rawValue, $0.value) }) { _, last in last }
            #expect(settings[H2Setting.maxConcurrentStreams.rawValue] == 7)
            let window = try #require(settings[H2Setting.initialWindowSize.rawValue])
            // The RFC does not require either setting; the gateway announces both (without its
            // limit, a client could not know it).
            #expect((0...0x7fff_ffff).contains(window))

            // An unsolicited PING with ACK set must not be answered (§6.7); the PING after it is,
            // with its opaque data.
            try await connection.send(
                .settings(ack: true), .ping(Array("not-mine".utf8), ack: true), .ping(Array("aviary-1".utf8)))
            var beforePing: [H2Frame] = []
            let pong = try await connection.frame(where: "a PING", keep: { _ in false }) { frame in
                if frame.kind == .ping { return true }
                beforePing.append(frame)
                return false
            }
            #expect(pong.isAck && pong.stream == 0)
            #expect(pong.payload == Array("aviary-1".utf8))
            // §6.5.3: our SETTINGS is acknowledged immediately, so before the later PING's answer.
            let acks = beforePing.filter { $0.kind == .settings && $0.isAck }
            #expect(acks.count == 1 && acks[0].payload.isEmpty, "frames before the PING ACK: \(beforePing)")
            // Still one connection: a second PING gets its own answer.
            try await connection.roundTrip(Array("aviary-2".utf8))
            #expect(!connection.isClosed)
        }
    }

    // MARK: Requests

    @Test("a GET gets HEADERS with :status 200 and the origin's body in DATA, END_STREAM on the last frame")
    func simpleGet() async throws {
        try await withFrameGateway { gateway, origin in
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            try await connection.send(
                .headers(stream: 1, HPACKLiterals.request("GET", "/frames/simple"), endStream: true))
            let response = try await connection.response(on: 1)
            let head = try #require(response.frames.first)
            #expect(head.kind == .headers)
            // §8.3: pseudo-header fields come first.
            #expect(head.fields?.first?.name == ":status")
            #expect(response.status == 200)
            #expect(response.text.hasPrefix("GET /frames/simple\n"), "\(response.text)")
            #expect(response.text.contains("host: gateway.test\n"))
            // END_STREAM on the last frame only, and nothing else of the stream's after it.
            #expect(response.ended)
            #expect(response.frames.dropLast().allSatisfy { !$0.isEndStream })
            // No trailers: the origin sends none.
            #expect(!response.frames.dropFirst().contains { $0.kind == .headers }, "\(response.frames)")
            try await connection.roundTrip()
            #expect(origin.state.requests.load(ordering: .relaxed) == 1)
        }
    }

    @Test("a header block split into HEADERS and CONTINUATION frames, inside a field, is one request")
    func continuationFrames() async throws {
        try await withFrameGateway { gateway, _ in
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            let long = String(repeating: "c", count: 300)
            let block = HPACKLiterals.request(
                "GET", "/frames/continued", extra: [("x-split", "one-two-three"), ("x-long", long)])
            // Cuts in the middle of :method's literal and of x-long's value.
            let cuts = [3, block.count - 100]
            try await connection.send(
                .headers(stream: 1, Array(block[..<cuts[0]]), endStream: true, endHeaders: false),
                .continuation(stream: 1, Array(block[cuts[0]..<cuts[1]]), endHeaders: false),
                .continuation(stream: 1, Array(block[cuts[1]...]), endHeaders: true))
            let response = try await connection.response(on: 1)
            #expect(response.status == 200)
            #expect(response.text.hasPrefix("GET /frames/continued\n"), "\(response.text)")
            #expect(response.text.contains("x-split: one-two-three\n"))
            #expect(response.text.contains("x-long: \(long)\n"))
        }
    }

    @Test("padded HEADERS (with PRIORITY) and padded DATA are accepted; the origin gets the body without padding")
    func paddedFrames() async throws {
        try await withFrameGateway { gateway, _ in
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            try await connection.send(
                .headers(
                    stream: 1, HPACKLiterals.request("POST", "/echo"), endStream: false, padding: 17,
                    priority: (dependency: 0, weight: 200)),
                .data(stream: 1, Array("padded ".utf8), padding: 9),
                // A pad length of zero: the PADDED flag with only its length octet.
                .data(stream: 1, Array("body".utf8), padding: 0),
                .data(stream: 1, Array(", with the most padding".utf8), endStream: true, padding: 255))
            let response = try await connection.response(on: 1)
            #expect(response.status == 200)
            #expect(response.text == "padded body, with the most padding")
        }
    }

    // MARK: Connection errors

    /// A frame sequence that is a connection error, with the error code RFC 9113 requires.
    struct ConnectionErrorCase: Sendable, CustomTestStringConvertible {
        var name: String
        var frames: [H2Frame]
        var code: H2ErrorCode
        var testDescription: String { self.name }
    }

    static let getBlock = HPACKLiterals.request("GET", "/frames/error")
    static let postBlock = HPACKLiterals.request("POST", "/echo")

    /// `frame` (PADDED) with its pad length octet set to `length`: with a length of the whole
    /// payload or more, the padding would take the pad length octet too.
    static func padded(_ frame: H2Frame, to length: Int) -> H2Frame {
        var frame = frame
        frame.payload[0] = UInt8(length)
        return frame
    }

    /// A valid GET block of exactly `size` octets (its `x-big` value fills it).
    static func block(ofSize size: Int) -> [UInt8] {
        var fill = size
        while true {
            let block = HPACKLiterals.request(
                "GET", "/frames/big", extra: [("x-big", String(repeating: "b", count: fill))])
            if block.count <= size { return block }
            fill -= block.count - size
        }
    }

    static let connectionErrors: [ConnectionErrorCase] = [
        // §6.5: SETTINGS always applies to the connection.
        .init(name: "SETTINGS on stream 1", frames: [.init(.settings, stream: 1)], code: .protocolError),
        // §6.5: a length that is not a multiple of 6.
        .init(
            name: "SETTINGS of 7 octets",
            frames: [.init(.settings, stream: 0, payload: [0, 3, 0, 0, 0, 10, 0])], code: .frameSizeError),
        // §6.7: a PING's payload is 8 octets.
        .init(
            name: "PING of 7 octets", frames: [.init(.ping, stream: 0, payload: [1, 2, 3, 4, 5, 6, 7])],
            code: .frameSizeError),
        // §6.9: errors on the connection window are connection errors.
        .init(
            name: "WINDOW_UPDATE on stream 0 with increment 0", frames: [.windowUpdate(stream: 0, increment: 0)],
            code: .protocolError),
        // §6.9.1: 65,535 + 2^31-1 is above the largest window.
        .init(
            name: "connection WINDOW_UPDATE beyond 2^31-1",
            frames: [.windowUpdate(stream: 0, increment: 0x7fff_ffff)], code: .flowControlError),
        // §6.1: DATA belongs to a stream.
        .init(name: "DATA on stream 0", frames: [.data(stream: 0, Array("x".utf8))], code: .protocolError),
        // §5.1.1: clients open odd-numbered streams.
        .init(
            name: "HEADERS on stream 2", frames: [.headers(stream: 2, getBlock, endStream: true)], code: .protocolError),
        // §6.10: a field block's frames are contiguous.
        .init(
            name: "PING between HEADERS and its CONTINUATION",
            frames: [
                .headers(stream: 1, Array(getBlock.prefix(10)), endStream: true, endHeaders: false),
                .ping(Array("between!".utf8)),
                .continuation(stream: 1, Array(getBlock.dropFirst(10)), endHeaders: true),
            ],
            code: .protocolError),
        // §4.2: a frame above SETTINGS_MAX_FRAME_SIZE (16,384 unless raised) carrying a field
        // block is a connection error. The block (a valid one) is far below max_header_bytes.
        .init(
            name: "HEADERS of 16,385 octets",
            frames: [.headers(stream: 1, block(ofSize: 16_385), endStream: true)],
            code: .frameSizeError),
        // §6.5.2: SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1.
        .init(
            name: "SETTINGS_INITIAL_WINDOW_SIZE of 2^31",
            frames: [.settings([(.initialWindowSize, 0x8000_0000)])], code: .flowControlError),
        // §6.5.2: SETTINGS_ENABLE_PUSH is 0 or 1.
        .init(name: "SETTINGS_ENABLE_PUSH of 2", frames: [.settings([(.enablePush, 2)])], code: .protocolError),
        // §8.4: a client cannot push (on a stream the client opened).
        .init(
            name: "PUSH_PROMISE from the client",
            frames: [
                .headers(stream: 1, postBlock, endStream: false),
                .init(.pushPromise, flags: .endHeaders, stream: 1, payload: H2Frame.bigEndian(2) + getBlock),
            ],
            code: .protocolError),
        // §5.1.1: a new stream's ID is above every ID the client used.
        .init(
            name: "HEADERS on stream 3 after stream 5",
            frames: [.headers(stream: 5, getBlock, endStream: true), .headers(stream: 3, getBlock, endStream: true)],
            code: .protocolError),
        // §4.3: a block that cannot be decompressed. 0xfe: an indexed field with index 126,
        // beyond the static table (61 entries) and the empty dynamic table.
        .init(
            name: "a header block that does not decode",
            frames: [.headers(stream: 1, [0xfe, 0xfe, 0xfe], endStream: true)], code: .compressionError),
        // §5.1: only HEADERS and PRIORITY are allowed on an idle stream.
        .init(name: "DATA on an idle stream", frames: [.data(stream: 1, Array("x".utf8))], code: .protocolError),
        .init(
            name: "WINDOW_UPDATE on an idle stream", frames: [.windowUpdate(stream: 1, increment: 10)],
            code: .protocolError),
        // §6.4: RST_STREAM on an idle stream.
        .init(name: "RST_STREAM on an idle stream", frames: [.rstStream(stream: 1, .cancel)], code: .protocolError),
        // §6.7: PING with more than 8 octets.
        .init(
            name: "PING of 9 octets", frames: [.init(.ping, stream: 0, payload: Array("ninebytes".utf8))],
            code: .frameSizeError),
        // §6.7: PING belongs to the connection.
        .init(
            name: "PING on stream 1", frames: [.init(.ping, stream: 1, payload: Array("stream 1".utf8))],
            code: .protocolError),
        // §6.9: a WINDOW_UPDATE is 4 octets.
        .init(
            name: "WINDOW_UPDATE of 5 octets", frames: [.init(.windowUpdate, stream: 0, payload: [0, 0, 0, 1, 0])],
            code: .frameSizeError),
        // §6.5: a SETTINGS acknowledgement is empty.
        .init(
            name: "SETTINGS ACK with a payload",
            frames: [.init(.settings, flags: .ack, stream: 0, payload: [0, 3, 0, 0, 0, 10])], code: .frameSizeError),
        // §6.5.2: SETTINGS_MAX_FRAME_SIZE is within 16,384 and 2^24-1.
        .init(
            name: "SETTINGS_MAX_FRAME_SIZE of 16,383", frames: [.settings([(.maxFrameSize, 16_383)])],
            code: .protocolError),
        .init(
            name: "SETTINGS_MAX_FRAME_SIZE of 2^24", frames: [.settings([(.maxFrameSize, 1 << 24)])],
            code: .protocolError),
        // §6.2: HEADERS belongs to a stream.
        .init(
            name: "HEADERS on stream 0", frames: [.headers(stream: 0, getBlock, endStream: true)], code: .protocolError),
        // §6.10: CONTINUATION only follows HEADERS, PUSH_PROMISE or CONTINUATION without END_HEADERS.
        .init(
            name: "CONTINUATION without HEADERS", frames: [.continuation(stream: 1, getBlock, endHeaders: true)],
            code: .protocolError),
        // §6.1, §6.2: padding as long as the rest of the payload.
        .init(
            name: "DATA whose padding fills its payload",
            frames: [
                .headers(stream: 1, postBlock, endStream: false),
                padded(.data(stream: 1, Array("abc".utf8), padding: 2), to: 6),
            ],
            code: .protocolError),
        .init(
            name: "HEADERS whose padding fills its payload",
            frames: [padded(.headers(stream: 1, getBlock, endStream: true, padding: 1), to: getBlock.count + 2)],
            code: .protocolError),
    ]

    @Test(
        "connection errors: GOAWAY with the RFC's error code, then the server closes",
        arguments: GatewayHTTP2FrameTests.connectionErrors)
    func connectionError(_ error: ConnectionErrorCase) async throws {
        try await withFrameGateway { gateway, _ in
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            try await connection.send(error.frames)
            try await Self.expectConnectionError(connection, error.code)
        }
    }

    // MARK: Stream errors

    /// Frames that are a stream error on stream 1 (RFC 9113 §5.4.2), with the codes the RFC
    /// allows. The requests go to `/held...`: they wait in a fault delay, so stream 1 stays
    /// open (or half-closed) whatever the origin would do.
    struct StreamErrorCase: Sendable, CustomTestStringConvertible {
        var name: String
        var frames: [H2Frame]
        var codes: Set<H2ErrorCode>
        var testDescription: String { self.name }
    }

    static let heldPost = HPACKLiterals.request("POST", "/held/post")
    static let heldGet = HPACKLiterals.request("GET", "/held/get")

    static let streamErrors: [StreamErrorCase] = [
        // §6.9: an increment of 0 for a stream's window.
        .init(
            name: "WINDOW_UPDATE with increment 0 on an open stream",
            frames: [.headers(stream: 1, heldPost, endStream: false), .windowUpdate(stream: 1, increment: 0)],
            codes: [.protocolError]),
        // §6.9.1: 65,535 + 2^31-1 is above the largest window; RST_STREAM with FLOW_CONTROL_ERROR.
        .init(
            name: "a stream WINDOW_UPDATE taking its window above 2^31-1",
            frames: [
                .headers(stream: 1, heldPost, endStream: false), .windowUpdate(stream: 1, increment: 0x7fff_ffff),
            ],
            codes: [.flowControlError]),
        // §5.1: a half-closed (remote) stream takes no more DATA.
        .init(
            name: "DATA after the request's END_STREAM",
            frames: [.headers(stream: 1, heldGet, endStream: true), .data(stream: 1, Array("late".utf8))],
            codes: [.streamClosed]),
        // §6.3: a PRIORITY frame is 5 octets.
        .init(
            name: "PRIORITY of 4 octets",
            frames: [
                .headers(stream: 1, heldPost, endStream: false), .init(.priority, stream: 1, payload: [0, 0, 0, 0]),
            ],
            codes: [.frameSizeError]),
    ]

    @Test(
        "stream errors: RST_STREAM with the RFC's error code (or GOAWAY with it)",
        arguments: GatewayHTTP2FrameTests.streamErrors)
    func streamError(_ error: StreamErrorCase) async throws {
        try await withFrameGateway(timers: ManualGatewayTimers()) { gateway, _ in
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            try await connection.send(error.frames)
            let reply = try await Self.expectStreamError(connection, stream: 1, error.codes)
            // The gateway's policy beyond the RFC: a stream error stays the stream's, so the
            // client's other streams on the connection go on.
            #expect(reply.kind == .rstStream, "\(reply)")
            let rest = try await connection.roundTrip()
            #expect(!rest.contains { $0.kind == .goAway }, "\(rest)")
        }
    }

    @Test("DATA beyond a stream's flow-control window while the request is held is a FLOW_CONTROL_ERROR")
    func dataBeyondStreamWindow() async throws {
        let timers = ManualGatewayTimers()
        try await withFrameGateway(timers: timers) { gateway, _ in
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            // The stream's window is the server's SETTINGS_INITIAL_WINDOW_SIZE (65,535 by
            // default); the connection's starts at 65,535 whatever the settings.
            let initial = Int(connection.serverSetting(.initialWindowSize) ?? 65_535)
            try #require(initial <= 65_535, "the test sends the stream's window within the connection's first")
            try await connection.send(
                .headers(stream: 1, HPACKLiterals.request("POST", "/held/upload"), endStream: false))
            // The request waits in its route's fault delay: nothing reads its body.
            try await timers.waitUntilArmed(.seconds(60))
            var frames: [H2Frame] = []
            var left = initial
            while left > 0 {
                let size = min(left, 16_384)
                frames.append(.data(stream: 1, [UInt8](repeating: 0x61, count: size)))
                left -= size
            }
            try await connection.send(frames)
            // The window the server gave the stream by now (a PING's round trip: every
            // WINDOW_UPDATE it sent before reading the PING has arrived).
            let seen = try await connection.roundTrip()
            let window = seen.filter { $0.stream == 1 }.compactMap(\.windowIncrement).reduce(0) { $0 + Int($1) }
            try #require(window < 1 << 24, "the server keeps opening the window of a request it does not read")
            #expect(seen.allSatisfy { $0.kind != .rstStream && $0.kind != .goAway }, "\(seen)")
            // One octet more than the window. §6.9.1: a sender MUST NOT exceed it, and a receiver
            // that cannot accept the frame MAY answer with a stream or a connection error of type
            // FLOW_CONTROL_ERROR; the gateway, which does not read the body, cannot.
            var extra: [H2Frame] = []
            left = window + 1
            while left > 0 {
                let size = min(left, 16_384)
                extra.append(.data(stream: 1, [UInt8](repeating: 0x62, count: size)))
                left -= size
            }
            try await connection.send(extra)
            try await Self.expectStreamError(connection, stream: 1, [.flowControlError])
        }
    }

    @Test("RST_STREAM from the client in the middle of a request: the connection takes the next stream")
    func clientResetMidRequest() async throws {
        try await withFrameGateway { gateway, origin in
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            try await connection.send(
                .headers(stream: 1, Self.postBlock, endStream: false), .data(stream: 1, Array("half of it".utf8)))
            // The echo origin answers the head at once: the exchange is in flight.
            let head = try await connection.frame(where: "stream 1's HEADERS") {
                $0.stream == 1 && $0.kind == .headers
            }
            #expect(head.status == 200)
            try await connection.send(
                .rstStream(stream: 1, .cancel),
                .headers(stream: 3, HPACKLiterals.request("GET", "/frames/after-reset"), endStream: true))
            let next = try await connection.response(on: 3)
            #expect(next.status == 200)
            #expect(next.text.hasPrefix("GET /frames/after-reset\n"), "\(next.text)")
            let rest = try await connection.roundTrip()
            #expect(rest.allSatisfy { $0.kind != .goAway }, "\(rest)")
            #expect(!connection.isClosed)
            #expect(origin.state.requests.load(ordering: .relaxed) == 2)
        }
    }

    // MARK: Outbound flow control

    @Test(
        "a response is held to the client's SETTINGS_INITIAL_WINDOW_SIZE until WINDOW_UPDATE; no DATA frame above 16,384"
    )
    func responseHeldByStreamWindow() async throws {
        try await withFrameGateway { gateway, _ in
            let connection = try await RawH2Connection.open(
                port: gateway.port, group: gateway.clients, settings: [(.initialWindowSize, 1000)])
            defer { Task { await connection.close() } }
            let size = 70_000
            try await connection.send(
                .headers(stream: 1, HPACKLiterals.request("GET", "/download?bytes=\(size)"), endStream: true))
            let held = try await Self.readUntilHeld(connection, stream: 1, window: 1000)
            // The stream's window opens (and the connection's, 65,535 so far, for all of it).
            try await connection.send(
                .windowUpdate(stream: 1, increment: 1 << 20), .windowUpdate(stream: 0, increment: 1 << 20))
            let rest = try await connection.response(on: 1)
            #expect(rest.ended)
            let data = held + rest.frames.filter { $0.kind == .data }
            #expect(data.allSatisfy { $0.payload.count <= 16_384 }, "\(data.map(\.payload.count))")
            let body = data.flatMap(\.data)
            #expect(body.count == size)
            #expect(GatewayHTTP2Tests.hex(body) == Pattern.sha256(count: size))
        }
    }

    @Test("a response is held to the connection's window of 65,535 until a connection WINDOW_UPDATE")
    func responseHeldByConnectionWindow() async throws {
        try await withFrameGateway { gateway, _ in
            let connection = try await RawH2Connection.open(
                port: gateway.port, group: gateway.clients, settings: [(.initialWindowSize, 1 << 20)])
            defer { Task { await connection.close() } }
            let size = 100_000
            try await connection.send(
                .headers(stream: 1, HPACKLiterals.request("GET", "/download?bytes=\(size)"), endStream: true))
            let held = try await Self.readUntilHeld(connection, stream: 1, window: 65_535)
            try await connection.send(.windowUpdate(stream: 0, increment: 1 << 20))
            let rest = try await connection.response(on: 1)
            #expect(rest.ended)
            let data = held + rest.frames.filter { $0.kind == .data }
            #expect(data.allSatisfy { $0.payload.count <= 16_384 }, "\(data.map(\.payload.count))")
            let body = data.flatMap(\.data)
            #expect(body.count == size)
            #expect(GatewayHTTP2Tests.hex(body) == Pattern.sha256(count: size))
        }
    }

    /// Reads `stream`'s response until its DATA fills `window` octets, then makes sure (a PING's
    /// round trip) that no more comes; returns the stream's DATA frames so far. Flow control
    /// counts whole DATA frames, padding included (§6.9.1).
    static func readUntilHeld(
        _ connection: RawH2Connection, stream: UInt32, window: Int, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> [H2Frame] {
        var data: [H2Frame] = []
        var counted: Int { data.reduce(0) { $0 + $1.payload.count } }
        while counted < window {
            let frame = try await connection.frame(where: "\(window) octets of DATA on stream \(stream)") {
                $0.stream == stream
            }
            #expect(!frame.isEndStream && frame.kind != .rstStream, "\(frame)", sourceLocation: sourceLocation)
            if frame.kind == .data { data.append(frame) }
        }
        let more = try await connection.roundTrip()
        data += more.filter { $0.stream == stream && $0.kind == .data }
        #expect(
            counted == window, "DATA beyond the window: \(data.map(\.payload.count))", sourceLocation: sourceLocation)
        #expect(!more.contains { $0.stream == stream && $0.isEndStream }, sourceLocation: sourceLocation)
        return data
    }

    // MARK: Extensions and priorities

    @Test("unknown frame types, unknown settings and PRIORITY frames are ignored; the connection keeps working")
    func unknownFramesAndPriorityIgnored() async throws {
        try await withFrameGateway { gateway, _ in
            // §6.5.2: an unknown setting is ignored.
            let connection = try await RawH2Connection.open(
                port: gateway.port, group: gateway.clients, settings: [(H2Setting(rawValue: 0x99), 42)])
            defer { Task { await connection.close() } }
            let unknown = H2Frame.Kind(rawValue: 0xfa)
            try await connection.send(
                // §5.5: frames of unknown types are ignored, on stream 0 or any other, whatever
                // their flags.
                .init(unknown, flags: .init(rawValue: 0xff), stream: 0, payload: Array("ignore me".utf8)),
                .init(unknown, stream: 1, payload: []),
                // §5.3.2, §6.3: PRIORITY is allowed on idle streams and does not open them.
                .priority(stream: 3, dependsOn: 0, weight: 16),
                .priority(stream: 9, dependsOn: 3, weight: 255),
                .headers(stream: 5, Self.postBlock, endStream: false),
                .init(unknown, flags: .init(rawValue: 0x01), stream: 5, payload: [1, 2, 3]),
                .priority(stream: 5, dependsOn: 0, weight: 1),
                .data(stream: 5, Array("still one request".utf8), endStream: true))
            let response = try await connection.response(on: 5)
            #expect(response.status == 200)
            #expect(response.text == "still one request")
            // Stream 7 is below 9, which only had a PRIORITY frame: still a new stream.
            try await connection.send(
                .headers(stream: 7, HPACKLiterals.request("GET", "/frames/after-priority"), endStream: true))
            let next = try await connection.response(on: 7)
            #expect(next.status == 200)
            let rest = try await connection.roundTrip()
            #expect(rest.allSatisfy { $0.kind != .goAway && $0.kind != .rstStream }, "\(rest)")
        }
    }

    // MARK: Concurrency limit

    @Test("a stream above SETTINGS_MAX_CONCURRENT_STREAMS is refused and never reaches the origin")
    func concurrentStreamLimit() async throws {
        try await withFrameGateway(listen: ", max_concurrent_streams: 2") { gateway, origin in
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            #expect(connection.serverSetting(.maxConcurrentStreams) == 2)
            // Requests without END_STREAM stay open.
            try await connection.send(
                .headers(stream: 1, Self.postBlock, endStream: false),
                .headers(stream: 3, Self.postBlock, endStream: false),
                .headers(stream: 5, Self.postBlock, endStream: false))
            // §5.1.2: a stream error of type PROTOCOL_ERROR or REFUSED_STREAM; §5.4.1 lets the
            // server make it a connection error.
            // The gateway's choice: REFUSED_STREAM (the client may retry it) and a stream error
            // only, so the two streams within the limit go on.
            let refusal = try await Self.expectStreamError(connection, stream: 5, [.refusedStream])
            #expect(refusal.kind == .rstStream)
            try await connection.send(
                .data(stream: 1, Array("one".utf8), endStream: true),
                .data(stream: 3, Array("three".utf8), endStream: true))
            let first = try await connection.response(on: 1)
            let second = try await connection.response(on: 3)
            #expect(first.status == 200 && first.text == "one")
            #expect(second.status == 200 && second.text == "three")
            let rest = try await connection.roundTrip()
            #expect(!rest.contains { $0.stream == 5 && $0.kind != .rstStream }, "\(rest)")
            #expect(origin.state.requests.load(ordering: .relaxed) == 2)
        }
    }

    // MARK: GOAWAY from the client

    @Test("after the client's GOAWAY the server finishes the streams the client opened")
    func clientGoAway() async throws {
        try await withFrameGateway { gateway, _ in
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            try await connection.send(
                .headers(stream: 1, Self.postBlock, endStream: false), .data(stream: 1, Array("before".utf8)),
                .headers(stream: 3, HPACKLiterals.request("GET", "/frames/open-at-goaway"), endStream: true))
            // §6.8: the last stream ID is about streams the server might open; the client's own
            // streams finish. Then the gateway closes the connection (nothing in the RFC requires
            // it; the client said it starts no more streams, so the connection has no more use).
            try await connection.send(
                .goAway(lastStream: 0, .noError), .data(stream: 1, Array(" and after GOAWAY".utf8), endStream: true))
            let first = try await connection.response(on: 1)
            let second = try await connection.response(on: 3)
            #expect(first.status == 200 && first.text == "before and after GOAWAY")
            #expect(first.ended)
            #expect(second.status == 200 && second.text.hasPrefix("GET /frames/open-at-goaway\n"))
            #expect(await connection.closes(), "the server closes once the streams are done")
        }
    }
}
