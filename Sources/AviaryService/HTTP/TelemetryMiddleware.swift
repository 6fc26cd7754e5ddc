//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import AviaryTelemetry
import CoreMetrics
import HTTPTypes
public import Hummingbird
public import Logging
import Synchronization

/// Records RED metrics for every request and writes one access log line per request.
///
/// Metrics (names from ``AviaryTelemetry/HTTPMetrics``), labelled by the **route template**
/// (`/orders/{id}`, never the raw path, so that cardinality stays bounded; `unmatched` when no
/// route matched), the method (`_OTHER` for methods outside the standard set) and the status:
/// `aviary_http_server_requests_total`, `aviary_http_server_request_duration_seconds` (until the
/// handler returns for a body of known length, until the body has been written for a streamed
/// one) and `aviary_http_server_active_requests`.
///
/// The access log line, at `info`: `http.request.method`, `http.route`,
/// `http.response.status_code`, `aviary.duration_ms` and `http.response.body.size` (when known).
///
/// Add it before ``ProblemMiddleware`` so that errors are counted with the status they are
/// answered with; ``AviaryApplication`` does.
///
/// ```swift
/// router.add(middleware: TelemetryMiddleware(service: "orders", metrics: registry, logger: logger))
/// router.add(middleware: ProblemMiddleware(logger: logger))
/// ```
public struct TelemetryMiddleware<Context: RequestContext>: RouterMiddleware {
    let service: String
    let logger: Logger
    let accessLog: Bool
    let handles: MetricHandles

    /// Creates the middleware.
    ///
    /// - Parameters:
    ///   - service: the `service` label.
    ///   - metrics: the registry the metrics are recorded in.
    ///   - logger: where access log lines go.
    ///   - accessLog: whether to write access log lines.
    public init(service: String, metrics: MetricsRegistry, logger: Logger, accessLog: Bool = true) {
        self.service = service
        self.logger = logger
        self.accessLog = accessLog
        self.handles = MetricHandles(service: service, factory: metrics.factory)
    }

    /// Measures the rest of the chain.
    public func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let start = SystemClock().now
        let method = Self.methodLabel(request.method)
        let active = self.handles.active(method: method)
        active.increment()
        let status: Int
        var response: Response
        do {
            response = try await next(request, context)
            status = response.status.code
        } catch {
            // Without ProblemMiddleware inside, count the status Hummingbird will answer with.
            active.decrement()
            let code = (error as? any HTTPResponseError)?.status.code ?? 500
            self.finish(request, method: method, route: context.endpointPath, status: code, bytes: nil, since: start)
            throw error
        }
        let route = context.endpointPath
        let body = response.body
        let bytes = body.contentLength
        if bytes != nil {
            // A body whose length is known is in memory already: record now, and leave the body
            // as it is (wrapping it in a closure costs the server its single-write fast path).
            active.decrement()
            self.finish(request, method: method, route: route, status: status, bytes: bytes, since: start)
            return response
        }
        // A streamed body: recorded once it has been written (or failed), so that its time counts.
        response.body = ResponseBody(contentLength: bytes) { writer in
            defer {
                active.decrement()
                self.finish(request, method: method, route: route, status: status, bytes: bytes, since: start)
            }
            try await body.write(writer)
        }
        return response
    }

    private func finish(
        _ request: Request,
        method: String,
        route: String?,
        status: Int,
        bytes: Int?,
        since start: MonotonicInstant
    ) {
        let duration = start.duration(to: SystemClock().now)
        // Templates start with "/"; anything else (nil, or Hummingbird's "NotFound") matched no route.
        let route = route.flatMap { $0.hasPrefix("/") ? $0 : nil } ?? "unmatched"
        let (counter, timer) = self.handles.request(route: route, method: method, status: status)
        counter.increment()
        timer.recordNanoseconds(duration.aviaryNanoseconds)
        if self.accessLog {
            var metadata: Logger.Metadata = [
                "http.request.method": "\(request.method.rawValue)",
                "http.route": "\(route)",
                "url.path": "\(request.uri.path)",
                "http.response.status_code": "\(status)",
                "aviary.duration_ms": "\(Double(duration.aviaryNanoseconds) / 1e6)",
            ]
            if let bytes { metadata["http.response.body.size"] = "\(bytes)" }
            self.logger.info("request", metadata: metadata)
        }
    }

    /// The method label: one of the standard methods, or `_OTHER` (bounded cardinality).
    static func methodLabel(_ method: HTTPRequest.Method) -> String {
        switch method {
        case .get, .head, .post, .put, .patch, .delete, .options, .connect, .trace: method.rawValue
        default: "_OTHER"
        }
    }
}

/// Metric handles cached per label set, so that a request looks them up in a dictionary rather
/// than asking the registry (which locks and builds a key) every time.
final class MetricHandles: Sendable {
    struct Key: Hashable {
        var route: String
        var method: String
        var status: Int
    }

    private let service: String
    private let factory: any MetricsFactory
    private let requests = Mutex<[Key: (Counter, Timer)]>([:])
    private let activeByMethod = Mutex<[String: Meter]>([:])

    init(service: String, factory: any MetricsFactory) {
        self.service = service
        self.factory = factory
    }

    func request(route: String, method: String, status: Int) -> (Counter, Timer) {
        let key = Key(route: route, method: method, status: status)
        if let handles = self.requests.withLock({ $0[key] }) { return handles }
        let dimensions = HTTPMetrics.serverDimensions(
            service: self.service, route: route, method: method, statusCode: status)
        let handles = (
            Counter(label: HTTPMetrics.serverRequestsTotal, dimensions: dimensions, factory: self.factory),
            Timer(label: HTTPMetrics.serverRequestDuration, dimensions: dimensions, factory: self.factory)
        )
        return self.requests.withLock { cache in
            if let existing = cache[key] { return existing }
            cache[key] = handles
            return handles
        }
    }

    func active(method: String) -> Meter {
        if let meter = self.activeByMethod.withLock({ $0[method] }) { return meter }
        let meter = Meter(
            label: HTTPMetrics.serverActiveRequests,
            dimensions: HTTPMetrics.activeDimensions(service: self.service, method: method),
            factory: self.factory
        )
        return self.activeByMethod.withLock { cache in
            if let existing = cache[method] { return existing }
            cache[method] = meter
            return meter
        }
    }
}
