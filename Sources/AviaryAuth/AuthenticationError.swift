//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore

/// Why a request was not authenticated or not authorized.
///
/// ``JWTAuthenticator/authenticate(_:)`` throws it; AviaryService's middlewares and the gateway
/// render it from ``rendered(realm:)``: RFC 9457 problem details plus an RFC 6750
/// `WWW-Authenticate` challenge.
/// Its ``message`` never contains the token.
///
/// | code | status | problem `type` slug | `WWW-Authenticate` |
/// | --- | --- | --- | --- |
/// | ``Code-swift.struct/missingToken`` | 401 | `authentication-required` | `Bearer` (no error, RFC 6750 §3.1) |
/// | ``Code-swift.struct/invalidRequest`` | 400 | `invalid-authorization-request` | `error="invalid_request"` |
/// | token failures (malformed, signature, expired, ...) | 401 | `invalid-token` | `error="invalid_token"` |
/// | ``Code-swift.struct/keysUnavailable`` | 503 | `authentication-unavailable` | none |
/// | ``Code-swift.struct/insufficientScope`` | 403 | `insufficient-scope` | `error="insufficient_scope"` |
///
/// Token failures carry their code in the problem's `reason` extension (`expired`, `revoked`, ...).
public struct AuthenticationError: Error, Sendable, CustomStringConvertible {
    /// The kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Wrapped: String {
            case missingToken = "missing_token"
            case invalidRequest = "invalid_request"
            case malformedToken = "malformed"
            case unsupportedAlgorithm = "unsupported_algorithm"
            case unknownKey = "unknown_key"
            case algorithmMismatch = "algorithm_mismatch"
            case invalidSignature = "invalid_signature"
            case expired = "expired"
            case notYetValid = "not_yet_valid"
            case invalidIssuer = "invalid_issuer"
            case invalidAudience = "invalid_audience"
            case invalidClaims = "invalid_claims"
            case revoked = "revoked"
            case keysUnavailable = "keys_unavailable"
            case insufficientScope = "insufficient_scope"
            case invalidConfiguration = "invalid_configuration"
        }

        private let wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// The request carries no bearer token.
        public static let missingToken = Code(.missingToken)
        /// The `Authorization` header is unusable (repeated, or `Bearer` without a token).
        public static let invalidRequest = Code(.invalidRequest)
        /// The token is not a compact JWS: wrong segment count, bad base64url, not JSON, over the
        /// size cap, or a `crit` header.
        public static let malformedToken = Code(.malformedToken)
        /// The `alg` header is `none`, unknown or not allowed.
        public static let unsupportedAlgorithm = Code(.unsupportedAlgorithm)
        /// No key has the token's `kid`, even after refreshing the JWKS.
        public static let unknownKey = Code(.unknownKey)
        /// The key named by `kid` is bound to another algorithm than the token's `alg`.
        public static let algorithmMismatch = Code(.algorithmMismatch)
        /// The signature does not verify.
        public static let invalidSignature = Code(.invalidSignature)
        /// `exp` is past (beyond the leeway).
        public static let expired = Code(.expired)
        /// `nbf` or `iat` is in the future (beyond the leeway).
        public static let notYetValid = Code(.notYetValid)
        /// `iss` is not an accepted issuer.
        public static let invalidIssuer = Code(.invalidIssuer)
        /// `aud` names none of the accepted audiences.
        public static let invalidAudience = Code(.invalidAudience)
        /// A required claim is missing or a claim has the wrong type.
        public static let invalidClaims = Code(.invalidClaims)
        /// The token's `jti` is on the deny-list.
        public static let revoked = Code(.revoked)
        /// No keys could be loaded (the JWKS URL failed and nothing is cached).
        public static let keysUnavailable = Code(.keysUnavailable)
        /// The principal lacks a required scope or role.
        public static let insufficientScope = Code(.insufficientScope)
        /// The ``JWTVerifierConfiguration`` is unusable (thrown when the authenticator is created).
        public static let invalidConfiguration = Code(.invalidConfiguration)

        /// The code as a snake_case string, as in the problem's `reason` extension.
        public var description: String { self.wrapped.rawValue }
    }

    /// The kind of failure.
    public var code: Code
    /// What was wrong, for people; never contains the token.
    public var message: String
    /// For ``Code-swift.struct/insufficientScope``: the scopes (or roles) the route requires.
    public var requiredScopes: [String]

    /// Creates an error.
    public init(_ code: Code, _ message: String, requiredScopes: [String] = []) {
        self.code = code
        self.message = message
        self.requiredScopes = requiredScopes
    }

    public var description: String { "\(self.code): \(self.message)" }

    /// Whether the error is about the token itself (a `401` with `error="invalid_token"`).
    public var isInvalidToken: Bool {
        switch self.code {
        case .missingToken, .invalidRequest, .keysUnavailable, .insufficientScope, .invalidConfiguration: false
        default: true
        }
    }

    /// The error as an HTTP answer: problem details and the `WWW-Authenticate` challenge, free of
    /// any HTTP server library so that AviaryService (Hummingbird) and the gateway (SwiftNIO)
    /// answer alike.
    ///
    /// ```swift
    /// let answer = AuthenticationError(.expired, "the token has expired").rendered(realm: "shop")
    /// answer.problem.status          // 401
    /// answer.wwwAuthenticate         // Bearer realm="shop", error="invalid_token", ...
    /// ```
    ///
    /// - Parameter realm: the `realm` of the challenge; nil leaves it out.
    public func rendered(realm: String? = nil) -> RenderedAuthenticationError {
        var parameters: [(String, String)] = []
        if let realm { parameters.append(("realm", realm)) }
        let status: Int
        let slug: String
        var extensions: [String: String] = [:]
        switch self.code {
        case .missingToken:
            status = 401
            slug = "authentication-required"
        case .invalidRequest:
            status = 400
            slug = "invalid-authorization-request"
            parameters.append(("error", "invalid_request"))
            parameters.append(("error_description", self.message))
        case .keysUnavailable, .invalidConfiguration:
            return RenderedAuthenticationError(
                problem: ProblemDetails(
                    status: 503, detail: "tokens cannot be verified right now; try again later",
                    slug: "authentication-unavailable"),
                wwwAuthenticate: nil)
        case .insufficientScope:
            status = 403
            slug = "insufficient-scope"
            parameters.append(("error", "insufficient_scope"))
            parameters.append(("error_description", self.message))
            if !self.requiredScopes.isEmpty {
                parameters.append(("scope", self.requiredScopes.joined(separator: " ")))
                extensions["required_scope"] = self.requiredScopes.joined(separator: " ")
            }
        default:
            status = 401
            slug = "invalid-token"
            extensions["reason"] = self.code.description
            parameters.append(("error", "invalid_token"))
            parameters.append(("error_description", self.message))
        }
        return RenderedAuthenticationError(
            problem: ProblemDetails(status: status, detail: self.message, slug: slug, extensions: extensions),
            wwwAuthenticate: Self.challenge(parameters))
    }

    /// A `Bearer` challenge with quoted parameters, each value reduced to the characters
    /// RFC 6750 allows in them.
    static func challenge(_ parameters: [(String, String)]) -> String {
        guard !parameters.isEmpty else { return "Bearer" }
        let rendered = parameters.map { name, value in
            let safe = String(
                String.UnicodeScalarView(
                    value.unicodeScalars.map { scalar in
                        (0x20...0x7E).contains(scalar.value) && scalar != "\"" && scalar != "\\" ? scalar : "?"
                    }))
            return "\(name)=\"\(safe)\""
        }
        return "Bearer " + rendered.joined(separator: ", ")
    }
}

/// An ``AuthenticationError`` as an HTTP answer: the problem (its `status` is the HTTP status)
/// and the `WWW-Authenticate` value to send with it, if any.
///
/// ```swift
/// let answer = error.rendered(realm: "api")
/// if let challenge = answer.wwwAuthenticate { headers.add(name: "WWW-Authenticate", value: challenge) }
/// ```
public struct RenderedAuthenticationError: Sendable, Hashable {
    /// The RFC 9457 problem; `problem.status` is the HTTP status.
    public var problem: ProblemDetails
    /// The RFC 6750 challenge, for `401`, `400` and `403`; nil for `503`.
    public var wwwAuthenticate: String?

    /// Creates an answer.
    public init(problem: ProblemDetails, wwwAuthenticate: String?) {
        self.problem = problem
        self.wwwAuthenticate = wwwAuthenticate
    }
}
