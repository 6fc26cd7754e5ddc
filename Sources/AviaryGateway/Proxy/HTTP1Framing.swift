//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHTTP1

// Hot path: what both directions of the proxy write as HTTP/1.1 bytes themselves (responses to
// clients in ProxyHandler+Output.swift, requests to upstreams in `UpstreamHandler`): header
// fields, chunk framing, and the bytes of a part not complete yet.

extension ByteBuffer {
    /// Writes `headers` as `name: value` CRLF lines (without the empty line that ends a head);
    /// returns whether they frame the body as chunked (`Transfer-Encoding: chunked`).
    ///
    /// ```swift
    /// var buffer = ByteBuffer()
    /// let chunked = buffer.writeHTTPFields(["content-type": "text/plain"])  // false
    /// ```
    @discardableResult
    mutating func writeHTTPFields(_ headers: HTTPHeaders) -> Bool {
        var chunked = false
        for (name, value) in headers {
            if name.utf8.count == 17 && name.equalsLowercase("transfer-encoding") {
                chunked = value.utf8.count == 7 && value.equalsLowercase("chunked")
            }
            self.writeHTTPField(name, value)
        }
        return chunked
    }

    /// Writes one `name: value` CRLF line.
    ///
    /// One write into the buffer's storage rather than four (`writeString` and `writeStaticString`
    /// each check capacity, uniqueness and exclusive access to the storage): a proxied request
    /// writes a field per client field and four or five of its own.
    mutating func writeHTTPField(_ name: String, _ value: String) {
        var name = name
        var value = value
        name.withUTF8 { name in
            value.withUTF8 { value in
                let count = name.count + value.count + 4
                self.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { out in
                    out.copyMemory(from: UnsafeRawBufferPointer(name))
                    out[name.count] = UInt8(ascii: ":")
                    out[name.count + 1] = UInt8(ascii: " ")
                    UnsafeMutableRawBufferPointer(rebasing: out[(name.count + 2)...])
                        .copyMemory(from: UnsafeRawBufferPointer(value))
                    out[count - 2] = UInt8(ascii: "\r")
                    out[count - 1] = UInt8(ascii: "\n")
                    return count
                }
            }
        }
    }

    /// Prepends `unparsed` (bytes a parser left for the next read, if any) to these bytes.
    mutating func resume(after unparsed: inout ByteBuffer?) {
        guard var earlier = unparsed else { return }
        unparsed = nil
        earlier.writeBuffer(&self)
        self = earlier
    }
}

/// Chunk framing for a body whose length the proxy does not know.
enum HTTP1Chunks {
    /// Writes `body` as one chunk (size line, bytes, CRLF); an empty body writes nothing (an empty
    /// chunk would end the body). The last write carries `promise`, or it is completed at once.
    static func write(
        _ body: ByteBuffer, context: ChannelHandlerContext, promise: EventLoopPromise<Void>? = nil
    ) {
        guard body.readableBytes > 0 else {
            promise?.succeed()
            return
        }
        var size = context.channel.allocator.buffer(capacity: 18)
        size.writeString(String(body.readableBytes, radix: 16))
        size.writeStaticString("\r\n")
        context.write(NIOAny(size), promise: nil)
        context.write(NIOAny(body), promise: nil)
        var end = context.channel.allocator.buffer(capacity: 2)
        end.writeStaticString("\r\n")
        context.write(NIOAny(end), promise: promise)
    }

    /// The last chunk and the trailers, which end a chunked body.
    static func last(trailers: HTTPHeaders?, allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 5)
        buffer.writeStaticString("0\r\n")
        if let trailers { buffer.writeHTTPFields(trailers) }
        buffer.writeStaticString("\r\n")
        return buffer
    }
}
