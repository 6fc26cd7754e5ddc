//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import AviaryTestSupport
import Foundation
import HTTPTypes
import NIOCore
import Synchronization
import Testing

@Suite("JWKS URL", .timeLimit(.minutes(1)))
struct JWKSRefreshTests {
    static let refresh = JWTVerifierConfiguration.JWKSRefresh(minimumInterval: .seconds(30), maximumAge: .seconds(300))

    func authenticator(
        _ url: String, clock: ManualClock, logs: CapturedLogs = CapturedLogs()
    ) async throws
        -> JWTAuthenticator
    {
        try await JWTAuthenticator(
            JWTVerifierConfiguration(
                keys: [.jwksURL(url)], issuer: AuthFixtures.issuer, audiences: [AuthFixtures.audience],
                refresh: Self.refresh),
            clock: clock, now: AuthWallClock().source, logger: logs.logger())
    }

    @Test("keys are fetched on first use and then served from the cache")
    func cached() async throws {
        let keys = try await PyJWT.keys.value
        let server = JWKSServer(jwks: keys.jwks([keys.es256, keys.eddsa]))
        let tokens = try await PyJWT.mint([
            .init(.key(keys.es256), claims: AuthFixtures.claims()),
            .init(.key(keys.eddsa), claims: AuthFixtures.claims()),
        ])
        try await server.run { url in
            let clock = ManualClock()
            let verifier = try await authenticator(url, clock: clock)
            #expect(server.fetches == 0, "nothing is fetched before the first token")
            for token in tokens + tokens {
                _ = try await verifier.authenticate(token)
            }
            #expect(server.fetches == 1)
            clock.advance(by: .seconds(299))
            _ = try await verifier.authenticate(tokens[0])
            #expect(server.fetches == 1, "younger than maximumAge")
            clock.advance(by: .seconds(1))
            _ = try await verifier.authenticate(tokens[0])
            #expect(server.fetches == 2, "refetched at maximumAge")
        }
    }

    @Test("an unknown kid refetches the JWKS, so a rotated key is accepted, but not within the minimum interval")
    func rotation() async throws {
        let keys = try await PyJWT.keys.value
        let server = JWKSServer(jwks: keys.jwks([keys.es256]))
        let tokens = try await PyJWT.mint([
            .init(.key(keys.es256), claims: AuthFixtures.claims()),
            .init(.key(keys.es256Next), claims: AuthFixtures.claims()),
        ])
        try await server.run { url in
            let clock = ManualClock()
            let verifier = try await authenticator(url, clock: clock)
            _ = try await verifier.authenticate(tokens[0])
            #expect(server.fetches == 1)
            server.serve(keys.jwks([keys.es256, keys.es256Next]))

            await AuthFixtures.expectFailure(.unknownKey, "the interval has not passed") {
                _ = try await verifier.authenticate(tokens[1])
            }
            #expect(server.fetches == 1)

            clock.advance(by: .seconds(30))
            #expect(try await verifier.authenticate(tokens[1]).subject == "alice")
            #expect(server.fetches == 2)
            _ = try await verifier.authenticate(tokens[0])
            _ = try await verifier.authenticate(tokens[1])
            #expect(server.fetches == 2)
        }
    }

    @Test("tokens with made-up kids cause at most one fetch per minimum interval")
    func madeUpKids() async throws {
        let keys = try await PyJWT.keys.value
        let server = JWKSServer(jwks: keys.jwks([keys.es256]))
        let valid = try await PyJWT.mint(.init(.key(keys.es256), claims: AuthFixtures.claims()))
        let madeUp = try await PyJWT.mint(
            (0..<20).map { .init(.key(keys.es256), claims: AuthFixtures.claims(), kid: "made-up-\($0)") })
        try await server.run { url in
            let clock = ManualClock()
            let verifier = try await authenticator(url, clock: clock)
            _ = try await verifier.authenticate(valid)
            clock.advance(by: .seconds(30))
            for token in madeUp {
                await AuthFixtures.expectFailure(.unknownKey) { _ = try await verifier.authenticate(token) }
            }
            #expect(server.fetches == 2, "one refresh for twenty unknown kids")
            clock.advance(by: .seconds(29))
            await AuthFixtures.expectFailure(.unknownKey) { _ = try await verifier.authenticate(madeUp[0]) }
            #expect(server.fetches == 2)
            clock.advance(by: .seconds(1))
            await AuthFixtures.expectFailure(.unknownKey) { _ = try await verifier.authenticate(madeUp[0]) }
            #expect(server.fetches == 3)
            _ = try await verifier.authenticate(valid)
        }
    }

    @Test("concurrent requests on a cold cache share one fetch")
    func singleFlight() async throws {
        let keys = try await PyJWT.keys.value
        let server = JWKSServer(jwks: keys.jwks([keys.rs256]))
        let token = try await PyJWT.mint(.init(.key(keys.rs256), claims: AuthFixtures.claims()))
        try await server.run { url in
            let verifier = try await authenticator(url, clock: ManualClock())
            let subjects = try await withThrowingTaskGroup(of: String.self) { group in
                for _ in 0..<16 {
                    group.addTask { try await verifier.authenticate(token).subject }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(subjects == Array(repeating: "alice", count: 16))
            #expect(server.fetches == 1)
        }
    }

    @Test("a failed fetch keeps the cached keys; with nothing cached tokens cannot be verified")
    func failures() async throws {
        let keys = try await PyJWT.keys.value
        let server = JWKSServer(jwks: keys.jwks([keys.es256]))
        let token = try await PyJWT.mint(.init(.key(keys.es256), claims: AuthFixtures.claims()))
        try await server.run { url in
            let clock = ManualClock()
            let logs = CapturedLogs()
            let verifier = try await authenticator(url, clock: clock, logs: logs)
            await verifier.refreshKeys()
            #expect(server.fetches == 1)
            server.fail(with: .internalServerError)
            clock.advance(by: .seconds(300))
            _ = try await verifier.authenticate(token)
            #expect(server.fetches == 2, "the stale keys were refetched, and the failure ignored")
            #expect(logs.all.contains { $0.contains("JWKS fetch failed") })
            #expect(!logs.all.contains { $0.contains(token) })

            // Nothing ever loaded: failed fetches are retried after 1 s, 2 s, 4 s, ... (not 30 s).
            let cold = try await authenticator(url, clock: clock)
            await AuthFixtures.expectFailure(.keysUnavailable) { _ = try await cold.authenticate(token) }
            await AuthFixtures.expectFailure(.keysUnavailable) { _ = try await cold.authenticate(token) }
            #expect(server.fetches == 3, "the second request waits for the first backoff")
            clock.advance(by: .seconds(1))
            await AuthFixtures.expectFailure(.keysUnavailable) { _ = try await cold.authenticate(token) }
            #expect(server.fetches == 4, "retried after 1 s")
            clock.advance(by: .seconds(1))
            await AuthFixtures.expectFailure(.keysUnavailable) { _ = try await cold.authenticate(token) }
            #expect(server.fetches == 4, "the next backoff is 2 s")
            server.serve(keys.jwks([keys.es256]))
            server.fail(with: .ok)
            clock.advance(by: .seconds(1))
            #expect(try await cold.authenticate(token).subject == "alice")
            #expect(server.fetches == 5)
        }
    }
}
