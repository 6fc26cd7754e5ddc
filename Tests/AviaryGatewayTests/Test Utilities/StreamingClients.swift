//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Crypto
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// How far a streaming client got, readable from tests while it runs.
final class StreamProgress: Sendable {
    /// Body bytes the client handed to its socket.
    let bytesWritten = Atomic<Int>(0)
    /// Body bytes the client received.
    let bytesReceived = Atomic<Int>(0)
    let result = Mutex<StreamResult?>(nil)

    var finished: StreamResult? { self.result.withLock { $0 } }
}

struct StreamResult: Sendable {
    var status: Int
    var body: String
    var bodyBytes: Int
    var sha256: String
}

/// Uploads `bytes` pattern bytes to `path` honouring writability, and reads a small response.
final class UploadHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    let path: String
    let total: Int
    let progress: StreamProgress
    private var sent = 0
    private var chunk = 0
    private var status = 0
    private var body = ""

    init(path: String, bytes: Int, progress: StreamProgress) {
        self.path = path
        self.total = bytes
        self.progress = progress
    }

    func channelActive(context: ChannelHandlerContext) {
        let head = HTTPRequestHead(
            version: .http1_1, method: .POST, uri: self.path,
            headers: ["host": "gateway.test", "content-length": String(self.total)])
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        self.pump(context)
        context.fireChannelActive()
    }

    private func pump(_ context: ChannelHandlerContext) {
        guard self.sent < self.total else { return }
        while self.sent < self.total && context.channel.isWritable {
            var buffer = Pattern.chunk(self.chunk)
            self.chunk += 1
            if buffer.readableBytes > self.total - self.sent {
                buffer = buffer.getSlice(at: 0, length: self.total - self.sent) ?? buffer
            }
            let count = buffer.readableBytes
            self.sent += count
            let progress = self.progress
            context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer)))).whenSuccess {
                progress.bytesWritten.add(count, ordering: .relaxed)
            }
        }
        if self.sent == self.total {
            context.write(self.wrapOutboundOut(.end(nil)), promise: nil)
        }
        context.flush()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.pump(context) }
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head): self.status = Int(head.status.code)
        case .body(let buffer): self.body += String(buffer: buffer)
        case .end:
            let result = StreamResult(status: self.status, body: self.body, bodyBytes: self.body.utf8.count, sha256: "")
            self.progress.result.withLock { $0 = result }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let result = StreamResult(status: self.status, body: self.body + "<closed>", bodyBytes: 0, sha256: "")
        self.progress.result.withLock { if $0 == nil { $0 = result } }
    }
}

/// Downloads from `path`, hashing the body; reading can be paused to push back on the gateway.
final class DownloadHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    let path: String
    let progress: StreamProgress
    private var context: ChannelHandlerContext?
    private var paused: Bool
    private var readPending = false
    private var hasher = SHA256()
    private var status = 0
    private var count = 0

    init(path: String, paused: Bool, progress: StreamProgress) {
        self.path = path
        self.paused = paused
        self.progress = progress
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelActive(context: ChannelHandlerContext) {
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: self.path, headers: ["host": "gateway.test"])
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func read(context: ChannelHandlerContext) {
        if self.paused {
            self.readPending = true
        } else {
            context.read()
        }
    }

    func resume() {
        self.paused = false
        if self.readPending, let context = self.context {
            self.readPending = false
            context.read()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head): self.status = Int(head.status.code)
        case .body(let buffer):
            buffer.withUnsafeReadableBytes { self.hasher.update(bufferPointer: $0) }
            self.count += buffer.readableBytes
            self.progress.bytesReceived.add(buffer.readableBytes, ordering: .relaxed)
        case .end:
            let digest = self.hasher.finalize().map { String($0, radix: 16).leftPadded(2) }.joined()
            let result = StreamResult(status: self.status, body: "", bodyBytes: self.count, sha256: digest)
            self.progress.result.withLock { $0 = result }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let result = StreamResult(status: self.status, body: "<closed>", bodyBytes: self.count, sha256: "")
        self.progress.result.withLock { if $0 == nil { $0 = result } }
    }
}

enum StreamingClient {
    static func upload(
        port: Int, path: String, bytes: Int, group: any EventLoopGroup
    ) async throws -> (any Channel, StreamProgress) {
        let progress = StreamProgress()
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(
                        UploadHandler(path: path, bytes: bytes, progress: progress))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return (channel, progress)
    }

    static func download(
        port: Int, path: String, paused: Bool, group: any EventLoopGroup
    ) async throws
        -> (any Channel, StreamProgress, NIOLoopBound<DownloadHandler>)
    {
        let progress = StreamProgress()
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(
                        DownloadHandler(path: path, paused: paused, progress: progress))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let handler = try await channel.eventLoop.submit {
            NIOLoopBound(
                try channel.pipeline.syncOperations.handler(type: DownloadHandler.self), eventLoop: channel.eventLoop)
        }.get()
        return (channel, progress, handler)
    }
}
