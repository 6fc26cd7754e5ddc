//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import Synchronization

/// Consecutive probe results turned into health, as `health_check.healthy`/`unhealthy` say:
/// `unhealthy` failures in a row make an endpoint unhealthy, `healthy` successes in a row make it
/// healthy again.
///
/// ```swift
/// var counter = HealthCheckCounter(healthyThreshold: 2, unhealthyThreshold: 3)
/// counter.record(success: false, healthy: true)   // nil: still healthy
/// ```
struct HealthCheckCounter: Sendable {
    let healthyThreshold: Int
    let unhealthyThreshold: Int
    private var successes = 0
    private var failures = 0

    init(healthyThreshold: Int, unhealthyThreshold: Int) {
        self.healthyThreshold = healthyThreshold
        self.unhealthyThreshold = unhealthyThreshold
    }

    /// Records a probe of an endpoint now `healthy`; returns its new health when it changes.
    mutating func record(success: Bool, healthy: Bool) -> Bool? {
        if success {
            self.failures = 0
            self.successes += 1
            if !healthy && self.successes >= self.healthyThreshold {
                self.successes = 0
                return true
            }
        } else {
            self.successes = 0
            self.failures += 1
            if healthy && self.failures >= self.unhealthyThreshold {
                self.failures = 0
                return false
            }
        }
        return nil
    }
}

/// Probes every endpoint of one cluster with `GET <health_check.path>` every `interval`, one
/// checker per cluster for all event loops; results land in the cluster's ``ClusterState``,
/// which every loop reads with one atomic load per request.
///
/// A probe succeeds on a `2xx` answer within `timeout`; anything else (refused, reset, late,
/// another status) is a failure. On a `protocol: h2` cluster the probe is a stream of a new
/// HTTP/2 connection: `GET <path>`, or with `grpc` a call of the gRPC Health Checking Protocol,
/// which succeeds on `grpc-status: 0` with the status `SERVING`.
final class HealthChecker: Sendable {
    let state: ClusterState
    let check: GatewayConfiguration.HealthCheck
    let eventLoop: any EventLoop
    let logger: Logger

    init(state: ClusterState, check: GatewayConfiguration.HealthCheck, eventLoop: any EventLoop, logger: Logger) {
        self.state = state
        self.check = check
        self.eventLoop = eventLoop
        self.logger = logger
    }

    /// Probes until the task is cancelled; the first round starts at once.
    func run() async {
        var counters = self.state.endpoints.map { _ in
            HealthCheckCounter(
                healthyThreshold: self.check.healthyThreshold, unhealthyThreshold: self.check.unhealthyThreshold)
        }
        while !Task.isCancelled {
            let results = await withTaskGroup(of: (Int, ProbeOutcome).self) { group in
                for endpoint in self.state.endpoints {
                    group.addTask { (endpoint.index, await self.probe(endpoint.endpoint)) }
                }
                var results: [(Int, ProbeOutcome)] = []
                for await result in group { results.append(result) }
                return results
            }
            if Task.isCancelled { return }
            for (index, outcome) in results {
                let endpoint = self.state.endpoints[index]
                endpoint.lastProbeFailure.withLock { $0 = outcome.failure }
                let healthy = endpoint.healthy.load(ordering: .relaxed)
                var metadata: Logger.Metadata {
                    var metadata: Logger.Metadata = [
                        "aviary.cluster": "\(self.state.cluster.name)", "server.address": "\(endpoint.endpoint)",
                    ]
                    if let failure = outcome.failure { metadata["error.message"] = "\(failure)" }
                    return metadata
                }
                if outcome.failure != nil { self.logger.debug("health probe failed", metadata: metadata) }
                if let change = counters[index].record(success: outcome.failure == nil, healthy: healthy),
                    self.state.setHealthy(endpoint, change)
                {
                    self.logger.info(change ? "upstream healthy" : "upstream unhealthy", metadata: metadata)
                }
            }
            do {
                try await self.state.clock.sleep(for: self.check.interval)
            } catch {
                return
            }
        }
    }

    /// One probe: ``ProbeOutcome/success`` for a 2xx answer within the timeout, otherwise why not.
    func probe(_ endpoint: Endpoint) async -> ProbeOutcome {
        let promise = ProbeResult(self.eventLoop.makePromise(of: ProbeOutcome.self), timeout: self.check.timeout)
        let path = self.check.path
        let host = endpoint.description
        let tls: UpstreamTLS?
        switch self.state.tls {
        case nil: tls = nil
        case .success(let context): tls = context
        case .failure(let error): return .failure("\(error)")
        }
        if self.state.cluster.upstreamProtocol == .h2 {
            self.probeHTTP2(endpoint, tls: tls, promise: promise)
            return await promise.outcome()
        }
        let bootstrap = ClientBootstrap(group: self.eventLoop)
            .connectTimeout(TimeAmount(self.check.timeout))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Over TLS the probe's request waits in the TLS handler for the handshake; a
                    // failed handshake closes the connection, a failed probe.
                    try tls?.configure(channel.pipeline.syncOperations, endpoint: endpoint)
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(HealthProbeHandler(promise: promise, grpc: false))
                }
            }
        bootstrap.connect(host: endpoint.host, port: endpoint.port).whenComplete { result in
            switch result {
            case .failure(let error):
                promise.fail("connect failed: \(error)")
            case .success(let channel):
                promise.limit(channel)
                var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path)
                head.headers.add(name: "host", value: host)
                head.headers.add(name: "user-agent", value: "aviary-gateway-health-check")
                head.headers.add(name: "connection", value: "close")
                channel.write(HTTPClientRequestPart.head(head), promise: nil)
                channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            }
        }
        return await promise.outcome()
    }
}

extension HealthChecker {
    /// One probe of an HTTP/2 endpoint: a connection of its own (TLS with ALPN `h2` when the
    /// cluster has `tls`), one stream, then the connection is closed.
    private func probeHTTP2(_ endpoint: Endpoint, tls: UpstreamTLS?, promise: ProbeResult) {
        let check = self.check
        var bootstrap = ClientBootstrap(group: self.eventLoop).connectTimeout(TimeAmount(check.timeout))
        if let tls {
            bootstrap = bootstrap.channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try tls.configure(channel.pipeline.syncOperations, endpoint: endpoint)
                }
            }
        }
        bootstrap.connect(host: endpoint.host, port: endpoint.port).whenComplete { result in
            let channel: any Channel
            switch result {
            case .failure(let error):
                promise.fail("connect failed: \(error)")
                return
            case .success(let connected):
                channel = connected
            }
            promise.limit(channel)
            let ready = tls == nil ? channel.eventLoop.makeSucceededFuture(channel) : UpstreamTLS.handshake(channel)
            ready.flatMapThrowing { channel -> NIOHTTP2Handler.StreamMultiplexer in
                let multiplexer = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                    mode: .client, connectionConfiguration: .init(), streamConfiguration: .init()
                ) { stream in stream.eventLoop.makeSucceededVoidFuture() }  // The upstream opens no streams.
                // An endpoint that does not speak HTTP/2 (an HTTP/1.1 answer to the preface) is a
                // connection error: the connection closes, its stream with it, and the probe fails
                // at once instead of at its timeout, as for the pooled HTTP/2 connections.
                try channel.pipeline.syncOperations.addHandler(HTTP2CloseOnError())
                return multiplexer
            }.flatMap { multiplexer in
                multiplexer.createStreamChannel { stream in
                    stream.eventLoop.makeCompletedFuture {
                        try stream.pipeline.syncOperations.addHandlers([
                            HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: tls == nil ? .http : .https),
                            HealthProbeHandler(promise: promise, grpc: check.grpcService != nil),
                        ])
                    }
                }
            }.whenComplete { result in
                switch result {
                case .failure(let error):
                    promise.fail("HTTP/2 stream not opened: \(error)")
                case .success(let stream):
                    for part in HealthProbeHandler.request(check, authority: endpoint.description) {
                        stream.write(part, promise: nil)
                    }
                    stream.flush()
                }
            }
        }
    }
}

/// Judges a probe's answer (HTTP/1.1, or an HTTP/2 stream through NIO's codec): for `GET path` a
/// `2xx` head; for a gRPC health call `200`, `grpc-status: 0` (in the trailers, or in the head of
/// a trailers-only answer) and a `HealthCheckResponse` whose status is `SERVING` (1). Also makes
/// an HTTP/2 probe's request.
final class HealthProbeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    /// The gRPC health service's method.
    static let grpcPath = "/grpc.health.v1.Health/Check"

    let promise: ProbeResult
    let grpc: Bool
    private var status: HTTPResponseStatus?
    private var headStatus: String?
    private var body = ByteBuffer()

    init(promise: ProbeResult, grpc: Bool) {
        self.promise = promise
        self.grpc = grpc
    }

    /// The request parts of a probe: `GET path`, or the gRPC call with its one message
    /// (`HealthCheckRequest`: field 1, the service name; an empty message for the empty name).
    static func request(_ check: GatewayConfiguration.HealthCheck, authority: String) -> [HTTPClientRequestPart] {
        var headers = HTTPHeaders()
        headers.add(name: "host", value: authority)
        headers.add(name: "user-agent", value: "aviary-gateway-health-check")
        guard let service = check.grpcService else {
            return [
                .head(HTTPRequestHead(version: .http2, method: .GET, uri: check.path, headers: headers)), .end(nil),
            ]
        }
        headers.add(name: "content-type", value: "application/grpc")
        headers.add(name: "te", value: "trailers")
        var message = ByteBuffer()
        if !service.isEmpty {
            message.writeInteger(UInt8(0x0A))  // field 1, length-delimited
            Self.writeVarint(UInt64(service.utf8.count), to: &message)
            message.writeString(service)
        }
        var frame = ByteBuffer()
        frame.writeInteger(UInt8(0))  // not compressed
        frame.writeInteger(UInt32(message.readableBytes))
        frame.writeImmutableBuffer(message)
        return [
            .head(HTTPRequestHead(version: .http2, method: .POST, uri: Self.grpcPath, headers: headers)),
            .body(.byteBuffer(frame)), .end(nil),
        ]
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            guard self.grpc else {
                if head.status.code >= 200 && head.status.code < 300 {
                    self.promise.succeed()
                } else {
                    self.promise.fail("status \(head.status.code)")
                }
                return
            }
            self.status = head.status
            self.headStatus = head.headers.first(name: "grpc-status")
            if head.status != .ok { self.promise.fail("status \(head.status.code)") }
        case .body(var buffer):
            // A health answer is a few bytes; anything long is not one.
            guard self.body.readableBytes + buffer.readableBytes <= 4096 else {
                self.promise.fail("an answer of more than 4096 bytes")
                return
            }
            self.body.writeBuffer(&buffer)
        case .end(let trailers):
            guard self.grpc else { return }
            let grpcStatus = trailers?.first(name: "grpc-status") ?? self.headStatus
            if grpcStatus != "0" {
                self.promise.fail("grpc-status \(grpcStatus ?? "missing")")
            } else if let serving = Self.servingStatus(of: self.body) {
                if serving == 1 { self.promise.succeed() } else { self.promise.fail("serving status \(serving)") }
            } else {
                self.promise.fail("not one HealthCheckResponse message")
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.promise.fail("closed before the answer")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.promise.fail("\(error)")
        context.close(promise: nil)
    }

    /// The `status` (field 1) of the one `HealthCheckResponse` message in a gRPC body; 0
    /// (`UNKNOWN`) when absent; nil when the body is not one uncompressed, well-formed message.
    static func servingStatus(of body: ByteBuffer) -> UInt64? {
        var body = body
        guard let compressed = body.readInteger(as: UInt8.self), compressed == 0,
            let length = body.readInteger(as: UInt32.self), body.readableBytes == Int(length)
        else { return nil }
        var status: UInt64 = 0
        while body.readableBytes > 0 {
            guard let key = Self.readVarint(&body) else { return nil }
            switch (key >> 3, key & 7) {
            case (1, 0):
                guard let value = Self.readVarint(&body) else { return nil }
                status = value
            case (_, 0):
                guard Self.readVarint(&body) != nil else { return nil }
            case (_, 1):
                guard body.readSlice(length: 8) != nil else { return nil }
            case (_, 2):
                guard let size = Self.readVarint(&body), size <= UInt64(body.readableBytes),
                    body.readSlice(length: Int(size)) != nil
                else { return nil }
            case (_, 5):
                guard body.readSlice(length: 4) != nil else { return nil }
            default:
                return nil
            }
        }
        return status
    }

    private static func readVarint(_ buffer: inout ByteBuffer) -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while shift < 64, let byte = buffer.readInteger(as: UInt8.self) {
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
        return nil
    }

    private static func writeVarint(_ value: UInt64, to buffer: inout ByteBuffer) {
        var value = value
        while value >= 0x80 {
            buffer.writeInteger(UInt8(value & 0x7F | 0x80))
            value >>= 7
        }
        buffer.writeInteger(UInt8(value))
    }
}

/// What one health probe found: success, or why it failed, in words for the log
/// (`health probe failed`, `upstream unhealthy`) and the admin API's
/// `last_health_check_failure`.
///
/// ```swift
/// let outcome = await checker.probe(endpoint)   // .failure("status 503")
/// ```
enum ProbeOutcome: Sendable, Equatable {
    case success
    case failure(String)

    /// Why the probe failed; `nil` when it succeeded.
    var failure: String? {
        if case .failure(let reason) = self { return reason }
        return nil
    }
}

/// A probe's outcome: the first of answer, close, error and timeout completes it.
final class ProbeResult: Sendable {
    let promise: EventLoopPromise<ProbeOutcome>
    private let timeout: Duration
    private let done = Atomic<Bool>(false)

    init(_ promise: EventLoopPromise<ProbeOutcome>, timeout: Duration) {
        self.promise = promise
        self.timeout = timeout
    }

    /// Fails the probe if `channel` has not answered within the probe's timeout, and closes
    /// `channel` when the probe is over, whatever ended it.
    func limit(_ channel: any Channel) {
        let deadline = channel.eventLoop.scheduleTask(in: TimeAmount(self.timeout)) {
            self.fail("no answer within \(GatewayUnits.render(self.timeout))")
            channel.close(promise: nil)
        }
        self.promise.futureResult.whenComplete { _ in
            deadline.cancel()
            channel.close(promise: nil)
        }
    }

    func succeed() { self.complete(.success) }

    func fail(_ reason: String) { self.complete(.failure(reason)) }

    /// The outcome, once the probe is over.
    func outcome() async -> ProbeOutcome {
        (try? await self.promise.futureResult.get()) ?? .failure("probe abandoned")
    }

    private func complete(_ outcome: ProbeOutcome) {
        if !self.done.exchange(true, ordering: .acquiringAndReleasing) { self.promise.succeed(outcome) }
    }
}
