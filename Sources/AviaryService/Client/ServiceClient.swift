//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AsyncHTTPClient
import AviaryCore
public import AviaryDiscovery
public import AviaryResilience
public import AviaryTelemetry
import CoreMetrics
import Foundation
import Hummingbird
public import NIOCore
public import NIOHTTP1
import Synchronization
public import Tracing

/// An upstream's answer.
public struct ClientResponse: Sendable {
    /// The status code.
    public var status: Int
    /// The headers.
    public var headers: HTTPHeaders
    /// The body.
    public var body: ByteBuffer

    /// The body decoded from JSON.
    ///
    /// ```swift
    /// let user = try response.decode(User.self)
    /// ```
    public func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(self.body.readableBytesView))
    }
}

/// A `5xx` answer, thrown so that the resilience pipeline counts and may retry it.
public struct UpstreamError: Error, CustomStringConvertible, RetryAfterProviding {
    /// The upstream's name.
    public var upstream: String
    /// Its answer.
    public var response: ClientResponse

    /// The upstream's `Retry-After`, in seconds.
    public var retryAfter: Duration? {
        self.response.headers.first(name: "retry-after").flatMap(Int.init).map { .seconds($0) }
    }

    public var description: String { "\(self.upstream) answered \(self.response.status)" }
}

/// A client bound to one upstream service: picks a replica by power-of-two-choices on requests in
/// flight, runs every call through a resilience pipeline, sends the caller's remaining budget
/// (`x-aviary-timeout-ms`), and records client RED metrics.
///
/// Retries happen only for idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS) and for requests
/// that carry an `Idempotency-Key`; a `5xx` answer is an ``UpstreamError`` the pipeline sees
/// (so the breaker counts it and retries may repeat it), a `4xx` is returned.
///
/// ```swift
/// let payments = ServiceClient(service: "orders", upstream: "payments",
///                              endpoints: StaticEndpoints([Endpoint(host: "127.0.0.1", port: 8103)]))
/// let receipt = try await payments.post("/payments", json: charge, idempotencyKey: orderID, as: Receipt.self)
/// ```
public final class ServiceClient: Sendable {
    /// The calling service's name (the `service` label).
    public let service: String
    /// The upstream's name.
    public let upstream: String
    let endpoints: any EndpointProvider
    let http: HTTPClient
    let pipeline: ResiliencePipeline<ClientResponse>
    let inFlight = Mutex<[Endpoint: Int]>([:])
    private struct MetricKey: Hashable {
        var route: String
        var status: Int
    }
    private let metricHandles = Mutex<[MetricKey: (CoreMetrics.Counter, CoreMetrics.Timer)]>([:])
    let factory: any MetricsFactory
    let maxBodyBytes: Int
    let tracer: (any Tracer)?

    /// The HTTP client `ServiceClient`s share unless given one: AsyncHTTPClient's shared settings,
    /// except that a failed connect (a replica that is down) fails the attempt at once. Left to
    /// AsyncHTTPClient, a refused connect is retried with backoff until the attempt's deadline, so
    /// an outage would cost every call its whole per-try timeout; retries belong to the pipeline,
    /// where they are budgeted and the breaker sees them.
    public static let sharedHTTPClient: HTTPClient = {
        var configuration = HTTPClient.Configuration.singletonConfiguration
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }()

    /// The pipeline a client uses when none is given: 2 s in all, up to 3 attempts with jittered
    /// backoff, a circuit breaker per upstream, 500 ms per attempt.
    public static func defaultPipeline(upstream: String) -> ResiliencePipeline<ClientResponse> {
        ResiliencePipeline {
            Timeout(.seconds(2), name: "\(upstream)-total")
            Retry(.init(name: upstream, maxAttempts: 3, backoff: .exponential(base: .milliseconds(25))))
            CircuitBreaker(.init(name: upstream))
            Timeout(.milliseconds(500), name: "\(upstream)-per-try")
        }
    }

    /// Creates a client.
    ///
    /// - Parameters:
    ///   - service: the calling service's name.
    ///   - upstream: the upstream's name.
    ///   - endpoints: where its replicas are.
    ///   - http: the HTTP client; ``sharedHTTPClient`` by default.
    ///   - pipeline: the resilience pipeline; ``defaultPipeline(upstream:)`` by default.
    ///   - metrics: where client metrics go; the global swift-metrics factory by default.
    ///   - maxBodyBytes: the largest response body read.
    ///   - tracer: the calling service's tracer (``AviaryApplication/tracer``): each attempt then
    ///     gets a client span, child of the current span, whose context goes out as `traceparent`.
    public init(
        service: String,
        upstream: String,
        endpoints: any EndpointProvider,
        http: HTTPClient = ServiceClient.sharedHTTPClient,
        pipeline: ResiliencePipeline<ClientResponse>? = nil,
        metrics: MetricsRegistry? = nil,
        maxBodyBytes: Int = 4 << 20,
        tracer: (any Tracer)? = nil
    ) {
        self.service = service
        self.upstream = upstream
        self.endpoints = endpoints
        self.http = http
        self.pipeline = pipeline ?? Self.defaultPipeline(upstream: upstream)
        self.factory = metrics?.factory ?? MetricsSystem.factory
        self.maxBodyBytes = maxBodyBytes
        self.tracer = tracer
    }

    /// Sends a request through the pipeline.
    ///
    /// - Parameters:
    ///   - method: the method.
    ///   - path: the path with its query.
    ///   - route: the route template for metrics (`/users/{id}`); the path if nil, so pass it
    ///     for paths with ids.
    ///   - headers: extra headers.
    ///   - body: the body.
    /// - Returns: the answer (any status below 500).
    /// - Throws: ``UpstreamError`` for a `5xx` after retries, `ResilienceError` for rejections and
    ///   timeouts, `AviaryError` when no endpoint is known, the transport's error otherwise.
    public func execute(
        _ method: HTTPMethod,
        _ path: String,
        route: String? = nil,
        headers: [(String, String)] = [],
        body: ByteBuffer? = nil
    ) async throws -> ClientResponse {
        let idempotent =
            [.GET, .HEAD, .PUT, .DELETE, .OPTIONS].contains(method)
            || headers.contains { $0.0.lowercased() == "idempotency-key" }
        let route = route ?? path
        guard let tracer = self.tracer else {
            return try await self.pipeline.run(PolicyContext(idempotent: idempotent)) {
                try await self.attempt(method, path, route: route, headers: headers, body: body, span: nil)
            }
        }
        return try await self.pipeline.run(PolicyContext(idempotent: idempotent)) { policy in
            // One client span per attempt (OpenTelemetry's HTTP conventions), so that a retry is
            // visible in the trace; each attempt sends its own span's traceparent.
            let resend = policy.attempt - 1
            let span = tracer.startSpan(
                "\(method.rawValue) \(self.upstream)", context: ServiceContext.current ?? .topLevel, ofKind: .client)
            defer { span.end() }
            if span.isRecording {
                span.attributes["http.request.method"] = method.rawValue
                span.attributes["url.template"] = route
                span.attributes["peer.service"] = self.upstream
                if resend > 0 { span.attributes["http.request.resend_count"] = resend }
            }
            do {
                return try await self.attempt(method, path, route: route, headers: headers, body: body, span: span)
            } catch {
                span.recordError(error)
                span.setStatus(SpanStatus(code: .error))
                throw error
            }
        }
    }

    /// GETs `path` and decodes the JSON answer; a non-2xx answer is an ``UpstreamError``.
    ///
    /// ```swift
    /// let user = try await users.get("/users/\(id)", route: "/users/{id}", as: User.self)
    /// ```
    public func get<T: Decodable>(_ path: String, route: String? = nil, as type: T.Type) async throws -> T {
        let response = try await self.execute(.GET, path, route: route)
        guard (200..<300).contains(response.status) else {
            throw UpstreamError(upstream: self.upstream, response: response)
        }
        return try response.decode(T.self)
    }

    /// POSTs `json` and decodes the JSON answer; with `idempotencyKey` the request may be retried.
    ///
    /// ```swift
    /// let receipt = try await payments.post("/payments", json: charge, idempotencyKey: orderID, as: Receipt.self)
    /// ```
    public func post<Body: Encodable, T: Decodable>(
        _ path: String, route: String? = nil, json: Body, idempotencyKey: String? = nil, as type: T.Type
    ) async throws -> T {
        var headers = [("content-type", "application/json")]
        if let idempotencyKey { headers.append(("idempotency-key", idempotencyKey)) }
        let body = ByteBuffer(bytes: try JSONEncoder().encode(json))
        let response = try await self.execute(.POST, path, route: route, headers: headers, body: body)
        guard (200..<300).contains(response.status) else {
            throw UpstreamError(upstream: self.upstream, response: response)
        }
        return try response.decode(T.self)
    }

    // MARK: One attempt

    private func attempt(
        _ method: HTTPMethod, _ path: String, route: String, headers: [(String, String)], body: ByteBuffer?,
        span: (any Span)?
    ) async throws -> ClientResponse {
        let endpoint = try self.pick()
        defer { self.inFlight.withLock { $0[endpoint, default: 1] -= 1 } }
        var request = HTTPClientRequest(url: endpoint.url + path)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let budget = DeadlineMiddleware<BasicRequestContext>.headerValue() {
            request.headers.replaceOrAdd(
                name: DeadlineMiddleware<BasicRequestContext>.headerName.rawName, value: budget)
        }
        if let body { request.body = .bytes(body) }
        if let span, let tracer = self.tracer {
            if span.isRecording {
                span.attributes["server.address"] = endpoint.host
                span.attributes["server.port"] = endpoint.port
            }
            // Injected even when sampled out, so that the callee follows the decision.
            tracer.inject(span.context, into: &request.headers, using: HTTPHeadersInjector())
        }
        let start = SystemClock().now
        let remaining = Deadline.current?.remaining() ?? .seconds(30)
        var status = 0
        defer { self.record(route: route, status: status, since: start) }
        let response = try await self.http.execute(request, timeout: .nanoseconds(max(remaining.aviaryNanoseconds, 1)))
        let collected = try await response.body.collect(upTo: self.maxBodyBytes)
        status = Int(response.status.code)
        span?.attributes["http.response.status_code"] = status
        let result = ClientResponse(status: status, headers: response.headers, body: collected)
        if status >= 500 { throw UpstreamError(upstream: self.upstream, response: result) }
        return result
    }

    /// Power of two choices: two random endpoints, the one with fewer requests in flight.
    func pick() throws -> Endpoint {
        let all = self.endpoints.endpoints()
        guard !all.isEmpty else {
            throw AviaryError(.unavailable, "\(self.upstream): no endpoint is known")
        }
        return self.inFlight.withLock { inFlight in
            var chosen = all[Int.random(in: 0..<all.count)]
            if all.count > 1 {
                var other = all[Int.random(in: 0..<all.count - 1)]
                if other == chosen { other = all[all.count - 1] }
                if inFlight[other, default: 0] < inFlight[chosen, default: 0] { chosen = other }
            }
            inFlight[chosen, default: 0] += 1
            return chosen
        }
    }

    private func record(route: String, status: Int, since start: MonotonicInstant) {
        let (counter, timer) = self.handles(route: route, status: status)
        counter.increment()
        timer.recordNanoseconds(start.duration(to: SystemClock().now).aviaryNanoseconds)
    }

    /// Metric handles cached per route and status, so that a call does not ask the registry.
    private func handles(route: String, status: Int) -> (CoreMetrics.Counter, CoreMetrics.Timer) {
        let key = MetricKey(route: route, status: status)
        if let cached = self.metricHandles.withLock({ $0[key] }) { return cached }
        let dimensions = HTTPMetrics.clientDimensions(
            service: self.service, upstream: self.upstream, route: route, statusCode: status)
        let handles = (
            Counter(label: HTTPMetrics.clientRequestsTotal, dimensions: dimensions, factory: self.factory),
            CoreMetrics.Timer(label: HTTPMetrics.clientRequestDuration, dimensions: dimensions, factory: self.factory)
        )
        self.metricHandles.withLock { $0[key] = handles }
        return handles
    }
}
