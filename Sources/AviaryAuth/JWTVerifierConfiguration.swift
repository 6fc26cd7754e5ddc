//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// What a ``JWTAuthenticator`` trusts: where its keys come from, which issuer and audiences a
/// token must name, how much clock skew it tolerates and which algorithms it accepts.
///
/// ```swift
/// let configuration = JWTVerifierConfiguration(
///     keys: [.jwksURL("http://127.0.0.1:8101/.well-known/jwks.json")],
///     issuer: "shop-users",
///     audiences: ["shop"]
/// )
/// let authenticator = try await JWTAuthenticator(configuration)
/// ```
public struct JWTVerifierConfiguration: Sendable {
    /// Where verification keys come from.
    ///
    /// Every key is bound to one algorithm: the JWK's `alg`, or when it has none, the one its
    /// type implies (EC P-256 → ES256, P-384 → ES384, P-521 → ES512, OKP Ed25519 → EdDSA,
    /// RSA → RS256). A token is verified only with a key whose `kid` it names and whose
    /// algorithm equals its `alg`. Only public keys are used: JWKs with private members are
    /// skipped, as are keys marked `"use": "enc"` and key types that are not supported.
    public struct KeySource: Sendable {
        enum Wrapped: Sendable {
            case url(String)
            case file(String)
            case inline(String)
            case hmac(secret: [UInt8], kid: String?, algorithm: JWSAlgorithm)
        }

        let wrapped: Wrapped

        /// A JWKS served over HTTP(S), fetched on first use and cached; refetched when a token
        /// names an unknown `kid` or the cache is older than
        /// ``JWTVerifierConfiguration/JWKSRefresh/maximumAge``, never more often than
        /// ``JWTVerifierConfiguration/JWKSRefresh/minimumInterval``. A failed fetch keeps the
        /// cached keys; while none were ever loaded, failed fetches are retried after 1 s, 2 s,
        /// 4 s, ... up to the minimum interval.
        public static func jwksURL(_ url: String) -> KeySource { KeySource(wrapped: .url(url)) }

        /// A JWKS read from a file when the authenticator is created.
        public static func jwksFile(_ path: String) -> KeySource { KeySource(wrapped: .file(path)) }

        /// A JWKS given as JSON text.
        public static func jwks(_ json: String) -> KeySource { KeySource(wrapped: .inline(json)) }

        /// A shared HMAC secret: an explicit opt-in, accepted only if `algorithm` is also in
        /// ``JWTVerifierConfiguration/allowedAlgorithms``.
        ///
        /// - Parameters:
        ///   - secret: at least as many bytes as the hash's output (32 for HS256).
        ///   - kid: the `kid` tokens signed with it carry; nil matches tokens without a `kid`.
        ///   - algorithm: ``JWSAlgorithm/hs256``, ``JWSAlgorithm/hs384`` or ``JWSAlgorithm/hs512``.
        public static func hmac(
            secret: some Sequence<UInt8>, kid: String? = nil, algorithm: JWSAlgorithm = .hs256
        )
            -> KeySource
        {
            KeySource(wrapped: .hmac(secret: Array(secret), kid: kid, algorithm: algorithm))
        }
    }

    /// How keys fetched from a JWKS URL are cached.
    public struct JWKSRefresh: Sendable, Hashable {
        /// The shortest time between two fetches, whatever tokens arrive, so that tokens with
        /// made-up `kid`s cannot make the service hammer the identity provider.
        public var minimumInterval: Duration
        /// How long fetched keys are used before they are fetched again (on the next request).
        public var maximumAge: Duration
        /// How long one fetch may take.
        public var timeout: Duration
        /// The largest JWKS document accepted (bytes).
        public var maximumBytes: Int

        /// Creates refresh settings.
        public init(
            minimumInterval: Duration = .seconds(30),
            maximumAge: Duration = .seconds(600),
            timeout: Duration = .seconds(5),
            maximumBytes: Int = 1 << 20
        ) {
            self.minimumInterval = minimumInterval
            self.maximumAge = maximumAge
            self.timeout = timeout
            self.maximumBytes = maximumBytes
        }
    }

    /// Where keys come from; a token's key is looked up in all of them.
    public var keys: [KeySource]
    /// The accepted `iss` values; empty accepts any issuer (and none).
    public var issuers: Set<String>
    /// The accepted audiences: a token's `aud` (a string or an array) must contain one of them;
    /// empty skips the check, which is only safe when the keys sign tokens for this service alone.
    public var audiences: Set<String>
    /// The clock skew tolerated on `exp`, `nbf` and `iat`.
    public var leeway: Duration
    /// The algorithms accepted in a token's `alg` header; the public-key algorithms by default.
    /// HMAC algorithms must be listed here *and* have an ``KeySource/hmac(secret:kid:algorithm:)`` key.
    public var allowedAlgorithms: Set<JWSAlgorithm>
    /// Whether a token without `exp` is rejected.
    public var requireExpiry: Bool
    /// The longest compact token accepted (bytes); longer ones are rejected before any decoding.
    public var maximumTokenBytes: Int
    /// How fetched JWKS are cached.
    public var refresh: JWKSRefresh

    /// Creates a configuration.
    ///
    /// - Parameters:
    ///   - keys: where verification keys come from.
    ///   - issuer: the one accepted `iss`; nil accepts any.
    ///   - audiences: the accepted audiences; empty skips the `aud` check.
    ///   - leeway: the tolerated clock skew (60 s by default).
    ///   - allowedAlgorithms: the accepted `alg` values.
    ///   - requireExpiry: whether `exp` is required.
    ///   - maximumTokenBytes: the size cap on tokens (8 KiB by default).
    ///   - refresh: the JWKS cache settings.
    public init(
        keys: [KeySource],
        issuer: String? = nil,
        audiences: Set<String> = [],
        leeway: Duration = .seconds(60),
        allowedAlgorithms: Set<JWSAlgorithm> = JWSAlgorithm.asymmetric,
        requireExpiry: Bool = true,
        maximumTokenBytes: Int = 8192,
        refresh: JWKSRefresh = JWKSRefresh()
    ) {
        self.keys = keys
        self.issuers = issuer.map { [$0] } ?? []
        self.audiences = audiences
        self.leeway = leeway
        self.allowedAlgorithms = allowedAlgorithms
        self.requireExpiry = requireExpiry
        self.maximumTokenBytes = maximumTokenBytes
        self.refresh = refresh
    }
}
