//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import Synchronization
import Testing

@testable import AviaryGateway

/// One HTTP/2 stream through the gateway: the stream codec's framing, a stream whose client
/// stops reading, a stream the client resets, a local answer on a stream.
@Suite("Gateway HTTP/2 streams", .timeLimit(.minutes(3)))
struct GatewayHTTP2StreamTests {
    // MARK: The codec

    /// Writes `parts` through `codec`, then takes what it holds (as a flush does): the frames
    /// that go out, in order.
    static func frames(
        _ codec: inout HTTP2StreamCodec, _ parts: [HTTPServerResponsePart], flush: Bool = true
    ) -> [HTTP2StreamCodec.Frame] {
        var frames: [HTTP2StreamCodec.Frame] = []
        for part in parts {
            let (first, second) = codec.write(part, promise: nil)
            if let first { frames.append(first.frame) }
            if let second { frames.append(second.frame) }
        }
        if flush, let held = codec.takeHeld() { frames.append(held.frame) }
        return frames
    }

    static func describe(_ frames: [HTTP2StreamCodec.Frame]) -> [String] {
        frames.map { frame in
            switch frame {
            case .headers(_, let endStream): return endStream ? "HEADERS+END" : "HEADERS"
            case .data(let buffer, let endStream):
                return endStream ? "DATA(\(buffer.readableBytes))+END" : "DATA(\(buffer.readableBytes))"
            }
        }
    }

    static func head(_ status: HTTPResponseStatus = .ok, _ headers: [(String, String)] = []) -> HTTPServerResponsePart {
        .head(HTTPResponseHead(version: .http2, status: status, headers: HTTPHeaders(headers)))
    }

    @Test("the response's last frame carries END_STREAM: no empty DATA frame is added")
    func endStreamOnLastFrame() throws {
        var codec = HTTP2StreamCodec()
        // Head, body and end written before a flush: HEADERS, then DATA with END_STREAM.
        let hello = HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: "hello")))
        #expect(
            Self.describe(Self.frames(&codec, [Self.head(.ok, [("content-length", "5")]), hello, .end(nil)]))
                == ["HEADERS", "DATA(5)+END"])

        // A bodyless answer (HEAD, 204): HEADERS alone ends the stream.
        #expect(Self.describe(Self.frames(&codec, [Self.head(.noContent), .end(nil)])) == ["HEADERS+END"])

        // A streamed body: what a flush finds goes out as it is, and the end comes with the last part.
        let ab = HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: "ab")))
        #expect(Self.describe(Self.frames(&codec, [Self.head(), ab])) == ["HEADERS", "DATA(2)"])
        let cde = HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: "cde")))
        #expect(Self.describe(Self.frames(&codec, [cde])) == ["DATA(3)"])
        // Nothing held when the end comes: an empty DATA frame ends the stream.
        #expect(Self.describe(Self.frames(&codec, [.end(nil)])) == ["DATA(0)+END"])

        // Trailers (gRPC): a HEADERS frame of their own ends the stream.
        let message = HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: "m")))
        let frames = Self.frames(&codec, [Self.head(), message, .end(HTTPHeaders([("grpc-status", "0")]))])
        #expect(Self.describe(frames) == ["HEADERS", "DATA(1)", "HEADERS+END"])
        guard case .headers(let trailers, _)? = frames.last else {
            Issue.record("the last frame is no HEADERS frame: \(Self.describe(frames))")
            return
        }
        #expect(trailers.first(name: "grpc-status") == "0")
        #expect(!trailers.contains(name: ":status"))
    }

    @Test("write promises complete, also when the end is merged into the frame held before it")
    func promisesComplete() throws {
        let loop = EmbeddedEventLoop()
        var codec = HTTP2StreamCodec()
        let body = loop.makePromise(of: Void.self)
        let end = loop.makePromise(of: Void.self)
        var out: [HTTP2StreamCodec.Outbound] = []
        for (part, promise) in [
            (Self.head(), nil), (.body(.byteBuffer(ByteBuffer(string: "x"))), body),
            (HTTPServerResponsePart.end(nil), end),
        ] as [(HTTPServerResponsePart, EventLoopPromise<Void>?)] {
            let (first, second) = codec.write(part, promise: promise)
            if let first { out.append(first) }
            if let second { out.append(second) }
        }
        #expect(Self.describe(out.map(\.frame)) == ["HEADERS", "DATA(1)+END"])
        // What the connection does once the frames are written: the end's promise follows.
        for frame in out { frame.promise?.succeed() }
        try body.futureResult.wait()
        try end.futureResult.wait()
    }

    @Test("response names are lower-cased, connection-specific fields dropped, :status first")
    func responseBlock() throws {
        let block = HTTP2StreamCodec.block(
            .notFound,
            HTTPHeaders([
                ("Content-Type", "text/plain"), ("connection", "close"), ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"), ("upgrade", "h2c"), ("Proxy-Connection", "x"),
                ("x-lower", "1"), ("X-Mixed-Case", "2"),
            ]))
        let fields = block.map { "\($0.name)=\($0.value)" }
        #expect(fields == [":status=404", "content-type=text/plain", "x-lower=1", "x-mixed-case=2"])
    }

    @Test("a forwarded head's block from the upstream's lines is the block of its fields minus hop-by-hop ones")
    func responseBlockFromLines() throws {
        let lines =
            "Server: nginx\r\nContent-Type:  text/plain \r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
            + "Transfer-Encoding: chunked\r\nTE: trailers\r\nTrailer: x\r\nUpgrade: h2c\r\nProxy-Connection: x\r\n"
            + "Proxy-Authenticate: Basic\r\nx-lower: 1\r\nX-Mixed-Case: 2\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n"
            + "X-Empty:\r\nDate: Mon, 30 Nov 2026 15:39:09 GMT\r\n"
        let block = HTTP2StreamCodec.block(.created, lines: ByteBuffer(string: lines))
        let fields = block.map { "\($0.name)=\($0.value)" }
        #expect(
            fields == [
                ":status=201", "server=nginx", "content-type=text/plain", "x-lower=1", "x-mixed-case=2",
                "set-cookie=a=1", "set-cookie=b=2", "x-empty=", "date=Mon, 30 Nov 2026 15:39:09 GMT",
            ])
        // What the general path makes of the same head: the fields, hop-by-hop ones removed.
        var head = UpstreamResponseHead(
            version: .http1_1, status: .created, isKeepAlive: true, hasContentLength: false,
            hasTransferEncoding: true, hasHopByHop: true, connectionNamesOthers: false)
        head.lines = ByteBuffer(string: lines)
        var headers = head.headers
        ProxyHeaders.removeHopByHop(&headers)
        #expect(HTTP2StreamCodec.block(.created, headers).map { "\($0.name)=\($0.value)" } == fields)
        // The head is held for what follows, as a `.head` part is, and the end marks it.
        var codec = HTTP2StreamCodec()
        let (first, second) = codec.writeHead(block, status: .created, promise: nil)
        #expect(first == nil && second == nil)
        #expect(Self.describe(Self.frames(&codec, [.end(nil)])) == ["HEADERS+END"])
    }

    @Test("request heads: host from :authority, chunked for a body without length, content-length 0 without body")
    func requestHeads() throws {
        let get = try HTTP2StreamCodec.requestHead(
            HPACKHeaders([
                (":method", "GET"), (":path", "/a?b"), (":scheme", "http"), (":authority", "h.test"), ("x", "1"),
            ]),
            endStream: true)
        #expect(get.method == .GET && get.uri == "/a?b" && get.version == HTTPVersion(major: 2, minor: 0))
        #expect(get.headers.map { "\($0.name)=\($0.value)" } == ["host=h.test", "x=1"])

        let streamed = try HTTP2StreamCodec.requestHead(
            HPACKHeaders([(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "h.test")]),
            endStream: false)
        #expect(streamed.headers["transfer-encoding"] == ["chunked"])
        let empty = try HTTP2StreamCodec.requestHead(
            HPACKHeaders([(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "h.test")]),
            endStream: true)
        #expect(empty.headers["content-length"] == ["0"])
        let sized = try HTTP2StreamCodec.requestHead(
            HPACKHeaders([
                (":method", "PUT"), (":path", "/"), (":scheme", "http"), (":authority", "h.test"),
                ("content-length", "3"), ("host", "other.test"),
            ]),
            endStream: false)
        // A host field of the client's own is kept and not doubled.
        #expect(sized.headers.map { "\($0.name)=\($0.value)" } == ["content-length=3", "host=other.test"])

        #expect(throws: HTTP2StreamCodec.MalformedRequest.self) {
            _ = try HTTP2StreamCodec.requestHead(
                HPACKHeaders([(":method", "GET"), (":scheme", "http"), (":authority", "h.test")]), endStream: true)
        }
    }

    @Test("inbound frames become the request's parts; trailers end the request")
    func inboundParts() throws {
        var codec = HTTP2StreamCodec()
        let headers = HPACKHeaders([(":method", "POST"), (":path", "/u"), (":scheme", "http"), (":authority", "h")])
        var parts: [String] = []
        for payload in [
            HTTP2StreamCodec.Frame.headers(headers, endStream: false),
            .data(ByteBuffer(string: "abc"), endStream: false),
            .headers(HPACKHeaders([("x-sum", "1")]), endStream: true),
        ] {
            let (first, second) = try codec.received(payload)
            for part in [first, second].compactMap({ $0 }) {
                switch part {
                case .head(let head): parts.append("head \(head.method.rawValue) \(head.uri)")
                case .body(let body): parts.append("body \(body.readableBytes)")
                case .end(let trailers): parts.append("end \(trailers?.first(name: "x-sum") ?? "-")")
                }
            }
        }
        #expect(parts == ["head POST /u", "body 3", "end 1"])
        // A HEADERS frame after the trailers is not a request's.
        #expect(throws: HTTP2StreamCodec.MalformedRequest.self) {
            _ = try codec.received(.headers(HPACKHeaders([("x", "1")]), endStream: true))
        }
    }

    @Test("a request's DATA must add up to its content-length: more, fewer, or none are refused")
    func contentLength() throws {
        func head(_ length: String...) -> HTTP2StreamCodec.Frame {
            let fields = [(":method", "POST"), (":path", "/u"), (":scheme", "http"), (":authority", "h")]
            return .headers(HPACKHeaders(fields + length.map { ("content-length", $0) }), endStream: false)
        }
        func data(_ text: String, end: Bool = false) -> HTTP2StreamCodec.Frame {
            .data(ByteBuffer(string: text), endStream: end)
        }
        // Exactly the length, in two frames: accepted.
        var exact = HTTP2StreamCodec()
        _ = try exact.received(head("5"))
        _ = try exact.received(data("ab"))
        let (body, end) = try exact.received(data("cde", end: true))
        #expect(body != nil && end != nil)
        // More than the length: refused with the frame that goes beyond it.
        var more = HTTP2StreamCodec()
        _ = try more.received(head("3"))
        _ = try more.received(data("ab"))
        #expect(throws: HTTP2StreamCodec.MalformedRequest.self) { _ = try more.received(data("cd")) }
        // Fewer: refused at the end, by DATA or by trailers.
        var fewer = HTTP2StreamCodec()
        _ = try fewer.received(head("3"))
        #expect(throws: HTTP2StreamCodec.MalformedRequest.self) { _ = try fewer.received(data("ab", end: true)) }
        var trailed = HTTP2StreamCodec()
        _ = try trailed.received(head("3"))
        _ = try trailed.received(data("ab"))
        #expect(throws: HTTP2StreamCodec.MalformedRequest.self) {
            _ = try trailed.received(.headers(HPACKHeaders([("x-sum", "1")]), endStream: true))
        }
        // A length with a HEADERS frame that ends the stream, two lengths that disagree, and one
        // that is no number: refused with the head.
        var none = HTTP2StreamCodec()
        let fields = [(":method", "POST"), (":path", "/u"), (":scheme", "http"), (":authority", "h")]
        #expect(throws: HTTP2StreamCodec.MalformedRequest.self) {
            _ = try none.received(.headers(HPACKHeaders(fields + [("content-length", "4")]), endStream: true))
        }
        for lengths in [["3", "4"], ["3x"], ["-1"]] {
            var codec = HTTP2StreamCodec()
            #expect(throws: HTTP2StreamCodec.MalformedRequest.self, "\(lengths)") {
                _ = try codec.received(head(lengths[0], lengths.count > 1 ? lengths[1] : lengths[0]))
            }
        }
        // Two equal lengths are one.
        var twice = HTTP2StreamCodec()
        _ = try twice.received(head("2", "2"))
        _ = try twice.received(data("ab", end: true))
    }

    @Test("request and trailer blocks HTTP/2 forbids are refused by the codec, each rule by itself")
    func refusedBlocks() throws {
        let pseudo: [(String, String)] = [
            (":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "h"),
        ]
        // A clean block passes, `te: trailers` included.
        _ = try HTTP2StreamCodec.requestHead(
            HPACKHeaders(pseudo + [("te", "trailers"), ("x", "a b")]), endStream: true)
        let refused: [[(String, String)]] = [
            // A pseudo-header field after a regular one (each pseudo-header appears once).
            [(":method", "GET"), (":scheme", "http"), (":authority", "h"), ("x", "1"), (":path", "/")],
            // Repeated, unknown or not a request's.
            pseudo + [(":authority", "other")], pseudo + [(":status", "200")], pseudo + [(":protocol", "ws")],
            pseudo + [(":x", "1")],
            // Pseudo-header values: control bytes, space, DEL; an empty path; CONNECT.
            [(":method", "GET"), (":path", "/a\tb"), (":scheme", "http"), (":authority", "h")],
            [(":method", "GET"), (":path", "/a b"), (":scheme", "http"), (":authority", "h")],
            [(":method", "GET"), (":path", "/a\u{7F}"), (":scheme", "http"), (":authority", "h")],
            [(":method", "GET"), (":path", ""), (":scheme", "http"), (":authority", "h")],
            [(":method", "CONNECT"), (":path", "/"), (":scheme", "http"), (":authority", "h")],
            [(":method", "CONNECT"), (":authority", "h:443")],
            // Regular names: empty, not a token, capitals, connection-specific; te other than trailers.
            pseudo + [("", "1")], pseudo + [("x y", "1")], pseudo + [("x\u{E9}", "1")], pseudo + [("X-a", "1")],
            pseudo + [("connection", "close")], pseudo + [("keep-alive", "5")], pseudo + [("upgrade", "h2c")],
            pseudo + [("proxy-connection", "close")], pseudo + [("transfer-encoding", "chunked")],
            pseudo + [("te", "gzip")],
            // Values: CR, LF, NUL.
            pseudo + [("x", "a\rb")], pseudo + [("x", "a\nb")], pseudo + [("x", "a\u{0}b")],
        ]
        for block in refused {
            #expect(throws: HTTP2StreamCodec.MalformedRequest.self, "\(block)") {
                _ = try HTTP2StreamCodec.requestHead(HPACKHeaders(block), endStream: true)
            }
        }
        // Trailers: regular fields only, checked as a request's (`te` is not a trailer's concern).
        #expect(try HTTP2StreamCodec.trailers(HPACKHeaders([("x-sum", "1"), ("te", "x")])).count == 2)
        for block: [(String, String)] in [
            [(":path", "/")], [("X-Sum", "1")], [("connection", "close")], [("x-sum", "1\r\nx-injected: yes")],
        ] {
            #expect(throws: HTTP2StreamCodec.MalformedRequest.self, "\(block)") {
                _ = try HTTP2StreamCodec.trailers(HPACKHeaders(block))
            }
        }
        // Through the codec: a refused trailer block ends the request with an error, not its end.
        var codec = HTTP2StreamCodec()
        _ = try codec.received(.headers(HPACKHeaders(pseudo), endStream: false))
        #expect(throws: HTTP2StreamCodec.MalformedRequest.self) {
            _ = try codec.received(.headers(HPACKHeaders([("upgrade", "x")]), endStream: true))
        }
    }

    // MARK: Through the gateway

    static func yaml(port: Int, listen extra: String = "") -> String {
        """
        listen: {address: 127.0.0.1:0, http2: true\(extra)}
        limits: {max_body_bytes: 256MiB}
        clusters: {backend: {endpoints: [127.0.0.1:\(port)]}}
        routes: [{match: {path_prefix: /api/}, cluster: backend}, {match: {path: /download}, cluster: backend}]
        """
    }

    @Test("a local answer on a stream ends that stream only; the connection serves the next one")
    func localAnswer() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                defer { Task { await client.close() } }
                let missing = try await client.request("GET", "/nowhere")
                #expect(missing.status == 404)
                #expect(missing.header("content-type") == "application/problem+json")
                #expect(missing.header("connection") == nil)
                #expect(missing.text.contains("no-route"))
                let found = try await client.request("GET", "/api/one")
                #expect(found.status == 200)
                #expect(found.text.hasPrefix("GET /api/one\n"))
                #expect(client.channel.isActive)
            }
        }
    }

    @Test("a stream whose client stops reading holds the origin back; it completes once read")
    func backPressure() async throws {
        let size = 64 << 20
        try await withOrigins(["a"]) { origins in
            let origin = origins[0]
            try await withGateway(Self.yaml(port: origin.port)) { gateway in
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                defer { Task { await client.close() } }
                let (stream, response) = try await client.pausedRequest("/download?bytes=\(size)")
                await eventually("the gateway pushes back on the origin") {
                    gateway.server.statistics.responseBodyPauses.load(ordering: .relaxed) > 0
                }
                await eventuallyStalled("the origin is stalled") {
                    origin.state.downloadBytesWritten.load(ordering: .relaxed)
                }
                let sent = origin.state.downloadBytesWritten.load(ordering: .relaxed)
                // Socket buffers between the origin and the gateway, the stream's window and its
                // write buffer: far from the whole body.
                #expect(sent < 32 << 20, "the origin got \(sent) bytes out while the client was not reading")
                // Other streams of the connection go on meanwhile.
                let other = try await client.request("GET", "/api/other")
                #expect(other.status == 200)
                stream.resume()
                let result = try await response.get()
                #expect(result.status == 200)
                #expect(result.body.count == size)
                #expect(GatewayHTTP2Tests.hex(result.body) == Pattern.sha256(count: size))
            }
        }
    }

    @Test("a stream the client resets mid-response stops the origin; its upstream connection is not reused")
    func resetMidResponse() async throws {
        let size = 64 << 20
        try await withOrigins(["a"]) { origins in
            let origin = origins[0]
            try await withGateway(Self.yaml(port: origin.port)) { gateway in
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                defer { Task { await client.close() } }
                let (stream, response) = try await client.pausedRequest("/download?bytes=\(size)")
                await eventually("the origin has started") {
                    origin.state.downloadBytesWritten.load(ordering: .relaxed) > 0
                }
                await stream.reset()
                await #expect(throws: (any Error).self) { _ = try await response.get() }
                await eventuallyStalled("the origin stopped") {
                    origin.state.downloadBytesWritten.load(ordering: .relaxed)
                }
                #expect(origin.state.downloadBytesWritten.load(ordering: .relaxed) < size)
                // The half-read upstream connection was closed, not pooled: the next request on
                // the same HTTP/2 connection needs a new one, and gets a whole answer.
                let next = try await client.request("GET", "/api/next")
                #expect(next.status == 200)
                #expect(next.text.hasPrefix("GET /api/next\n"))
                #expect(gateway.server.statistics.upstreamConnectionsOpened.load(ordering: .relaxed) == 2)
                #expect(gateway.server.statistics.upstreamConnectionsReused.load(ordering: .relaxed) == 0)
                #expect(client.channel.isActive)
            }
        }
    }

    @Test("an upload whose upstream does not read holds the client back by the stream's window; it completes once read")
    func uploadFlowControl() async throws {
        let size = 64 << 20
        try await withOrigins(["a"]) { origins in
            let origin = origins[0]
            try await withGateway(GatewayHTTP2Tests.yaml(port: origin.port)) { gateway in
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                defer { Task { await client.close() } }
                let body = Pattern.bytes(count: size)
                let progress = StreamProgress()
                let upload = Task { [body] in
                    try await client.request("POST", "/upload?pause", body: body, progress: progress)
                }
                await eventually("the origin paused") { origin.state.pausedCount.load(ordering: .relaxed) == 1 }
                // Kernel buffers take megabytes before the upstream connection is not writable, and
                // the client writes a frame at a time: on a loaded machine that takes a while (and
                // a client merely slowed down must not pass for a stalled one).
                await eventually("the gateway pushes back on the client", timeout: .seconds(90)) {
                    gateway.server.statistics.requestBodyPauses.load(ordering: .relaxed) > 0
                }
                await eventuallyStalled("the client is stalled") { progress.bytesWritten.load(ordering: .relaxed) }
                let accepted = progress.bytesWritten.load(ordering: .relaxed)
                // Socket buffers between the gateway and the origin, the upstream channel's write
                // buffer and the stream's window: far from the whole body.
                #expect(accepted < 32 << 20, "the gateway took \(accepted) bytes while its upstream was not reading")
                // Other streams of the connection go on meanwhile.
                let other = try await client.request("GET", "/api/other")
                #expect(other.status == 200)
                origin.release()
                let result = try await upload.value
                #expect(result.status == 200)
                #expect(result.text == "bytes=\(size) sha256=\(Pattern.sha256(count: size))")
            }
        }
    }

    @Test("a drain sends GOAWAY, lets the stream in flight finish, then closes the connection")
    func drainWithStreamInFlight() async throws {
        try await withOrigins(["a"]) { origins in
            let origin = origins[0]
            try await withGateway(GatewayHTTP2Tests.yaml(port: origin.port)) { gateway in
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                defer { Task { await client.close() } }
                // More than socket buffers and windows hold: the origin has paused before the end.
                let size = 16 << 20
                let body = [UInt8](repeating: 0x61, count: size)
                let upload = Task { try await client.request("POST", "/upload?pause", body: body) }
                await eventually("the origin holds the request") {
                    origin.state.pausedCount.load(ordering: .relaxed) == 1
                }
                let draining = Task { await gateway.server.drain(timeout: .seconds(60)) }
                await eventually("the client got GOAWAY") { client.goAwayErrorCode == .noError }
                #expect(client.channel.isActive)
                origin.release()
                let result = try await upload.value
                #expect(result.status == 200)
                #expect(result.text.hasPrefix("bytes=\(size) "))
                await eventually("the connection is closed once its stream is done") { !client.channel.isActive }
                await draining.value
                #expect(gateway.server.connections.load(ordering: .relaxed) == 0)
            }
        }
    }

    @Test("many concurrent streams of several connections each get their own answer, with pooled upstreams")
    func manyStreams() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port, listen: ", max_concurrent_streams: 20")) { gateway in
                var clients: [H2Client] = []
                for _ in 0..<4 {
                    clients.append(try await H2Client.connect(port: gateway.port, group: gateway.clients))
                }
                let all = clients
                defer { Task { for client in all { await client.close() } } }
                // One request per connection first: the server's SETTINGS (20 streams) are in
                // force once it has answered (before, NIOHTTP2 lets a client open more).
                for client in all { #expect(try await client.request("GET", "/api/warm").status == 200) }
                let statistics = gateway.server.statistics
                let openedBefore = statistics.upstreamConnectionsOpened.load(ordering: .relaxed)
                let reusedBefore = statistics.upstreamConnectionsReused.load(ordering: .relaxed)
                let count = try await withThrowingTaskGroup(of: Bool.self) { group in
                    for index in 0..<800 {
                        let client = all[index % all.count]
                        group.addTask {
                            let response = try await client.request("GET", "/api/item/\(index)")
                            return response.status == 200 && response.text.hasPrefix("GET /api/item/\(index)\n")
                        }
                    }
                    var good = 0
                    for try await ok in group where ok { good += 1 }
                    return good
                }
                #expect(count == 800)
                let opened = statistics.upstreamConnectionsOpened.load(ordering: .relaxed) - openedBefore
                let reused = statistics.upstreamConnectionsReused.load(ordering: .relaxed) - reusedBefore
                #expect(opened + reused == 800)
                // Upstream connections outlive their streams: at most one per stream that can be
                // open at once (4 connections x 20), every other request takes a pooled one.
                #expect(opened <= 80, "\(opened) opened, \(reused) reused")
            }
        }
    }
}
