//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore

/// The whole configuration of a gateway: where it listens, its limits, its upstream clusters,
/// authentication and its routes, as written in `gateway.yaml`.
///
/// Load it from YAML with ``GatewayConfiguration/init(yaml:file:)`` or build it in code:
///
/// ```swift
/// let configuration = GatewayConfiguration(
///     listen: .init(address: Endpoint(host: "127.0.0.1", port: 8080)),
///     clusters: [.init(name: "users", endpoints: [Endpoint(host: "127.0.0.1", port: 8101)])],
///     routes: [.init(match: .init(pathPrefix: "/api/users/"), rewrite: .init(pathPrefix: "/users/"),
///                    destination: .cluster("users"))]
/// )
/// ```
public struct GatewayConfiguration: Sendable, Hashable {
    /// Where the gateway listens.
    public var listen: Listen
    /// Limits against slow, large or too many clients.
    public var limits: Limits
    /// The upstream clusters, in the order they were written.
    public var clusters: [Cluster]
    /// Authentication settings shared by routes.
    public var auth: Auth
    /// The routes; the first whose match accepts a request handles it.
    public var routes: [Route]
    /// The JSON access log, if any (`access_log:`; off by default).
    public var accessLog: AccessLogSettings?
    /// Where clusters with `discovery:` find their endpoints (`discovery: {file: …}`), unless the
    /// embedding application hands ``GatewayServer`` a directory of its own.
    public var discovery: DiscoverySettings?
    /// Request header rewrites of every route (top-level `request_headers:`), applied before the
    /// route's own, so a route can override them.
    ///
    /// ```yaml
    /// request_headers: {set: {x-env: prod}, remove: [cookie]}
    /// response_headers: {set: {strict-transport-security: max-age=31536000}, remove: [server]}
    /// ```
    public var requestHeaders: HeaderRewrite?
    /// Response header rewrites of every route (top-level `response_headers:`), applied before
    /// the route's own.
    public var responseHeaders: HeaderRewrite?

    /// Creates a configuration.
    public init(
        listen: Listen = .init(),
        limits: Limits = .init(),
        clusters: [Cluster] = [],
        auth: Auth = .init(),
        routes: [Route] = [],
        accessLog: AccessLogSettings? = nil
    ) {
        self.listen = listen
        self.limits = limits
        self.clusters = clusters
        self.auth = auth
        self.routes = routes
        self.accessLog = accessLog
    }

    /// The cluster named `name`, if any.
    public func cluster(named name: String) -> Cluster? {
        self.clusters.first { $0.name == name }
    }
}

extension GatewayConfiguration {
    /// The listening addresses (`listen:`).
    public struct Listen: Sendable, Hashable {
        /// The proxy's address; port 0 picks a free port.
        public var address: Endpoint
        /// The admin API's address, if any: `/ready`, `/config`, `/clusters`, `/metrics`, `POST /reload`.
        public var admin: Endpoint?
        /// TLS on the proxy's address (`listen.tls`), if any; with ``http2`` ALPN offers `h2`
        /// and `http/1.1`.
        public var tls: TLS?
        /// Whether the proxy's address serves HTTP/2 as well as HTTP/1.1 (`listen.http2`): h2c
        /// by prior knowledge in plaintext, ALPN `h2` with TLS.
        public var http2: Bool
        /// Streams one HTTP/2 connection may have open at once (`listen.max_concurrent_streams`).
        public var maxConcurrentStreams: Int

        /// Creates the listening addresses; the proxy defaults to 127.0.0.1:8080, HTTP/1.1 only.
        ///
        /// ```swift
        /// let listen = GatewayConfiguration.Listen(
        ///     address: Endpoint(host: "0.0.0.0", port: 8443),
        ///     tls: .init(certificateFile: "gateway.crt", keyFile: "gateway.key"), http2: true)
        /// ```
        public init(
            address: Endpoint = Endpoint(host: "127.0.0.1", port: 8080), admin: Endpoint? = nil, tls: TLS? = nil,
            http2: Bool = false, maxConcurrentStreams: Int = 100
        ) {
            self.address = address
            self.admin = admin
            self.tls = tls
            self.http2 = http2
            self.maxConcurrentStreams = maxConcurrentStreams
        }

        /// The certificate chain and private key of the listener (`listen.tls`), PEM files.
        ///
        /// ```swift
        /// let tls = GatewayConfiguration.Listen.TLS(certificateFile: "gateway.crt", keyFile: "gateway.key")
        /// ```
        public struct TLS: Sendable, Hashable {
            /// A PEM file with the certificate chain, leaf first (`certificate`).
            public var certificateFile: String
            /// A PEM file with the private key (`key`).
            public var keyFile: String
            /// A PEM file with the CAs that sign clients' certificates (`client_ca`); with it the
            /// listener asks clients for a certificate (mutual TLS).
            public var clientCAFile: String?
            /// Whether a client must present a certificate (`client_certificate`).
            public var clientCertificate: ClientCertificate

            /// Whether the listener asks clients for certificates, and what it does without one.
            ///
            /// A presented certificate is always verified against ``clientCAFile``: a client with
            /// an invalid one fails the handshake. The gateway forwards a verified client's
            /// certificate to upstreams in `X-Forwarded-Client-Cert` (`Hash`, `Subject`, `URI`,
            /// `DNS`, as Envoy writes it), and removes that header from every client's request.
            public enum ClientCertificate: String, Sendable, Hashable, CaseIterable {
                /// No client certificates are asked for (without `client_ca`).
                case none
                /// Clients without a certificate are refused in the handshake (the default with
                /// `client_ca`).
                case require
                /// A client may present one; without one it connects as without mutual TLS.
                case optional
            }

            /// Creates TLS settings from two PEM files, and a third for mutual TLS.
            ///
            /// ```swift
            /// let tls = GatewayConfiguration.Listen.TLS(
            ///     certificateFile: "gateway.crt", keyFile: "gateway.key", clientCAFile: "clients-ca.pem")
            /// ```
            public init(
                certificateFile: String, keyFile: String, clientCAFile: String? = nil,
                clientCertificate: ClientCertificate? = nil
            ) {
                self.certificateFile = certificateFile
                self.keyFile = keyFile
                self.clientCAFile = clientCAFile
                self.clientCertificate = clientCertificate ?? (clientCAFile == nil ? .none : .require)
            }
        }
    }

    /// Limits against slow, large or too many clients (`limits:`).
    public struct Limits: Sendable, Hashable {
        /// Open downstream connections at most; more are closed at once.
        public var maxConnections: Int
        /// Bytes of request line and headers at most; more is answered `431`.
        public var maxHeaderBytes: Int
        /// Bytes of request body at most; more is answered `413`.
        public var maxBodyBytes: Int
        /// How long a client may take to finish a request head it started; `408` after that.
        public var headerTimeout: Duration
        /// How long a connection may go without a request before it is closed.
        public var idleTimeout: Duration
        /// How long a graceful drain (SIGTERM) lets requests in flight finish before closing.
        public var drainTimeout: Duration
        /// Bytes of a request body the gateway keeps a copy of, so that a retry can send the body
        /// again and a mirror copy can carry it (Envoy's `per_request_buffer_limit_bytes`).
        ///
        /// The body still streams to the upstream as it arrives; the copy is taken on the way.
        /// A body larger than this is proxied all the same, without a copy: it is neither retried
        /// nor mirrored (counted in ``GatewayStatistics/requestBufferOverflows``). `0` keeps no
        /// body (only requests without one are retried or mirrored); YAML takes a positive size.
        /// Default 64 KiB.
        ///
        /// ```yaml
        /// limits: {request_buffer_bytes: 256KiB}
        /// ```
        public var requestBufferBytes: Int

        /// Creates limits; every field has a default.
        public init(
            maxConnections: Int = 10_000,
            maxHeaderBytes: Int = 65_536,
            maxBodyBytes: Int = 10 << 20,
            headerTimeout: Duration = .seconds(10),
            idleTimeout: Duration = .seconds(60),
            drainTimeout: Duration = .seconds(30),
            requestBufferBytes: Int = 64 << 10
        ) {
            self.maxConnections = maxConnections
            self.maxHeaderBytes = maxHeaderBytes
            self.maxBodyBytes = maxBodyBytes
            self.headerTimeout = headerTimeout
            self.idleTimeout = idleTimeout
            self.drainTimeout = drainTimeout
            self.requestBufferBytes = requestBufferBytes
        }
    }

    /// Authentication settings (`auth:`).
    public struct Auth: Sendable, Hashable {
        /// JWT validation settings, if routes may require JWTs.
        public var jwt: JWT?

        /// Creates the settings.
        public init(jwt: JWT? = nil) {
            self.jwt = jwt
        }

        /// How JWTs are validated (`auth.jwt:`), for routes with `auth: {require: jwt}`.
        ///
        /// Signing keys come from a JWKS URL (fetched on first use, cached, refetched when a
        /// token names an unknown `kid`) or a JWKS file (read at start); give exactly one.
        public struct JWT: Sendable, Hashable {
            /// The required `iss` claim.
            public var issuer: String
            /// Accepted `aud` values; empty skips the audience check.
            public var audiences: [String]
            /// Where the signing keys are fetched from (`jwks_url`).
            public var jwksURL: String?
            /// A file holding the signing keys as a JWKS (`jwks_file`).
            public var jwksFile: String?

            /// Creates the settings.
            public init(issuer: String, audiences: [String] = [], jwksURL: String? = nil, jwksFile: String? = nil) {
                self.issuer = issuer
                self.audiences = audiences
                self.jwksURL = jwksURL
                self.jwksFile = jwksFile
            }
        }
    }
}

extension GatewayConfiguration {
    /// The discovery file clusters with `discovery: {service: NAME}` read
    /// (`discovery: {file: endpoints.json, interval: 1s}`): a JSON object mapping service names to
    /// `host:port` lists, re-read every `interval` (see AviaryDiscovery's `FileDiscovery`).
    public struct DiscoverySettings: Sendable, Hashable {
        /// The file's path.
        public var file: String
        /// How often the file is read again.
        public var interval: Duration

        /// Creates the settings.
        public init(file: String, interval: Duration = .seconds(1)) {
            self.file = file
            self.interval = interval
        }
    }
}

extension GatewayConfiguration {
    /// Where the JSON access log goes (`access_log: {path: stdout}`): one line per request.
    public struct AccessLogSettings: Sendable, Hashable {
        /// `stdout`, `stderr`, or a file path (appended to).
        public var path: String

        /// Creates the settings.
        public init(path: String = "stdout") {
            self.path = path
        }
    }
}
