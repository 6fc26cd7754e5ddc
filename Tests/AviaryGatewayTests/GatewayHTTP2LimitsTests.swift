//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import Synchronization
import Testing

@testable import AviaryGateway

/// The HTTP/2 listener's limits and what the client's SETTINGS change, over raw frames
/// (`RawH2Connection`): the concurrency limit before and after the client acknowledges it, the
/// bounds on rapid resets and on header blocks, a request's `content-length` against its DATA,
/// and responses framed for the client's header table and frame size.
///
/// The listener's policies beyond the RFC (the bounds and their error codes) are those of the
/// gateway's design notes ("The listener's own frame layer").
@Suite("Gateway HTTP/2 limits and client settings", .timeLimit(.minutes(1)))
struct GatewayHTTP2LimitsTests {
    /// An `/upload` request's block, the origin's answer at the end of its body being
    /// `bytes=N sha256=HEX`.
    static func upload(_ extra: [(String, String)] = []) -> [UInt8] {
        HPACKLiterals.request("POST", "/upload", extra: extra)
    }

    // MARK: Concurrency before and after the SETTINGS acknowledgement

    @Test(
        "before the client acknowledges SETTINGS it may open more than max_concurrent_streams; after, one beyond is refused"
    )
    func streamsBeforeSettingsAcknowledged() async throws {
        try await withFrameGateway(listen: ", max_concurrent_streams: 2") { gateway, origin in
            let connection = try await RawH2Connection.open(
                port: gateway.port, group: gateway.clients, handshake: false)
            defer { Task { await connection.close() } }
            try await connection.send(raw: RawH2Connection.preface + H2Frame.settings().bytes)
            let settings = try #require(try await connection.nextFrame())
            #expect(settings.kind == .settings && !settings.isAck, "\(settings)")
            #expect(settings.settings.contains { $0.setting == .maxConcurrentStreams && $0.value == 2 })

            // Not acknowledged: RFC 9113 §6.5.3 lets the client use the initial value (no limit)
            // until then, so three streams that stay open (no END_STREAM) are all taken.
            try await connection.send(
                .headers(stream: 1, Self.upload(), endStream: false), .data(stream: 1, Array("one".utf8)),
                .headers(stream: 3, Self.upload(), endStream: false), .data(stream: 3, Array("three".utf8)),
                .headers(stream: 5, Self.upload(), endStream: false), .data(stream: 5, Array("five".utf8)))
            let unacknowledged = try await connection.roundTrip()
            #expect(
                !unacknowledged.contains { $0.kind == .rstStream || $0.kind == .goAway },
                "before the ACK: \(unacknowledged)")

            // Acknowledged, with three open: a fourth is beyond the limit.
            try await connection.send(.settings(ack: true), .headers(stream: 7, Self.upload(), endStream: false))
            let refusal = try await GatewayHTTP2FrameTests.expectStreamError(connection, stream: 7, [.refusedStream])
            #expect(refusal.kind == .rstStream)

            // The three taken before the ACK are served once their bodies end.
            try await connection.send(
                .data(stream: 1, [], endStream: true), .data(stream: 3, [], endStream: true),
                .data(stream: 5, [], endStream: true))
            for (stream, body) in [(1, "one"), (3, "three"), (5, "five")] as [(UInt32, String)] {
                let response = try await connection.response(on: stream)
                #expect(response.status == 200, "stream \(stream): \(response.frames)")
                #expect(response.text.hasPrefix("bytes=\(body.utf8.count) sha256="), "\(response.text)")
            }

            // With none open: two are taken, a third open at once is refused.
            try await connection.send(
                .headers(stream: 9, Self.upload(), endStream: false),
                .headers(stream: 11, Self.upload(), endStream: false),
                .headers(stream: 13, Self.upload(), endStream: false))
            try await GatewayHTTP2FrameTests.expectStreamError(connection, stream: 13, [.refusedStream])
            try await connection.send(
                .data(stream: 9, Array("nine".utf8), endStream: true),
                .data(stream: 11, Array("eleven".utf8), endStream: true))
            #expect(try await connection.response(on: 9).text.hasPrefix("bytes=4 "))
            #expect(try await connection.response(on: 11).text.hasPrefix("bytes=6 "))
            let rest = try await connection.roundTrip()
            #expect(!rest.contains { $0.kind == .goAway }, "\(rest)")
            // The refused streams never reached the origin.
            #expect(origin.state.uploads.withLock { $0.count } == 5)
        }
    }

    // MARK: Rapid reset

    static let heldPost = HPACKLiterals.request("POST", "/held/reset")

    /// `count` streams from `first` on, each opened by a POST that stays open (its route holds
    /// it and the request has no END_STREAM) and reset by the client (CANCEL) at once.
    static func openedAndReset(_ count: Int, from first: UInt32) -> [H2Frame] {
        (0..<UInt32(count)).flatMap { index -> [H2Frame] in
            let stream = first + 2 * index
            return [.headers(stream: stream, Self.heldPost, endStream: false), .rstStream(stream: stream, .cancel)]
        }
    }

    /// The connection has not been told to calm down, and serves a GET on `stream`.
    static func expectServing(
        _ connection: RawH2Connection, stream: UInt32, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let seen = try await connection.roundTrip()
        #expect(!seen.contains { $0.kind == .goAway }, "\(seen)", sourceLocation: sourceLocation)
        try await connection.send(
            .headers(stream: stream, HPACKLiterals.request("GET", "/frames/after-resets"), endStream: true))
        let response = try await connection.response(on: stream)
        #expect(response.status == 200, "\(response.frames)", sourceLocation: sourceLocation)
    }

    @Test("the client's resets of open streams: 200 are fine, the 201st within 30 s gets GOAWAY ENHANCE_YOUR_CALM")
    func rapidResetBound() async throws {
        let timers = ManualGatewayTimers()
        try await withFrameGateway(timers: timers) { gateway, _ in
            #expect(HTTP2StreamServer.maximumResets == 200 && HTTP2StreamServer.errorPeriod == .seconds(30))
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            let count = HTTP2StreamServer.maximumResets
            try await connection.send(Self.openedAndReset(count, from: 1))
            try await Self.expectServing(connection, stream: UInt32(2 * count + 1))
            // Still within the period (the gateway's time has not moved): one more is too many.
            try await connection.send(Self.openedAndReset(1, from: UInt32(2 * count + 3)))
            try await GatewayHTTP2FrameTests.expectConnectionError(connection, .enhanceYourCalm)
        }
    }

    @Test("resets older than 30 s no longer count: after 31 s as many again are fine, one more is not")
    func rapidResetPeriod() async throws {
        let timers = ManualGatewayTimers()
        try await withFrameGateway(timers: timers) { gateway, _ in
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            let count = HTTP2StreamServer.maximumResets
            try await connection.send(Self.openedAndReset(count, from: 1))
            try await Self.expectServing(connection, stream: UInt32(2 * count + 1))
            await timers.advance(by: .seconds(31))
            // The first 200 are older than 30 s now: as many again.
            var next = UInt32(2 * count + 3)
            try await connection.send(Self.openedAndReset(count, from: next))
            next += UInt32(2 * count)
            try await Self.expectServing(connection, stream: next)
            try await connection.send(Self.openedAndReset(1, from: next + 2))
            try await GatewayHTTP2FrameTests.expectConnectionError(connection, .enhanceYourCalm)
        }
    }

    @Test("the bounds count over a sliding 30 s: a burst that straddles the start of a period counts whole")
    func slidingWindow() async throws {
        let timers = ManualGatewayTimers()
        try await withFrameGateway(timers: timers) { gateway, _ in
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            let count = HTTP2StreamServer.maximumResets
            // One reset, then 29 s later the other 199 of the limit.
            try await connection.send(Self.openedAndReset(1, from: 1))
            try await Self.expectServing(connection, stream: 3)
            await timers.advance(by: .seconds(29))
            var next = UInt32(5)
            try await connection.send(Self.openedAndReset(count - 1, from: next))
            next += UInt32(2 * (count - 1))
            try await Self.expectServing(connection, stream: next)
            // 2 s later the first is older than 30 s: one more is fine, a second is the 201st
            // within 30 s (fixed periods starting at the first reset would allow 200 more).
            await timers.advance(by: .seconds(2))
            try await connection.send(Self.openedAndReset(1, from: next + 2))
            try await Self.expectServing(connection, stream: next + 4)
            try await connection.send(Self.openedAndReset(1, from: next + 6))
            try await GatewayHTTP2FrameTests.expectConnectionError(connection, .enhanceYourCalm)
        }
    }

    @Test("an event window allows `limit` events within its period and refuses the next")
    func eventWindow() {
        var window = EventWindow()
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        func record(after seconds: Int64) -> Bool {
            window.record(at: start + .seconds(seconds), limit: 3, period: .seconds(30))
        }
        var recorded = (0..<3).map { _ in record(after: 0) }
        // The fourth within 30 s is refused, and not recorded: the oldest is still the first.
        recorded.append(record(after: 29))
        recorded += (0..<3).map { _ in record(after: 30) }
        recorded.append(record(after: 31))
        recorded.append(record(after: 60))
        #expect(recorded == [true, true, true, false, true, true, true, false, true])
    }

    @Test("refused header blocks: each resets its stream; the 200th within 30 s gets GOAWAY ENHANCE_YOUR_CALM")
    func refusedBlockBound() async throws {
        try await withFrameGateway { gateway, origin in
            #expect(HTTP2StreamServer.maximumRefusedBlocks == 200)
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            // A field name in upper case: a malformed request (RFC 9113 §8.2.1), a stream error.
            let malformed = HPACKLiterals.request("GET", "/frames/refused", extra: [("X-Upper", "1")])
            let first = (0..<UInt32(199)).map { H2Frame.headers(stream: 1 + 2 * $0, malformed, endStream: true) }
            try await connection.send(first)
            let resets = try await connection.roundTrip().filter { $0.kind == .rstStream }
            #expect(resets.count == 199 && resets.allSatisfy { $0.errorCode == .protocolError })
            try await Self.expectServing(connection, stream: 399)
            // The 200th within 30 s ends the connection (before a NIOHTTP2 client, which closes at
            // its 201st stream error, would close it itself).
            try await connection.send(.headers(stream: 401, malformed, endStream: true))
            try await GatewayHTTP2FrameTests.expectConnectionError(connection, .enhanceYourCalm)
            #expect(origin.state.requests.load(ordering: .relaxed) == 1)
        }
    }

    // MARK: Header block size

    /// `max_header_bytes` of these tests, and the most octets of a header block the listener
    /// gathers from HEADERS and CONTINUATION frames (design notes: twice `max_header_bytes` and a
    /// frame).
    static let maxHeaderBytes = 4096
    static let blockBound = 2 * maxHeaderBytes + 16_384

    struct BlockCase: Sendable, CustomTestStringConvertible {
        var name: String
        var frames: [H2Frame]
        var code: H2ErrorCode
        var testDescription: String { self.name }
    }

    /// `block` cut into HEADERS and CONTINUATION frames of at most `size` octets; END_HEADERS on
    /// the last one only if `ended`.
    static func frames(_ block: [UInt8], of size: Int, ended: Bool) -> [H2Frame] {
        let parts = stride(from: 0, to: block.count, by: size).map { Array(block[$0..<min($0 + size, block.count)]) }
        return parts.enumerated().map { index, part in
            let last = index == parts.count - 1
            return index == 0
                ? .headers(stream: 1, part, endStream: true, endHeaders: last && ended)
                : .continuation(stream: 1, part, endHeaders: last && ended)
        }
    }

    static let blockCases: [BlockCase] = [
        // At the bound, the block is read whole and decoded: its list is above max_header_bytes,
        // a COMPRESSION_ERROR (design notes), not the bound's ENHANCE_YOUR_CALM.
        .init(
            name: "a block of exactly the bound, ended",
            frames: frames(GatewayHTTP2FrameTests.block(ofSize: blockBound), of: 16_384, ended: true),
            code: .compressionError),
        // One octet more, and the block never ends: the listener stops gathering it. Each frame
        // is within SETTINGS_MAX_FRAME_SIZE; the last one crosses the bound, so the server has
        // read every octet sent when it closes.
        .init(
            name: "a block one octet beyond the bound, never ended",
            frames: frames(GatewayHTTP2FrameTests.block(ofSize: blockBound + 1), of: 16_384, ended: false),
            code: .enhanceYourCalm),
        .init(
            name: "CONTINUATION frames of 1 KiB until beyond the bound, never ended",
            frames: frames(
                GatewayHTTP2FrameTests.block(ofSize: blockBound + 1).prefix(10)
                    + [UInt8](repeating: 0x61, count: blockBound - 9), of: 1024, ended: false),
            code: .enhanceYourCalm),
    ]

    @Test(
        "a header block gathered from CONTINUATION frames beyond twice max_header_bytes and a frame: ENHANCE_YOUR_CALM",
        arguments: GatewayHTTP2LimitsTests.blockCases)
    func headerBlockBound(_ blockCase: BlockCase) async throws {
        try await withFrameGateway(limits: ", max_header_bytes: 4KiB") { gateway, origin in
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            #expect(connection.serverSetting(.maxHeaderListSize) == UInt32(Self.maxHeaderBytes))
            #expect(blockCase.frames.allSatisfy { $0.payload.count <= 16_384 })
            try await connection.send(blockCase.frames)
            try await GatewayHTTP2FrameTests.expectConnectionError(connection, blockCase.code)
            #expect(origin.state.requests.load(ordering: .relaxed) == 0)
        }
    }

    // MARK: content-length

    struct LengthCase: Sendable, CustomTestStringConvertible {
        var name: String
        /// Stream 1's frames: a POST to `/upload` with `content-length: 5`.
        var frames: [H2Frame]
        var testDescription: String { self.name }
    }

    static let fiveOctets = upload([("content-length", "5")])

    static let lengthCases: [LengthCase] = [
        .init(
            name: "3 octets of DATA",
            frames: [
                .headers(stream: 1, fiveOctets, endStream: false), .data(stream: 1, Array("abc".utf8), endStream: true),
            ]),
        .init(
            name: "7 octets of DATA",
            frames: [
                .headers(stream: 1, fiveOctets, endStream: false),
                .data(stream: 1, Array("abcdefg".utf8), endStream: true),
            ]),
        .init(
            name: "7 octets in two DATA frames",
            frames: [
                .headers(stream: 1, fiveOctets, endStream: false), .data(stream: 1, Array("abc".utf8)),
                .data(stream: 1, Array("defg".utf8), endStream: true),
            ]),
        .init(
            name: "3 octets, then trailers",
            frames: [
                .headers(stream: 1, fiveOctets, endStream: false), .data(stream: 1, Array("abc".utf8)),
                .headers(stream: 1, HPACKLiterals.block([("x-trailer", "1")]), endStream: true),
            ]),
        .init(name: "END_STREAM on the HEADERS frame", frames: [.headers(stream: 1, fiveOctets, endStream: true)]),
    ]

    @Test(
        "DATA that do not add up to content-length reset the stream (PROTOCOL_ERROR); the origin never gets them whole",
        arguments: GatewayHTTP2LimitsTests.lengthCases)
    func contentLengthMismatch(_ lengthCase: LengthCase) async throws {
        try await withFrameGateway { gateway, origin in
            let connection = try await RawH2Connection.open(port: gateway.port, group: gateway.clients)
            defer { Task { await connection.close() } }
            try await connection.send(lengthCase.frames)
            // RFC 9113 §8.1.1: a malformed request, a stream error of type PROTOCOL_ERROR; the
            // gateway's policy: the stream's only.
            let reset = try await GatewayHTTP2FrameTests.expectStreamError(connection, stream: 1, [.protocolError])
            #expect(reset.kind == .rstStream, "\(reset)")

            // The connection goes on: a request whose DATA match its length is served.
            try await connection.send(
                .headers(stream: 3, Self.fiveOctets, endStream: false),
                .data(stream: 3, Array("hello".utf8), endStream: true))
            let response = try await connection.response(on: 3)
            // SHA-256 of "hello".
            let answer = "bytes=5 sha256=2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
            #expect(response.status == 200)
            #expect(response.text == answer)
            let rest = try await connection.roundTrip()
            #expect(!rest.contains { $0.kind == .goAway }, "\(rest)")
            // The origin finished one body: the good one. Stream 1's request reached it at most
            // in part, on a connection closed under it, never completed by what came after.
            #expect(origin.state.uploads.withLock { $0 } == [answer])
        }
    }

    // MARK: The client's settings for responses

    @Test("with the client's SETTINGS_HEADER_TABLE_SIZE of 0, every response block decodes without a dynamic table")
    func headerTableSizeZero() async throws {
        try await withFrameGateway { gateway, _ in
            // The connection's decoder has a dynamic table of 0 octets, as announced: a block
            // that indexes a field or refers to one the table would hold does not decode.
            let connection = try await RawH2Connection.open(
                port: gateway.port, group: gateway.clients, settings: [(.headerTableSize, 0)])
            defer { Task { await connection.close() } }
            // Sequential streams with the same response fields, and two at once.
            for stream in [1, 3, 5] as [UInt32] {
                try await connection.send(
                    .headers(stream: stream, HPACKLiterals.request("GET", "/frames/table"), endStream: true))
                let response = try await connection.response(on: stream)
                #expect(response.status == 200)
                #expect(response.headers?.fields?.contains { $0.name == "x-origin" && $0.value == "a" } == true)
            }
            try await connection.send(
                .headers(stream: 7, HPACKLiterals.request("GET", "/frames/table"), endStream: true),
                .headers(stream: 9, HPACKLiterals.request("GET", "/frames/table"), endStream: true))
            for stream in [7, 9] as [UInt32] {
                let response = try await connection.response(on: stream)
                #expect(response.status == 200)
                #expect(response.headers?.fields?.contains { $0.name == "x-origin" && $0.value == "a" } == true)
            }
        }
    }

    @Test(
        "with the client's SETTINGS_MAX_FRAME_SIZE raised, DATA frames are larger than 16,384 and never above it",
        arguments: [20_000, 65_536])
    func largerFrames(maxFrameSize: Int) async throws {
        try await withFrameGateway { gateway, _ in
            let window = 1 << 24
            let connection = try await RawH2Connection.open(
                port: gateway.port, group: gateway.clients,
                settings: [(.maxFrameSize, UInt32(maxFrameSize)), (.initialWindowSize, UInt32(window))])
            defer { Task { await connection.close() } }
            let size = 1_000_000
            try await connection.send(
                .windowUpdate(stream: 0, increment: UInt32(window)),
                .headers(stream: 1, HPACKLiterals.request("GET", "/download?bytes=\(size)"), endStream: true))
            let response = try await connection.response(on: 1)
            #expect(response.status == 200)
            #expect(response.ended)
            let sizes = response.frames.filter { $0.kind == .data }.map(\.payload.count)
            // §4.2: a frame up to the receiver's SETTINGS_MAX_FRAME_SIZE. The gateway frames what
            // it read of the upstream, in reads of up to 64 KiB: some above 16,384.
            #expect(sizes.contains { $0 > 16_384 }, "\(sizes)")
            #expect(sizes.allSatisfy { $0 <= maxFrameSize }, "\(sizes)")
            #expect(response.body.count == size)
            #expect(GatewayHTTP2Tests.hex(response.body) == Pattern.sha256(count: size))
        }
    }

    @Test("a response header block larger than a frame is HEADERS and CONTINUATION frames, nothing between them")
    func largeResponseHeaderBlock() async throws {
        try await withFrameGateway { gateway, _ in
            let connection = try await RawH2Connection.open(
                port: gateway.port, group: gateway.clients, settings: [(.maxHeaderListSize, 1 << 20)])
            defer { Task { await connection.close() } }
            let size = 50_000
            // Stream 1's DATA is under way while stream 3's block is written; the connection's
            // window is opened for both (stream 1 is held by its own window of 65,535).
            try await connection.send(
                .windowUpdate(stream: 0, increment: 1 << 20),
                .headers(stream: 1, HPACKLiterals.request("GET", "/download?bytes=200000"), endStream: true),
                .headers(stream: 3, HPACKLiterals.request("GET", "/big-header?bytes=\(size)"), endStream: true))
            let response = try await connection.response(on: 3)
            #expect(response.status == 200)
            #expect(response.text == "big-header")
            let fields = try #require(response.headers?.fields)
            #expect(fields.first { $0.name == "x-big" }?.value == OriginHandler.bigHeader(size))
            #expect(fields.contains { $0.name == "x-origin" && $0.value == "a" })

            // RFC 9113 §4.3: a block is one HEADERS frame and CONTINUATION frames of the same
            // stream right after it, END_HEADERS on the last only; §4.2: each within the
            // client's SETTINGS_MAX_FRAME_SIZE (16,384: not raised).
            let wire = connection.wireFrames
            let start = try #require(wire.firstIndex { $0.kind == .headers && $0.stream == 3 })
            let end = try #require(wire[start...].firstIndex { $0.flags.contains(.endHeaders) })
            let block = Array(wire[start...end])
            #expect(block.count >= 2, "\(block)")
            #expect(block.dropFirst().allSatisfy { $0.kind == .continuation && $0.stream == 3 }, "\(block)")
            #expect(block.allSatisfy { $0.length <= 16_384 }, "\(block)")
            #expect(block.reduce(0) { $0 + $1.length } > 16_384)
            // Nothing else continues a block.
            #expect(wire.filter { $0.kind == .continuation }.count == block.count - 1, "\(wire)")

            // Stream 1 got its DATA whole (its window reopened as it goes).
            try await connection.send(.windowUpdate(stream: 1, increment: 1 << 20))
            let download = try await connection.response(on: 1)
            #expect(download.body.count == 200_000)
        }
    }
}
