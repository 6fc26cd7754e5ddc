//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryAuth
public import Foundation
public import Logging
import Synchronization
public import Testing

/// A wall clock the test sets.
public final class AuthWallClock: Sendable {
    private let current: Mutex<Date>

    public init(_ start: Date = AuthFixtures.start) {
        self.current = Mutex(start)
    }

    public var now: Date { self.current.withLock { $0 } }

    public func advance(seconds: TimeInterval) {
        self.current.withLock { $0 = $0.addingTimeInterval(seconds) }
    }

    /// The closure to inject.
    public var source: @Sendable () -> Date { { self.now } }
}

public enum AuthFixtures {
    public static let start = Date(timeIntervalSince1970: 1_700_000_000)
    public static let issuer = "https://idp.test"
    public static let audience = "shop"
    public static let hmacSecret = "an-hmac-secret-of-at-least-32-bytes!!"

    /// Standard claims, valid for ten minutes from `start`, with `overrides` applied (an
    /// `NSNull` value removes a claim).
    public static func claims(_ overrides: [String: any Sendable] = [:]) -> [String: any Sendable] {
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
    public static func configuration(_ keys: [PyJWT.Key], from all: PyJWT.Keys) -> JWTVerifierConfiguration {
        JWTVerifierConfiguration(
            keys: [.jwks(all.jwks(keys))], issuer: issuer, audiences: [audience], leeway: .seconds(30))
    }

    /// Expects `body` to throw an ``AuthenticationError`` with `code`.
    public static func expectFailure(
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
public final class CapturedLogs: Sendable {
    private let lines = Mutex<[String]>([])

    public init() {}

    public var all: [String] { self.lines.withLock { $0 } }

    public func logger(_ label: String = "aviary.tests.auth") -> Logger {
        var logger = Logger(label: label) { _ in Handler(sink: self) }
        logger.logLevel = .trace
        return logger
    }

    func append(_ line: String) {
        self.lines.withLock { $0.append(line) }
    }

    private struct Handler: LogHandler {
        let sink: CapturedLogs
        public var metadata: Logger.Metadata = [:]
        public var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }

        public func log(event: LogEvent) {
            let merged = self.metadata.merging(event.metadata ?? [:]) { $1 }
            self.sink.append("\(event.level) \(event.message) \(merged.map { "\($0)=\($1)" }.joined(separator: " "))")
        }
    }
}
