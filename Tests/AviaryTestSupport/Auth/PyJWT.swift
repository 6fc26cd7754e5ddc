//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
import Synchronization
import Testing

/// Keys and tokens made by an independent implementation: Python's PyJWT and `cryptography`
/// (installed by `.ci/run`). The tests fail, never skip, without them.
public enum PyJWT {
    /// One generated key pair: the private key as PEM (for minting), the public key as PEM (the
    /// "secret" of algorithm-confusion tokens) and as a JWK (for the verifier).
    public struct Key: Sendable {
        public var kid: String
        public var algorithm: String
        public var privatePEM: String
        public var publicPEM: String
        public var publicJWK: String
    }

    public struct Keys: Sendable {
        public var es256: Key
        public var rs256: Key
        public var eddsa: Key
        /// A second P-256 key, for rotation.
        public var es256Next: Key

        /// A JWKS of the given keys' public halves.
        public func jwks(_ keys: [Key]) -> String {
            "{\"keys\":[" + keys.map(\.publicJWK).joined(separator: ",") + "]}"
        }
    }

    /// How to sign one token.
    public enum Signing: Sendable {
        /// PyJWT `jwt.encode` with the key's algorithm and private key.
        case key(Key)
        /// PyJWT `jwt.encode` with HMAC and a shared secret.
        case hmac(secret: String, algorithm: String = "HS256")
        /// Hand-made: HMAC-SHA256 with the given public key's PEM as the secret (algorithm confusion).
        case confusion(publicPEM: String)
        /// Hand-made: `alg` as given, empty signature.
        case unsigned(alg: String)
    }

    public struct TokenRequest: Sendable {
        public var signing: Signing
        public var claims: [String: any Sendable]
        public var kid: String?
        public var extraHeaders: [String: String]

        public init(
            _ signing: Signing, claims: [String: any Sendable], kid: String? = nil, extraHeaders: [String: String] = [:]
        ) {
            self.signing = signing
            self.claims = claims
            self.kid = kid
            self.extraHeaders = extraHeaders
        }
    }

    /// Keys generated once per test process.
    public static let keys = Task<Keys, any Error> { try await generateKeys() }

    public static func generateKeys() async throws -> Keys {
        let output = try await run(Self.keysScript, input: [:])
        let object = try #require(output as? [String: [String: String]])
        func key(_ name: String) throws -> Key {
            let entry = try #require(object[name])
            return Key(
                kid: try #require(entry["kid"]), algorithm: try #require(entry["alg"]),
                privatePEM: try #require(entry["private"]), publicPEM: try #require(entry["public"]),
                publicJWK: try #require(entry["jwk"]))
        }
        return Keys(
            es256: try key("es256"), rs256: try key("rs256"), eddsa: try key("eddsa"),
            es256Next: try key("es256next"))
    }

    /// Mints the tokens, in order.
    public static func mint(_ requests: [TokenRequest]) async throws -> [String] {
        let specs: [[String: Any]] = requests.map { request in
            var spec: [String: Any] = ["claims": request.claims, "headers": request.extraHeaders]
            if let kid = request.kid { spec["kid"] = kid }
            switch request.signing {
            case .key(let key):
                spec["mode"] = "key"
                spec["alg"] = key.algorithm
                spec["key"] = key.privatePEM
                if request.kid == nil { spec["kid"] = key.kid }
            case .hmac(let secret, let algorithm):
                spec["mode"] = "key"
                spec["alg"] = algorithm
                spec["key"] = secret
            case .confusion(let publicPEM):
                spec["mode"] = "confusion"
                spec["key"] = publicPEM
            case .unsigned(let alg):
                spec["mode"] = "unsigned"
                spec["alg"] = alg
            }
            return spec
        }
        let output = try await run(Self.mintScript, input: ["tokens": specs])
        return try #require(output as? [String])
    }

    /// Mints one token.
    public static func mint(_ request: TokenRequest) async throws -> String {
        try #require(try await mint([request]).first)
    }

    /// Runs a Python script with `input` as JSON on stdin and returns its stdout parsed as JSON.
    public static func run(_ script: String, input: [String: Any]) async throws -> Any {
        let output = try await Python.run(
            script, stdin: try JSONSerialization.data(withJSONObject: input), what: "PyJWT")
        return try JSONSerialization.jsonObject(with: output, options: [.fragmentsAllowed])
    }

    static let keysScript = """
        import json, sys
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa, ed25519
        from jwt.algorithms import ECAlgorithm, RSAAlgorithm, OKPAlgorithm

        def entry(kid, alg, private, to_jwk):
            public = private.public_key()
            jwk = to_jwk(public, as_dict=True)
            jwk.update({"kid": kid, "alg": alg, "use": "sig"})
            return {
                "kid": kid, "alg": alg,
                "private": private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()).decode(),
                "public": public.public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
                "jwk": json.dumps(jwk),
            }

        print(json.dumps({
            "es256": entry("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1()), ECAlgorithm.to_jwk),
            "es256next": entry("ec-2", "ES256", ec.generate_private_key(ec.SECP256R1()), ECAlgorithm.to_jwk),
            "rs256": entry("rsa-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048),
                           RSAAlgorithm.to_jwk),
            "eddsa": entry("ed-1", "EdDSA", ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm.to_jwk),
        }))
        """

    static let mintScript = """
        import base64, hashlib, hmac, json, sys, warnings
        import jwt
        warnings.simplefilter("ignore")

        def b64(data):
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        def segment(obj):
            return b64(json.dumps(obj, separators=(",", ":")).encode())

        tokens = []
        for spec in json.load(sys.stdin)["tokens"]:
            headers = dict(spec.get("headers", {}))
            if "kid" in spec:
                headers["kid"] = spec["kid"]
            mode = spec["mode"]
            if mode == "key":
                tokens.append(jwt.encode(spec["claims"], spec["key"], algorithm=spec["alg"], headers=headers))
            elif mode == "confusion":
                header = {"alg": "HS256", "typ": "JWT", **headers}
                signing_input = segment(header) + "." + segment(spec["claims"])
                mac = hmac.new(spec["key"].encode(), signing_input.encode(), hashlib.sha256).digest()
                tokens.append(signing_input + "." + b64(mac))
            elif mode == "unsigned":
                header = {"alg": spec["alg"], "typ": "JWT", **headers}
                tokens.append(segment(header) + "." + segment(spec["claims"]) + ".")
        print(json.dumps(tokens))
        """
}
