//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Crypto
import CryptoExtras
import Foundation

/// Salted PBKDF2-SHA256 password hashes, stored as `pbkdf2-sha256$<rounds>$<salt>$<hash>` (base64).
enum PasswordHash {
    /// OWASP's 2023 figure for PBKDF2-SHA256 is 600 000; Shop is a demo on a developer's machine
    /// and logs in on every test, so it takes fewer. The count is stored, so it can grow.
    static let rounds = 20_000

    static func make(_ password: String) throws -> String {
        let salt = SymmetricKey(size: .bits128).withUnsafeBytes { Data($0) }
        let hash = try Self.derive(password, salt: salt, rounds: Self.rounds)
        return "pbkdf2-sha256$\(Self.rounds)$\(salt.base64EncodedString())$\(hash.base64EncodedString())"
    }

    static func verify(_ password: String, against stored: String) throws -> Bool {
        let parts = stored.split(separator: "$").map(String.init)
        guard parts.count == 4, parts[0] == "pbkdf2-sha256", let rounds = Int(parts[1]),
            let salt = Data(base64Encoded: parts[2]), let expected = Data(base64Encoded: parts[3])
        else { return false }
        let actual = try Self.derive(password, salt: salt, rounds: rounds)
        // Constant time: compare every byte whatever the first difference.
        guard actual.count == expected.count else { return false }
        return zip(actual, expected).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    private static func derive(_ password: String, salt: Data, rounds: Int) throws -> Data {
        let key = try KDF.Insecure.PBKDF2.deriveKey(
            from: Data(password.utf8), salt: salt, using: .sha256, outputByteCount: 32, unsafeUncheckedRounds: rounds)
        return key.withUnsafeBytes { Data($0) }
    }
}
