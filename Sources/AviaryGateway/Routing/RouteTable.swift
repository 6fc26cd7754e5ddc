//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import AviaryResilience
public import NIOHTTP1

/// The routes of a configuration, compiled once for matching on every request.
///
/// Routes are tried in order; the first whose match accepts the request wins. Matching looks at
/// the path (without the query), the method and headers, and allocates nothing.
///
/// ```swift
/// let table = RouteTable(configuration)
/// let route = table.route(method: .GET, uri: "/api/users/42?x=1", headers: headers)
/// route?.rewrite(uri: "/api/users/42?x=1")   // "/users/42?x=1"
/// ```
public struct RouteTable: Sendable {
    /// The compiled routes, in order.
    public let routes: [CompiledRoute]
    /// Whether a route matches on fields (`host`, `headers`): only then does matching need the
    /// request's fields.
    let readsHeaders: Bool

    /// Compiles the routes of `configuration`; cluster names become indexes into
    /// `configuration.clusters`.
    ///
    /// - Precondition: every cluster a route names exists (a parsed configuration guarantees it).
    public init(_ configuration: GatewayConfiguration) {
        self.init(configuration, authenticator: nil, clock: SystemClock())
    }

    /// Compiles the routes with their policies: `authenticator` verifies the JWTs of routes with
    /// `auth` (nil fails them closed), `clock` drives rate limits.
    init(_ configuration: GatewayConfiguration, authenticator: JWTAuthenticator?, clock: any MonotonicClock) {
        let indexes = Dictionary(
            configuration.clusters.enumerated().map { ($0.element.name, $0.offset) }, uniquingKeysWith: { a, _ in a })
        self.routes = configuration.routes.enumerated().map { index, route in
            CompiledRoute(
                index: index, route: route, clusterIndexes: indexes, authenticator: authenticator, clock: clock,
                defaultHeaders: (configuration.requestHeaders, configuration.responseHeaders))
        }
        self.readsHeaders = self.routes.contains { $0.host != nil || !$0.headers.isEmpty }
    }

    /// The first route that accepts the request, if any.
    public func route(method: HTTPMethod, uri: String, headers: HTTPHeaders) -> CompiledRoute? {
        let path = RouteTable.path(of: uri)
        for route in self.routes where route.matches(method: method, path: path, uri: uri, headers: headers) {
            return route
        }
        return nil
    }

    /// The path of a request target: up to `?` or `#`.
    static func path(of uri: String) -> Substring {
        let utf8 = uri.utf8
        if let end = utf8.firstIndex(where: { $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") }) {
            return Substring(uri[..<end])
        }
        return Substring(uri)
    }
}

/// One route, ready for matching, rewriting and choosing its cluster.
public final class CompiledRoute: Sendable {
    /// The route's position in the configuration (`routes[index]`).
    public let index: Int
    /// The route as configured.
    public let route: GatewayConfiguration.Route
    let methods: [HTTPMethod]
    let headers: [(name: String, value: String)]
    /// Cluster indexes with their cumulative weights (`split`), or one entry of weight 1.
    let targets: [(cluster: Int, cumulativeWeight: UInt64)]
    let totalWeight: UInt64
    /// The retry policy, compiled once; its budget is shared by every event loop.
    let retry: CompiledRetry?
    /// Authentication and rate limiting; nil for a route without them (nothing to do per request).
    let policies: RoutePolicies?
    /// The response cache of a route with `cache:`.
    let cache: RouteCache?
    /// The CORS policy of a route with `cors:`.
    let cors: RouteCORS?
    /// The fault injection of a route with `fault:`.
    let fault: RouteFault?
    /// A route that requires a JWT while the gateway has no authenticator: answered `503`, never
    /// forwarded (fail closed).
    let authUnavailable: Bool
    /// `match.path_template`, compiled; `hasTemplate` without one (an invalid template given in
    /// code) matches nothing.
    let template: PathTemplate?
    let hasTemplate: Bool
    /// `rewrite.path_template`, compiled against the match template's variables.
    let rewriteTemplate: RewriteTemplate?
    let host: HostMatcher?
    let query: QueryMatcher?
    /// `request_headers:` and `response_headers:`.
    let requestHeaderRewrite: CompiledHeaderRewrite?
    let responseHeaderRewrite: CompiledHeaderRewrite?
    /// Whether a header rewrite uses `%{...}` variables (gathered per request only then).
    let usesHeaderVariables: Bool
    /// The answer of a `direct_response` or `redirect` route (no cluster).
    let localAnswer: LocalAnswer?
    /// The parts of a `compose` route, compiled.
    let compose: CompiledCompose?
    /// The mirror cluster's index and the draw below which a request is copied (out of 1 000 000).
    let mirror: (cluster: Int, threshold: UInt64)?
    /// Whether a feature of the route reads or edits the request's fields (policies, caching,
    /// CORS, header rewrites, a local answer, composition, a mirror): the proxy makes NIO's head
    /// of a request it takes only then.
    let readsRequestFields: Bool

    init(
        index: Int, route: GatewayConfiguration.Route, clusterIndexes: [String: Int],
        authenticator: JWTAuthenticator? = nil, clock: any MonotonicClock = SystemClock(),
        defaultHeaders: (request: GatewayConfiguration.HeaderRewrite?, response: GatewayConfiguration.HeaderRewrite?) =
            (nil, nil)
    ) {
        self.index = index
        self.route = route
        self.methods = route.match.methods.map { HTTPMethod(rawValue: $0) }
        self.headers = route.match.headers.map { (name: $0.key, value: $0.value) }.sorted { $0.name < $1.name }
        var targets: [(cluster: Int, cumulativeWeight: UInt64)] = []
        var total: UInt64 = 0
        switch route.destination {
        case .cluster(let name):
            guard let cluster = clusterIndexes[name] else { preconditionFailure("route names unknown cluster \(name)") }
            total = 1
            targets.append((cluster, total))
        case .split(let parts):
            for part in parts where part.weight > 0 {
                guard let cluster = clusterIndexes[part.cluster] else {
                    preconditionFailure("route names unknown cluster \(part.cluster)")
                }
                total += UInt64(part.weight)
                targets.append((cluster, total))
            }
        case .directResponse, .redirect, .compose:
            break
        }
        let template = route.match.pathTemplate.flatMap { try? PathTemplate(parsing: $0) }
        self.localAnswer = LocalAnswer(route.destination)
        if case .compose(let compose) = route.destination {
            self.compose = CompiledCompose(
                compose, variables: template?.variables ?? [], clusterIndexes: clusterIndexes)
        } else {
            self.compose = nil
        }
        if let mirror = route.mirror, let cluster = clusterIndexes[mirror.cluster] {
            self.mirror = (cluster: cluster, threshold: UInt64((mirror.ratio * 1_000_000).rounded()))
        } else {
            self.mirror = nil
        }
        self.hasTemplate = route.match.pathTemplate != nil
        self.template = template
        self.rewriteTemplate = route.rewrite?.pathTemplate.flatMap { text in
            template.flatMap { try? RewriteTemplate(parsing: text, variables: $0.variables) }
        }
        self.host = route.match.host.map(HostMatcher.init)
        self.query = route.match.query.isEmpty ? nil : QueryMatcher(route.match.query)
        // The top-level rewrites first, then the route's.
        self.requestHeaderRewrite = CompiledHeaderRewrite([defaultHeaders.request, route.requestHeaders])
        self.responseHeaderRewrite = CompiledHeaderRewrite([defaultHeaders.response, route.responseHeaders])
        self.usesHeaderVariables =
            (self.requestHeaderRewrite?.usesVariables ?? false) || (self.responseHeaderRewrite?.usesVariables ?? false)
        self.targets = targets
        self.totalWeight = total
        self.retry = route.retry.map { CompiledRetry($0, clock: clock) }
        self.cache = route.cache.map { RouteCache($0, clock: clock) }
        self.cors = route.cors.map(RouteCORS.init)
        self.fault = route.fault.map(RouteFault.init)
        self.authUnavailable = route.auth?.require == "jwt" && authenticator == nil
        self.policies =
            self.authUnavailable
            ? nil : RoutePolicies(route: route, index: index, authenticator: authenticator, clock: clock)
        self.readsRequestFields =
            self.policies != nil || self.cache != nil || self.cors != nil || self.requestHeaderRewrite != nil
            || self.usesHeaderVariables || self.localAnswer != nil || self.compose != nil || self.mirror != nil
    }

    /// Whether the request is one this route takes.
    func matches(method: HTTPMethod, path: Substring, uri: String, headers: HTTPHeaders) -> Bool {
        let match = self.route.match
        if let exact = match.path {
            guard path == exact else { return false }
        } else if let prefix = match.pathPrefix {
            guard path.utf8.starts(with: prefix.utf8) else { return false }
        } else if self.hasTemplate {
            guard let template = self.template, template.matches(path) else { return false }
        }
        if !self.methods.isEmpty && !self.methods.contains(method) { return false }
        if let host = self.host {
            guard let value = headers.first(name: "host"), host.matches(value) else { return false }
        }
        for header in self.headers {
            guard headers[header.name].contains(header.value) else { return false }
        }
        if let query = self.query, !query.matches(uri: uri) { return false }
        return true
    }

    /// The index of the cluster for one request: the only one, or one of a split drawn by weight.
    func pickCluster(_ random: GatewayRandom) -> Int {
        if self.targets.count == 1 { return self.targets[0].cluster }
        let draw = random.next(below: self.totalWeight)
        for target in self.targets where draw < target.cumulativeWeight {
            return target.cluster
        }
        return self.targets[self.targets.count - 1].cluster
    }

    /// The request target with the matched prefix replaced by the rewrite's (or rebuilt from
    /// the path template's variables), the query kept.
    public func rewrite(uri: String) -> String {
        guard let rewrite = self.route.rewrite else { return uri }
        if let rewriteTemplate = self.rewriteTemplate, let template = self.template {
            let path = RouteTable.path(of: uri)
            guard let values = template.values(path) else { return uri }
            return rewriteTemplate.render(values) + uri[path.endIndex...]
        }
        guard let replacement = rewrite.pathPrefix else { return uri }
        let matched = self.route.match.path ?? self.route.match.pathPrefix ?? ""
        guard uri.utf8.starts(with: matched.utf8) else { return uri }
        let rest = uri.utf8.dropFirst(matched.utf8.count)
        var result = replacement
        // `/api/users` + rewrite `/users/` on `/api/users/42` would give `/users//42`.
        if result.utf8.last == UInt8(ascii: "/") && rest.first == UInt8(ascii: "/") {
            result.removeLast()
        }
        result += String(Substring(rest))
        if result.isEmpty || result.utf8.first != UInt8(ascii: "/") { result = "/" + result }
        return result
    }
}

/// The random numbers the gateway draws (weighted splits, power-of-two choices); injectable so
/// that tests are deterministic.
///
/// ```swift
/// let random = GatewayRandom { upperBound in 0 }   // always the first choice
/// ```
public struct GatewayRandom: Sendable {
    private let draw: @Sendable (UInt64) -> UInt64

    /// A source from a function returning a number in `0..<upperBound` (never called with 0).
    public init(_ draw: @escaping @Sendable (_ upperBound: UInt64) -> UInt64) {
        self.draw = draw
    }

    /// The system's random number generator.
    public static let system = GatewayRandom { UInt64.random(in: 0..<$0) }

    /// A number in `0..<upperBound`; out-of-range results of an injected function are reduced.
    func next(below upperBound: UInt64) -> UInt64 {
        guard upperBound > 1 else { return 0 }
        return self.draw(upperBound) % upperBound
    }
}

/// A route's retry policy, ready for the data plane.
struct CompiledRetry: Sendable {
    /// Tries in all, the first included.
    let attempts: Int
    let perTryTimeout: Duration?
    let onConnectFailure: Bool
    let onReset: Bool
    let statuses: [UInt]
    /// Retries may add at most `budget` of the route's requests (plus a small reserve), so that
    /// retries cannot multiply the load on a struggling cluster.
    let budget: RetryBudget?

    init(_ retry: GatewayConfiguration.Retry, clock: any MonotonicClock = SystemClock()) {
        self.attempts = retry.attempts
        self.perTryTimeout = retry.perTryTimeout
        var connectFailure = false
        var reset = false
        var statuses: [UInt] = []
        for condition in retry.on {
            switch condition {
            case .connectFailure: connectFailure = true
            case .reset: reset = true
            case .status(let code): statuses.append(UInt(code))
            }
        }
        self.onConnectFailure = connectFailure
        self.onReset = reset
        self.statuses = statuses
        self.budget = retry.budget.map { RetryBudget(.init(ratio: $0), clock: clock) }
    }
}
