//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// The HTTP metrics every Aviary server and client records, declared in one place.
///
/// | metric | type | labels |
/// | --- | --- | --- |
/// | `aviary_http_server_requests_total` | counter | service, route, method, status_code |
/// | `aviary_http_server_request_duration_seconds` | histogram | service, route, method, status_code |
/// | `aviary_http_server_active_requests` | gauge | service, method |
/// | `aviary_http_client_requests_total` | counter | service, upstream, route, status_code |
/// | `aviary_http_client_request_duration_seconds` | histogram | service, upstream, route, status_code |
///
/// Routes are templates (`/orders/{id}`), never raw paths. Record with swift-metrics (a
/// `Timer` becomes a Prometheus histogram with ``durationBuckets``) and create the handles once
/// per label set:
///
/// ```swift
/// let dimensions = HTTPMetrics.serverDimensions(service: "orders", route: "/orders/{id}", method: "GET", statusCode: 200)
/// Counter(label: HTTPMetrics.serverRequestsTotal, dimensions: dimensions).increment()
/// Timer(label: HTTPMetrics.serverRequestDuration, dimensions: dimensions).recordNanoseconds(3_200_000)
/// ```
public enum HTTPMetrics {
    /// Counter of server requests, by service, route, method and status code.
    public static let serverRequestsTotal = "aviary_http_server_requests_total"
    /// Histogram of server request durations in seconds, by service, route, method and status code.
    public static let serverRequestDuration = "aviary_http_server_request_duration_seconds"
    /// Gauge of requests being served, by service and method.
    public static let serverActiveRequests = "aviary_http_server_active_requests"
    /// Counter of outbound requests, by service, upstream, route and status code.
    public static let clientRequestsTotal = "aviary_http_client_requests_total"
    /// Histogram of outbound request durations in seconds, by service, upstream, route and status code.
    public static let clientRequestDuration = "aviary_http_client_request_duration_seconds"

    /// Label names of the HTTP metrics.
    ///
    /// ```swift
    /// let dimensions = [(HTTPMetrics.Label.service, "orders"), (HTTPMetrics.Label.method, "GET")]
    /// ```
    public enum Label {
        /// The service that records the metric.
        public static let service = "service"
        /// The route template, never the raw path.
        public static let route = "route"
        /// The HTTP method.
        public static let method = "method"
        /// The numeric response status code.
        public static let statusCode = "status_code"
        /// The called service (client metrics).
        public static let upstream = "upstream"
    }

    /// Latency buckets in seconds for HTTP durations: 5 ms to 10 s.
    ///
    /// ```swift
    /// HTTPMetrics.durationBuckets.first // 0.005 seconds
    /// ```
    public static let durationBuckets: [Duration] = [
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
    ]

    /// `# HELP` text for each metric, which ``MetricsRegistry`` adds to the exposition.
    ///
    /// ```swift
    /// HTTPMetrics.help[HTTPMetrics.serverRequestsTotal] // "HTTP requests served, by route ..."
    /// ```
    public static let help: [String: String] = [
        serverRequestsTotal: "HTTP requests served, by route template, method and status code.",
        serverRequestDuration: "Duration of HTTP requests served, in seconds.",
        serverActiveRequests: "HTTP requests being served now.",
        clientRequestsTotal: "HTTP requests sent to upstream services, by upstream, route and status code.",
        clientRequestDuration: "Duration of HTTP requests sent to upstream services, in seconds.",
    ]

    /// The labels of the server counter and histogram, in their canonical order.
    ///
    /// ```swift
    /// HTTPMetrics.serverDimensions(service: "orders", route: "/orders", method: "POST", statusCode: 201)
    /// // [("service", "orders"), ("route", "/orders"), ("method", "POST"), ("status_code", "201")]
    /// ```
    public static func serverDimensions(
        service: String,
        route: String,
        method: String,
        statusCode: Int
    ) -> [(String, String)] {
        [
            (Label.service, service), (Label.route, route), (Label.method, method),
            (Label.statusCode, String(statusCode)),
        ]
    }

    /// The labels of the active-requests gauge.
    ///
    /// ```swift
    /// Meter(label: HTTPMetrics.serverActiveRequests, dimensions: HTTPMetrics.activeDimensions(service: "orders", method: "GET"))
    /// ```
    public static func activeDimensions(service: String, method: String) -> [(String, String)] {
        [(Label.service, service), (Label.method, method)]
    }

    /// The labels of the client counter and histogram, in their canonical order.
    ///
    /// ```swift
    /// HTTPMetrics.clientDimensions(service: "orders", upstream: "payments", route: "/payments", statusCode: 503)
    /// ```
    public static func clientDimensions(
        service: String,
        upstream: String,
        route: String,
        statusCode: Int
    ) -> [(String, String)] {
        [
            (Label.service, service), (Label.upstream, upstream), (Label.route, route),
            (Label.statusCode, String(statusCode)),
        ]
    }
}
