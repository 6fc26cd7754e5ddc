//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL
import Synchronization

/// A tiny gRPC-shaped HTTP/2 origin (h2c, prior knowledge), written with swift-nio-http2 so that
/// the test needs no gRPC library. Messages are opaque bytes; the shapes are gRPC's:
/// - `/test.Echo/Unary`: answers the request body back once the request ended, then trailers
///   `grpc-status: 0`, `grpc-message: echoed N bytes`;
/// - `/test.Echo/Stream?n=K` (the count in header `x-count`): K DATA frames `message i`, then
///   trailers `grpc-status: 0`;
/// - `/test.Echo/Fail`: headers, then trailers-only failure `grpc-status: 5`;
/// - `/test.Echo/Reset`: resets the stream (RST_STREAM, INTERNAL_ERROR) without answering;
/// - `/grpc.health.v1.Health/Check`: gRPC's health protocol, the status of the named service
///   from ``health`` (1 `SERVING`, 2 `NOT_SERVING`), or trailers-only `grpc-status: 5` for a name
///   it does not have;
/// - `GET /healthz`: an empty answer with the status in ``httpHealth``.
final class GRPCOrigin: Sendable {
    let channel: any Channel
    let port: Int
    /// Health statuses by service name; the empty name (the whole server) starts `SERVING`.
    let health = Mutex<[String: Int]>(["": 1])
    /// The status `GET /healthz` answers with.
    let httpHealth = Atomic<Int>(200)
    /// What each request carried that the test checks: its `te` header and request trailers.
    let seen = Mutex<[(path: String, te: String?, requestTrailers: [(String, String)]?)]>([])

    private init(channel: any Channel) {
        self.channel = channel
        self.port = channel.localAddress?.port ?? 0
    }

    /// Starts the origin; with `tls` (whose ALPN should offer `h2`), over TLS.
    static func start(group: any EventLoopGroup, tls: NIOSSLContext? = nil) async throws -> GRPCOrigin {
        let box = Mutex<GRPCOrigin?>(nil)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                    _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                        mode: .server, connectionConfiguration: .init(), streamConfiguration: .init()
                    ) { stream in
                        stream.eventLoop.makeCompletedFuture {
                            let origin = box.withLock { $0 }
                            try stream.pipeline.syncOperations.addHandler(GRPCStreamHandler(origin: origin))
                        }
                    }
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let origin = GRPCOrigin(channel: channel)
        box.withLock { $0 = origin }
        return origin
    }

    func stop() async {
        try? await self.channel.close()
    }
}

private final class GRPCStreamHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    let origin: GRPCOrigin?
    private var path = ""
    private var count = 0
    private var te: String?
    private var body = ByteBuffer()

    init(origin: GRPCOrigin?) { self.origin = origin }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .headers(let headers):
            if self.path.isEmpty {
                self.path = headers.headers.first(name: ":path") ?? ""
                self.te = headers.headers.first(name: "te")
                self.count = headers.headers.first(name: "x-count").flatMap { Int($0) } ?? 3
                if headers.endStream { self.requestEnded(context: context, trailers: nil) }
            } else {
                self.requestEnded(context: context, trailers: headers.headers.map { ($0.name, $0.value) })
            }
        case .data(let data):
            if case .byteBuffer(var buffer) = data.data { self.body.writeBuffer(&buffer) }
            if data.endStream { self.requestEnded(context: context, trailers: nil) }
        default:
            break
        }
    }

    private func requestEnded(context: ChannelHandlerContext, trailers: [(String, String)]?) {
        self.origin?.seen.withLock { $0.append((self.path, self.te, trailers)) }
        let responseHead = HPACKHeaders([(":status", "200"), ("content-type", "application/grpc")])
        switch self.path {
        case "/test.Echo/Unary":
            context.write(self.wrapOutboundOut(.headers(.init(headers: responseHead))), promise: nil)
            let size = self.body.readableBytes
            context.write(self.wrapOutboundOut(.data(.init(data: .byteBuffer(self.body)))), promise: nil)
            self.trailers(context, [("grpc-status", "0"), ("grpc-message", "echoed \(size) bytes")])
        case "/test.Echo/Stream":
            context.write(self.wrapOutboundOut(.headers(.init(headers: responseHead))), promise: nil)
            for index in 0..<self.count {
                let message = ByteBuffer(string: "message \(index)\n")
                context.writeAndFlush(self.wrapOutboundOut(.data(.init(data: .byteBuffer(message)))), promise: nil)
            }
            self.trailers(context, [("grpc-status", "0")])
        case "/test.Echo/Fail":
            var headers = responseHead
            headers.add(name: "grpc-status", value: "5")
            headers.add(name: "grpc-message", value: "not found")
            context.writeAndFlush(
                self.wrapOutboundOut(.headers(.init(headers: headers, endStream: true))), promise: nil)
        case "/grpc.health.v1.Health/Check":
            // HealthCheckRequest: field 1 (tag 0x0A), the service name, after the 5-byte prefix.
            var request = self.body
            var service = ""
            if request.readableBytes > 5 {
                request.moveReaderIndex(forwardBy: 5)
                if request.readInteger(as: UInt8.self) == 0x0A, let length = request.readInteger(as: UInt8.self) {
                    service = request.readString(length: Int(length)) ?? ""
                }
            }
            guard let status = self.origin?.health.withLock({ $0[service] }) else {
                var headers = responseHead
                headers.add(name: "grpc-status", value: "5")
                context.writeAndFlush(
                    self.wrapOutboundOut(.headers(.init(headers: headers, endStream: true))), promise: nil)
                return
            }
            context.write(self.wrapOutboundOut(.headers(.init(headers: responseHead))), promise: nil)
            var message = ByteBuffer()
            message.writeInteger(UInt8(0))
            message.writeInteger(UInt32(2))
            message.writeInteger(UInt8(0x08))  // field 1, varint
            message.writeInteger(UInt8(status))
            context.write(self.wrapOutboundOut(.data(.init(data: .byteBuffer(message)))), promise: nil)
            self.trailers(context, [("grpc-status", "0")])
        case "/healthz":
            let status = self.origin?.httpHealth.load(ordering: .relaxed) ?? 200
            context.writeAndFlush(
                self.wrapOutboundOut(
                    .headers(.init(headers: HPACKHeaders([(":status", "\(status)")]), endStream: true))),
                promise: nil)
        default:  // "/test.Echo/Reset" and anything else
            context.writeAndFlush(self.wrapOutboundOut(.rstStream(.internalError)), promise: nil)
        }
    }

    private func trailers(_ context: ChannelHandlerContext, _ fields: [(String, String)]) {
        let trailers = HPACKHeaders(fields)
        context.writeAndFlush(self.wrapOutboundOut(.headers(.init(headers: trailers, endStream: true))), promise: nil)
    }
}
