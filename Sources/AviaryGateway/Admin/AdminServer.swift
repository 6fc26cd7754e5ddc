//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryTelemetry
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

// Plain NIO rather than Hummingbird: five endpoints do not justify another framework in the
// gateway's build, and NIO's server pipeline already parses HTTP/1.1.

/// The gateway's admin API on its own listener (`listen.admin`, conventionally 127.0.0.1:9901).
///
/// | request | answer |
/// | --- | --- |
/// | `GET /ready` | `200 ready` while serving, `503 draining` once a drain began |
/// | `GET /config` | the effective configuration as JSON |
/// | `GET /clusters` | per cluster and endpoint: health, ejection, requests in flight, pool sizes |
/// | `GET /metrics` | Prometheus text: per route, cluster and endpoint |
/// | `POST /reload` | reloads the configuration file (or the YAML in the body); `400` with one problem per line of `problems` when it is invalid |
///
/// ```sh
/// curl -s 127.0.0.1:9901/clusters | jq .
/// curl -s -X POST 127.0.0.1:9901/reload
/// ```
final class AdminServer: Sendable {
    let gateway: GatewayServer
    private let channel = Mutex<(any Channel)?>(nil)

    /// Bodies of `POST /reload` larger than this are refused.
    static let maxBodyBytes = 1 << 20

    init(gateway: GatewayServer) {
        self.gateway = gateway
    }

    var localAddress: SocketAddress? { self.channel.withLock { $0?.localAddress } }

    func start(host: String, port: Int, group: any EventLoopGroup) async throws {
        let api = AdminAPI(gateway: self.gateway)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(api: api))
                }
            }
            .bind(host: host, port: port).get()
        self.channel.withLock { $0 = channel }
    }

    func stop() async {
        let channel = self.channel.withLock { channel in
            defer { channel = nil }
            return channel
        }
        try? await channel?.close()
    }
}

/// One admin response.
struct AdminResponse: Sendable {
    var status: HTTPResponseStatus
    var contentType: String
    var body: [UInt8]

    static func text(_ status: HTTPResponseStatus, _ text: String) -> AdminResponse {
        AdminResponse(status: status, contentType: "text/plain; charset=utf-8", body: Array(text.utf8))
    }

    /// Writes the response on `channel` (from any thread), closing it after unless `keepAlive`.
    func write(to channel: any Channel, keepAlive: Bool) {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: self.contentType)
        headers.add(name: "content-length", value: String(self.body.count))
        headers.add(name: "cache-control", value: "no-store")
        if !keepAlive { headers.add(name: "connection", value: "close") }
        let head = HTTPResponseHead(version: .http1_1, status: self.status, headers: headers)
        channel.write(HTTPServerResponsePart.head(head), promise: nil)
        channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: self.body))), promise: nil)
        let done = channel.writeAndFlush(HTTPServerResponsePart.end(nil))
        if !keepAlive {
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    static func json(_ status: HTTPResponseStatus, _ object: Any) -> AdminResponse {
        let data =
            (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted]))
            ?? Data("{}".utf8)
        return AdminResponse(status: status, contentType: "application/json", body: Array(data) + [0x0A])
    }
}

/// Collects one request at a time and answers it from ``AdminAPI``.
private final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let api: AdminAPI
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false

    init(api: AdminAPI) {
        self.api = api
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            self.body = []
            self.tooLarge = false
        case .body(let buffer):
            if self.body.count + buffer.readableBytes > AdminServer.maxBodyBytes {
                self.tooLarge = true
            } else {
                self.body.append(contentsOf: buffer.readableBytesView)
            }
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            let keepAlive = head.isKeepAlive
            let channel = context.channel
            if self.tooLarge {
                AdminResponse.text(.payloadTooLarge, "the body is larger than 1 MiB\n").write(
                    to: channel, keepAlive: false)
                return
            }
            let request = AdminRequest(
                method: head.method, path: String(RouteTable.path(of: head.uri)), body: self.body)
            let api = self.api
            Task {
                await api.handle(request).write(to: channel, keepAlive: keepAlive)
            }
        }
    }
}

/// An admin request, read whole.
struct AdminRequest: Sendable {
    var method: HTTPMethod
    var path: String
    var body: [UInt8]
}

/// What each admin endpoint answers.
struct AdminAPI: Sendable {
    let gateway: GatewayServer

    func handle(_ request: AdminRequest) async -> AdminResponse {
        let allowed: HTTPMethod
        switch request.path {
        case "/ready", "/config", "/clusters", "/metrics": allowed = .GET
        case "/reload": allowed = .POST
        default:
            return .text(
                .notFound, "no admin endpoint \(request.path); try /ready, /config, /clusters, /metrics, /reload\n")
        }
        guard request.method == allowed || (allowed == .GET && request.method == .HEAD) else {
            return .text(.methodNotAllowed, "\(request.path) takes \(allowed.rawValue)\n")
        }
        switch request.path {
        case "/ready":
            return self.gateway.isDraining ? .text(.serviceUnavailable, "draining\n") : .text(.ok, "ready\n")
        case "/config":
            return .json(.ok, AdminViews.configuration(self.gateway.configuration))
        case "/clusters":
            let (_, pools) = await self.gateway.metricsSnapshot()
            return .json(.ok, AdminViews.clusters(self.gateway.currentCore, pools: pools))
        case "/metrics":
            let (metrics, pools) = await self.gateway.metricsSnapshot()
            var text = AdminViews.prometheus(gateway: self.gateway, metrics: metrics, pools: pools)
            text.append(contentsOf: self.gateway.metricsRegistry.expositionBytes())
            return AdminResponse(status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: text)
        default:
            return await self.reload(request.body)
        }
    }

    private func reload(_ body: [UInt8]) async -> AdminResponse {
        do throws(GatewayConfigurationError) {
            if body.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) {
                try await self.gateway.reloadFromFile()
            } else {
                let configuration: GatewayConfiguration
                do throws(GatewayConfigurationError) {
                    configuration = try GatewayConfiguration(yaml: String(decoding: body, as: UTF8.self), file: "body")
                } catch {
                    self.gateway.reloadsRefused.add(1, ordering: .relaxed)
                    throw error
                }
                try await self.gateway.reload(configuration)
            }
        } catch {
            self.gateway.logRefusedReload(error)
            return .json(
                .badRequest,
                [
                    "type": "https://aviary.dev/problems/invalid-configuration",
                    "title": "Bad Request", "status": 400,
                    "detail": "the configuration was refused; the running one stays",
                    "problems": error.problems,
                ] as [String: Any])
        }
        let configuration = self.gateway.configuration
        return .json(
            .ok,
            [
                "status": "reloaded", "clusters": configuration.clusters.count, "routes": configuration.routes.count,
            ] as [String: Any])
    }
}

extension GatewayServer {
    /// Logs a refused reload, one line per problem.
    func logRefusedReload(_ error: GatewayConfigurationError) {
        for problem in error.problems {
            self.logger.error("configuration reload refused: \(problem)")
        }
    }
}
