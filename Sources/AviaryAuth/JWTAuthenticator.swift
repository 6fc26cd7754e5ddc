//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AsyncHTTPClient
public import AviaryCore
public import Foundation
public import Logging

/// Verifies compact JWTs (JWS) and turns them into a ``Principal``.
///
/// A token is accepted when, in this order:
/// 1. it is at most ``JWTVerifierConfiguration/maximumTokenBytes`` long and splits into three
///    unpadded base64url segments whose first two are JSON objects, without a `crit` header;
/// 2. its `alg` is in ``JWTVerifierConfiguration/allowedAlgorithms`` (never `none`);
/// 3. a key with its `kid` exists (a JWKS URL is refetched once for an unknown `kid`, within the
///    minimum refresh interval) and that key is bound to the same algorithm, so an HMAC token
///    can never be checked against a public key used as a secret;
/// 4. the signature verifies with that key;
/// 5. `exp` is not past and `nbf`/`iat` not in the future (each with the leeway), `iss` and `aud`
///    are accepted, `sub` is a string;
/// 6. its `jti`, if any, is not in the ``RevokedTokens`` deny-list.
///
/// Otherwise ``authenticate(_:)`` throws an ``AuthenticationError`` saying which step failed.
/// The authenticator logs JWKS fetches and their failures, never tokens.
///
/// ```swift
/// let authenticator = try await JWTAuthenticator(
///     JWTVerifierConfiguration(keys: [.jwksURL(jwksURL)], issuer: "shop-users", audiences: ["shop"]))
/// let principal = try await authenticator.authenticate(token)
/// print(principal.subject, principal.scopes)
/// ```
public final class JWTAuthenticator: Sendable {
    /// What the authenticator trusts.
    public let configuration: JWTVerifierConfiguration
    private let staticKeys: KeySet
    private let caches: [JWKSCache]
    private let revokedTokens: (any RevokedTokens)?
    private let now: @Sendable () -> Date

    /// Creates an authenticator, loading inline, file and HMAC keys at once; JWKS URLs are
    /// fetched on first use (or by ``refreshKeys()``), so that a service may start before its
    /// identity provider.
    ///
    /// - Parameters:
    ///   - configuration: keys, issuer, audiences, leeway, algorithms.
    ///   - revokedTokens: the `jti` deny-list; nil checks none.
    ///   - httpClient: the client that fetches JWKS URLs.
    ///   - clock: measures the JWKS cache's age and refresh interval (a `ManualClock` in tests).
    ///   - now: the wall clock `exp`, `nbf` and `iat` are compared with.
    ///   - logger: where JWKS fetches are logged (label `aviary.auth` by default).
    /// - Throws: ``AuthenticationError`` with code
    ///   ``AuthenticationError/Code-swift.struct/invalidConfiguration`` naming the problem: no
    ///   keys, an unreadable or empty JWKS file, a short HMAC secret, an HMAC algorithm missing
    ///   from ``JWTVerifierConfiguration/allowedAlgorithms``, a URL that is not http(s).
    public init(
        _ configuration: JWTVerifierConfiguration,
        revokedTokens: (any RevokedTokens)? = nil,
        httpClient: HTTPClient = .shared,
        clock: any MonotonicClock = SystemClock(),
        now: @escaping @Sendable () -> Date = { Date() },
        logger: Logger = Logger(label: "aviary.auth")
    ) async throws(AuthenticationError) {
        func invalid(_ message: String) -> AuthenticationError {
            AuthenticationError(.invalidConfiguration, message)
        }
        guard !configuration.keys.isEmpty else { throw invalid("JWTVerifierConfiguration.keys is empty") }
        guard configuration.leeway >= .zero else { throw invalid("JWTVerifierConfiguration.leeway is negative") }
        guard configuration.refresh.minimumInterval > .zero else {
            throw invalid("JWTVerifierConfiguration.refresh.minimumInterval must be positive")
        }
        var staticKeys = KeySet()
        var caches: [JWKSCache] = []
        for source in configuration.keys {
            switch source.wrapped {
            case .url(let url):
                guard let parsed = URL(string: url), ["http", "https"].contains(parsed.scheme?.lowercased()) else {
                    throw invalid("jwksURL \"\(url)\" is not an http(s) URL")
                }
                caches.append(
                    JWKSCache(
                        url: url, settings: configuration.refresh, httpClient: httpClient, clock: clock,
                        logger: logger))
            case .file(let path):
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw invalid("jwksFile \"\(path)\" cannot be read")
                }
                staticKeys.keys += try await Self.loadStatic(data, name: "jwksFile \"\(path)\"").keys
            case .inline(let json):
                staticKeys.keys += try await Self.loadStatic(Data(json.utf8), name: "jwks").keys
            case .hmac(let secret, let kid, let algorithm):
                guard configuration.allowedAlgorithms.contains(algorithm) else {
                    throw invalid("an \(algorithm) key is configured but \(algorithm) is not in allowedAlgorithms")
                }
                staticKeys.keys += try await KeySet.hmac(secret: secret, keyID: kid, algorithm: algorithm).keys
            }
        }
        self.configuration = configuration
        self.staticKeys = staticKeys
        self.caches = caches
        self.revokedTokens = revokedTokens
        self.now = now
    }

    private static func loadStatic(_ data: Data, name: String) async throws(AuthenticationError) -> KeySet {
        let set: KeySet
        do {
            set = try await KeySet.parse(jwks: data)
        } catch {
            throw AuthenticationError(.invalidConfiguration, "\(name): \(error.message)")
        }
        guard !set.keys.isEmpty else {
            let reasons = set.skipped.isEmpty ? "" : " (\(set.skipped.joined(separator: "; ")))"
            throw AuthenticationError(.invalidConfiguration, "\(name) has no usable signing key\(reasons)")
        }
        return set
    }

    /// Fetches every JWKS URL now (within the minimum refresh interval), for example at startup
    /// so that the first request does not wait. A failed fetch keeps the cached keys.
    public func refreshKeys() async {
        for cache in self.caches {
            await cache.refresh()
        }
    }

    /// Verifies `token` (a compact JWS, without `Bearer `) and returns its principal.
    ///
    /// - Throws: ``AuthenticationError`` naming the check that failed.
    public func authenticate(_ token: String) async throws(AuthenticationError) -> Principal {
        let (jwt, algorithm) = try self.parse(token)
        let candidates = try await self.keys(for: jwt.keyID)
        let principal = try self.verify(jwt, algorithm: algorithm, candidates: candidates)
        if let tokenID = principal.tokenID, let revokedTokens = self.revokedTokens {
            let revoked: Bool
            do {
                revoked = try await revokedTokens.isRevoked(tokenID)
            } catch {
                throw AuthenticationError(.revoked, "the token's revocation status is unknown")
            }
            if revoked { throw AuthenticationError(.revoked, "the token has been revoked") }
        }
        return principal
    }

    /// The outcome of ``authenticateWithoutWaiting(_:)``.
    public enum ImmediateResult: Sendable {
        /// The token verified with keys at hand.
        case verified(Principal)
        /// The token is rejected, for a reason that no key fetch could change.
        case rejected(AuthenticationError)
        /// The answer needs waiting: keys must be fetched (never loaded, stale, or no cached key
        /// has the token's `kid`) or the deny-list asked; call ``authenticate(_:)``.
        case needsWaiting
    }

    /// Verifies `token` without suspending when everything it needs is at hand: the keys are
    /// cached and fresh, and no deny-list is configured (or the token has no `jti`). For an
    /// event-loop server (the gateway) that must not hop threads on every request; the checks
    /// and their errors are those of ``authenticate(_:)``.
    ///
    /// ```swift
    /// switch authenticator.authenticateWithoutWaiting(token) {
    /// case .verified(let principal): forward(as: principal)
    /// case .rejected(let error): reject(error)
    /// case .needsWaiting: Task { let principal = try await authenticator.authenticate(token) ... }
    /// }
    /// ```
    public func authenticateWithoutWaiting(_ token: String) -> ImmediateResult {
        do throws(AuthenticationError) {
            let (jwt, algorithm) = try self.parse(token)
            guard let candidates = try self.cachedKeys(for: jwt.keyID) else { return .needsWaiting }
            let principal = try self.verify(jwt, algorithm: algorithm, candidates: candidates)
            if principal.tokenID != nil && self.revokedTokens != nil { return .needsWaiting }
            return .verified(principal)
        } catch {
            return .rejected(error)
        }
    }

    /// Steps 1 and 2: the token's shape and its algorithm.
    private func parse(_ token: String) throws(AuthenticationError) -> (CompactJWT, JWSAlgorithm) {
        let jwt = try CompactJWT(token, maximumBytes: self.configuration.maximumTokenBytes)
        guard jwt.algorithm.lowercased() != "none" else {
            throw AuthenticationError(.unsupportedAlgorithm, "unsigned tokens (alg none) are not accepted")
        }
        guard let algorithm = JWSAlgorithm(rawValue: jwt.algorithm),
            self.configuration.allowedAlgorithms.contains(algorithm)
        else {
            throw AuthenticationError(.unsupportedAlgorithm, "the token's alg is not one this service accepts")
        }
        return (jwt, algorithm)
    }

    /// Steps 3 (algorithm binding), 4 and 5.
    private func verify(
        _ jwt: CompactJWT, algorithm: JWSAlgorithm, candidates: [VerificationKey]
    ) throws(AuthenticationError) -> Principal {
        let usable = candidates.filter { $0.algorithm == algorithm }
        guard !usable.isEmpty else {
            throw AuthenticationError(.algorithmMismatch, "the token's alg does not match its key's algorithm")
        }
        guard usable.contains(where: { $0.verifies(jwt.signature, signs: jwt.signingInput) }) else {
            throw AuthenticationError(.invalidSignature, "the token's signature is invalid")
        }
        return try self.validateClaims(jwt.claims)
    }

    /// The keys a token with `kid` may use from what is at hand; nil when a JWKS URL must be
    /// fetched first (never loaded, older than the maximum age, or none of them has the `kid`).
    private func cachedKeys(for keyID: String?) throws(AuthenticationError) -> [VerificationKey]? {
        var sets = [self.staticKeys]
        for cache in self.caches {
            guard let keys = cache.freshKeys() else { return nil }
            sets.append(keys)
        }
        let found = Self.lookup(sets, keyID: keyID)
        if found.isEmpty {
            // A refetch could bring the kid, unless every URL was fetched within the minimum
            // interval: then the answer is known now (and made-up kids cost no task each).
            if self.caches.contains(where: { $0.mayRefresh() }) { return nil }
            throw AuthenticationError(
                .unknownKey, keyID == nil ? "the token has no kid" : "no key matches the token's kid")
        }
        return found
    }

    private static func lookup(_ sets: [KeySet], keyID: String?) -> [VerificationKey] {
        let all = sets.flatMap(\.keys)
        let matching = all.filter { $0.keyID == keyID }
        // A token without kid may use the only key there is.
        if matching.isEmpty, keyID == nil, all.count == 1 { return all }
        return matching
    }

    /// The keys a token with `kid` may use: from the static sources and the JWKS caches,
    /// refetching the JWKS URLs once when none has the `kid`.
    private func keys(for keyID: String?) async throws(AuthenticationError) -> [VerificationKey] {
        var sets = [self.staticKeys]
        var anyLoaded = !self.staticKeys.keys.isEmpty
        for cache in self.caches {
            let (keys, loaded) = await cache.keys()
            sets.append(keys)
            anyLoaded = anyLoaded || loaded
        }
        var found = Self.lookup(sets, keyID: keyID)
        if found.isEmpty, !self.caches.isEmpty {
            sets = [self.staticKeys]
            for cache in self.caches {
                let (keys, loaded) = await cache.refresh()
                sets.append(keys)
                anyLoaded = anyLoaded || loaded
            }
            found = Self.lookup(sets, keyID: keyID)
        }
        guard !found.isEmpty else {
            if !anyLoaded {
                throw AuthenticationError(.keysUnavailable, "no verification keys could be loaded")
            }
            throw AuthenticationError(
                .unknownKey, keyID == nil ? "the token has no kid" : "no key matches the token's kid")
        }
        return found
    }

    private func validateClaims(_ claims: [String: ClaimValue]) throws(AuthenticationError) -> Principal {
        func date(_ name: String) throws(AuthenticationError) -> Double? {
            switch claims[name] {
            case .none, .null: return nil
            case .number(let seconds) where seconds.isFinite: return seconds
            default: throw AuthenticationError(.invalidClaims, "\(name) is not a NumericDate")
            }
        }
        func string(_ name: String) throws(AuthenticationError) -> String? {
            switch claims[name] {
            case .none: return nil
            case .string(let value): return value
            default: throw AuthenticationError(.invalidClaims, "\(name) is not a string")
            }
        }
        let now = self.now().timeIntervalSince1970
        let leeway = self.configuration.leeway.aviarySeconds
        let expiry = try date("exp")
        if let expiry {
            guard now < expiry + leeway else { throw AuthenticationError(.expired, "the token has expired") }
        } else if self.configuration.requireExpiry {
            throw AuthenticationError(.invalidClaims, "the token has no exp")
        }
        if let notBefore = try date("nbf"), now + leeway < notBefore {
            throw AuthenticationError(.notYetValid, "the token is not valid yet (nbf)")
        }
        let issuedAt = try date("iat")
        if let issuedAt, now + leeway < issuedAt {
            throw AuthenticationError(.notYetValid, "the token was issued in the future (iat)")
        }
        let issuer = try string("iss")
        if !self.configuration.issuers.isEmpty {
            guard let issuer, self.configuration.issuers.contains(issuer) else {
                throw AuthenticationError(.invalidIssuer, "the token's issuer is not accepted")
            }
        }
        let audiences: [String]
        switch claims["aud"] {
        case .none: audiences = []
        case .string(let audience): audiences = [audience]
        case .array(let values):
            audiences = try values.map { value throws(AuthenticationError) in
                guard case .string(let audience) = value else {
                    throw AuthenticationError(.invalidClaims, "aud is not a string or an array of strings")
                }
                return audience
            }
        default: throw AuthenticationError(.invalidClaims, "aud is not a string or an array of strings")
        }
        if !self.configuration.audiences.isEmpty {
            guard audiences.contains(where: self.configuration.audiences.contains) else {
                throw AuthenticationError(.invalidAudience, "the token is not meant for this service (aud)")
            }
        }
        guard let subject = try string("sub") else {
            throw AuthenticationError(.invalidClaims, "the token has no sub")
        }
        return Principal(
            subject: subject,
            issuer: issuer,
            audiences: audiences,
            scopes: Self.words(claims["scope"]).union(Self.words(claims["scp"])),
            roles: Self.words(claims["roles"]),
            expiresAt: expiry.map { Date(timeIntervalSince1970: $0) },
            issuedAt: issuedAt.map { Date(timeIntervalSince1970: $0) },
            tokenID: try string("jti"),
            claims: claims
        )
    }

    /// The strings of a space-separated string or of an array of strings (other elements ignored).
    private static func words(_ value: ClaimValue?) -> Set<String> {
        switch value {
        case .string(let text): Set(text.split(separator: " ").map(String.init))
        case .array(let values): Set(values.compactMap(\.stringValue))
        default: []
        }
    }
}
