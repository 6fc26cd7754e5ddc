//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryService
import Foundation
import Logging
import Synchronization
import Testing

/// A wall clock the test sets.
final class AuthWallClock: Sendable {
    private let current: Mutex<Date>

    init(_ start: Date = AuthFixtures.start) {
        self.current = Mutex(start)
    }

    var now: Date { self.current.withLock { $0 } }

    func advance(seconds: TimeInterval) {
        self.current.withLock { $0 = $0.addingTimeInterval(seconds) }
    }

    /// The closure to inject.
    var source: @Sendable () -> Date { { self.now } }
}

enum AuthFixtures {
    static let start = Date(timeIntervalSince1970: 1_700_000_000)
    static let issuer = "https://idp.test"
    static let audience = "shop"
    static let hmacSecret = "an-hmac-secret-of-at-least-32-bytes!!"

    /// Standard claims, valid for ten minutes from `start`, with `overrides` applied (an
    /// `NSNull` value removes a claim).
    static func claims(_ overrides: [String: any Sendable] = [:]) -> [String: any Sendable] {
        let t = Int(start.timeIntervalSince1970)
        var claims: [String: any Sendable] = [
            "sub": "alice",
            "iss": issuer,
            "aud": audience,
            "iat": t,
            "exp": t + 600,
            "jti": UUID().uuidString,
            "scope": "orders:read orders:write",
            "scp": ["catalog:read"],
            "roles": ["customer"],
        ]
        for (key, value) in overrides {
            if value is NSNull { claims[key] = nil } else { claims[key] = value }
        }
        return claims
    }

    /// A configuration trusting the given keys inline, with the fixture issuer and audience.
    static func configuration(_ keys: [PyJWT.Key], from all: PyJWT.Keys) -> JWTVerifierConfiguration {
        JWTVerifierConfiguration(
            keys: [.jwks(all.jwks(keys))], issuer: issuer, audiences: [audience], leeway: .seconds(30))
    }

    /// Expects `body` to throw an ``AuthenticationError`` with `code`.
    static func expectFailure(
        _ code: AuthenticationError.Code,
        _ comment: Comment? = nil,
        sourceLocation: SourceLocation = #_sourceLocation,
        _ body: () async throws -> Void
    ) async {
        do {
            try await body()
            Issue.record(
                "expected \(code), but it succeeded. \(comment?.rawValue ?? "")", sourceLocation: sourceLocation)
        } catch let error as AuthenticationError {
            #expect(error.code == code, "\(error.message). \(comment?.rawValue ?? "")", sourceLocation: sourceLocation)
        } catch {
            Issue.record("expected \(code), got \(error). \(comment?.rawValue ?? "")", sourceLocation: sourceLocation)
        }
    }
}

/// Collects every log message and metadata value, to check that no token is ever logged.
final class CapturedLogs: Sendable {
    private let lines = Mutex<[String]>([])

    var all: [String] { self.lines.withLock { $0 } }

    func logger(_ label: String = "aviary.tests.auth") -> Logger {
        var logger = Logger(label: label) { _ in Handler(sink: self) }
        logger.logLevel = .trace
        return logger
    }

    fileprivate func append(_ line: String) {
        self.lines.withLock { $0.append(line) }
    }

    private struct Handler: LogHandler {
        let sink: CapturedLogs
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let merged = self.metadata.merging(event.metadata ?? [:]) { $1 }
            self.sink.append("\(event.level) \(event.message) \(merged.map { "\($0)=\($1)" }.joined(separator: " "))")
        }
    }
}
