//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import HTTPTypes
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A JWKS endpoint the test controls: what it serves, and how often it was asked.
///
/// It answers on the event loop that reads the request, without Swift concurrency: in a full
/// parallel test run the two threads of the cooperative pool can be busy for seconds, and a JWKS
/// fetch that waited for them timed out (the authenticator's 5 s), failing tests that were about
/// something else.
public final class JWKSServer: Sendable {
    private struct State {
        var jwks: String
        var status: HTTPResponse.Status = .ok
    }

    private let state: Mutex<State>
    private let fetchCount = Atomic<Int>(0)

    public init(jwks: String) {
        self.state = Mutex(State(jwks: jwks))
    }

    public var fetches: Int { self.fetchCount.load(ordering: .relaxed) }

    public func serve(_ jwks: String) { self.state.withLock { $0.jwks = jwks } }
    public func fail(with status: HTTPResponse.Status) { self.state.withLock { $0.status = status } }

    /// What to answer now (counting the fetch).
    fileprivate func answer() -> (status: HTTPResponseStatus, body: String) {
        self.fetchCount.add(1, ordering: .relaxed)
        let (jwks, status) = self.state.withLock { ($0.jwks, $0.status) }
        return (HTTPResponseStatus(statusCode: status.code), status == .ok ? jwks : "{\"error\":\"down\"}")
    }

    /// Runs `body` with the URL of a live server on 127.0.0.1 and a free port.
    public func run(_ body: @Sendable @escaping (String) async throws -> Void) async throws {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(JWKSHandler(server: self))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = channel.localAddress?.port ?? 0
        do {
            try await body("http://127.0.0.1:\(port)/.well-known/jwks.json")
        } catch {
            try? await channel.close()
            throw error
        }
        try? await channel.close()
    }
}

/// Answers `GET /.well-known/jwks.json` with the server's JWKS, anything else with 404.
private final class JWKSHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let server: JWKSServer
    private var path: String?
    private var keepAlive = true

    init(server: JWKSServer) {
        self.server = server
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.path = head.uri
            self.keepAlive = head.isKeepAlive
        case .body:
            break
        case .end:
            let (status, text): (HTTPResponseStatus, String) =
                self.path == "/.well-known/jwks.json" ? self.server.answer() : (.notFound, "{}")
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "application/json")
            headers.add(name: "content-length", value: "\(text.utf8.count)")
            if !self.keepAlive { headers.add(name: "connection", value: "close") }
            context.write(
                self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
                promise: nil)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: text)))), promise: nil)
            if self.keepAlive {
                context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
            } else {
                let channel = context.channel
                context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
            }
        }
    }
}
