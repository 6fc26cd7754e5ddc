//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import AviaryResilience
import NIOHTTP1

// The request-side policies of one route: JWT authentication and authorization, then local rate
// limiting. Built once per route when the gateway starts (a route without policies gets none,
// so its requests pay nothing); shared by every event loop, so their state is thread-safe
// (the JWKS cache and the keyed limiter each take a short lock).
//
// Order: a limit keyed by client address or header runs first, so that floods are refused before
// any signature is checked; a limit keyed by a JWT claim runs after the token verified.

/// The header carrying the verified token's subject to upstreams; a client's own is removed.
let subjectHeaderName = "x-aviary-subject"

/// A local answer of a policy: a problem+json response with extra headers.
struct PolicyRejection {
    var problem: ProblemDetails
    var headers: [(String, String)]
}

/// What a policy check passes on to the forwarded request and its response.
struct PolicyOutcome {
    /// The verified subject, forwarded in `x-aviary-subject`.
    var subject: String?
    /// The verified token's claims (a composition's `{jwt.<claim>}`).
    var claims: [String: ClaimValue] = [:]
    /// Headers added to the response (`RateLimit-*`).
    var responseHeaders: [(String, String)] = []
}

/// What a route's policies decided about one request.
enum PolicyDecision {
    /// Forward it.
    case forward(PolicyOutcome)
    /// Answer locally.
    case reject(PolicyRejection)
    /// The token needs keys that must be fetched first: verify `token` off the event loop, then
    /// call ``RoutePolicies/resume(_:_:outcome:clientIP:)``.
    case verifyLater(token: String, outcome: PolicyOutcome)
}

/// The policies of one route, compiled once.
final class RoutePolicies: Sendable {
    /// A route's authentication requirement, ready for checking.
    struct Auth: Sendable {
        let authenticator: JWTAuthenticator
        let scopes: [String]
        let claims: [(name: String, value: String)]
    }

    /// What a rate limit is kept per.
    enum RateKey: Sendable {
        case clientAddress
        case clientCertificate
        case header(String)
        case claim(String)
    }

    /// A route's rate limit.
    struct Limit: Sendable {
        let limiter: KeyedRateLimiter
        let key: RateKey
    }

    let routeIndex: Int
    /// A JWT requirement (`require: jwt`).
    let auth: Auth?
    /// A client certificate requirement (`require: client_certificate`): the names one of which
    /// it must carry; empty for any verified certificate.
    let certificatePrincipals: Set<String>?
    let limit: Limit?

    /// Whether ``admit(_:clientIP:clientCertificate:)`` reads the client certificate.
    var needsClientCertificate: Bool {
        if self.certificatePrincipals != nil { return true }
        if case .clientCertificate = self.limit?.key { return true }
        return false
    }

    /// The policies of `route`, or nil when it has none.
    ///
    /// - Precondition: a route with `auth` has an authenticator (the gateway builds one from
    ///   `auth.jwt`, which validation requires).
    init?(route: GatewayConfiguration.Route, index: Int, authenticator: JWTAuthenticator?, clock: any MonotonicClock) {
        guard route.auth != nil || route.rateLimit != nil else { return nil }
        self.routeIndex = index
        if let auth = route.auth, auth.require == "client_certificate" {
            self.certificatePrincipals = Set(auth.principals)
            self.auth = nil
        } else if let auth = route.auth {
            self.certificatePrincipals = nil
            guard let authenticator else {
                preconditionFailure("routes[\(index)] requires a JWT but auth.jwt is not set")
            }
            self.auth = Auth(
                authenticator: authenticator, scopes: auth.scopes,
                claims: auth.claims.map { (name: $0.key, value: $0.value) }.sorted { $0.name < $1.name })
        } else {
            self.auth = nil
            self.certificatePrincipals = nil
        }
        if let rate = route.rateLimit {
            let key: RateKey
            if rate.key.hasPrefix("jwt.") {
                key = .claim(String(rate.key.dropFirst(4)))
            } else if rate.key == "client_certificate" {
                key = .clientCertificate
            } else if rate.key.hasPrefix("header.") {
                key = .header(String(rate.key.dropFirst(7)).lowercased())
            } else {
                key = .clientAddress
            }
            let bucket = TokenBucket.Configuration(rate: rate.requests, period: rate.period, burst: rate.burst)
            self.limit = Limit(
                limiter: KeyedRateLimiter(.init(algorithm: .tokenBucket(bucket), maxKeys: 100_000), clock: clock),
                key: key)
        } else {
            self.limit = nil
        }
    }

    /// Checks a request head; `clientCertificate` is the connection's verified certificate, read
    /// only for routes that require one.
    func admit(
        _ head: HTTPRequestHead, clientIP: String?, clientCertificate: ClientCertificateIdentity? = nil
    ) -> PolicyDecision {
        var outcome = PolicyOutcome()
        if let limit, !limit.key.isClaim {
            let key: String? =
                switch limit.key {
                case .clientAddress: clientIP
                case .clientCertificate: clientCertificate?.rateKey
                case .header(let name): head.headers.first(name: name)
                case .claim: nil
                }
            if let rejection = self.take(limit, key: key, outcome: &outcome) { return .reject(rejection) }
        }
        if let principals = self.certificatePrincipals {
            // Mutual TLS has no challenge to send back, so both refusals are 403 (as Envoy's RBAC).
            guard let certificate = clientCertificate else {
                return .reject(
                    PolicyRejection(
                        problem: ProblemDetails(
                            status: 403,
                            detail:
                                "routes[\(self.routeIndex)] requires a client certificate, and this connection has none",
                            slug: "client-certificate-required", extensions: ["reason": "client-certificate"]),
                        headers: outcome.responseHeaders))
            }
            if !principals.isEmpty, !certificate.names.contains(where: principals.contains) {
                return .reject(
                    PolicyRejection(
                        problem: ProblemDetails(
                            status: 403,
                            detail:
                                "routes[\(self.routeIndex)] requires a client certificate naming one of \(principals.sorted().joined(separator: ", "))",
                            slug: "client-certificate-forbidden", extensions: ["reason": "client-certificate"]),
                        headers: outcome.responseHeaders))
            }
            return .forward(outcome)
        }
        guard let auth else { return .forward(outcome) }
        let token: String
        do throws(AuthenticationError) {
            guard let found = try BearerToken.parse(authorization: head.headers["authorization"]) else {
                return .reject(
                    Self.rejection(AuthenticationError(.missingToken, "this route requires a bearer token"), outcome))
            }
            token = found
        } catch {
            return .reject(Self.rejection(error, outcome))
        }
        switch auth.authenticator.authenticateWithoutWaiting(token) {
        case .verified(let principal):
            return self.authorize(principal, head, clientIP: clientIP, outcome: outcome)
        case .rejected(let error):
            return .reject(Self.rejection(error, outcome))
        case .needsWaiting:
            return .verifyLater(token: token, outcome: outcome)
        }
    }

    /// Continues ``admit(_:clientIP:clientCertificate:)`` once a token verified (or not) off the event loop.
    func resume(
        _ result: Result<Principal, AuthenticationError>, _ head: HTTPRequestHead, outcome: PolicyOutcome,
        clientIP: String?
    ) -> PolicyDecision {
        switch result {
        case .success(let principal): self.authorize(principal, head, clientIP: clientIP, outcome: outcome)
        case .failure(let error): .reject(Self.rejection(error, outcome))
        }
    }

    /// Scopes, claims, then a limit keyed by a claim.
    private func authorize(
        _ principal: Principal, _ head: HTTPRequestHead, clientIP: String?, outcome: PolicyOutcome
    ) -> PolicyDecision {
        var outcome = outcome
        if let auth {
            let missing = auth.scopes.filter { !principal.scopes.contains($0) }
            if !missing.isEmpty {
                let error = AuthenticationError(
                    .insufficientScope,
                    "routes[\(self.routeIndex)] requires scope \(auth.scopes.joined(separator: " "))",
                    requiredScopes: auth.scopes)
                return .reject(Self.rejection(error, outcome))
            }
            for claim in auth.claims where !Self.claim(principal.claims[claim.name], holds: claim.value) {
                var rejection = Self.rejection(
                    AuthenticationError(
                        .insufficientScope, "routes[\(self.routeIndex)] requires claim \(claim.name)=\(claim.value)"),
                    outcome)
                rejection.problem.extensions["required_claim"] = claim.name
                return .reject(rejection)
            }
        }
        outcome.subject = principal.subject
        outcome.claims = principal.claims
        if let limit, case .claim(let name) = limit.key {
            let key = principal.claims[name].flatMap(Self.keyText)
            if let rejection = self.take(limit, key: key, outcome: &outcome) { return .reject(rejection) }
        }
        return .forward(outcome)
    }

    /// Takes a permit; the `RateLimit-*` headers go on the response either way.
    private func take(_ limit: Limit, key: String?, outcome: inout PolicyOutcome) -> PolicyRejection? {
        // Keys come from clients: bound their length so that memory stays bounded too.
        let bounded = key.map { $0.utf8.count > 256 ? String($0.utf8.prefix(256)) ?? "" : $0 }
        let decision = limit.limiter.tryAcquire(key: bounded)
        let fields = decision.headerFields
        if decision.allowed {
            outcome.responseHeaders.append(contentsOf: fields)
            return nil
        }
        let retry = fields.first { $0.0 == "Retry-After" }.map { " (retry after \($0.1)s)" } ?? ""
        return PolicyRejection(
            problem: ProblemDetails(
                status: 429,
                detail: "the rate limit of routes[\(self.routeIndex)] is exhausted for this caller\(retry)",
                slug: "rate-limited", extensions: ["reason": "rate-limit"]),
            headers: fields)
    }

    private static func rejection(_ error: AuthenticationError, _ outcome: PolicyOutcome) -> PolicyRejection {
        let rendered = error.rendered()
        var headers = outcome.responseHeaders
        if let challenge = rendered.wwwAuthenticate { headers.append(("WWW-Authenticate", challenge)) }
        return PolicyRejection(problem: rendered.problem, headers: headers)
    }

    /// Whether a claim is `value`, or an array containing it.
    private static func claim(_ claim: ClaimValue?, holds value: String) -> Bool {
        switch claim {
        case .array(let values): values.contains { Self.keyText($0) == value }
        case let claim?: Self.keyText(claim) == value
        case nil: false
        }
    }

    /// A scalar claim as text (strings as they are, numbers and booleans as JSON writes them).
    static func keyText(_ claim: ClaimValue) -> String? {
        switch claim {
        case .string(let text): text
        case .number(let number): number == number.rounded() && abs(number) < 1e15 ? String(Int64(number)) : "\(number)"
        case .bool(let flag): flag ? "true" : "false"
        default: nil
        }
    }
}

extension RoutePolicies.RateKey {
    var isClaim: Bool {
        if case .claim = self { return true }
        return false
    }
}
