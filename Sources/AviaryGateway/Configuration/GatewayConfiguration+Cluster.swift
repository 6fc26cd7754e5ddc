//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Foundation

extension GatewayConfiguration {
    /// A named group of interchangeable upstream endpoints (`clusters.<name>:`).
    public struct Cluster: Sendable, Hashable {
        /// The cluster's name, as routes refer to it.
        public var name: String
        /// The static endpoints; for a cluster with ``discovery``, the ones discovered when this
        /// configuration was made current (empty in a configuration read from a file).
        public var endpoints: [Endpoint]
        /// The service whose discovered endpoints the cluster uses (`discovery: {service: NAME}`)
        /// instead of static ones.
        public var discovery: String?
        /// How a request picks an endpoint.
        public var loadBalancer: LoadBalancer
        /// Active health checking, if configured.
        public var healthCheck: HealthCheck?
        /// Passive outlier detection, if configured.
        public var outlierDetection: OutlierDetection?
        /// Envoy-style circuit-breaking thresholds, counted across all event loops.
        public var circuitBreaker: CircuitBreakerThresholds
        /// How long connecting to an endpoint may take.
        public var connectTimeout: Duration
        /// Idle keep-alive connections kept per endpoint and event loop (default 256).
        ///
        /// A connection finished while this many are idle is closed. It has to cover a burst:
        /// an HTTP/2 client with 20 connections of 10 streams has 200 requests in flight at once,
        /// and with 64 kept a third of its requests opened a new upstream connection.
        public var maxIdleConnections: Int
        /// What `ring_hash` hashes (`hash_on:`); required with it, not allowed without it.
        public var hashOn: HashOn?
        /// Whether the endpoints speak HTTP/1.1 (the default) or HTTP/2 (`protocol: h2`, h2c by
        /// prior knowledge): gRPC services need `h2`.
        public var upstreamProtocol: UpstreamProtocol = .http1
        /// TLS to the endpoints (`tls:`), with an optional client certificate (mutual TLS);
        /// `nil` speaks plaintext.
        public var tls: TLS?

        /// TLS from the gateway to a cluster's endpoints (`clusters.<name>.tls`).
        ///
        /// The endpoint's certificate is always verified: against ``trustRootsPEM`` (the `ca`
        /// file) when given, else the system's trust roots, and its name against ``serverName``,
        /// else the endpoint's host name, else (an endpoint written as an IP address) the
        /// certificate must name that address. With ``certificateChainPEM`` and
        /// ``privateKeyPEM`` (the `certificate` and `key` files) the gateway presents a client
        /// certificate, for upstreams that require mutual TLS.
        ///
        /// The files' contents are read when the configuration is read, so a reload (SIGHUP,
        /// `POST /reload`) picks up rotated certificates: a cluster whose files changed gets new
        /// connections, as any change of a cluster does.
        ///
        /// ```swift
        /// var payments = GatewayConfiguration.Cluster(name: "payments", endpoints: [Endpoint(host: "10.0.0.5", port: 8443)])
        /// payments.tls = try .files(ca: "ca.pem", serverName: "payments.internal",
        ///                           certificate: "gateway.pem", key: "gateway-key.pem")
        /// ```
        public struct TLS: Sendable, Hashable {
            /// The `ca` file's path, if any (shown by the admin API).
            public var caFile: String?
            /// PEM certificates trusted for the endpoints' chains; `nil` trusts the system's roots.
            public var trustRootsPEM: String?
            /// The name sent by SNI and verified against the endpoint's certificate.
            public var serverName: String?
            /// The `certificate` file's path, if any (shown by the admin API).
            public var certificateFile: String?
            /// The client certificate chain, PEM, leaf first; with ``privateKeyPEM``.
            public var certificateChainPEM: String?
            /// The client certificate's private key, PEM (never shown by the admin API).
            public var privateKeyPEM: String?

            /// TLS settings from PEM text (no files).
            public init(
                trustRootsPEM: String? = nil, serverName: String? = nil, certificateChainPEM: String? = nil,
                privateKeyPEM: String? = nil
            ) {
                self.trustRootsPEM = trustRootsPEM
                self.serverName = serverName
                self.certificateChainPEM = certificateChainPEM
                self.privateKeyPEM = privateKeyPEM
            }

            /// TLS settings whose PEM files are read now.
            ///
            /// - Throws: ``GatewayConfigurationError`` naming each file that cannot be read.
            public static func files(
                ca caFile: String? = nil, serverName: String? = nil, certificate certificateFile: String? = nil,
                key keyFile: String? = nil
            ) throws -> TLS {
                var problems: [String] = []
                func read(_ file: String?, _ key: String) -> String? {
                    guard let file else { return nil }
                    guard let data = FileManager.default.contents(atPath: file) else {
                        problems.append("tls.\(key): cannot read \"\(file)\"")
                        return nil
                    }
                    return String(decoding: data, as: UTF8.self)
                }
                var tls = TLS(
                    trustRootsPEM: read(caFile, "ca"), serverName: serverName,
                    certificateChainPEM: read(certificateFile, "certificate"), privateKeyPEM: read(keyFile, "key"))
                tls.caFile = caFile
                tls.certificateFile = certificateFile
                guard problems.isEmpty else { throw GatewayConfigurationError(problems: problems) }
                return tls
            }
        }

        /// How the gateway talks to a cluster's endpoints (`protocol:`).
        ///
        /// ```swift
        /// var cluster = GatewayConfiguration.Cluster(name: "grpc", endpoints: [Endpoint(host: "127.0.0.1", port: 50051)])
        /// cluster.upstreamProtocol = .h2
        /// ```
        public enum UpstreamProtocol: String, Sendable, Hashable, CaseIterable {
            /// HTTP/1.1 over pooled keep-alive connections.
            case http1
            /// HTTP/2 in cleartext (h2c by prior knowledge): one connection per endpoint and
            /// event loop, a stream per request; trailers pass both ways.
            case h2
        }

        /// Creates a cluster; every field but the name has a default.
        public init(
            name: String,
            endpoints: [Endpoint] = [],
            loadBalancer: LoadBalancer = .roundRobin,
            healthCheck: HealthCheck? = nil,
            outlierDetection: OutlierDetection? = nil,
            circuitBreaker: CircuitBreakerThresholds = .init(),
            connectTimeout: Duration = .seconds(5),
            maxIdleConnections: Int = 256
        ) {
            self.name = name
            self.endpoints = endpoints
            self.loadBalancer = loadBalancer
            self.healthCheck = healthCheck
            self.outlierDetection = outlierDetection
            self.circuitBreaker = circuitBreaker
            self.connectTimeout = connectTimeout
            self.maxIdleConnections = maxIdleConnections
        }
    }

    /// The request key `ring_hash` balances on: the same key reaches the same endpoint.
    ///
    /// ```yaml
    /// orders: {endpoints: [127.0.0.1:8102, 127.0.0.1:8112], load_balancer: ring_hash, hash_on: {header: x-user}}
    /// ```
    public enum HashOn: Sendable, Hashable {
        /// The first value of this request header (lower-case name).
        case header(String)
        /// The value of this cookie.
        case cookie(String)
    }

    /// How a request picks one endpoint of a cluster.
    public struct LoadBalancer: Sendable, Hashable, CustomStringConvertible {
        private enum Wrapped: String, Sendable, Hashable {
            case roundRobin = "round_robin"
            case leastRequest = "least_request"
            case ringHash = "ring_hash"
        }
        private let wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// Each endpoint in turn.
        public static let roundRobin = LoadBalancer(.roundRobin)
        /// The less busy of two endpoints picked at random (power of two choices on in-flight requests).
        public static let leastRequest = LoadBalancer(.leastRequest)
        /// Consistent hashing on ``HashOn``: a key keeps reaching the same endpoint, and adding
        /// or removing one of N endpoints moves only about 1/N of the keys.
        public static let ringHash = LoadBalancer(.ringHash)

        /// The YAML spellings, in order.
        public static let names = ["round_robin", "least_request", "ring_hash"]

        /// The balancer written `name` in YAML, if any.
        public init?(name: String) {
            guard let wrapped = Wrapped(rawValue: name) else { return nil }
            self.wrapped = wrapped
        }

        /// The YAML spelling.
        public var description: String { self.wrapped.rawValue }
    }

    /// Active health checking of a cluster's endpoints (`health_check:`).
    ///
    /// ```yaml
    /// health_check: {path: /readyz, interval: 5s, timeout: 1s, healthy: 2, unhealthy: 3}
    /// health_check: {grpc: {service: shop.Orders}}     # protocol: h2 clusters: gRPC's health protocol
    /// ```
    public struct HealthCheck: Sendable, Hashable {
        /// The path probed with `GET` (over HTTP/2 on a `protocol: h2` cluster).
        public var path: String
        /// With a value, each probe is a call of the gRPC Health Checking Protocol
        /// (`grpc.health.v1.Health/Check`) for this service name (empty: the server as a whole)
        /// instead of `GET path`; it succeeds when the answer is `SERVING`. `protocol: h2` only.
        public var grpcService: String?
        /// Time between probes.
        public var interval: Duration
        /// How long a probe may take.
        public var timeout: Duration
        /// Consecutive successes that make an endpoint healthy.
        public var healthyThreshold: Int
        /// Consecutive failures that make an endpoint unhealthy.
        public var unhealthyThreshold: Int

        /// Creates the settings.
        public init(
            path: String = "/readyz",
            interval: Duration = .seconds(5),
            timeout: Duration = .seconds(1),
            healthyThreshold: Int = 2,
            unhealthyThreshold: Int = 3,
            grpcService: String? = nil
        ) {
            self.path = path
            self.grpcService = grpcService
            self.interval = interval
            self.timeout = timeout
            self.healthyThreshold = healthyThreshold
            self.unhealthyThreshold = unhealthyThreshold
        }
    }

    /// Passive outlier detection (`outlier_detection:`).
    public struct OutlierDetection: Sendable, Hashable {
        /// Consecutive 5xx answers that eject an endpoint.
        public var consecutive5xx: Int
        /// The first ejection's length; it grows with each ejection.
        public var baseEjection: Duration
        /// The share of a cluster's endpoints that may be ejected at once, in 0...1 (YAML: percent).
        public var maxEjectionRatio: Double

        /// Creates the settings.
        public init(consecutive5xx: Int = 5, baseEjection: Duration = .seconds(30), maxEjectionRatio: Double = 0.1) {
            self.consecutive5xx = consecutive5xx
            self.baseEjection = baseEjection
            self.maxEjectionRatio = maxEjectionRatio
        }
    }

    /// Envoy-style circuit-breaking thresholds of a cluster (`circuit_breaker:`).
    public struct CircuitBreakerThresholds: Sendable, Hashable {
        /// Upstream connections at most.
        public var maxConnections: Int
        /// Requests waiting for a connection at most.
        public var maxPending: Int
        /// Requests in flight at most.
        public var maxRequests: Int

        /// Creates the thresholds (1024 each by default, as Envoy).
        public init(maxConnections: Int = 1024, maxPending: Int = 1024, maxRequests: Int = 1024) {
            self.maxConnections = maxConnections
            self.maxPending = maxPending
            self.maxRequests = maxRequests
        }
    }
}
