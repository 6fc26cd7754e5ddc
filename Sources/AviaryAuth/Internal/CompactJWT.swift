//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation

/// A compact JWS split and decoded, before any key is consulted: the header's `alg`, `kid` and
/// `crit`, the claims, the signature and the bytes it signs.
///
/// Parsing is strict: exactly three segments, unpadded base64url alphabet only, header and
/// payload JSON objects. Nothing here trusts the token yet.
struct CompactJWT {
    var algorithm: String
    var keyID: String?
    var claims: [String: ClaimValue]
    var signature: [UInt8]
    var signingInput: ArraySlice<UInt8>

    init(_ token: String, maximumBytes: Int) throws(AuthenticationError) {
        let bytes = Array(token.utf8)
        guard bytes.count <= maximumBytes else {
            throw AuthenticationError(.malformedToken, "the token is longer than \(maximumBytes) bytes")
        }
        let dots = bytes.indices.filter { bytes[$0] == UInt8(ascii: ".") }
        guard dots.count == 2 else {
            throw AuthenticationError(.malformedToken, "the token is not a compact JWS of three segments")
        }
        let headerBytes = bytes[..<dots[0]]
        let payloadBytes = bytes[(dots[0] + 1)..<dots[1]]
        let signatureBytes = bytes[(dots[1] + 1)...]
        guard let headerData = Base64URL.decode(headerBytes), let payloadData = Base64URL.decode(payloadBytes),
            let signature = Base64URL.decode(signatureBytes)
        else {
            throw AuthenticationError(.malformedToken, "a token segment is not unpadded base64url")
        }
        let decoder = JSONDecoder()
        guard let header = try? decoder.decode([String: ClaimValue].self, from: Data(headerData)) else {
            throw AuthenticationError(.malformedToken, "the token header is not a JSON object")
        }
        guard let claims = try? decoder.decode([String: ClaimValue].self, from: Data(payloadData)) else {
            throw AuthenticationError(.malformedToken, "the token payload is not a JSON object")
        }
        guard case .string(let algorithm) = header["alg"] else {
            throw AuthenticationError(.malformedToken, "the token header has no alg")
        }
        // RFC 7515 §4.1.11: extensions listed in crit must be understood; this verifier knows none.
        if header["crit"] != nil {
            throw AuthenticationError(
                .malformedToken, "the token header has crit extensions this service does not support")
        }
        switch header["kid"] {
        case .none: self.keyID = nil
        case .string(let kid): self.keyID = kid
        default: throw AuthenticationError(.malformedToken, "the token header's kid is not a string")
        }
        self.algorithm = algorithm
        self.claims = claims
        self.signature = signature
        self.signingInput = bytes[..<dots[1]]
    }
}

/// Strict unpadded base64url (RFC 7515 §2): no padding, no whitespace, no other alphabet.
enum Base64URL {
    static func decode(_ text: ArraySlice<UInt8>) -> [UInt8]? {
        guard text.count % 4 != 1 else { return nil }
        var output: [UInt8] = []
        output.reserveCapacity(text.count * 3 / 4)
        var buffer: UInt32 = 0
        var bits = 0
        for character in text {
            let value: UInt8
            switch character {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = character - UInt8(ascii: "A")
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = character - UInt8(ascii: "a") + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = character - UInt8(ascii: "0") + 52
            case UInt8(ascii: "-"): value = 62
            case UInt8(ascii: "_"): value = 63
            default: return nil
            }
            buffer = (buffer << 6) | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                output.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits)))
            }
        }
        // The leftover bits of the last character must be zero (a canonical encoding).
        guard buffer & ((1 << UInt32(bits)) - 1) == 0 else { return nil }
        return output
    }

    static func encode(_ bytes: some Sequence<UInt8>) -> String {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}
