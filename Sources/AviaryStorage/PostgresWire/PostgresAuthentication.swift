//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Crypto
import Foundation

// The client side of PostgreSQL's password authentication: SCRAM-SHA-256 (RFC 5802 with the
// SHA-256 hash of RFC 7677, as PostgreSQL uses it, without channel binding) and the older MD5
// response. Pure computation over bytes: the connection sends and receives the messages.

/// The client side of a SCRAM-SHA-256 exchange as PostgreSQL runs it, without channel binding.
///
/// PostgreSQL offers the mechanism in `AuthenticationSASL`; the client answers with
/// `SASLInitialResponse` carrying ``clientFirstMessage()``, the server sends the server-first-message in
/// `AuthenticationSASLContinue`, the client answers with ``clientFinalMessage(serverFirst:)`` in a
/// `SASLResponse`, and the server ends with the server-final-message in `AuthenticationSASLFinal`, which
/// ``verify(serverFinal:)`` checks: it proves that the server knows the password's verifier too.
///
/// The user name in the client-first-message is empty by default, as PostgreSQL expects (it takes the role
/// from the startup message and ignores this one).
///
/// ```swift
/// var scram = PostgresSCRAMClient(password: "secret")
/// send(.saslInitialResponse(mechanism: PostgresSCRAMClient.mechanism, scram.clientFirstMessage()))
/// let response = try scram.clientFinalMessage(serverFirst: receivedSASLContinueData)
/// send(.saslResponse(response))
/// try scram.verify(serverFinal: receivedSASLFinalData)
/// ```
///
/// The password is used as its UTF-8 bytes. PostgreSQL normalizes passwords with SASLprep (RFC 4013)
/// before hashing and falls back to the raw bytes when SASLprep refuses one. For an all-ASCII password
/// that normalization changes nothing (ASCII is not mapped and is already in NFKC; an ASCII control
/// character is prohibited, so the server uses the raw bytes), so ASCII passwords are exact. A non-ASCII
/// password is used as given, without SASLprep's mapping and NFKC normalization: it authenticates when it
/// is already in that normal form (the usual precomposed text), and not otherwise.
package struct PostgresSCRAMClient: Sendable {
    /// The SASL mechanism name to choose in PostgreSQL's `SASLInitialResponse`.
    ///
    /// ```swift
    /// guard offeredMechanisms.contains(PostgresSCRAMClient.mechanism) else { throw unsupported }
    /// ```
    package static let mechanism = "SCRAM-SHA-256"

    /// The largest iteration count a server may ask for; more is refused rather than spending
    /// seconds of CPU on a hostile or broken server's request. PostgreSQL's default is 4096.
    ///
    /// ```swift
    /// assert(PostgresSCRAMClient.maximumIterationCount == 10_000_000)
    /// ```
    package static let maximumIterationCount = 10_000_000

    /// The password's bytes (see the type's discussion about SASLprep).
    private let password: [UInt8]
    /// The nonce this client chose.
    private let clientNonce: String
    /// client-first-message-bare: `n=<user>,r=<client nonce>`.
    private let clientFirstBare: [UInt8]
    /// The ServerSignature the server must send back, once the client-final-message has been made.
    private var expectedServerSignature: [UInt8]?

    /// The gs2 header of a client that does not support channel binding: `n,,`.
    private static let gs2Header: [UInt8] = Array("n,,".utf8)
    /// The gs2 header in base64, as the client-final-message's `c=` attribute carries it.
    private static let channelBinding = "biws"

    /// Creates the client for one exchange.
    ///
    /// ```swift
    /// var scram = PostgresSCRAMClient(password: "secret")                      // what PostgreSQL needs
    /// var fixed = PostgresSCRAMClient(password: "pencil", username: "user", nonce: "rOprNGfwEbeRWgbNEkqO")
    /// ```
    ///
    /// - Parameters:
    ///   - password: The role's password.
    ///   - username: The user name in the client-first-message; PostgreSQL ignores it and expects it
    ///     empty, the default. `=` and `,` are escaped as `=3D` and `=2C`.
    ///   - nonce: The client nonce; by default 24 random bytes from `SystemRandomNumberGenerator`,
    ///     base64-encoded. A fixed nonce is for tests only.
    /// - Precondition: `nonce`, when given, is not empty and has only printable ASCII other than `,`.
    package init(password: String, username: String = "", nonce: String? = nil) {
        let nonce = nonce ?? Self.randomNonce()
        precondition(
            !nonce.isEmpty && nonce.utf8.allSatisfy { (0x21...0x7E).contains($0) && $0 != UInt8(ascii: ",") },
            "a SCRAM nonce is printable ASCII without commas")
        self.password = Array(password.utf8)
        self.clientNonce = nonce
        var escapedName = ""
        for character in username {
            switch character {
            case "=": escapedName += "=3D"
            case ",": escapedName += "=2C"
            default: escapedName.append(character)
            }
        }
        self.clientFirstBare = Array("n=\(escapedName),r=\(nonce)".utf8)
        self.expectedServerSignature = nil
    }

    /// The client-first-message, `n,,n=,r=<nonce>`, to send in `SASLInitialResponse`.
    ///
    /// ```swift
    /// let scram = PostgresSCRAMClient(password: "secret", nonce: "abc")
    /// String(decoding: scram.clientFirstMessage(), as: UTF8.self)   // "n,,n=,r=abc"
    /// ```
    package func clientFirstMessage() -> [UInt8] {
        Self.gs2Header + self.clientFirstBare
    }

    /// Checks the server-first-message and returns the client-final-message with the proof that the
    /// client knows the password.
    ///
    /// The server-first-message must be exactly `r=<nonce>,s=<salt>,i=<iterations>`: the server's nonce
    /// extends this client's nonce, the salt is non-empty base64 and the iteration count a decimal
    /// integer from 1 to ``maximumIterationCount``. The proof costs `iterations` HMAC-SHA-256
    /// computations (PostgreSQL's default 4096 takes a few milliseconds).
    ///
    /// ```swift
    /// var scram = PostgresSCRAMClient(password: "secret")
    /// _ = scram.clientFirstMessage()
    /// let final = try scram.clientFinalMessage(serverFirst: serverFirst)   // "c=biws,r=...,p=..."
    /// ```
    ///
    /// - Parameter serverFirst: The data of PostgreSQL's `AuthenticationSASLContinue`.
    /// - Returns: `c=biws,r=<server nonce>,p=<base64 proof>`, the data of the `SASLResponse`.
    /// - Throws: ``PostgresAuthenticationError`` when the message is malformed, the nonce does not extend
    ///   ours, the salt or iteration count is invalid, or a server-first-message was already answered.
    package mutating func clientFinalMessage(
        serverFirst: [UInt8]
    ) throws(PostgresAuthenticationError) -> [UInt8] {
        guard self.expectedServerSignature == nil else {
            throw PostgresAuthenticationError(
                .unexpectedMessage, "the server sent a second SCRAM server-first-message")
        }
        let (serverNonce, salt, iterations) = try self.parseServerFirst(serverFirst)

        let saltedPassword = Self.saltedPassword(password: self.password, salt: salt, iterations: iterations)
        let saltedKey = SymmetricKey(data: saltedPassword)
        let clientKey = Array(HMAC<SHA256>.authenticationCode(for: Array("Client Key".utf8), using: saltedKey))
        let storedKey = Array(SHA256.hash(data: clientKey))
        let serverKey = Array(HMAC<SHA256>.authenticationCode(for: Array("Server Key".utf8), using: saltedKey))

        let finalWithoutProof = Array("c=\(Self.channelBinding),r=\(serverNonce)".utf8)
        let comma = [UInt8(ascii: ",")]
        let authMessage = self.clientFirstBare + comma + serverFirst + comma + finalWithoutProof
        let clientSignature = HMAC<SHA256>.authenticationCode(for: authMessage, using: SymmetricKey(data: storedKey))
        let clientProof = zip(clientKey, clientSignature).map { $0 ^ $1 }
        self.expectedServerSignature = Array(
            HMAC<SHA256>.authenticationCode(for: authMessage, using: SymmetricKey(data: serverKey)))

        return finalWithoutProof + Array(",p=\(Data(clientProof).base64EncodedString())".utf8)
    }

    /// Checks the server-final-message: the server's signature must be the one only a server that holds
    /// the password's verifier can compute.
    ///
    /// ```swift
    /// try scram.verify(serverFinal: serverFinal)   // "v=<base64 signature>": authenticated both ways
    /// ```
    ///
    /// - Parameter serverFinal: The data of PostgreSQL's `AuthenticationSASLFinal`.
    /// - Throws: ``PostgresAuthenticationError`` when the message is `e=<error>` (the error is quoted),
    ///   is not `v=<base64>`, carries a different signature (compared in constant time), or arrives
    ///   before ``clientFinalMessage(serverFirst:)`` produced the expected signature.
    package func verify(serverFinal: [UInt8]) throws(PostgresAuthenticationError) {
        let text = String(decoding: serverFinal, as: UTF8.self)
        if serverFinal.starts(with: Array("e=".utf8)) {
            throw PostgresAuthenticationError(
                .serverError, "the server refused the SCRAM exchange: \(Self.quoted(String(text.dropFirst(2))))")
        }
        guard let expected = self.expectedServerSignature else {
            throw PostgresAuthenticationError(
                .unexpectedMessage, "the server sent its SCRAM server-final-message before the client-final-message")
        }
        guard serverFinal.starts(with: Array("v=".utf8)), !serverFinal.dropFirst(2).contains(UInt8(ascii: ",")),
            let signature = Data(base64Encoded: Data(serverFinal.dropFirst(2))), !signature.isEmpty
        else {
            throw PostgresAuthenticationError(
                .malformedMessage,
                "the SCRAM server-final-message \(Self.quoted(text)) is not v=<base64 signature> or e=<error>")
        }
        guard Self.constantTimeEqual(Array(signature), expected) else {
            throw PostgresAuthenticationError(
                .serverSignatureMismatch,
                "the server's SCRAM signature does not match: it does not know this role's password verifier")
        }
    }

    // MARK: Internals

    /// Parses `r=<nonce>,s=<salt>,i=<iterations>` strictly.
    private func parseServerFirst(
        _ message: [UInt8]
    ) throws(PostgresAuthenticationError) -> (nonce: String, salt: [UInt8], iterations: Int) {
        let text = String(decoding: message, as: UTF8.self)
        let attributes = message.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
        func malformed(_ problem: String) -> PostgresAuthenticationError {
            PostgresAuthenticationError(
                .malformedMessage,
                "the SCRAM server-first-message \(Self.quoted(text)) \(problem); expected r=<nonce>,s=<salt>,i=<count>")
        }
        if message.starts(with: Array("m=".utf8)) {
            throw malformed("asks for a mandatory extension (m=), which this client does not support")
        }
        let names = ["r", "s", "i"]
        var values: [String] = []
        for (index, name) in names.enumerated() {
            guard index < attributes.count else { throw malformed("has no \(name)= attribute") }
            let attribute = attributes[index]
            guard attribute.starts(with: Array("\(name)=".utf8)) else {
                throw malformed("has \(Self.quoted(String(decoding: attribute, as: UTF8.self))) where \(name)= belongs")
            }
            values.append(String(decoding: attribute.dropFirst(2), as: UTF8.self))
        }
        guard attributes.count == names.count else {
            throw malformed("has more attributes after i=")
        }
        let (nonce, saltText, iterationText) = (values[0], values[1], values[2])

        guard nonce.utf8.count > self.clientNonce.utf8.count, nonce.hasPrefix(self.clientNonce) else {
            throw PostgresAuthenticationError(
                .nonceMismatch,
                "the server's SCRAM nonce \(Self.quoted(nonce)) does not extend the client's nonce "
                    + "\(Self.quoted(self.clientNonce))")
        }
        guard nonce.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            throw malformed("has a nonce with characters other than printable ASCII")
        }
        guard let salt = Data(base64Encoded: saltText), !salt.isEmpty else {
            throw PostgresAuthenticationError(
                .invalidSalt, "the server's SCRAM salt \(Self.quoted(saltText)) is not non-empty base64")
        }
        guard !iterationText.isEmpty, iterationText.utf8.allSatisfy({ (0x30...0x39).contains($0) }) else {
            throw PostgresAuthenticationError(
                .invalidIterationCount,
                "the server's SCRAM iteration count \(Self.quoted(iterationText)) is not a decimal integer")
        }
        guard let iterations = Int(iterationText), (1...Self.maximumIterationCount).contains(iterations) else {
            throw PostgresAuthenticationError(
                .invalidIterationCount,
                "the server's SCRAM iteration count \(Self.quoted(iterationText)) is not in "
                    + "1...\(Self.maximumIterationCount)")
        }
        return (nonce, Array(salt), iterations)
    }

    /// Hi(password, salt, i) of RFC 5802, which is PBKDF2 with HMAC-SHA-256 and one output block.
    private static func saltedPassword(password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8] {
        // The HMAC keyed with the password, made once: each round copies it (copy-on-write) instead
        // of deriving the inner and outer padded keys again.
        let keyed = HMAC<SHA256>(key: SymmetricKey(data: password))
        var first = keyed
        first.update(data: salt + [0, 0, 0, 1])  // INT(1): the first and only block
        var block = first.finalize()
        var result = Array(block)
        for _ in 1..<iterations {
            var round = keyed
            block.withUnsafeBytes { round.update(data: $0) }
            block = round.finalize()
            block.withUnsafeBytes { bytes in
                for index in result.indices { result[index] ^= bytes[index] }
            }
        }
        return result
    }

    /// Equality whose time depends only on the lengths, not on where the bytes differ.
    private static func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
        return difference == 0
    }

    /// 24 random bytes in base64 (32 characters).
    private static func randomNonce() -> String {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<24).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        return Data(bytes).base64EncodedString()
    }

    /// Server text in quotes, cut to a length fit for an error message.
    private static func quoted(_ text: String) -> String {
        text.count > 100 ? "\"\(text.prefix(100))...\"" : "\"\(text)\""
    }
}

/// The response to PostgreSQL's `AuthenticationMD5Password`.
///
/// ```swift
/// let response = PostgresMD5Password.response(user: "shop", password: "secret", salt: salt)
/// send(.passwordMessage(response + [0]))   // the caller adds the terminating NUL
/// ```
package enum PostgresMD5Password: Sendable {
    /// `"md5" + hex(md5(hex(md5(password + user)) + salt))`, in lowercase hex, without a terminating NUL.
    ///
    /// MD5 is what this older method uses; prefer SCRAM-SHA-256 (PostgreSQL's default since version 14).
    ///
    /// ```swift
    /// let response = PostgresMD5Password.response(user: "shop", password: "secret", salt: [1, 2, 3, 4])
    /// String(decoding: response, as: UTF8.self)   // "md5" and 32 hex digits
    /// ```
    ///
    /// - Parameters:
    ///   - user: The role name, as in the startup message.
    ///   - password: The role's password (its UTF-8 bytes, as given).
    ///   - salt: The 4 bytes of salt from `AuthenticationMD5Password`.
    package static func response(user: String, password: String, salt: [UInt8]) -> [UInt8] {
        let inner = hex(Insecure.MD5.hash(data: Array(password.utf8) + Array(user.utf8)))
        return Array("md5".utf8) + hex(Insecure.MD5.hash(data: inner + salt))
    }

    /// The lowercase hex digits of a digest, as ASCII bytes.
    private static func hex(_ digest: Insecure.MD5Digest) -> [UInt8] {
        let digits = Array("0123456789abcdef".utf8)
        var result: [UInt8] = []
        result.reserveCapacity(32)
        for byte in digest {
            result.append(digits[Int(byte >> 4)])
            result.append(digits[Int(byte & 0x0F)])
        }
        return result
    }
}

/// Why password authentication with a PostgreSQL server failed on the client's side: what the server
/// sent that was wrong.
///
/// ```swift
/// do {
///     try scram.verify(serverFinal: data)
/// } catch {
///     logger.error("authentication failed", metadata: ["error.type": "\(error.code)", "aviary.reason": "\(error)"])
/// }
/// ```
package struct PostgresAuthenticationError: Error, Sendable, CustomStringConvertible {
    /// The kind of failure.
    ///
    /// ```swift
    /// if error.code == .serverSignatureMismatch { /* not the server we think it is */ }
    /// ```
    package struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Wrapped: String, Hashable, Sendable {
            case malformedMessage, nonceMismatch, invalidSalt, invalidIterationCount, serverSignatureMismatch
            case serverError, unexpectedMessage
        }
        private let wrapped: Wrapped

        /// A SCRAM message that does not have the required shape.
        package static let malformedMessage = Code(wrapped: .malformedMessage)
        /// The server's nonce does not extend the client's nonce.
        package static let nonceMismatch = Code(wrapped: .nonceMismatch)
        /// The salt is not non-empty base64.
        package static let invalidSalt = Code(wrapped: .invalidSalt)
        /// The iteration count is not a decimal integer in `1...PostgresSCRAMClient.maximumIterationCount`.
        package static let invalidIterationCount = Code(wrapped: .invalidIterationCount)
        /// The server's final signature is not the expected one.
        package static let serverSignatureMismatch = Code(wrapped: .serverSignatureMismatch)
        /// The server ended the exchange with `e=<error>`.
        package static let serverError = Code(wrapped: .serverError)
        /// A message the exchange did not expect at that point (a second server-first-message, or a
        /// server-final-message before the client-final-message).
        package static let unexpectedMessage = Code(wrapped: .unexpectedMessage)

        /// The code's name, such as `nonceMismatch`.
        package var description: String { self.wrapped.rawValue }
    }

    /// The kind of failure.
    package var code: Code
    /// What the server sent and what was wrong with it.
    package var message: String

    /// Creates an error.
    ///
    /// ```swift
    /// throw PostgresAuthenticationError(.invalidSalt, "the server's SCRAM salt \"%%\" is not base64")
    /// ```
    package init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// `PostgreSQL authentication failed: <message>`.
    package var description: String { "PostgreSQL authentication failed: \(self.message)" }
}
