//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AsyncHTTPClient
import AviaryCore
import AviaryTelemetry
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import OTel
import ServiceLifecycle
import Synchronization
import Testing

@testable import Shop

/// Runs Shop's services in-process on ephemeral ports, each in its own service group so that a
/// test can stop and restart one of them.
final class ShopHarness: Sendable {
    let shop: ShopSystem
    let clock: ManualClock
    let directory: String
    private let running = Mutex<[String: (group: ServiceGroup, task: Task<Void, any Error>)]>([:])
    private let listening: AsyncStream<(String, Endpoint)>
    private let listeningContinuation: AsyncStream<(String, Endpoint)>.Continuation

    init(
        minimumCalls: Int = 2, openDuration: Duration = .seconds(30), collector: String? = nil,
        declineAbove: Int? = nil
    ) throws {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("aviary-shop-\(UUID().uuidString)").path
        let clock = ManualClock()
        let (stream, continuation) = AsyncStream<(String, Endpoint)>.makeStream()
        var options = ShopOptions()
        options.ports = ["users": 0, "orders": 0, "payments": 0, "notifications": 0, "inventory": 0]
        options.paymentsDeclineAbove = declineAbove
        options.messagingPollInterval = .milliseconds(100)
        options.dataDirectory = directory
        options.breakerClock = clock
        options.breakerMinimumCalls = minimumCalls
        options.breakerOpenDuration = openDuration
        // Generous: suites run in parallel with 128 MiB streaming tests, and a 500 ms attempt can
        // time out on a loaded CI machine. A service that is down still fails at once (ServiceClient
        // does not retry refused connects inside an attempt).
        options.upstreamAttemptTimeout = .seconds(5)
        options.upstreamTotalTimeout = .seconds(15)
        var logger = Logger(label: "shop-tests")
        logger.logLevel = .critical
        options.logger = logger
        options.onListening = { service, endpoint in continuation.yield((service, endpoint)) }
        // Tracing only when a test collects spans (the default reads OTEL_* from the environment).
        let quietLogger = logger
        options.tracing = { service in
            guard let collector else { return nil }
            var configuration = TracingConfiguration(service: service, endpoint: collector, protocol: .httpJSON)
            configuration.otel.traces.batchSpanProcessor.scheduleDelay = .milliseconds(10)
            return try TracingBackend(configuration, logger: quietLogger)
        }
        self.shop = try ShopSystem(options: options)
        self.clock = clock
        self.directory = directory
        self.listening = stream
        self.listeningContinuation = continuation
    }

    /// Starts `service` (on `port`, or a free one) and returns once it listens.
    @discardableResult
    func start(_ service: String, port: Int = 0) async throws -> Endpoint {
        var logger = Logger(label: "shop-tests")
        logger.logLevel = .critical
        let group = ServiceGroup(services: try await self.shop.services(service, port: port), logger: logger)
        let task = Task { try await group.run() }
        self.running.withLock { $0[service] = (group, task) }
        for await (name, endpoint) in self.listening where name == service {
            return endpoint
        }
        throw AviaryError(.internal, "\(service) never listened")
    }

    /// Starts Shop's gateway on a free port in front of the running services.
    @discardableResult
    func startGateway() async throws -> Endpoint {
        var logger = Logger(label: "shop-tests")
        logger.logLevel = .critical
        let group = ServiceGroup(services: [try self.shop.gatewayService(port: 0)], logger: logger)
        let task = Task { try await group.run() }
        self.running.withLock { $0["gateway"] = (group, task) }
        for await (name, endpoint) in self.listening where name == "gateway" {
            self.shop.addressBook.set("gateway", endpoint)
            return endpoint
        }
        throw AviaryError(.internal, "the gateway never listened")
    }

    /// Stops `service` gracefully and waits until it has stopped.
    func stop(_ service: String) async throws {
        guard let entry = self.running.withLock({ $0.removeValue(forKey: service) }) else { return }
        await entry.group.triggerGracefulShutdown()
        try await entry.task.value
    }

    func startAll() async throws {
        for service in ShopOptions.services { try await self.start(service) }
    }

    func shutdown() async throws {
        try await self.stop("gateway")
        for service in ShopOptions.services.reversed() { try await self.stop(service) }
        self.listeningContinuation.finish()
        try? FileManager.default.removeItem(atPath: self.directory)
    }

    func url(_ service: String, _ path: String) throws -> String {
        try self.shop.addressBook.require(service).url + path
    }

    struct Reply: Sendable {
        var status: Int
        var headers: HTTPHeaders
        var body: Data

        func json() throws -> [String: Any] {
            try #require(try JSONSerialization.jsonObject(with: self.body) as? [String: Any])
        }

        var text: String { String(decoding: self.body, as: UTF8.self) }
    }

    private let tokens = Mutex<[String: String]>([:])

    /// An access token for `user` (password `<user>-password`), from `POST /login`.
    func token(_ user: String) async throws -> String {
        if let token = self.tokens.withLock({ $0[user] }) { return token }
        let reply = try await self.send(
            .POST, "users", "/login", json: #"{"username":"\#(user)","password":"\#(user)-password"}"#, as: nil)
        try #require(reply.status == 200, "login of \(user) answered \(reply.status): \(reply.text)")
        let token = try #require(try reply.json()["access_token"] as? String)
        self.tokens.withLock { $0[user] = token }
        return token
    }

    /// Sends a request; to `orders`, `payments` and `notifications` with `user`'s token unless
    /// `user` is nil.
    func send(
        _ method: HTTPMethod, _ service: String, _ path: String, json: String? = nil, headers: [(String, String)] = [],
        as user: String? = "alice"
    ) async throws -> Reply {
        var request = HTTPClientRequest(url: try self.url(service, path))
        request.method = method
        if let user, ["orders", "payments", "notifications", "inventory"].contains(service) {
            request.headers.add(name: "authorization", value: "Bearer \(try await self.token(user))")
        }
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let json {
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: json))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 1 << 20)
        return Reply(status: Int(response.status.code), headers: response.headers, body: Data(body.readableBytesView))
    }
}

/// Runs `body` with all services started, and shuts them down afterwards even if `body` throws.
func withShop(
    minimumCalls: Int = 2,
    collector: String? = nil,
    declineAbove: Int? = nil,
    _ body: (ShopHarness) async throws -> Void
) async throws {
    let harness = try ShopHarness(minimumCalls: minimumCalls, collector: collector, declineAbove: declineAbove)
    do {
        try await harness.startAll()
        try await body(harness)
    } catch {
        try? await harness.shutdown()
        throw error
    }
    try await harness.shutdown()
}
