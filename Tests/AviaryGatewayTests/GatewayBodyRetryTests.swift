//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import AviaryGateway

/// Retries and mirror copies of requests with a body, which the gateway keeps a copy of (up to
/// `limits.request_buffer_bytes`) as it streams through. Real sockets; the origins answer
/// `/upload` with the length and SHA-256 of the body they read, so a lost, repeated or reordered
/// byte shows.
@Suite("Gateway retries and mirrors of requests with bodies", .timeLimit(.minutes(2)))
struct GatewayBodyRetryTests {
    static func yaml(
        endpoints: [Int], retry: String? = "{attempts: 2, on: [connect-failure, reset, 503]}", limits: String? = nil,
        shadow: Int? = nil, listen: String = ""
    ) -> String {
        """
        listen: {address: 127.0.0.1:0\(listen)}
        \(limits.map { "limits: {\($0)}" } ?? "")
        clusters:
          backend: {endpoints: [\(endpoints.map { "127.0.0.1:\($0)" }.joined(separator: ", "))]}
          \(shadow.map { "shadow: {endpoints: [127.0.0.1:\($0)]}" } ?? "")
        routes:
          - match: {path_prefix: /}
            cluster: backend
            \(retry.map { "retry: \($0)" } ?? "")
            \(shadow != nil ? "mirror: {cluster: shadow}" : "")
        """
    }

    /// What an origin answers to an upload of the first `count` pattern bytes.
    static func uploaded(_ count: Int) -> String {
        "bytes=\(count) sha256=\(Pattern.sha256(count: count))"
    }

    /// A request whose body is the first `count` pattern bytes, framed with `Content-Length` or
    /// chunked (1000-byte chunks), as two pieces: the head and the first `split` body bytes, then
    /// the rest (for chunked bodies `split` should be a multiple of 1000).
    static func request(
        _ path: String, method: String = "PUT", count: Int, chunked: Bool, split: Int? = nil, headers: String = ""
    ) -> (first: ByteBuffer, rest: ByteBuffer) {
        let body = Pattern.bytes(count: count)
        let split = split ?? count
        var first = ByteBuffer(string: "\(method) \(path) HTTP/1.1\r\nHost: gateway.test\r\n\(headers)")
        first.writeString(chunked ? "Transfer-Encoding: chunked\r\n\r\n" : "Content-Length: \(count)\r\n\r\n")
        func frame(_ bytes: ArraySlice<UInt8>, into buffer: inout ByteBuffer) {
            guard chunked else {
                buffer.writeBytes(bytes)
                return
            }
            var offset = bytes.startIndex
            while offset < bytes.endIndex {
                let end = min(offset + 1000, bytes.endIndex)
                buffer.writeString(String(end - offset, radix: 16) + "\r\n")
                buffer.writeBytes(bytes[offset..<end])
                buffer.writeString("\r\n")
                offset = end
            }
        }
        frame(body[..<split], into: &first)
        var rest = ByteBuffer()
        frame(body[split...], into: &rest)
        if chunked { rest.writeString("0\r\n\r\n") }
        return (first, rest)
    }

    /// Sends a whole request on a new connection and reads the response.
    static func send(
        _ gateway: GatewayHarness, _ path: String, method: String = "PUT", count: Int, chunked: Bool,
        headers: String = ""
    ) async throws -> RawResponse {
        let (first, rest) = Self.request(path, method: method, count: count, chunked: chunked, headers: headers)
        let connection = try await gateway.connect()
        defer { Task { await connection.close() } }
        var whole = first
        whole.writeImmutableBuffer(rest)
        try await connection.send(whole)
        return try await connection.readResponse()
    }

    @Test(
        "a PUT whose first try fails is retried with its whole body",
        arguments: ["early-503", "503", "reset", "connect-refused"], [false, true])
    func retriedWithBody(failure: String, chunked: Bool) async throws {
        try await withOrigins(["bad", "good"]) { origins in
            let first =
                failure == "connect-refused"
                ? try await closedPort(group: MultiThreadedEventLoopGroup.singleton) : origins[0].port
            try await withGateway(Self.yaml(endpoints: [first, origins[1].port])) { gateway in
                // Round robin: the first try goes to the failing endpoint.
                let response = try await Self.send(gateway, "/upload?fail=\(failure)", count: 20_000, chunked: chunked)
                #expect(response.status == 200)
                #expect(response.header("x-origin") == "good")
                #expect(response.text == Self.uploaded(20_000))
                #expect(origins[1].state.uploads.withLock { $0 } == [Self.uploaded(20_000)])
                #expect(gateway.server.statistics.retries.load(ordering: .relaxed) == 1)
                #expect(gateway.server.statistics.requestBufferOverflows.load(ordering: .relaxed) == 0)
            }
        }
    }

    @Test(
        "a retry decided while the body is still arriving sends the kept bytes, then the rest, in order",
        arguments: [false, true])
    func retriedDuringUpload(chunked: Bool) async throws {
        try await withOrigins(["bad", "good"]) { origins in
            try await withGateway(Self.yaml(endpoints: origins.map(\.port))) { gateway in
                let (first, rest) = Self.request(
                    "/upload?fail=early-503", count: 40_000, chunked: chunked, split: 10_000)
                let connection = try await gateway.connect()
                defer { Task { await connection.close() } }
                try await connection.send(first)
                // The bad origin answered 503 at the head: the retry starts with a quarter of the
                // body uploaded, and the good origin gets those bytes before the rest is sent.
                await eventually("the good origin read the kept bytes") {
                    origins[1].state.uploadBytesRead.load(ordering: .relaxed) == 10_000
                }
                #expect(gateway.server.statistics.retries.load(ordering: .relaxed) == 1)
                try await connection.send(rest)
                let response = try await connection.readResponse()
                #expect(response.status == 200)
                #expect(response.header("x-origin") == "good")
                #expect(response.text == Self.uploaded(40_000))
            }
        }
    }

    @Test("Expect: 100-continue is answered once by the gateway, and the retry gets the body sent after it")
    func expectContinue() async throws {
        try await withOrigins(["bad", "good"]) { origins in
            try await withGateway(Self.yaml(endpoints: origins.map(\.port))) { gateway in
                let (head, body) = Self.request(
                    "/upload?fail=early-503", count: 20_000, chunked: false, split: 0,
                    headers: "Expect: 100-continue\r\n")
                let connection = try await gateway.connect()
                defer { Task { await connection.close() } }
                try await connection.send(head)
                let proceed = try await connection.readResponse()
                #expect(proceed.status == 100)
                try await connection.send(body)
                let response = try await connection.readResponse()
                #expect(response.status == 200)
                #expect(response.text == Self.uploaded(20_000))
                #expect(gateway.server.statistics.retries.load(ordering: .relaxed) == 1)
            }
        }
    }

    @Test(
        "a body larger than request_buffer_bytes is not retried, and still streams through in full",
        arguments: [false, true])
    func overLimitNotRetried(chunked: Bool) async throws {
        try await withOrigins(["bad", "good"]) { origins in
            let yaml = Self.yaml(endpoints: origins.map(\.port), limits: "request_buffer_bytes: 4KiB")
            try await withGateway(yaml) { gateway in
                let failed = try await Self.send(gateway, "/upload?fail=503", count: 5000, chunked: chunked)
                #expect(failed.status == 503)
                #expect(failed.header("x-origin") == "bad")
                #expect(origins[0].state.uploads.withLock { $0 } == [Self.uploaded(5000)])
                #expect(origins[1].state.requests.load(ordering: .relaxed) == 0)
                let statistics = gateway.server.statistics
                #expect(statistics.retries.load(ordering: .relaxed) == 0)
                #expect(statistics.requestBufferOverflows.load(ordering: .relaxed) == 1)
                // Round robin: the next one goes to the good origin, and nothing fails.
                let passed = try await Self.send(gateway, "/upload?fail=503", count: 300_000, chunked: chunked)
                #expect(passed.status == 200)
                #expect(passed.text == Self.uploaded(300_000))
                #expect(statistics.requestBufferOverflows.load(ordering: .relaxed) == 2)
                // Within the limit, the same failure is retried.
                let retried = try await Self.send(gateway, "/upload?fail=503", count: 4096, chunked: chunked)
                #expect(retried.status == 200)
                #expect(retried.text == Self.uploaded(4096))
                #expect(statistics.retries.load(ordering: .relaxed) == 1)
            }
        }
    }

    @Test("a POST with a body is retried only with an Idempotency-Key")
    func postNeedsKey() async throws {
        try await withOrigins(["bad", "good"]) { origins in
            try await withGateway(Self.yaml(endpoints: origins.map(\.port))) { gateway in
                let keyed = try await Self.send(
                    gateway, "/upload?fail=503", method: "POST", count: 3000, chunked: false,
                    headers: "Idempotency-Key: order-7\r\n")
                #expect(keyed.status == 200)
                #expect(keyed.text == Self.uploaded(3000))
                #expect(gateway.server.statistics.retries.load(ordering: .relaxed) == 1)
                // Round robin: bad again, and without the key the 503 is the answer.
                let plain = try await Self.send(
                    gateway, "/upload?fail=503", method: "POST", count: 3000, chunked: false)
                #expect(plain.status == 503)
                #expect(plain.header("x-origin") == "bad")
                #expect(gateway.server.statistics.retries.load(ordering: .relaxed) == 1)
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 2)
            }
        }
    }

    @Test("per_try_timeout counts from the end of the body, and its retry sends the body again")
    func perTryTimeout() async throws {
        try await withOrigins(["bad", "good"]) { origins in
            let timers = ManualGatewayTimers()
            let yaml = Self.yaml(endpoints: origins.map(\.port), retry: "{attempts: 2, per_try_timeout: 7s}")
            try await withGateway(yaml, timers: timers) { gateway in
                let (first, rest) = Self.request("/upload?fail=hang", count: 30_000, chunked: false, split: 10_000)
                let connection = try await gateway.connect()
                defer { Task { await connection.close() } }
                try await connection.send(first)
                await eventually("the bad origin read the first part") {
                    origins[0].state.uploadBytesRead.load(ordering: .relaxed) == 10_000
                }
                // The upload is not finished: no try is being timed yet.
                #expect(!timers.armed.contains(.seconds(7)))
                try await connection.send(rest)
                // Polled rather than `waitUntilArmed`: without the timer the test fails, not hangs.
                await eventually("the try is timed once the body is complete") {
                    timers.armed.contains(.seconds(7))
                }
                // The timer is armed when the gateway has sent the whole body; the bad origin may
                // still be reading it (a loaded machine), and the timed-out try's connection is
                // then closed under it. So the first try's whole upload is awaited first.
                await eventually("the bad origin received the whole body") {
                    origins[0].state.uploads.withLock { $0 } == [Self.uploaded(30_000)]
                }
                await timers.advance(by: .seconds(7))
                let response = try await connection.readResponse()
                #expect(response.status == 200)
                #expect(response.header("x-origin") == "good")
                #expect(response.text == Self.uploaded(30_000))
                #expect(origins[0].state.uploads.withLock { $0 } == [Self.uploaded(30_000)])
            }
        }
    }

    @Test("a mirrored request carries its body to the shadow; one over request_buffer_bytes is not mirrored")
    func mirrorsBody() async throws {
        try await withOrigins(["primary", "shadow"]) { origins in
            let yaml = Self.yaml(
                endpoints: [origins[0].port], retry: nil, limits: "request_buffer_bytes: 8KiB",
                shadow: origins[1].port)
            try await withGateway(yaml) { gateway in
                let large = try await Self.send(gateway, "/upload", count: 100_000, chunked: false)
                #expect(large.status == 200)
                #expect(large.text == Self.uploaded(100_000))
                let largeChunked = try await Self.send(gateway, "/upload", count: 20_000, chunked: true)
                #expect(largeChunked.text == Self.uploaded(20_000))
                let small = try await Self.send(gateway, "/upload", count: 8192, chunked: false)
                #expect(small.text == Self.uploaded(8192))
                let smallChunked = try await Self.send(gateway, "/upload", count: 5000, chunked: true)
                #expect(smallChunked.text == Self.uploaded(5000))
                #expect(smallChunked.header("x-origin") == "primary")
                await eventually("the shadow read two copies") {
                    origins[1].state.uploads.withLock { $0.count } == 2
                }
                // The two large bodies were not copied (had they been, their copies would be here).
                #expect(Set(origins[1].state.uploads.withLock { $0 }) == [Self.uploaded(8192), Self.uploaded(5000)])
                #expect(origins[1].state.shadowRequests.load(ordering: .relaxed) == 2)
                #expect(origins[0].state.shadowRequests.load(ordering: .relaxed) == 0)
                let statistics = gateway.server.statistics
                #expect(statistics.mirroredRequests.load(ordering: .relaxed) == 2)
                #expect(statistics.requestBufferOverflows.load(ordering: .relaxed) == 2)
            }
        }
    }

    @Test("a shadow that does not read neither slows nor fails a request with a body")
    func mirrorIsolated() async throws {
        try await withOrigins(["primary", "shadow"]) { origins in
            let yaml = Self.yaml(endpoints: [origins[0].port], retry: nil, shadow: origins[1].port)
            try await withGateway(yaml) { gateway in
                // `?pause`: the shadow stops reading its copies' bodies; the primary (in this
                // test also asked to pause) is released at once.
                let connection = try await gateway.connect()
                defer { Task { await connection.close() } }
                for index in 0..<3 {
                    let (first, rest) = Self.request("/upload?pause", count: 60_000, chunked: index == 1)
                    var whole = first
                    whole.writeImmutableBuffer(rest)
                    try await connection.send(whole)
                    await eventually("the primary paused") {
                        origins[0].state.pausedCount.load(ordering: .relaxed) == index + 1
                    }
                    origins[0].release()
                    let response = try await connection.readResponse()
                    #expect(response.status == 200)
                    #expect(response.text == Self.uploaded(60_000))
                }
                // The client had its three answers while the shadow held its copies unread.
                #expect(gateway.server.statistics.mirroredRequests.load(ordering: .relaxed) == 3)
                await eventually("the shadow has the three copies' heads") {
                    origins[1].state.pausedCount.load(ordering: .relaxed) == 3
                }
                origins[1].release()
                await eventually("the shadow read the three copies once released") {
                    origins[1].state.uploads.withLock { $0.count } == 3
                }
            }
        }
    }

    @Test("over HTTP/2 a stream's body is kept and sent again on a retry", arguments: [false, true])
    func http2(withLength: Bool) async throws {
        try await withOrigins(["bad", "good"]) { origins in
            let yaml = Self.yaml(endpoints: origins.map(\.port), listen: ", http2: true")
            try await withGateway(yaml) { gateway in
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                defer { Task { await client.close() } }
                let response = try await client.request(
                    "PUT", "/upload?fail=reset", headers: withLength ? [("content-length", "50000")] : [],
                    body: Pattern.bytes(count: 50_000), chunkSize: 7000)
                #expect(response.status == 200)
                #expect(response.text == Self.uploaded(50_000))
                #expect(gateway.server.statistics.retries.load(ordering: .relaxed) == 1)
            }
        }
    }

    @Test("limits.request_buffer_bytes: default 64 KiB, sizes parsed, bad values and unknown keys refused")
    func configuration() throws {
        let yaml = { (limits: String) in
            """
            limits: {\(limits)}
            clusters:
              a: {endpoints: [127.0.0.1:1]}
            routes:
              - match: {path_prefix: /}
                cluster: a
            """
        }
        #expect(try GatewayConfiguration(yaml: yaml("")).limits.requestBufferBytes == 65_536)
        #expect(GatewayConfiguration.Limits().requestBufferBytes == 65_536)
        #expect(
            try GatewayConfiguration(yaml: yaml("request_buffer_bytes: 256KiB")).limits.requestBufferBytes == 262_144)
        #expect(try GatewayConfiguration(yaml: yaml("request_buffer_bytes: 1000")).limits.requestBufferBytes == 1000)
        for (limits, problem) in [
            (
                "request_buffer_bytes: lots",
                #"limits.request_buffer_bytes: expected a size in bytes such as 65536, 512KiB or 10MiB, got "lots" (line 1)"#
            ),
            (
                "request_buffer_bytes: 0",
                #"limits.request_buffer_bytes: expected a size in bytes such as 65536, 512KiB or 10MiB, got "0" (line 1)"#
            ),
            (
                "request_buffer: 1KiB",
                "limits.request_buffer: unknown key, expected one of max_connections, max_header_bytes, max_body_bytes, "
                    + "header_timeout, idle_timeout, drain_timeout, request_buffer_bytes (line 1)"
            ),
        ] {
            do {
                _ = try GatewayConfiguration(yaml: yaml(limits))
                Issue.record("accepted \(limits)")
            } catch {
                #expect(error.problems == [problem])
            }
        }
    }
}
