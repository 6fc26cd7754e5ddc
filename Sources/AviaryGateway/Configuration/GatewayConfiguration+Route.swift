//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

extension GatewayConfiguration {
    /// One route: which requests it matches, how it rewrites them, where they go and the
    /// policies on the way (`routes[i]:`).
    public struct Route: Sendable, Hashable {
        /// Which requests this route takes.
        public var match: Match
        /// How the path is rewritten before it goes upstream.
        public var rewrite: Rewrite?
        /// The cluster, or the weighted clusters, requests go to.
        public var destination: Destination
        /// Authentication and authorization required on this route.
        public var auth: RouteAuth?
        /// The whole exchange's time limit, from the request head until the response head;
        /// `504` when it passes.
        public var timeout: Duration?
        /// Retries of idempotent requests without a body.
        public var retry: Retry?
        /// Local rate limiting.
        public var rateLimit: RateLimit?
        /// Response caching of GET and HEAD.
        public var cache: Cache?
        /// Cross-origin resource sharing: preflights answered by the gateway.
        public var cors: CORS?
        /// Injected delays and aborts, for chaos testing.
        public var fault: Fault?
        /// Headers added, set or removed on the request before it goes upstream.
        public var requestHeaders: HeaderRewrite?
        /// Headers added, set or removed on the response before it goes to the client.
        public var responseHeaders: HeaderRewrite?
        /// Shadow traffic: a share of requests is copied to another cluster, its answer discarded.
        public var mirror: Mirror?

        /// Creates a route.
        public init(
            match: Match,
            rewrite: Rewrite? = nil,
            destination: Destination,
            auth: RouteAuth? = nil,
            timeout: Duration? = nil,
            retry: Retry? = nil,
            rateLimit: RateLimit? = nil,
            cache: Cache? = nil,
            cors: CORS? = nil,
            fault: Fault? = nil,
            requestHeaders: HeaderRewrite? = nil,
            responseHeaders: HeaderRewrite? = nil,
            mirror: Mirror? = nil
        ) {
            self.match = match
            self.rewrite = rewrite
            self.destination = destination
            self.auth = auth
            self.timeout = timeout
            self.retry = retry
            self.rateLimit = rateLimit
            self.cache = cache
            self.cors = cors
            self.fault = fault
            self.requestHeaders = requestHeaders
            self.responseHeaders = responseHeaders
            self.mirror = mirror
        }
    }

    /// Which requests a route takes (`match:`); every condition given must hold.
    public struct Match: Sendable, Hashable {
        /// The path starts with this (compared byte by byte, without the query).
        public var pathPrefix: String?
        /// The path is exactly this (without the query).
        public var path: String?
        /// The method is one of these; empty accepts any.
        public var methods: [String]
        /// Each header is present with exactly this value (names compared without case).
        public var headers: [String: String]
        /// The path fits this template (`/api/orders/{id}`, `/files/{rest...}`): see
        /// ``PathTemplate``.
        public var pathTemplate: String?
        /// The `Host` (port ignored, compared without case) is this name, or ends with the
        /// suffix of a `*.example.com` wildcard (which needs at least one label before it).
        public var host: String?
        /// Each query parameter is present with exactly this value, or present at all.
        public var query: [String: QueryCondition]

        /// Creates a match.
        public init(
            pathPrefix: String? = nil, path: String? = nil, methods: [String] = [], headers: [String: String] = [:],
            pathTemplate: String? = nil, host: String? = nil, query: [String: QueryCondition] = [:]
        ) {
            self.pathPrefix = pathPrefix
            self.path = path
            self.methods = methods
            self.headers = headers
            self.pathTemplate = pathTemplate
            self.host = host
            self.query = query
        }
    }

    /// How a route rewrites the request path (`rewrite:`).
    public struct Rewrite: Sendable, Hashable {
        /// Replaces the matched `path_prefix` (or the exact `path`) with this.
        public var pathPrefix: String?
        /// Builds the whole path from the variables of `match.path_template`
        /// (`/orders/{id}`); the query is kept.
        public var pathTemplate: String?

        /// Creates a prefix rewrite.
        public init(pathPrefix: String) {
            self.pathPrefix = pathPrefix
        }

        /// Creates a template rewrite.
        public init(pathTemplate: String) {
            self.pathTemplate = pathTemplate
        }
    }

    /// Where a route sends requests.
    public enum Destination: Sendable, Hashable {
        /// Every request to one cluster (`cluster: users`).
        case cluster(String)
        /// Each request to one of several clusters, chosen at random by weight
        /// (`split: [{cluster: orders, weight: 90}, {cluster: orders-v2, weight: 10}]`).
        case split([WeightedCluster])
        /// No upstream: the gateway answers itself (`direct_response:`).
        case directResponse(DirectResponse)
        /// No upstream: the gateway answers with a redirect (`redirect:`).
        case redirect(Redirect)
        /// Several upstreams called in parallel, their JSON merged into one object (`compose:`).
        case compose(Compose)

        /// The clusters named.
        public var clusterNames: [String] {
            switch self {
            case .cluster(let name): [name]
            case .split(let parts): parts.map(\.cluster)
            case .directResponse, .redirect: []
            case .compose(let compose): compose.parts.map(\.cluster)
            }
        }
    }

    /// One part of a weighted split.
    public struct WeightedCluster: Sendable, Hashable {
        /// The cluster's name.
        public var cluster: String
        /// The relative weight, at least 0; a part with weight 0 takes no traffic.
        public var weight: Int

        /// Creates a part.
        public init(cluster: String, weight: Int) {
            self.cluster = cluster
            self.weight = weight
        }
    }

    /// What a route requires of the caller (`auth:`): a valid JWT (verified with `auth.jwt`)
    /// carrying every scope in ``scopes`` and every claim in ``claims``; or a verified client
    /// certificate (mutual TLS on the listener, `listen.tls.client_ca`) naming one of
    /// ``principals``.
    ///
    /// ```yaml
    /// auth: {require: jwt, scopes: [orders]}
    /// auth: {require: client_certificate, principals: [spiffe://shop/orders, payments.internal]}
    /// ```
    public struct RouteAuth: Sendable, Hashable {
        /// The required credential kind: `jwt` or `client_certificate`.
        public var require: String
        /// Scopes the token must carry, all of them (`scope` or `scp` claims).
        public var scopes: [String]
        /// Claims the token must carry with these values: a string claim equal to the value, or
        /// an array claim containing it.
        public var claims: [String: String]
        /// With `client_certificate`: the certificate must carry one of these as a URI or DNS
        /// subject alternative name (exact match); empty accepts any verified certificate.
        public var principals: [String]

        /// Creates the requirement.
        public init(
            require: String = "jwt", scopes: [String] = [], claims: [String: String] = [:], principals: [String] = []
        ) {
            self.require = require
            self.scopes = scopes
            self.claims = claims
            self.principals = principals
        }
    }

    /// When and how often a route retries (`retry:`).
    ///
    /// Only idempotent requests are retried (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) and those
    /// with an `Idempotency-Key`. A request with a body is retried with a copy of the body kept
    /// as it streams through, if the body is at most
    /// ``GatewayConfiguration/Limits/requestBufferBytes``; a larger body is sent once.
    ///
    /// ```yaml
    /// retry: {attempts: 3, per_try_timeout: 500ms, on: [connect-failure, reset, 503], budget: 20%}
    /// ```
    public struct Retry: Sendable, Hashable {
        /// Tries in all, the first included, at least 1.
        public var attempts: Int
        /// Time limit of one try, if any, counted from the end of the request (or from the
        /// try's start when it starts after that) to the try's response head.
        public var perTryTimeout: Duration?
        /// The failures that are retried.
        public var on: [RetryCondition]
        /// Retries may add at most this share of requests, in 0...1 (YAML: percent).
        public var budget: Double?

        /// Creates the policy.
        public init(attempts: Int, perTryTimeout: Duration? = nil, on: [RetryCondition] = [], budget: Double? = nil) {
            self.attempts = attempts
            self.perTryTimeout = perTryTimeout
            self.on = on
            self.budget = budget
        }
    }

    /// A failure a route may retry: `connect-failure`, `reset` or a response status.
    public enum RetryCondition: Sendable, Hashable {
        /// Connecting to the endpoint failed.
        case connectFailure
        /// The connection closed or reset before a response arrived.
        case reset
        /// The upstream answered with this status.
        case status(Int)
    }

    /// Local rate limiting (`rate_limit:`).
    public struct RateLimit: Sendable, Hashable {
        /// What the limit is kept per: `client_address` (alias `client_ip`), `client_certificate`
        /// (the connection's verified client certificate: its first URI name, else its first DNS
        /// name, else its hash), `jwt.<claim>` (the route must require a JWT) or `header.<name>`;
        /// requests without the key share one quota.
        public var key: String
        /// Requests admitted per `period` on average.
        public var requests: Int
        /// The period of `requests`.
        public var period: Duration
        /// Requests admitted at once beyond the average.
        public var burst: Int

        /// Creates a limit.
        public init(key: String, requests: Int, period: Duration, burst: Int) {
            self.key = key
            self.requests = requests
            self.period = period
            self.burst = burst
        }
    }

    /// Response caching (`cache:`).
    public struct Cache: Sendable, Hashable {
        /// How long a response is fresh.
        public var ttl: Duration
        /// How long a stale response may still be served when the upstream fails.
        public var staleIfError: Duration?
        /// Bytes held in the cache at most.
        public var maxBytes: Int

        /// Creates the settings.
        public init(ttl: Duration, staleIfError: Duration? = nil, maxBytes: Int = 64 << 20) {
            self.ttl = ttl
            self.staleIfError = staleIfError
            self.maxBytes = maxBytes
        }
    }
}

extension GatewayConfiguration {
    /// Cross-origin resource sharing (`cors:`): the gateway answers preflight requests itself and
    /// adds `Access-Control-Allow-Origin` to responses for allowed origins.
    public struct CORS: Sendable, Hashable {
        /// Allowed origins (`https://shop.example`), or `*` for any.
        public var allowOrigins: [String]
        /// Methods a preflight may ask for.
        public var allowMethods: [String]
        /// Request headers a preflight may ask for (lower-cased), or `*` for any.
        public var allowHeaders: [String]
        /// How long browsers may cache a preflight's answer.
        public var maxAge: Duration?
        /// Whether credentials (cookies, `Authorization`) may be sent; not with origin `*`.
        public var allowCredentials: Bool

        /// Creates the settings.
        public init(
            allowOrigins: [String], allowMethods: [String] = ["GET", "HEAD", "POST"], allowHeaders: [String] = [],
            maxAge: Duration? = nil, allowCredentials: Bool = false
        ) {
            self.allowOrigins = allowOrigins
            self.allowMethods = allowMethods
            self.allowHeaders = allowHeaders
            self.maxAge = maxAge
            self.allowCredentials = allowCredentials
        }
    }

    /// Fault injection (`fault:`): delays and aborts a share of a route's requests.
    public struct Fault: Sendable, Hashable {
        /// Delays `ratio` of the requests by `duration` before they go upstream.
        public var delay: (ratio: Double, duration: Duration)? {
            get { self.delayRatio.map { ($0, self.delayDuration) } }
            set {
                self.delayRatio = newValue?.ratio
                self.delayDuration = newValue?.duration ?? .zero
            }
        }
        /// Answers `ratio` of the requests with `status` at once, without going upstream.
        public var abort: (ratio: Double, status: Int)? {
            get { self.abortRatio.map { ($0, self.abortStatus) } }
            set {
                self.abortRatio = newValue?.ratio
                self.abortStatus = newValue?.status ?? 503
            }
        }
        private var delayRatio: Double?
        private var delayDuration: Duration = .zero
        private var abortRatio: Double?
        private var abortStatus = 503

        /// Creates the settings.
        public init(delay: (ratio: Double, duration: Duration)? = nil, abort: (ratio: Double, status: Int)? = nil) {
            self.delay = delay
            self.abort = abort
        }
    }
}
