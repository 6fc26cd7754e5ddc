//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// A JWS signature algorithm a ``JWTAuthenticator`` may accept, named as in a token's `alg`
/// header (RFC 7518).
///
/// `none` is not one of them: unsigned tokens are always rejected. The HMAC algorithms are
/// accepted only with an HMAC key configured (``JWTVerifierConfiguration/KeySource/hmac(secret:kid:algorithm:)``)
/// and listed in ``JWTVerifierConfiguration/allowedAlgorithms``.
///
/// ```swift
/// var configuration = JWTVerifierConfiguration(keys: [.jwksURL("https://idp.example/jwks.json")])
/// configuration.allowedAlgorithms = [.es256]   // only ES256
/// ```
public struct JWSAlgorithm: Sendable, Hashable, CustomStringConvertible {
    private enum Wrapped: String, CaseIterable {
        case es256 = "ES256"
        case es384 = "ES384"
        case es512 = "ES512"
        case rs256 = "RS256"
        case rs384 = "RS384"
        case rs512 = "RS512"
        case ps256 = "PS256"
        case ps384 = "PS384"
        case ps512 = "PS512"
        case eddsa = "EdDSA"
        case hs256 = "HS256"
        case hs384 = "HS384"
        case hs512 = "HS512"
    }

    private let wrapped: Wrapped

    private init(_ wrapped: Wrapped) {
        self.wrapped = wrapped
    }

    /// The algorithm named `name` exactly as in an `alg` header (case-sensitive); nil for names
    /// that are not supported, `none` included.
    public init?(rawValue name: String) {
        guard let wrapped = Wrapped(rawValue: name) else { return nil }
        self.wrapped = wrapped
    }

    /// The name used in `alg` headers and JWKs.
    public var rawValue: String { self.wrapped.rawValue }
    public var description: String { self.wrapped.rawValue }

    /// ECDSA on P-256 with SHA-256.
    public static let es256 = JWSAlgorithm(.es256)
    /// ECDSA on P-384 with SHA-384.
    public static let es384 = JWSAlgorithm(.es384)
    /// ECDSA on P-521 with SHA-512.
    public static let es512 = JWSAlgorithm(.es512)
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    public static let rs256 = JWSAlgorithm(.rs256)
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    public static let rs384 = JWSAlgorithm(.rs384)
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    public static let rs512 = JWSAlgorithm(.rs512)
    /// RSASSA-PSS with SHA-256.
    public static let ps256 = JWSAlgorithm(.ps256)
    /// RSASSA-PSS with SHA-384.
    public static let ps384 = JWSAlgorithm(.ps384)
    /// RSASSA-PSS with SHA-512.
    public static let ps512 = JWSAlgorithm(.ps512)
    /// Ed25519 signatures.
    public static let eddsa = JWSAlgorithm(.eddsa)
    /// HMAC with SHA-256 (a shared secret; explicit opt-in only).
    public static let hs256 = JWSAlgorithm(.hs256)
    /// HMAC with SHA-384 (a shared secret; explicit opt-in only).
    public static let hs384 = JWSAlgorithm(.hs384)
    /// HMAC with SHA-512 (a shared secret; explicit opt-in only).
    public static let hs512 = JWSAlgorithm(.hs512)

    /// The public-key algorithms, the default of ``JWTVerifierConfiguration/allowedAlgorithms``.
    public static let asymmetric: Set<JWSAlgorithm> = [
        .es256, .es384, .es512, .rs256, .rs384, .rs512, .ps256, .ps384, .ps512, .eddsa,
    ]

    /// Whether the algorithm uses a shared secret (HS256, HS384, HS512).
    public var isSymmetric: Bool {
        switch self.wrapped {
        case .hs256, .hs384, .hs512: true
        default: false
        }
    }
}
