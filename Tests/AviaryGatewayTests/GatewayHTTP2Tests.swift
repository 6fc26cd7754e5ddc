//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Crypto
import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP2
import NIOPosix
import NIOSSL
import Synchronization
import Testing

@testable import AviaryGateway

/// HTTP/2 and TLS on the listener, over real sockets: h2c by prior knowledge and ALPN, with the
/// streams proxied to an HTTP/1.1 origin by the same proxy logic.
@Suite("Gateway HTTP/2 and TLS", .timeLimit(.minutes(3)))
struct GatewayHTTP2Tests {
    static func yaml(port: Int, listen extra: String = "", limits: String = "") -> String {
        """
        listen: {address: 127.0.0.1:0, http2: true\(extra)}
        limits: {max_body_bytes: 256MiB\(limits)}
        clusters: {backend: {endpoints: [127.0.0.1:\(port)]}}
        routes: [{match: {path_prefix: /}, cluster: backend}]
        """
    }

    static func hex(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { String($0, radix: 16).leftPadded(2) }.joined()
    }

    @Test("an HTTP/2 connection without open streams for idle_timeout gets GOAWAY and is closed")
    func idleTimeout() async throws {
        let timers = ManualGatewayTimers()
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port, limits: ", idle_timeout: 1s"), timers: timers) {
                gateway in
                let silent = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                // The gateway's time moves only here: short of idle_timeout, nothing closes.
                try await timers.waitUntilArmed(.seconds(1))
                await timers.advance(by: .milliseconds(999))
                let used = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                #expect(silent.channel.isActive)
                // A connection that had an answer is closed too once it has no stream left.
                let response = try await used.request("GET", "/one")
                #expect(response.status == 200)
                await eventuallyAsync("both connections are closed once idle_timeout has passed") {
                    await timers.advance(by: .seconds(1))
                    return !silent.channel.isActive && !used.channel.isActive
                }
                #expect(silent.goAwayErrorCode == .noError)
                #expect(used.goAwayErrorCode == .noError)
            }
        }
    }

    @Test("streams keep an HTTP/2 connection open; it is closed idle_timeout after its last stream ended")
    func idleAfterLastStream() async throws {
        let timers = ManualGatewayTimers()
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port, limits: ", idle_timeout: 1s"), timers: timers) {
                gateway in
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                try await timers.waitUntilArmed(.seconds(1))
                // Shortly before the connection's first idle period would end, a stream comes and
                // goes: the idle period starts again from its end.
                await timers.advance(by: .milliseconds(900))
                #expect(try await client.request("GET", "/one").status == 200)
                // The first idle period's time passes: the connection stays, and takes streams.
                await timers.advance(by: .milliseconds(200))
                #expect(try await client.request("GET", "/two").status == 200)
                await timers.advance(by: .milliseconds(900))
                #expect(try await client.request("GET", "/three").status == 200)
                #expect(client.channel.isActive)
                await eventuallyAsync("the connection is closed once idle_timeout has passed after its last stream") {
                    await timers.advance(by: .seconds(1))
                    return !client.channel.isActive
                }
                #expect(client.goAwayErrorCode == .noError)
            }
        }
    }

    @Test("h2c by prior knowledge: 200 concurrent streams on one connection each get their own answer")
    func concurrentStreams() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port, listen: ", max_concurrent_streams: 50")) {
                gateway in
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                defer { Task { await client.close() } }
                let responses = try await withThrowingTaskGroup(of: (Int, H2Response).self) { group in
                    for index in 0..<200 {
                        group.addTask { (index, try await client.request("GET", "/item/\(index)?n=\(index)")) }
                    }
                    var all: [Int: H2Response] = [:]
                    for try await (index, response) in group { all[index] = response }
                    return all
                }
                #expect(responses.count == 200)
                for (index, response) in responses {
                    #expect(response.status == 200)
                    #expect(response.text.hasPrefix("GET /item/\(index)?n=\(index)\n"), "stream \(index)")
                }
                // More streams than the limit ran: the client queued them per the server's SETTINGS.
                #expect(client.serverMaxConcurrentStreams == 50)
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 200)
            }
        }
    }

    @Test("h2c and HTTP/1.1 share the port")
    func bothProtocolsOnOnePort() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                let http1 = try await gateway.get("/one")
                #expect(http1.status == 200)
                #expect(http1.text.hasPrefix("GET /one\n"))
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                let h2 = try await client.request("GET", "/two")
                await client.close()
                #expect(h2.status == 200)
                #expect(h2.text.hasPrefix("GET /two\n"))
                // Plaintext (h2c or HTTP/1.1): the scheme forwarded is http.
                #expect(h2.text.contains("x-forwarded-proto: http\n"))
                #expect(h2.text.contains("forwarded: for=127.0.0.1;proto=http;"))
                #expect(http1.text.contains("x-forwarded-proto: http\n"))
                // HTTP/2 responses carry no connection-specific headers.
                #expect(h2.header("connection") == nil && h2.header("transfer-encoding") == nil)
            }
        }
    }

    @Test("an 8 MiB upload and a 32 MiB download stream through one HTTP/2 connection intact")
    func largeBodies() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                defer { Task { await client.close() } }
                // No content-length: the body streams to the HTTP/1.1 origin chunked.
                let size = 8 << 20
                let upload = Pattern.bytes(count: size)
                let uploaded = try await client.request("POST", "/upload", body: upload)
                #expect(uploaded.status == 200)
                #expect(uploaded.text == "bytes=\(size) sha256=\(Pattern.sha256(count: size))")

                let downloadSize = 32 << 20
                let downloaded = try await client.request("GET", "/download?bytes=\(downloadSize)")
                #expect(downloaded.status == 200)
                #expect(downloaded.body.count == downloadSize)
                #expect(Self.hex(downloaded.body) == Pattern.sha256(count: downloadSize))
            }
        }
    }

    @Test(
        "a header list above max_header_bytes never reaches the origin: GOAWAY with an error, then the connection closes"
    )
    func headerLimit() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port, limits: ", max_header_bytes: 4KiB")) { gateway in
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                defer { Task { await client.close() } }
                let fine = try await client.request("GET", "/small", headers: [("x-small", "1")])
                #expect(fine.status == 200)
                #expect(client.serverMaxHeaderListSize == 4096)
                // 6000 bytes of `a` compress (Huffman) to under 4 KiB: the frame passes, the list does not.
                let big = String(repeating: "a", count: 6000)
                await #expect(throws: (any Error).self) {
                    _ = try await client.request("GET", "/big", headers: [("x-big", big)])
                }
                // A connection error: GOAWAY with COMPRESSION_ERROR (the HPACK table may be out of
                // step after a block decoded in part), and the gateway closes the connection.
                try await client.channel.closeFuture.get()
                #expect(client.goAwayErrorCode == .compressionError)
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 1)
                // The gateway goes on serving new connections.
                let next = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                let after = try await next.request("GET", "/after")
                await next.close()
                #expect(after.status == 200)
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 2)
            }
        }
    }

    @Test(
        "header blocks HTTP/2 forbids (CR or LF in a value, connection-specific fields, upper case names, pseudo-header rules) never reach the origin"
    )
    func malformedHeaderBlocks() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                // Each of these would be a request-smuggling vector once the request is HTTP/1.1
                // to the origin: a value with CR LF adds a header line of the client's choosing.
                // NIOHTTP2's validation is off in the gateway: each case is refused by the
                // stream codec's own checks, one check each (HTTP2StreamCodec.requestHead).
                let hostile: [(String, String)] = [
                    ("x-note", "1\r\nx-injected: yes"), ("x-note", "1\nx-injected: yes"), ("x-note", "a\u{0}b"),
                    ("transfer-encoding", "chunked"), ("connection", "keep-alive"), ("keep-alive", "5"),
                    ("proxy-connection", "keep-alive"), ("upgrade", "websocket"), ("X-Upper", "1"),
                    ("x note", "1"), ("", "1"), ("te", "gzip"), (":path", "/again"), (":status", "200"),
                    (":protocol", "websocket"),
                ]
                for field in hostile {
                    let client = try await H2Client.connect(
                        port: gateway.port, group: gateway.clients, validating: false)
                    await #expect(throws: (any Error).self, "\(field) was accepted") {
                        _ = try await client.request("POST", "/echo-head", headers: [field], body: Array("x".utf8))
                    }
                    await client.close()
                }
                // Pseudo-header values: a space splits the HTTP/1.1 request line; an empty :path
                // and CONNECT (no tunnels) are refused too.
                for (method, path) in [("GET", "/a b"), ("GET\r\nx-injected: yes", "/"), ("GET", ""), ("CONNECT", "/")]
                {
                    let client = try await H2Client.connect(
                        port: gateway.port, group: gateway.clients, validating: false)
                    await #expect(throws: (any Error).self, "\(method) \(path) was accepted") {
                        _ = try await client.request(method, path)
                    }
                    await client.close()
                }
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 0)
                // The same client without the bad field gets through; what the origin saw is clean.
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients, validating: false)
                let fine = try await client.request("GET", "/seen", headers: [("x-note", "1"), ("te", "trailers")])
                await client.close()
                #expect(fine.status == 200)
                let seen = String(decoding: fine.body, as: UTF8.self)
                #expect(seen.contains("x-note: 1"))
                #expect(!seen.lowercased().contains("x-injected"))
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 1)
            }
        }
    }

    @Test(
        "a client whose header blocks are refused 200 times gets GOAWAY (ENHANCE_YOUR_CALM) and the connection closes")
    func refusedBlocksCloseTheConnection() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients, validating: false)
                defer { Task { await client.close() } }
                let hostile = [("connection", "close")]
                for _ in 1..<HTTP2StreamServer.maximumRefusedBlocks {
                    await #expect(throws: (any Error).self) {
                        _ = try await client.request("GET", "/x", headers: hostile)
                    }
                }
                // One refusal short of the limit, the connection still serves (the NIOHTTP2 client
                // itself would close the connection at its 201st stream error).
                let fine = try await client.request("GET", "/fine")
                #expect(fine.status == 200)
                await #expect(throws: (any Error).self) { _ = try await client.request("GET", "/x", headers: hostile) }
                try await client.channel.closeFuture.get()
                #expect(client.goAwayErrorCode == .enhanceYourCalm)
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 1)
            }
        }
    }

    @Test("TLS: ALPN h2 is served as HTTP/2, a client offering only http/1.1 gets HTTP/1.1")
    func tlsWithALPN() async throws {
        let certificate = try await TestCertificate.make()
        defer { certificate.remove() }
        let tls = ", tls: {certificate: \(certificate.certificateFile), key: \(certificate.keyFile)}"
        try await withOrigins(["a"]) { origins in
            // A generous header_timeout (which bounds the TLS handshake): the machine may be loaded.
            try await withGateway(Self.yaml(port: origins[0].port, listen: tls, limits: ", header_timeout: 60s")) {
                gateway in
                let h2 = try await H2Client.connect(
                    port: gateway.port, group: gateway.clients, tls: certificate.clientContext(protocols: ["h2"]))
                let response = try await h2.request("GET", "/secure", scheme: "https")
                await h2.close()
                #expect(response.status == 200)
                #expect(response.text.hasPrefix("GET /secure\n"))
                // Behind TLS the origin learns that the client used https, in both header styles.
                #expect(response.text.contains("x-forwarded-proto: https\n"))
                #expect(response.text.contains("forwarded: for=127.0.0.1;proto=https;"))

                let (negotiated, text) = try await TLSRawClient.exchange(
                    "GET /plain HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n", port: gateway.port,
                    group: gateway.clients, context: certificate.clientContext(protocols: ["http/1.1"]))
                #expect(negotiated == "http/1.1")
                #expect(text.hasPrefix("HTTP/1.1 200"))
                #expect(text.contains("GET /plain\n"))
                #expect(text.contains("x-forwarded-proto: https\r\n") || text.contains("x-forwarded-proto: https\n"))
                #expect(text.contains("forwarded: for=127.0.0.1;proto=https;"))
            }
        }
    }

    @Test("TLS: a handshake that outlives header_timeout ends the connection; nothing reaches the origin")
    func tlsHandshakeTimeout() async throws {
        let certificate = try await TestCertificate.make()
        defer { certificate.remove() }
        let tls = ", tls: {certificate: \(certificate.certificateFile), key: \(certificate.keyFile)}"
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port, listen: tls, limits: ", header_timeout: 100ms")) {
                gateway in
                // Handshakes that cannot finish, whatever the machine's speed (a real client's
                // handshake raced the timer: on a busy machine the timer sometimes lost): a client
                // that never starts one, and one that stops inside its ClientHello (a TLS record
                // header announcing 200 bytes, then one of them).
                let silent = try await RawConnection.connect(port: gateway.port, group: gateway.clients)
                let stalled = try await RawConnection.connect(port: gateway.port, group: gateway.clients)
                try await stalled.send(ByteBuffer(bytes: [0x16, 0x03, 0x01, 0x00, 0xC8, 0x01]))
                #expect(await silent.waitUntilClosed(timeout: .seconds(30)))
                #expect(await stalled.waitUntilClosed(timeout: .seconds(30)))
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 0)
                await silent.close()
                await stalled.close()
            }
        }
    }

    @Test("the flushes of one event loop iteration leave as one flush, after the iteration's I/O")
    func flushCoalescing() throws {
        let channel = EmbeddedChannel()
        var flushes = 0
        try channel.pipeline.syncOperations.addHandler(FlushCounter { flushes += 1 })
        try channel.pipeline.syncOperations.addHandler(FlushCoalescer())
        for byte: UInt8 in 1...3 {
            channel.write(ByteBuffer(bytes: [byte]), promise: nil)
            channel.flush()
        }
        // Nothing left yet: the flush waits for the loop's tasks.
        #expect(flushes == 0)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        channel.embeddedEventLoop.run()
        #expect(flushes == 1)
        // Small writes are copied into one buffer.
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(bytes: [1, 2, 3]))
        // The next iteration flushes again.
        channel.writeAndFlush(ByteBuffer(bytes: [4]), promise: nil)
        channel.embeddedEventLoop.run()
        #expect(flushes == 2)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(bytes: [4]))
        // A close does not wait: what was flushed before it is written first.
        channel.writeAndFlush(ByteBuffer(bytes: [5]), promise: nil)
        channel.close(promise: nil)
        #expect(flushes == 3)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(bytes: [5]))
        channel.embeddedEventLoop.run()
    }

    @Test("copied writes keep their order around large ones, complete their promises, and are never written over")
    func writeCoalescing() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(FlushCoalescer())
        let large = ByteBuffer(repeating: 7, count: FlushCoalescer.copiedBytes + 1)
        // What NIOHTTP2Handler does: one buffer, cleared and written into again for each frame.
        var frame = ByteBuffer()
        var promises: [EventLoopFuture<Void>] = []
        let writes: [[UInt8]?] = [[1, 2], [3], nil, [4, 5], [6]]
        for (index, bytes) in writes.enumerated() {
            let promise = channel.eventLoop.makePromise(of: Void.self)
            promises.append(promise.futureResult)
            if let bytes {
                frame.clear()
                frame.writeBytes(bytes)
                channel.write(frame, promise: index == 0 ? nil : promise)
                if index == 0 { promise.succeed() }
            } else {
                channel.write(large, promise: promise)
            }
        }
        channel.flush()
        channel.embeddedEventLoop.run()
        // What came before the large write goes out before it, in one buffer; then the large one
        // as it was; then the rest, in one buffer.
        let first = try channel.readOutbound(as: ByteBuffer.self)
        #expect(first == ByteBuffer(bytes: [1, 2, 3]))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == large)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(bytes: [4, 5, 6]))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        for future in promises { try future.wait() }

        // The next iteration copies into the kept storage only if the socket let go of it: here
        // `first` is still held (as a pending write would be), so its bytes stay as they were.
        for byte: UInt8 in [8, 9, 10] { channel.write(ByteBuffer(bytes: [byte]), promise: nil) }
        channel.flush()
        channel.embeddedEventLoop.run()
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(bytes: [8, 9, 10]))
        #expect(first == ByteBuffer(bytes: [1, 2, 3]))

        // Copied bytes beyond the buffer limit are passed on without waiting for the flush.
        let chunk = ByteBuffer(repeating: 1, count: FlushCoalescer.copiedBytes)
        var written = 0
        while written < FlushCoalescer.bufferLimit {
            channel.write(chunk, promise: nil)
            written += chunk.readableBytes
        }
        channel.write(ByteBuffer(bytes: [1]), promise: nil)
        channel.flush()
        channel.embeddedEventLoop.run()
        #expect(try channel.readOutbound(as: ByteBuffer.self)?.readableBytes == written)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(bytes: [1]))
        // A close writes what was copied and flushes it first.
        channel.write(ByteBuffer(bytes: [11]), promise: nil)
        try channel.close().wait()
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(bytes: [11]))
    }

    @Test("listen.tls, http2 and max_concurrent_streams are validated with their place")
    func configurationErrors() throws {
        #expect(throws: GatewayConfigurationError.self) {
            try GatewayConfiguration(yaml: "listen: {address: 127.0.0.1:0, http2: yes please}")
        }
        do {
            _ = try GatewayConfiguration(
                yaml: """
                    listen: {address: 127.0.0.1:0, http2: maybe, max_concurrent_streams: 0, tls: {certificate: /nonexistent/cert.pem}}
                    """)
            Issue.record("an invalid listen section was accepted")
        } catch {
            let text = "\(error)"
            #expect(text.contains("listen.http2: expected true or false"))
            #expect(text.contains("listen.max_concurrent_streams"))
            #expect(text.contains("listen.tls.certificate: cannot read \"/nonexistent/cert.pem\""))
            #expect(text.contains("listen.tls.key: is missing"))
        }
        let valid = try GatewayConfiguration(
            yaml: """
                listen: {address: 127.0.0.1:0, http2: true, max_concurrent_streams: 7}
                clusters: {a: {endpoints: [127.0.0.1:1]}}
                routes: [{match: {path_prefix: /}, cluster: a}]
                """)
        #expect(valid.listen.http2 && valid.listen.maxConcurrentStreams == 7 && valid.listen.tls == nil)
    }
}

/// gRPC pass-through: HTTP/2 end to end, trailers both ways, to a gRPC-shaped origin.
@Suite("Gateway gRPC pass-through", .timeLimit(.minutes(3)))
struct GatewayGRPCTests {
    static func yaml(port: Int, tls: String? = nil) -> String {
        """
        listen: {address: 127.0.0.1:0, http2: true}
        clusters: {echo: {endpoints: [127.0.0.1:\(port)], protocol: h2\(tls.map { ", tls: " + $0 } ?? "")}}
        routes: [{match: {path_prefix: /test.Echo/}, cluster: echo}]
        """
    }

    static let grpcHeaders = [("content-type", "application/grpc"), ("te", "trailers")]

    /// Runs `body` with a gRPC origin and a gateway in front of it; with `tls`, the origin speaks
    /// TLS with that context and the cluster's `tls` is `clusterTLS`.
    static func withGRPC(
        tls: (origin: NIOSSLContext, clusterTLS: String)? = nil,
        _ body: (GRPCOrigin, GatewayHarness, H2Client) async throws -> Void
    ) async throws {
        let origin = try await GRPCOrigin.start(group: MultiThreadedEventLoopGroup.singleton, tls: tls?.origin)
        do {
            try await withGateway(Self.yaml(port: origin.port, tls: tls?.clusterTLS)) { gateway in
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                do {
                    try await body(origin, gateway, client)
                    await client.close()
                } catch {
                    await client.close()
                    throw error
                }
            }
            await origin.stop()
        } catch {
            await origin.stop()
            throw error
        }
    }

    @Test(
        "unary: the message comes back with grpc-status and grpc-message as trailers; te: trailers reaches the origin")
    func unary() async throws {
        try await Self.withGRPC { origin, _, client in
            let message = Array("hello, gRPC".utf8)
            let response = try await client.request(
                "POST", "/test.Echo/Unary", headers: Self.grpcHeaders, body: message)
            #expect(response.status == 200)
            #expect(response.header("content-type") == "application/grpc")
            #expect(response.body == message)
            let trailers = try #require(response.trailers)
            #expect(trailers.contains { $0 == ("grpc-status", "0") })
            #expect(trailers.contains { $0 == ("grpc-message", "echoed \(message.count) bytes") })
            let seen = origin.seen.withLock { $0 }
            #expect(seen.count == 1)
            #expect(seen.first?.te == "trailers")
        }
    }

    @Test("over TLS to the upstream (ALPN h2): the call and its trailers pass, and the origin saw TLS")
    func unaryOverTLS() async throws {
        let certificate = try await TestCertificate.make()
        defer { certificate.remove() }
        var configuration = try certificate.serverConfiguration()
        configuration.applicationProtocols = ["h2"]
        let context = try NIOSSLContext(configuration: configuration)
        try await Self.withGRPC(tls: (context, "{ca: \(certificate.certificateFile)}")) { origin, _, client in
            let message = Array("hello over TLS".utf8)
            let response = try await client.request(
                "POST", "/test.Echo/Unary", headers: Self.grpcHeaders, body: message)
            #expect(response.status == 200)
            #expect(response.body == message)
            #expect(try #require(response.trailers).contains { $0 == ("grpc-status", "0") })
            #expect(origin.seen.withLock { $0.count } == 1)
        }
        // Verified against the system's roots, the self-signed origin is refused: nothing reaches it.
        try await Self.withGRPC(tls: (context, "{}")) { origin, _, client in
            let response = try await client.request(
                "POST", "/test.Echo/Unary", headers: Self.grpcHeaders, body: Array("x".utf8))
            #expect(response.status == 502, "\(response.status) \(String(decoding: response.body, as: UTF8.self))")
            #expect(origin.seen.withLock { $0.count } == 0)
        }
    }

    @Test("server streaming: 40 concurrent calls each get all their messages, then trailers")
    func serverStreaming() async throws {
        try await Self.withGRPC { _, _, client in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for call in 0..<40 {
                    group.addTask {
                        let count = 5 + call
                        let response = try await client.request(
                            "POST", "/test.Echo/Stream", headers: Self.grpcHeaders + [("x-count", "\(count)")],
                            body: Array("go".utf8))
                        #expect(response.status == 200)
                        let expected = (0..<count).map { "message \($0)\n" }.joined()
                        #expect(response.text == expected)
                        #expect(response.trailers?.contains { $0 == ("grpc-status", "0") } == true)
                    }
                }
                try await group.waitForAll()
            }
        }
    }

    @Test("a trailers-only failure keeps its grpc-status; an upstream reset becomes 502 (gRPC: UNAVAILABLE)")
    func failures() async throws {
        try await Self.withGRPC { _, gateway, client in
            let failed = try await client.request(
                "POST", "/test.Echo/Fail", headers: Self.grpcHeaders, body: Array("x".utf8))
            #expect(failed.status == 200)
            let status = failed.header("grpc-status") ?? failed.trailers?.first { $0.0 == "grpc-status" }?.1
            #expect(status == "5")

            let reset = try await client.request(
                "POST", "/test.Echo/Reset", headers: Self.grpcHeaders, body: Array("x".utf8))
            #expect(reset.status == 502)
            // The connection survives the reset stream: another call works.
            let after = try await client.request(
                "POST", "/test.Echo/Unary", headers: Self.grpcHeaders, body: Array("again".utf8))
            #expect(after.body == Array("again".utf8))
            #expect(gateway.server.statistics.upstreamConnectionsOpened.load(ordering: .relaxed) == 1)
        }
    }

    @Test("an HTTP/1.1 client reaches the HTTP/2 origin; trailers come as chunked trailers")
    func http1Client() async throws {
        try await Self.withGRPC { _, gateway, _ in
            let response = try await gateway.request(
                "POST /test.Echo/Unary HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: application/grpc\r\nTE: trailers\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
            )
            #expect(response.status == 200)
            #expect(response.text == "hello")
        }
    }

    @Test("protocol is validated: unknown values are refused (health checks of h2 clusters: GatewayHTTP2HealthTests)")
    func configuration() throws {
        do {
            _ = try GatewayConfiguration(
                yaml: """
                    clusters:
                      a: {endpoints: [127.0.0.1:1], protocol: h3}
                      b: {endpoints: [127.0.0.1:2], protocol: h2, health_check: {path: /healthz}}
                    routes: [{match: {path_prefix: /}, cluster: a}]
                    """)
            Issue.record("invalid protocol settings were accepted")
        } catch {
            let text = "\(error)"
            #expect(text.contains("clusters.a.protocol: expected http1 or h2, got \"h3\""))
            #expect(!text.contains("clusters.b"))
        }
    }
}

/// Counts the flushes that reach it (it sits nearest the channel's head).
final class FlushCounter: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    let counted: () -> Void

    init(_ counted: @escaping () -> Void) {
        self.counted = counted
    }

    func flush(context: ChannelHandlerContext) {
        self.counted()
        context.flush()
    }
}
