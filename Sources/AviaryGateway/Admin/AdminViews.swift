//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import Synchronization

/// The admin API's documents: JSON objects for Foundation's serializer, and the Prometheus text.
enum AdminViews {
    // MARK: /config

    /// The configuration as JSON, with the YAML key names and units (`2s`, `20%`).
    static func configuration(_ configuration: GatewayConfiguration) -> [String: Any] {
        var listen: [String: Any] = ["address": configuration.listen.address.description]
        if let admin = configuration.listen.admin { listen["admin"] = admin.description }
        if let tls = configuration.listen.tls {
            listen["tls"] = ["certificate": tls.certificateFile, "key": tls.keyFile]
        }
        if configuration.listen.http2 {
            listen["http2"] = true
            listen["max_concurrent_streams"] = configuration.listen.maxConcurrentStreams
        }
        let limits = configuration.limits
        var result: [String: Any] = [
            "listen": listen,
            "limits": [
                "max_connections": limits.maxConnections, "max_header_bytes": limits.maxHeaderBytes,
                "max_body_bytes": limits.maxBodyBytes, "header_timeout": GatewayUnits.render(limits.headerTimeout),
                "idle_timeout": GatewayUnits.render(limits.idleTimeout),
                "drain_timeout": GatewayUnits.render(limits.drainTimeout),
                "request_buffer_bytes": limits.requestBufferBytes,
            ] as [String: Any],
            "clusters": Dictionary(
                configuration.clusters.map { ($0.name, Self.cluster($0)) }, uniquingKeysWith: { a, _ in a }),
            "routes": configuration.routes.map(Self.route),
        ]
        if let jwt = configuration.auth.jwt {
            var entry: [String: Any] = ["issuer": jwt.issuer, "audiences": jwt.audiences]
            if let url = jwt.jwksURL { entry["jwks_url"] = url }
            if let file = jwt.jwksFile { entry["jwks_file"] = file }
            result["auth"] = ["jwt": entry]
        }
        if let log = configuration.accessLog { result["access_log"] = ["path": log.path] }
        if let rewrite = configuration.requestHeaders { result["request_headers"] = Self.headerRewrite(rewrite) }
        if let rewrite = configuration.responseHeaders { result["response_headers"] = Self.headerRewrite(rewrite) }
        return result
    }

    static func headerRewrite(_ rewrite: GatewayConfiguration.HeaderRewrite) -> [String: Any] {
        [
            "add": Dictionary(rewrite.add.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a }),
            "set": Dictionary(rewrite.set.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a }),
            "remove": rewrite.remove,
        ]
    }

    static func cluster(_ cluster: GatewayConfiguration.Cluster) -> [String: Any] {
        var result: [String: Any] = [
            "endpoints": cluster.endpoints.map(\.description),
            "load_balancer": cluster.loadBalancer.description,
            "circuit_breaker": [
                "max_connections": cluster.circuitBreaker.maxConnections,
                "max_pending": cluster.circuitBreaker.maxPending,
                "max_requests": cluster.circuitBreaker.maxRequests,
            ],
            "connect_timeout": GatewayUnits.render(cluster.connectTimeout),
            "max_idle_connections": cluster.maxIdleConnections,
        ]
        if let check = cluster.healthCheck {
            var entry: [String: Any] = [
                "interval": GatewayUnits.render(check.interval), "timeout": GatewayUnits.render(check.timeout),
                "healthy": check.healthyThreshold, "unhealthy": check.unhealthyThreshold,
            ]
            if let service = check.grpcService {
                entry["grpc"] = ["service": service]
            } else {
                entry["path"] = check.path
            }
            result["health_check"] = entry
        }
        if let tls = cluster.tls {
            // Paths and names only: never the key.
            var entry: [String: Any] = ["client_certificate": tls.certificateChainPEM != nil]
            if let file = tls.caFile { entry["ca"] = file } else if tls.trustRootsPEM == nil { entry["ca"] = "system" }
            if let name = tls.serverName { entry["server_name"] = name }
            if let file = tls.certificateFile { entry["certificate"] = file }
            result["tls"] = entry
        }
        switch cluster.hashOn {
        case .header(let name): result["hash_on"] = ["header": name]
        case .cookie(let name): result["hash_on"] = ["cookie": name]
        case nil: break
        }
        if let detection = cluster.outlierDetection {
            result["outlier_detection"] =
                [
                    "consecutive_5xx": detection.consecutive5xx,
                    "base_ejection": GatewayUnits.render(detection.baseEjection),
                    "max_ejection_percent": Int((detection.maxEjectionRatio * 100).rounded()),
                ] as [String: Any]
        }
        return result
    }

    static func route(_ route: GatewayConfiguration.Route) -> [String: Any] {
        var match: [String: Any] = [:]
        if let prefix = route.match.pathPrefix { match["path_prefix"] = prefix }
        if let path = route.match.path { match["path"] = path }
        if !route.match.methods.isEmpty { match["methods"] = route.match.methods }
        if !route.match.headers.isEmpty { match["headers"] = route.match.headers }
        if let template = route.match.pathTemplate { match["path_template"] = template }
        if let host = route.match.host { match["host"] = host }
        if !route.match.query.isEmpty {
            match["query"] = route.match.query.mapValues { condition -> Any in
                switch condition {
                case .equals(let value): return value
                case .present: return ["present": true]
                }
            }
        }
        var result: [String: Any] = ["match": match]
        if let rewrite = route.rewrite {
            if let prefix = rewrite.pathPrefix { result["rewrite"] = ["path_prefix": prefix] }
            if let template = rewrite.pathTemplate { result["rewrite"] = ["path_template": template] }
        }
        switch route.destination {
        case .cluster(let name): result["cluster"] = name
        case .split(let parts):
            result["split"] = parts.map { ["cluster": $0.cluster, "weight": $0.weight] as [String: Any] }
        case .directResponse(let direct):
            result["direct_response"] =
                ["status": direct.status, "body": direct.body, "content_type": direct.contentType] as [String: Any]
        case .compose(let compose):
            result["compose"] =
                [
                    "parts": compose.parts.map { part in
                        var fields = ["name": part.name, "cluster": part.cluster, "path": part.path]
                        if let timeout = part.timeout { fields["timeout"] = GatewayUnits.render(timeout) }
                        return fields
                    },
                    "part_timeout": GatewayUnits.render(compose.partTimeout),
                    "on_failure": compose.omitFailed ? "omit" : "fail",
                ] as [String: Any]
        case .redirect(let redirect):
            result["redirect"] =
                ["status": redirect.status, "location": redirect.location, "strip_query": redirect.stripQuery]
                as [String: Any]
        }
        for (key, rewrite) in [("request_headers", route.requestHeaders), ("response_headers", route.responseHeaders)] {
            if let rewrite { result[key] = Self.headerRewrite(rewrite) }
        }
        if let auth = route.auth {
            result["auth"] =
                auth.require == "jwt"
                ? ["require": auth.require, "scopes": auth.scopes] as [String: Any]
                : ["require": auth.require, "principals": auth.principals]
        }
        if let timeout = route.timeout { result["timeout"] = GatewayUnits.render(timeout) }
        if let retry = route.retry {
            var object: [String: Any] = [
                "attempts": retry.attempts,
                "on": retry.on.map { condition -> String in
                    switch condition {
                    case .connectFailure: "connect-failure"
                    case .reset: "reset"
                    case .status(let code): String(code)
                    }
                },
            ]
            if let perTry = retry.perTryTimeout { object["per_try_timeout"] = GatewayUnits.render(perTry) }
            if let budget = retry.budget { object["budget"] = "\(Int((budget * 100).rounded()))%" }
            result["retry"] = object
        }
        if let limit = route.rateLimit {
            result["rate_limit"] =
                [
                    "key": limit.key, "rate": "\(limit.requests)/\(GatewayUnits.render(limit.period))",
                    "burst": limit.burst,
                ] as [String: Any]
        }
        if let cache = route.cache {
            var object: [String: Any] = ["ttl": GatewayUnits.render(cache.ttl), "max_bytes": cache.maxBytes]
            if let stale = cache.staleIfError { object["stale_if_error"] = GatewayUnits.render(stale) }
            result["cache"] = object
        }
        return result
    }

    // MARK: /clusters

    static func clusters(_ core: GatewayCore, pools: [String: [String: PoolSnapshot]]) -> [String: Any] {
        let now = core.clusters.first?.clock.now
        var clusters: [[String: Any]] = []
        for state in core.clusters {
            let cluster = state.cluster
            var endpoints: [[String: Any]] = []
            for endpoint in state.endpoints {
                let pool = pools[cluster.name]?[endpoint.endpoint.description] ?? PoolSnapshot()
                let until = state.ejectedUntil(endpoint)
                var object: [String: Any] = [
                    "address": endpoint.endpoint.description,
                    "healthy": endpoint.healthy.load(ordering: .relaxed),
                    "ejected": Self.isEjected(state, endpoint, now: now),
                    "ejections": endpoint.ejections.load(ordering: .relaxed),
                    "consecutive_failures": endpoint.consecutiveFailures.load(ordering: .relaxed),
                    "connect_errors": endpoint.connectErrors.load(ordering: .relaxed),
                    "in_flight": pool.inFlight,
                    "connections": ["open": pool.open, "idle": pool.idle],
                ]
                if let failure = endpoint.lastProbeFailure.withLock({ $0 }) {
                    object["last_health_check_failure"] = failure
                }
                if let until, let now, now < until {
                    object["ejected_for_seconds"] = Double(now.duration(to: until).aviaryNanoseconds) / 1e9
                }
                endpoints.append(object)
            }
            let thresholds = cluster.circuitBreaker
            clusters.append([
                "name": cluster.name,
                "load_balancer": cluster.loadBalancer.description,
                "active_requests": state.activeRequests.load(ordering: .relaxed),
                "circuit_breaker": [
                    "max_connections": thresholds.maxConnections, "max_pending": thresholds.maxPending,
                    "max_requests": thresholds.maxRequests,
                    "open_connections": state.connections.load(ordering: .relaxed),
                    "pending": state.pending.load(ordering: .relaxed),
                    "overflows": state.overflows.load(ordering: .relaxed),
                ],
                "health_checked": cluster.healthCheck != nil,
                "outlier_detection": cluster.outlierDetection != nil,
                "endpoints": endpoints,
            ])
        }
        return ["clusters": clusters]
    }

    // MARK: /metrics

    /// Names of the gateway's metric families, declared in one place.
    enum Metric {
        static let requests = "aviary_gateway_requests_total"
        static let duration = "aviary_gateway_request_duration_seconds"
        static let clusterResponses = "aviary_gateway_upstream_responses_total"
        static let endpointResponses = "aviary_gateway_endpoint_responses_total"
        static let connectErrors = "aviary_gateway_upstream_connect_errors_total"
        static let retries = "aviary_gateway_upstream_retries_total"
        static let timeouts = "aviary_gateway_upstream_timeouts_total"
        static let resets = "aviary_gateway_upstream_resets_total"
        static let overflows = "aviary_gateway_circuit_breaker_overflows_total"
        static let ejections = "aviary_gateway_endpoint_ejections_total"
        static let healthy = "aviary_gateway_endpoint_healthy"
        static let ejected = "aviary_gateway_endpoint_ejected"
        static let inFlight = "aviary_gateway_endpoint_active_requests"
        static let connections = "aviary_gateway_endpoint_connections"
        static let activeRequests = "aviary_gateway_cluster_active_requests"
        static let breakerOpen = "aviary_gateway_circuit_breaker_open"
        static let downstream = "aviary_gateway_downstream_connections"
        static let draining = "aviary_gateway_draining"
        static let reloads = "aviary_gateway_config_reloads_total"
    }

    static let classes = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"]

    static func prometheus(
        gateway: GatewayServer, metrics: MetricsSnapshot, pools: [String: [String: PoolSnapshot]]
    ) -> [UInt8] {
        var text = PrometheusText()
        let core = gateway.currentCore

        text.family(Metric.requests, "counter", "Requests answered, by route and status class.")
        for (route, counters) in metrics.routes.sorted(by: { $0.key < $1.key }) {
            for (slot, count) in counters.responses.enumerated() where count > 0 {
                text.sample(Metric.requests, [("route", route), ("status_class", classes[slot])], count)
            }
        }
        text.family(Metric.duration, "histogram", "Time from request head to the end of the response, in seconds.")
        for (route, counters) in metrics.routes.sorted(by: { $0.key < $1.key }) {
            var cumulative = 0
            for (slot, bound) in GatewayBuckets.nanoseconds.enumerated() {
                cumulative += counters.buckets[slot]
                text.sample(
                    Metric.duration + "_bucket", [("route", route), ("le", Self.seconds(bound))], cumulative)
            }
            cumulative += counters.buckets[GatewayBuckets.nanoseconds.count]
            text.sample(Metric.duration + "_bucket", [("route", route), ("le", "+Inf")], cumulative)
            text.sample(Metric.duration + "_sum", [("route", route)], Self.seconds(counters.durationNanoseconds))
            text.sample(Metric.duration + "_count", [("route", route)], cumulative)
        }

        let clusters = metrics.clusters.sorted(by: { $0.key < $1.key })
        text.family(Metric.clusterResponses, "counter", "Upstream answers per cluster, by status class.")
        for (name, counters) in clusters {
            for (slot, count) in counters.responses.enumerated() where count > 0 {
                text.sample(Metric.clusterResponses, [("cluster", name), ("status_class", classes[slot])], count)
            }
        }
        text.family(Metric.retries, "counter", "Retries made under route retry policies, per cluster.")
        for (name, counters) in clusters { text.sample(Metric.retries, [("cluster", name)], counters.retries) }
        text.family(Metric.timeouts, "counter", "Upstream attempts that timed out (total or per try), per cluster.")
        for (name, counters) in clusters { text.sample(Metric.timeouts, [("cluster", name)], counters.timeouts) }
        text.family(Metric.resets, "counter", "Upstream connections that closed before a complete answer.")
        for (name, counters) in clusters { text.sample(Metric.resets, [("cluster", name)], counters.resets) }

        let endpoints = metrics.endpoints.sorted {
            ($0.key.cluster, $0.key.endpoint) < ($1.key.cluster, $1.key.endpoint)
        }
        text.family(Metric.endpointResponses, "counter", "Upstream answers per endpoint, by status class.")
        for (key, counters) in endpoints {
            for (slot, count) in counters.responses.enumerated() where count > 0 {
                text.sample(
                    Metric.endpointResponses,
                    [("cluster", key.cluster), ("endpoint", key.endpoint), ("status_class", classes[slot])], count)
            }
        }
        text.family(Metric.connectErrors, "counter", "Failed connects to an endpoint.")
        for (key, counters) in endpoints {
            text.sample(
                Metric.connectErrors, [("cluster", key.cluster), ("endpoint", key.endpoint)], counters.connectErrors)
        }

        text.family(Metric.overflows, "counter", "Requests refused by a circuit-breaking threshold, per cluster.")
        for state in core.clusters {
            text.sample(Metric.overflows, [("cluster", state.cluster.name)], state.overflows.load(ordering: .relaxed))
        }
        text.family(Metric.activeRequests, "gauge", "Requests in flight per cluster.")
        for state in core.clusters {
            text.sample(
                Metric.activeRequests, [("cluster", state.cluster.name)], state.activeRequests.load(ordering: .relaxed))
        }
        text.family(Metric.breakerOpen, "gauge", "1 while a circuit-breaking threshold is reached, by threshold.")
        for state in core.clusters {
            let thresholds = state.cluster.circuitBreaker
            let values = [
                ("max_requests", state.activeRequests.load(ordering: .relaxed) >= thresholds.maxRequests),
                ("max_connections", state.connections.load(ordering: .relaxed) >= thresholds.maxConnections),
                ("max_pending", state.pending.load(ordering: .relaxed) >= thresholds.maxPending),
            ]
            for (threshold, open) in values {
                text.sample(
                    Metric.breakerOpen, [("cluster", state.cluster.name), ("threshold", threshold)], open ? 1 : 0)
            }
        }
        let now = core.clusters.first?.clock.now
        var rows: [(labels: [(String, String)], state: ClusterState, endpoint: EndpointState, pool: PoolSnapshot)] = []
        for state in core.clusters {
            for endpoint in state.endpoints {
                let labels = [("cluster", state.cluster.name), ("endpoint", endpoint.endpoint.description)]
                let pool = pools[state.cluster.name]?[endpoint.endpoint.description] ?? PoolSnapshot()
                rows.append((labels, state, endpoint, pool))
            }
        }
        text.family(Metric.ejections, "counter", "Times outlier detection ejected an endpoint.")
        for row in rows { text.sample(Metric.ejections, row.labels, row.endpoint.ejections.load(ordering: .relaxed)) }
        text.family(Metric.healthy, "gauge", "1 while active health checks find an endpoint healthy.")
        for row in rows {
            text.sample(Metric.healthy, row.labels, row.endpoint.healthy.load(ordering: .relaxed) ? 1 : 0)
        }
        text.family(Metric.ejected, "gauge", "1 while an endpoint is ejected by outlier detection.")
        for row in rows {
            text.sample(Metric.ejected, row.labels, Self.isEjected(row.state, row.endpoint, now: now) ? 1 : 0)
        }
        text.family(Metric.inFlight, "gauge", "Requests in flight per endpoint.")
        for row in rows { text.sample(Metric.inFlight, row.labels, row.pool.inFlight) }
        text.family(Metric.connections, "gauge", "Upstream connections per endpoint, by state (idle, active).")
        for row in rows {
            text.sample(Metric.connections, row.labels + [("state", "idle")], row.pool.idle)
            text.sample(Metric.connections, row.labels + [("state", "active")], max(0, row.pool.open - row.pool.idle))
        }
        text.family(Metric.downstream, "gauge", "Open client connections.")
        text.sample(Metric.downstream, [], gateway.connections.load(ordering: .relaxed))
        text.family(Metric.draining, "gauge", "1 once a graceful drain began.")
        text.sample(Metric.draining, [], gateway.isDraining ? 1 : 0)
        text.family(Metric.reloads, "counter", "Configuration reloads, by outcome.")
        text.sample(Metric.reloads, [("outcome", "accepted")], gateway.reloadsAccepted.load(ordering: .relaxed))
        text.sample(Metric.reloads, [("outcome", "refused")], gateway.reloadsRefused.load(ordering: .relaxed))
        return text.bytes
    }

    static func isEjected(_ state: ClusterState, _ endpoint: EndpointState, now: MonotonicInstant?) -> Bool {
        guard let until = state.ejectedUntil(endpoint), let now else { return false }
        return now < until
    }

    static func seconds(_ nanoseconds: Int64) -> String {
        let value = Double(nanoseconds) / 1e9
        return value == value.rounded() ? String(Int64(value)) : String(value)
    }
}

/// Prometheus text format 0.0.4, written by hand: the gateway's counters live in its event
/// loops, not in a swift-prometheus registry (whose histograms lock per observation).
struct PrometheusText {
    private(set) var bytes: [UInt8] = []

    mutating func family(_ name: String, _ type: String, _ help: String) {
        self.bytes.append(contentsOf: "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n".utf8)
    }

    mutating func sample(_ name: String, _ labels: [(String, String)], _ value: Int) {
        self.sample(name, labels, String(value))
    }

    mutating func sample(_ name: String, _ labels: [(String, String)], _ value: String) {
        self.bytes.append(contentsOf: name.utf8)
        if !labels.isEmpty {
            self.bytes.append(UInt8(ascii: "{"))
            for (index, (key, label)) in labels.enumerated() {
                if index > 0 { self.bytes.append(UInt8(ascii: ",")) }
                self.bytes.append(contentsOf: key.utf8)
                self.bytes.append(contentsOf: "=\"".utf8)
                for byte in label.utf8 {
                    switch byte {
                    case UInt8(ascii: "\\"): self.bytes.append(contentsOf: "\\\\".utf8)
                    case UInt8(ascii: "\""): self.bytes.append(contentsOf: "\\\"".utf8)
                    case UInt8(ascii: "\n"): self.bytes.append(contentsOf: "\\n".utf8)
                    default: self.bytes.append(byte)
                    }
                }
                self.bytes.append(UInt8(ascii: "\""))
            }
            self.bytes.append(UInt8(ascii: "}"))
        }
        self.bytes.append(UInt8(ascii: " "))
        self.bytes.append(contentsOf: value.utf8)
        self.bytes.append(UInt8(ascii: "\n"))
    }
}
