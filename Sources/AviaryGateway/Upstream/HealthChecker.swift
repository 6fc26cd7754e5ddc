//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Logging
import NIOCore
import NIOHTTP1
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
/// another status) is a failure.
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
            let results = await withTaskGroup(of: (Int, Bool).self) { group in
                for endpoint in self.state.endpoints {
                    group.addTask { (endpoint.index, await self.probe(endpoint.endpoint)) }
                }
                var results: [(Int, Bool)] = []
                for await result in group { results.append(result) }
                return results
            }
            if Task.isCancelled { return }
            for (index, success) in results {
                let endpoint = self.state.endpoints[index]
                let healthy = endpoint.healthy.load(ordering: .relaxed)
                if let change = counters[index].record(success: success, healthy: healthy),
                    self.state.setHealthy(endpoint, change)
                {
                    self.logger.info(
                        change ? "upstream healthy" : "upstream unhealthy",
                        metadata: [
                            "aviary.cluster": "\(self.state.cluster.name)", "server.address": "\(endpoint.endpoint)",
                        ])
                }
            }
            do {
                try await self.state.clock.sleep(for: self.check.interval)
            } catch {
                return
            }
        }
    }

    /// One probe: `true` for a 2xx answer within the timeout.
    func probe(_ endpoint: Endpoint) async -> Bool {
        let promise = ProbeResult(self.eventLoop.makePromise(of: Bool.self))
        let timeout = TimeAmount(self.check.timeout)
        let path = self.check.path
        let host = endpoint.description
        let tls: UpstreamTLS?
        switch self.state.tls {
        case nil: tls = nil
        case .success(let context): tls = context
        case .failure: return false
        }
        let bootstrap = ClientBootstrap(group: self.eventLoop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Over TLS the probe's request waits in the TLS handler for the handshake; a
                    // failed handshake closes the connection, a failed probe.
                    try tls?.configure(channel.pipeline.syncOperations, endpoint: endpoint)
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(HealthProbeHandler(promise: promise))
                }
            }
        bootstrap.connect(host: endpoint.host, port: endpoint.port).whenComplete { result in
            switch result {
            case .failure:
                promise.complete(false)
            case .success(let channel):
                let deadline = channel.eventLoop.scheduleTask(in: timeout) {
                    promise.complete(false)
                    channel.close(promise: nil)
                }
                promise.promise.futureResult.whenComplete { _ in
                    deadline.cancel()
                    channel.close(promise: nil)
                }
                var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path)
                head.headers.add(name: "host", value: host)
                head.headers.add(name: "user-agent", value: "aviary-gateway-health-check")
                head.headers.add(name: "connection", value: "close")
                channel.write(HTTPClientRequestPart.head(head), promise: nil)
                channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            }
        }
        return (try? await promise.promise.futureResult.get()) ?? false
    }
}

/// Completes a probe's promise with whether the answer was 2xx.
private final class HealthProbeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    let promise: ProbeResult

    init(promise: ProbeResult) {
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = self.unwrapInboundIn(data) {
            self.promise.complete(head.status.code >= 200 && head.status.code < 300)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.promise.complete(false)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.promise.complete(false)
        context.close(promise: nil)
    }
}

/// A probe's outcome: the first of answer, close, error and timeout completes it.
final class ProbeResult: Sendable {
    let promise: EventLoopPromise<Bool>
    private let done = Atomic<Bool>(false)

    init(_ promise: EventLoopPromise<Bool>) {
        self.promise = promise
    }

    func complete(_ success: Bool) {
        if !self.done.exchange(true, ordering: .acquiringAndReleasing) { self.promise.succeed(success) }
    }
}
