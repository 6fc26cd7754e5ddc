//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
import JWTKit

/// One key bound to one algorithm; jwt-kit does the signature arithmetic.
struct VerificationKey: Sendable {
    var keyID: String?
    var algorithm: JWSAlgorithm
    var verifier: any JWTAlgorithm

    func verifies(_ signature: [UInt8], signs input: ArraySlice<UInt8>) -> Bool {
        // jwt-kit throws on signatures of the wrong shape (such as an ECDSA signature of the
        // wrong length): that is a signature that does not verify.
        (try? self.verifier.verify(signature, signs: input)) ?? false
    }
}

/// The keys of one source, looked up by `kid`.
struct KeySet: Sendable {
    var keys: [VerificationKey] = []
    /// Why keys of the document were left out, for the log.
    var skipped: [String] = []

    /// The keys a token with `kid` may name.
    func candidates(keyID: String?) -> [VerificationKey] {
        self.keys.filter { $0.keyID == keyID }
    }

    /// Parses a JWKS document, keeping the public signing keys it can use.
    ///
    /// - Throws: when the document is not a JWKS at all; single unusable keys are skipped.
    static func parse(jwks data: Data) async throws(AuthenticationError) -> KeySet {
        guard let document = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let entries = document["keys"] as? [Any]
        else {
            throw AuthenticationError(.invalidConfiguration, "the JWKS is not a JSON object with a \"keys\" array")
        }
        var set = KeySet()
        for (index, entry) in entries.enumerated() {
            do {
                set.keys.append(try await Self.key(from: entry))
            } catch {
                set.skipped.append("keys[\(index)]: \(error.message)")
            }
        }
        return set
    }

    private static func key(from entry: Any) async throws(AuthenticationError) -> VerificationKey {
        guard let object = entry as? [String: Any], let type = object["kty"] as? String else {
            throw AuthenticationError(.invalidConfiguration, "not a JWK (no kty)")
        }
        if let use = object["use"] as? String, use != "sig" {
            throw AuthenticationError(.invalidConfiguration, "use is \"\(use)\", not sig")
        }
        if object["d"] != nil {
            throw AuthenticationError(.invalidConfiguration, "a private key; only public keys are used")
        }
        let keyID = object["kid"] as? String
        let algorithm: JWSAlgorithm
        if let name = object["alg"] as? String {
            guard let named = JWSAlgorithm(rawValue: name), !named.isSymmetric else {
                throw AuthenticationError(.invalidConfiguration, "unsupported alg \"\(name)\"")
            }
            algorithm = named
        } else {
            switch (type, object["crv"] as? String) {
            case ("EC", "P-256"): algorithm = .es256
            case ("EC", "P-384"): algorithm = .es384
            case ("EC", "P-521"): algorithm = .es512
            case ("OKP", "Ed25519"): algorithm = .eddsa
            case ("RSA", _): algorithm = .rs256
            default:
                throw AuthenticationError(.invalidConfiguration, "unsupported key type \"\(type)\"")
            }
        }
        guard var jwk = try? JSONDecoder().decode(JWK.self, from: JSONSerialization.data(withJSONObject: object)),
            let jwkAlgorithm = JWK.Algorithm(rawValue: algorithm.rawValue)
        else {
            throw AuthenticationError(.invalidConfiguration, "an unsupported or invalid \(type) key")
        }
        // jwt-kit's key collection requires a kid; a private one stands in for a key without.
        let identifier = JWKIdentifier(string: keyID ?? "aviary-key-without-kid")
        jwk.keyIdentifier = identifier
        jwk.algorithm = jwkAlgorithm
        let verifier: any JWTAlgorithm
        do {
            let collection = JWTKeyCollection()
            try await collection.add(jwk: jwk)
            verifier = try await collection.getKey(for: identifier, alg: algorithm.rawValue)
        } catch {
            throw AuthenticationError(.invalidConfiguration, "an invalid \(type) key for \(algorithm)")
        }
        guard verifier.name == algorithm.rawValue else {
            throw AuthenticationError(.invalidConfiguration, "a \(type) key cannot be used for \(algorithm)")
        }
        return VerificationKey(keyID: keyID, algorithm: algorithm, verifier: verifier)
    }

    /// A key set holding one HMAC secret.
    static func hmac(
        secret: [UInt8], keyID: String?, algorithm: JWSAlgorithm
    ) async throws(AuthenticationError)
        -> KeySet
    {
        let digest: DigestAlgorithm
        let minimumBytes: Int
        switch algorithm {
        case .hs256: (digest, minimumBytes) = (.sha256, 32)
        case .hs384: (digest, minimumBytes) = (.sha384, 48)
        case .hs512: (digest, minimumBytes) = (.sha512, 64)
        default:
            throw AuthenticationError(
                .invalidConfiguration, "an HMAC key needs HS256, HS384 or HS512, not \(algorithm)")
        }
        guard secret.count >= minimumBytes else {
            throw AuthenticationError(
                .invalidConfiguration,
                "an \(algorithm) secret needs at least \(minimumBytes) bytes, got \(secret.count)")
        }
        let identifier = JWKIdentifier(string: keyID ?? "aviary-key-without-kid")
        let collection = JWTKeyCollection()
        await collection.add(hmac: HMACKey(from: secret), digestAlgorithm: digest, kid: identifier)
        do {
            let verifier = try await collection.getKey(for: identifier, alg: algorithm.rawValue)
            return KeySet(keys: [VerificationKey(keyID: keyID, algorithm: algorithm, verifier: verifier)])
        } catch {
            throw AuthenticationError(.invalidConfiguration, "the HMAC key could not be loaded")
        }
    }
}
