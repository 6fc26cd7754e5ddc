//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

extension GatewayConfiguration {
    /// What a query parameter must be for a route to match (`match.query`).
    ///
    /// ```yaml
    /// match: {path_prefix: /search, query: {version: "2", debug: {present: true}}}
    /// ```
    public enum QueryCondition: Sendable, Hashable {
        /// The parameter is present with exactly this value (after percent-decoding).
        case equals(String)
        /// The parameter is present, with any value or none.
        case present
    }

    /// Headers a route changes on the request or the response (`request_headers:`,
    /// `response_headers:`), applied in the order remove, set, add.
    ///
    /// ```yaml
    /// request_headers: {add: {x-client: "%{client_ip}"}, set: {x-env: prod}, remove: [cookie]}
    /// ```
    ///
    /// Values may use `%{client_ip}`, `%{request_id}` (the request's `x-request-id`, empty if
    /// none), `%{host}` (the request's `Host`) and `%{method}`; `%%` is a literal `%`. Hop-by-hop
    /// and framing headers (`connection`, `content-length`, `transfer-encoding`, ...) and `host`
    /// cannot be changed this way.
    public struct HeaderRewrite: Sendable, Hashable {
        /// Headers added next to any already there (lower-case names, in written order).
        public var add: [HeaderValue]
        /// Headers that replace any already there.
        public var set: [HeaderValue]
        /// Headers removed (lower-case names).
        public var remove: [String]

        /// Creates a rewrite.
        public init(add: [HeaderValue] = [], set: [HeaderValue] = [], remove: [String] = []) {
            self.add = add
            self.set = set
            self.remove = remove
        }

        /// Whether nothing changes.
        public var isEmpty: Bool { self.add.isEmpty && self.set.isEmpty && self.remove.isEmpty }
    }

    /// One header of a ``HeaderRewrite``: a lower-case name and a value that may hold variables.
    public struct HeaderValue: Sendable, Hashable {
        /// The lower-case header name.
        public var name: String
        /// The value as written, `%{...}` variables included.
        public var value: String

        /// Creates a header value.
        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    /// A response the gateway sends itself (`direct_response:`), without a cluster.
    ///
    /// ```yaml
    /// - match: {path: /robots.txt}
    ///   direct_response: {status: 200, body: "User-agent: *\nDisallow: /\n", content_type: text/plain}
    /// ```
    public struct DirectResponse: Sendable, Hashable {
        /// The status, in 200...599.
        public var status: Int
        /// The body (none for `""`).
        public var body: String
        /// The body's `Content-Type`.
        public var contentType: String

        /// Creates a direct response.
        public init(status: Int = 200, body: String = "", contentType: String = "text/plain; charset=utf-8") {
            self.status = status
            self.body = body
            self.contentType = contentType
        }
    }

    /// A redirect the gateway answers itself (`redirect:`), without a cluster.
    ///
    /// ```yaml
    /// - match: {host: old.example.com}
    ///   redirect: {status: 308, location: "https://new.example.com", strip_query: false}
    /// ```
    ///
    /// The request's path (after any `rewrite`) and, unless `strip_query`, its query are appended
    /// to `location` when `location` has no path of its own (`https://host` or `https://host/`);
    /// a `location` with a path is used as it is (plus the query unless `strip_query`).
    public struct Redirect: Sendable, Hashable {
        /// 301, 302, 307 or 308.
        public var status: Int
        /// An absolute `http://` or `https://` URL, or an absolute path.
        public var location: String
        /// Whether the request's query is dropped.
        public var stripQuery: Bool

        /// Creates a redirect.
        public init(status: Int = 302, location: String, stripQuery: Bool = false) {
            self.status = status
            self.location = location
            self.stripQuery = stripQuery
        }
    }
}

extension GatewayConfiguration {
    /// Request mirroring (`mirror:`): a copy of a share of a route's requests goes to another
    /// cluster with `x-aviary-shadow: true`; its response is read and discarded, and it never
    /// delays or fails the request itself. A request with a body is copied once the body is
    /// complete, with all of it, if it is at most
    /// ``GatewayConfiguration/Limits/requestBufferBytes``; a larger one is not copied.
    ///
    /// ```yaml
    /// mirror: {cluster: orders-v2, percent: 10%}
    /// ```
    public struct Mirror: Sendable, Hashable {
        /// The cluster that gets the copies.
        public var cluster: String
        /// The share of requests copied, in 0...1 (YAML: percent; default 100%).
        public var ratio: Double

        /// Creates the settings.
        public init(cluster: String, ratio: Double = 1) {
            self.cluster = cluster
            self.ratio = ratio
        }
    }
}

extension GatewayConfiguration {
    /// API composition (`compose:`, backend for frontend): the route's answer is one JSON object
    /// whose members are the JSON bodies of several upstream calls made in parallel.
    ///
    /// ```yaml
    /// - match: {path_template: "/api/me/{id}"}
    ///   auth: {require: jwt}
    ///   compose:
    ///     parts:
    ///       - {name: user, cluster: users, path: "/users/{jwt.sub}"}
    ///       - {name: orders, cluster: orders, path: "/orders?user={id}", timeout: 2s}
    ///     part_timeout: 500ms
    ///     on_failure: omit
    /// ```
    public struct Compose: Sendable, Hashable {
        /// The calls, in the order their members appear.
        public var parts: [ComposePart]
        /// How long each call may take, to the end of its body, unless the part sets its own
        /// ``ComposePart/timeout``.
        public var partTimeout: Duration
        /// What a failed or late part does: fail the whole (`false`), or leave it out and mark
        /// the response degraded (`true`, YAML `on_failure: omit`).
        public var omitFailed: Bool

        /// Creates the settings.
        public init(parts: [ComposePart], partTimeout: Duration = .seconds(1), omitFailed: Bool = false) {
            self.parts = parts
            self.partTimeout = partTimeout
            self.omitFailed = omitFailed
        }
    }

    /// One call of a ``Compose`` route.
    public struct ComposePart: Sendable, Hashable {
        /// The member name in the merged object (`[A-Za-z0-9_-]+`).
        public var name: String
        /// The cluster called.
        public var cluster: String
        /// The request target (path and query), with `{var}` from `match.path_template` and
        /// `{jwt.sub}` from the verified token.
        public var path: String
        /// How long this call may take, to the end of its body, in place of the route's
        /// ``Compose/partTimeout`` (YAML `timeout`; `nil`: the route's). A slow but optional part
        /// can get less time than the others, or a known slow one more.
        public var timeout: Duration?

        /// Creates a part.
        ///
        /// ```swift
        /// let part = GatewayConfiguration.ComposePart(
        ///     name: "recommendations", cluster: "catalog", path: "/recommended/{jwt.sub}",
        ///     timeout: .milliseconds(200))
        /// ```
        public init(name: String, cluster: String, path: String, timeout: Duration? = nil) {
            self.name = name
            self.cluster = cluster
            self.path = path
            self.timeout = timeout
        }
    }
}
