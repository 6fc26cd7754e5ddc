//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryStorage
import Testing

@Suite("PostgresAuthentication")
struct PostgresAuthenticationTests {
    // The exchange of RFC 7677, section 3: user "user", password "pencil".
    static let rfcClientNonce = "rOprNGfwEbeRWgbNEkqO"
    static let rfcServerFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    static let rfcServerNonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"

    static func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
    static func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    /// A client with the RFC's nonce and PostgreSQL's empty user name.
    static func client() -> PostgresSCRAMClient {
        PostgresSCRAMClient(password: "pencil", nonce: Self.rfcClientNonce)
    }

    /// The error `body` throws, or nil (and a recorded issue) when it throws none.
    static func error(
        _ body: () throws(PostgresAuthenticationError) -> Void, sourceLocation: SourceLocation = #_sourceLocation
    ) -> PostgresAuthenticationError? {
        do {
            try body()
            Issue.record("expected a PostgresAuthenticationError", sourceLocation: sourceLocation)
            return nil
        } catch {
            return error
        }
    }

    // MARK: SCRAM-SHA-256

    @Test("the RFC 7677 example: client-first, client-final with its proof, and the server signature accepted")
    func rfc7677Example() throws {
        var scram = PostgresSCRAMClient(password: "pencil", username: "user", nonce: Self.rfcClientNonce)
        #expect(Self.text(scram.clientFirstMessage()) == "n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        let final = try scram.clientFinalMessage(serverFirst: Self.bytes(Self.rfcServerFirst))
        #expect(
            Self.text(final)
                == "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        )
        try scram.verify(serverFinal: Self.bytes("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
    }

    @Test("PostgreSQL's shape: an empty user name in client-first, and the proof over that AuthMessage")
    func postgresShape() throws {
        var scram = Self.client()
        #expect(Self.text(scram.clientFirstMessage()) == "n,,n=,r=rOprNGfwEbeRWgbNEkqO")
        let final = try scram.clientFinalMessage(serverFirst: Self.bytes(Self.rfcServerFirst))
        // Computed independently with Python's hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096), hmac
        // and base64 over the AuthMessage "n=,r=rOprNGfwEbeRWgbNEkqO,<server-first>,c=biws,r=<server nonce>"
        // (the same script reproduces the RFC 7677 values above with "n=user").
        #expect(
            Self.text(final)
                == "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=qvT2SWdEH5Q06albL+hjSYuUhCG7VndFyzIb7CK4n9k="
        )
        try scram.verify(serverFinal: Self.bytes("v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOg="))
        // The RFC's signature belongs to the AuthMessage with "n=user": not this one.
        let error = Self.error { () throws(PostgresAuthenticationError) in
            try scram.verify(serverFinal: Self.bytes("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
        }
        #expect(error?.code == .serverSignatureMismatch)
    }

    @Test("the default nonce is 32 base64 characters and differs between clients")
    func defaultNonce() {
        let first = Self.text(PostgresSCRAMClient(password: "x").clientFirstMessage())
        let second = Self.text(PostgresSCRAMClient(password: "x").clientFirstMessage())
        #expect(first.hasPrefix("n,,n=,r="))
        let nonce = first.dropFirst("n,,n=,r=".count)
        #expect(nonce.count == 32)
        #expect(nonce.allSatisfy { $0.isLetter || $0.isNumber || $0 == "+" || $0 == "/" })
        #expect(first != second)
    }

    @Test("= and , in the user name are escaped as =3D and =2C")
    func userNameEscaping() {
        let scram = PostgresSCRAMClient(password: "x", username: "a=b,c", nonce: "abc")
        #expect(Self.text(scram.clientFirstMessage()) == "n,,n=a=3Db=2Cc,r=abc")
    }

    @Test(
        "a server-first-message whose nonce does not extend the client's is refused",
        arguments: [
            "r=XOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  // no server part
            "r=rOprNGfwEbeRWgbNE,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  // shorter than ours
        ])
    func nonceNotExtended(serverFirst: String) {
        var scram = Self.client()
        let error = Self.error { () throws(PostgresAuthenticationError) in
            _ = try scram.clientFinalMessage(serverFirst: Self.bytes(serverFirst))
        }
        #expect(error?.code == .nonceMismatch)
        #expect(error?.description.contains("does not extend") == true)
    }

    @Test(
        "a salt that is not base64, or empty, is refused", arguments: ["W22ZaJ0S*Y7soEsUEjb6gQ==", "not base64!", ""])
    func badSalt(salt: String) {
        var scram = Self.client()
        let error = Self.error { () throws(PostgresAuthenticationError) in
            _ = try scram.clientFinalMessage(serverFirst: Self.bytes("r=\(Self.rfcServerNonce),s=\(salt),i=4096"))
        }
        #expect(error?.code == .invalidSalt)
    }

    @Test(
        "an iteration count of 0, non-numeric, signed, or above the bound is refused",
        arguments: ["0", "", "abc", "4096x", "-1", "+4096", " 4096", "10000001", "99999999999999999999999"])
    func badIterations(iterations: String) {
        var scram = Self.client()
        let error = Self.error { () throws(PostgresAuthenticationError) in
            _ = try scram.clientFinalMessage(
                serverFirst: Self.bytes("r=\(Self.rfcServerNonce),s=W22ZaJ0SNY7soEsUEjb6gQ==,i=\(iterations)"))
        }
        #expect(error?.code == .invalidIterationCount)
        #expect(error?.description.contains("iteration count \"\(iterations)\"") == true)
    }

    @Test(
        "a server-first-message with a missing, misplaced, extra or mandatory-extension attribute is refused",
        arguments: [
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==",  // no i=
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,i=4096",  // no s=
            "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  // no r=
            "s=W22ZaJ0SNY7soEsUEjb6gQ==,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,i=4096",  // order
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,x=1",  // extra
            "m=ext,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "",
        ])
    func malformedServerFirst(serverFirst: String) {
        var scram = Self.client()
        let error = Self.error { () throws(PostgresAuthenticationError) in
            _ = try scram.clientFinalMessage(serverFirst: Self.bytes(serverFirst))
        }
        #expect(error?.code == .malformedMessage)
        #expect(error?.description.contains("expected r=<nonce>,s=<salt>,i=<count>") == true)
    }

    @Test("a second server-first-message is refused")
    func secondServerFirst() throws {
        var scram = Self.client()
        _ = try scram.clientFinalMessage(serverFirst: Self.bytes(Self.rfcServerFirst))
        let error = Self.error { () throws(PostgresAuthenticationError) in
            _ = try scram.clientFinalMessage(serverFirst: Self.bytes(Self.rfcServerFirst))
        }
        #expect(error?.code == .unexpectedMessage)
    }

    @Test("a wrong server signature is refused")
    func wrongSignature() throws {
        var scram = Self.client()
        _ = try scram.clientFinalMessage(serverFirst: Self.bytes(Self.rfcServerFirst))
        // The expected signature with one bit of its last byte flipped (...SOg= becomes ...SOk=).
        let error = Self.error { () throws(PostgresAuthenticationError) in
            try scram.verify(serverFinal: Self.bytes("v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOk="))
        }
        #expect(error?.code == .serverSignatureMismatch)
        let short = Self.error { () throws(PostgresAuthenticationError) in
            try scram.verify(serverFinal: Self.bytes("v=3HO6Qt1M4MKJrmlKaoOqLA=="))
        }
        #expect(short?.code == .serverSignatureMismatch)
    }

    @Test("e=<error> in the server-final-message is refused and quoted")
    func serverError() throws {
        var scram = Self.client()
        _ = try scram.clientFinalMessage(serverFirst: Self.bytes(Self.rfcServerFirst))
        let error = Self.error { () throws(PostgresAuthenticationError) in
            try scram.verify(serverFinal: Self.bytes("e=invalid-proof"))
        }
        #expect(error?.code == .serverError)
        #expect(error?.description.contains("\"invalid-proof\"") == true)
    }

    @Test(
        "a server-final-message that is not v=<base64> is refused",
        arguments: [
            "", "v=", "v=not base64!", "3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOg=",
            "v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOg=,x=1",
        ])
    func malformedServerFinal(serverFinal: String) throws {
        var scram = Self.client()
        _ = try scram.clientFinalMessage(serverFirst: Self.bytes(Self.rfcServerFirst))
        let error = Self.error { () throws(PostgresAuthenticationError) in
            try scram.verify(serverFinal: Self.bytes(serverFinal))
        }
        #expect(error?.code == .malformedMessage)
    }

    @Test("a server-final-message before the client-final-message is refused")
    func serverFinalTooEarly() {
        let scram = Self.client()
        let error = Self.error { () throws(PostgresAuthenticationError) in
            try scram.verify(serverFinal: Self.bytes("v=3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOg="))
        }
        #expect(error?.code == .unexpectedMessage)
    }

    // MARK: MD5

    @Test("the MD5 response is md5 + hex(md5(hex(md5(password + user)) + salt))")
    func md5Response() {
        // Expected values from Python:
        //   inner = hashlib.md5((password + user).encode()).hexdigest()
        //   "md5" + hashlib.md5(inner.encode() + salt).hexdigest()
        let ascii = PostgresMD5Password.response(user: "shop", password: "secret", salt: [1, 2, 3, 4])
        #expect(Self.text(ascii) == "md509c7baab7568cd5d6bd39754f079adc5")
        let nonASCII = PostgresMD5Password.response(
            user: "postgres", password: "pässwörd", salt: [0xDE, 0xAD, 0xBE, 0xEF])
        #expect(Self.text(nonASCII) == "md55e5c61ac4cbcd6a1c67d510117ee65ab")
        #expect(!ascii.contains(0))
    }
}
