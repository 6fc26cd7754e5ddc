//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import AviaryGateway

/// How the proxy writes responses: heads into reused buffers, a forwarded head held back so that
/// a small body joins it in one write.
@Suite("Proxy output")
struct ProxyOutputTests {
    static let allocator = ByteBufferAllocator()

    static func address(_ buffer: ByteBuffer) -> UInt {
        buffer.withVeryUnsafeBytes { UInt(bitPattern: $0.baseAddress) }
    }

    @Test("a kept head buffer's storage is reused once nothing else holds it")
    func reusedWhenUnique() {
        var buffers = OutputBuffers()
        var first = buffers.takeResponse(capacity: 128, allocator: Self.allocator)
        first.writeString("HTTP/1.1 200 OK\r\n\r\n")
        buffers.keepResponse(first)
        let storage = Self.address(first)
        first = ByteBuffer()  // the socket has written it and let go

        let second = buffers.takeResponse(capacity: 128, allocator: Self.allocator)
        #expect(Self.address(second) == storage)
        #expect(second.readableBytes == 0)
        #expect(second.capacity >= 128)
    }

    @Test("a kept buffer still held elsewhere is not written over: the next head gets new storage")
    func freshWhenShared() {
        var buffers = OutputBuffers()
        var first = buffers.takeRequest(capacity: 64, allocator: Self.allocator)
        first.writeString("GET /a HTTP/1.1\r\n\r\n")
        buffers.keepRequest(first)
        let pending = first  // still queued on the socket, or kept by the exchange for a retry

        var second = buffers.takeRequest(capacity: 64, allocator: Self.allocator)
        second.writeString("GET /b HTTP/1.1\r\n\r\n")
        #expect(Self.address(second) != Self.address(pending))
        #expect(String(buffer: pending) == "GET /a HTTP/1.1\r\n\r\n")
        #expect(String(buffer: second) == "GET /b HTTP/1.1\r\n\r\n")
    }

    @Test("a buffer that grew past the kept capacity is let go")
    func largeNotKept() {
        var buffers = OutputBuffers()
        var big = buffers.takeResponse(capacity: OutputBuffers.keptCapacity * 2, allocator: Self.allocator)
        big.writeString("x")
        buffers.keepResponse(big)
        let storage = Self.address(big)
        big = ByteBuffer()
        let next = buffers.takeResponse(capacity: 16, allocator: Self.allocator)
        #expect(Self.address(next) != storage)
        #expect(next.capacity < OutputBuffers.keptCapacity * 2)
    }

    @Test("an HTTP/2 connection's lent head buffers are reused once given back and let go, never while held")
    func lentBuffers() {
        var lent = LentBuffers()
        // Two streams borrow at once: two buffers.
        var a = lent.take(capacity: 64, allocator: Self.allocator)
        a.writeString("GET /a HTTP/1.1\r\n\r\n")
        var b = lent.take(capacity: 64, allocator: Self.allocator)
        b.writeString("GET /b HTTP/1.1\r\n\r\n")
        #expect(Self.address(a) != Self.address(b))
        // A's exchange ended and nothing else holds its buffer: the next stream writes into it.
        let storageA = Self.address(a)
        lent.giveBack(a)
        a = ByteBuffer()
        var c = lent.take(capacity: 64, allocator: Self.allocator)
        #expect(Self.address(c) == storageA)
        #expect(c.readableBytes == 0)
        c.writeString("GET /c HTTP/1.1\r\n\r\n")
        // B is given back while something still holds its bytes (a write not done): the next
        // stream gets new storage and B's bytes stay as they were.
        let heldB = b
        lent.giveBack(b)
        var d = lent.take(capacity: 64, allocator: Self.allocator)
        d.writeString("GET /d HTTP/1.1\r\n\r\n")
        #expect(Self.address(d) != Self.address(heldB))
        #expect(String(buffer: heldB) == "GET /b HTTP/1.1\r\n\r\n")
        #expect(String(buffer: c) == "GET /c HTTP/1.1\r\n\r\n")
        // At most keptCount buffers are kept, and none that grew past the kept capacity.
        for _ in 0..<(LentBuffers.keptCount + 5) { lent.giveBack(Self.allocator.buffer(capacity: 64)) }
        #expect(lent.count == LentBuffers.keptCount)
        var other = LentBuffers()
        other.giveBack(Self.allocator.buffer(capacity: OutputBuffers.keptCapacity * 2))
        #expect(other.count == 0)
    }

    @Test("header fields are written as name, colon, space, value, CRLF, one after another")
    func fieldLines() {
        var buffer = ByteBuffer(string: "GET / HTTP/1.1\r\n")
        buffer.writeHTTPField("host", "example.com")
        buffer.writeHTTPField("x-empty", "")
        let long = String(repeating: "é", count: 40)
        buffer.writeHTTPField("x-forwarded-host-with-a-long-name", long)
        let chunked = buffer.writeHTTPFields(["Transfer-Encoding": "Chunked", "a": "b"])
        #expect(chunked)
        #expect(
            String(buffer: buffer)
                == "GET / HTTP/1.1\r\nhost: example.com\r\nx-empty: \r\nx-forwarded-host-with-a-long-name: \(long)\r\n"
                + "Transfer-Encoding: Chunked\r\na: b\r\n")
    }

    @Test(
        "pipelined responses around the coalescing limit, bodyless ones and a large one arrive whole and in order",
        .timeLimit(.minutes(3)))
    func coalescingBoundaries() async throws {
        let limit = ProxyHandler.coalescedBodyBytes
        let sizes = [0, 1, 128, limit - 1, limit, limit + 1, 70_000, 3]
        try await withOrigins(["a"]) { origins in
            let yaml = GatewayHTTPTests.yaml(port: origins[0].port)
            try await withGateway(yaml) { gateway in
                let connection = try await gateway.connect()
                var requests = ""
                for size in sizes { requests += "GET /download?bytes=\(size) HTTP/1.1\r\nHost: t\r\n\r\n" }
                requests += "HEAD /download?bytes=10 HTTP/1.1\r\nHost: t\r\n\r\n"
                requests += "GET /download?bytes=5 HTTP/1.1\r\nHost: t\r\n\r\n"
                // Last: the test origin writes a body even after a 204, which would spoil its connection.
                requests += "GET /status/204 HTTP/1.1\r\nHost: t\r\n\r\n"
                try await connection.send(requests)
                for size in sizes {
                    let response = try await connection.readResponse()
                    #expect(response.status == 200)
                    #expect(response.header("content-length") == String(size))
                    #expect(response.body == Self.pattern(size), "body of \(size) bytes")
                }
                let head = try await connection.readResponse(isHead: true)
                #expect(head.status == 200 && head.body.isEmpty && head.header("content-length") == "10")
                let last = try await connection.readResponse()
                #expect(last.body == Self.pattern(5))
                let noContent = try await connection.readResponse()
                #expect(noContent.status == 204 && noContent.body.isEmpty)
                await connection.close()
            }
        }
    }

    /// The first `count` bytes of the origin's download stream.
    static func pattern(_ count: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        var index = 0
        while bytes.count < count {
            let chunk = Pattern.chunk(index)
            bytes += chunk.readableBytesView.prefix(count - bytes.count)
            index += 1
        }
        return bytes
    }

    @Test("an upstream connection flushes only what was written since its last flush")
    func upstreamFlushesOnlyWrites() throws {
        let channel = EmbeddedChannel()
        var flushes = 0
        try channel.pipeline.syncOperations.addHandler(FlushCounter { flushes += 1 })
        let handler = UpstreamHandler(http1: true)
        try channel.pipeline.syncOperations.addHandler(handler)
        // A GET: its head goes out with the first flush; its end writes nothing, so neither the
        // flush after the end nor the one after the client's read reaches the channel.
        handler.sendHead(ByteBuffer(string: "GET / HTTP/1.1\r\nhost: a\r\n\r\n"), isHead: false)
        handler.flush()
        #expect(flushes == 1)
        handler.send(.end(nil))
        handler.flush()
        handler.flush()
        #expect(flushes == 1)
        #expect(
            try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "GET / HTTP/1.1\r\nhost: a\r\n\r\n"))
        // A chunked body: its parts and its last chunk are written, so each flush goes through.
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/")
        head.headers.add(name: "transfer-encoding", value: "chunked")
        handler.send(.head(head))
        handler.send(.body(.byteBuffer(ByteBuffer(string: "hi"))))
        handler.flush()
        #expect(flushes == 2)
        handler.send(.end(nil))
        handler.flush()
        #expect(flushes == 3)
        handler.flush()
        #expect(flushes == 3)
        // A head with nothing to follow it is written and flushed in one call; the flush the
        // proxy asks for after it finds nothing left.
        while try channel.readOutbound(as: ByteBuffer.self) != nil {}
        handler.sendHead(ByteBuffer(string: "GET /b HTTP/1.1\r\nhost: a\r\n\r\n"), isHead: false, flush: true)
        #expect(flushes == 4)
        #expect(
            try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "GET /b HTTP/1.1\r\nhost: a\r\n\r\n"))
        handler.send(.end(nil))
        handler.flush()
        #expect(flushes == 4)
        _ = try channel.finish()
    }
}
