//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryService
import AviaryStorage
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Synchronization
import Testing

/// A wall clock in milliseconds that the test moves.
final class TestWallClock: Sendable {
    private let milliseconds = Atomic<Int64>(1_800_000_000_000)
    var now: Int64 { self.milliseconds.load(ordering: .relaxed) }
    func advance(seconds: Int64) { self.milliseconds.add(seconds * 1000, ordering: .relaxed) }
}

@Suite("IdempotencyMiddleware", .timeLimit(.minutes(3)))
struct IdempotencyMiddlewareTests {
    /// A payments-like service: POST /charges answers 201 (or the next of `statuses`) with the
    /// number of the run and the request body.
    static func fixture(
        clock: TestWallClock = TestWallClock(),
        requireKey: Bool = false,
        gate: RequestGate? = nil,
        statuses: Statuses = Statuses([])
    ) async throws -> (Application<RouterResponder<BasicRequestContext>>, Counter, IdempotencyStore) {
        let store = try SQLiteStore(url: StoreURL(.sqliteInMemory))
        let keys = try await IdempotencyStore(store: store)
        let counter = Counter()
        let router = Router()
        router.add(middleware: ProblemMiddleware(logger: quiet))
        router.add(
            middleware: IdempotencyMiddleware(
                store: keys, .init(ttl: .seconds(3600), lockTimeout: .seconds(60), requireKey: requireKey),
                now: { clock.now }))
        router.post("/charges") { request, _ -> Response in
            let run = counter.increment()
            if let gate { await gate.enterAndWait() }
            let body = try await request.body.collect(upTo: 1024)
            let status = statuses.next()
            return Response(
                status: .init(code: status), headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: #"{"charge":\#(run),"request":\#(String(buffer: body))}"#)))
        }
        router.get("/charges") { _, _ in "list" }
        return (Application(router: router), counter, keys)
    }

    /// The statuses the handler answers with, in order; 201 once they are used up.
    final class Statuses: Sendable {
        private let remaining: Mutex<[Int]>
        init(_ statuses: [Int]) { self.remaining = Mutex(statuses) }
        func next() -> Int { self.remaining.withLock { $0.isEmpty ? 201 : $0.removeFirst() } }
    }

    final class Counter: Sendable {
        private let value = Atomic<Int>(0)
        @discardableResult func increment() -> Int { self.value.add(1, ordering: .relaxed).newValue }
        var count: Int { self.value.load(ordering: .relaxed) }
    }

    static func post(_ client: some TestClientProtocol, key: String?, body: String) async throws -> TestResponse {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let key { headers[IdempotencyMiddleware<BasicRequestContext>.headerName] = key }
        return try await client.execute(
            uri: "/charges", method: .post, headers: headers, body: ByteBuffer(string: body))
    }

    @Test("a repeat gets the stored response without running the handler again")
    func replay() async throws {
        let (app, runs, keys) = try await Self.fixture()
        try await app.test(.router) { client in
            let first = try await Self.post(client, key: "k1", body: #"{"amount":10}"#)
            #expect(first.status == .created)
            #expect(first.headers[IdempotencyMiddleware<BasicRequestContext>.replayedHeaderName] == nil)
            let second = try await Self.post(client, key: "k1", body: #"{"amount":10}"#)
            #expect(second.status == .created)
            #expect(String(buffer: second.body) == String(buffer: first.body))
            #expect(second.headers[IdempotencyMiddleware<BasicRequestContext>.replayedHeaderName] == "true")
            #expect(second.headers[.contentType] == "application/json")
            #expect(runs.count == 1)
            // Another key is another request.
            _ = try await Self.post(client, key: "k2", body: #"{"amount":10}"#)
            #expect(runs.count == 2)
        }
        #expect(try await keys.count() == 2)
    }

    @Test("the same key with a different body is a 422 problem")
    func mismatch() async throws {
        let (app, runs, _) = try await Self.fixture()
        try await app.test(.router) { client in
            _ = try await Self.post(client, key: "k1", body: #"{"amount":10}"#)
            let reused = try await Self.post(client, key: "k1", body: #"{"amount":99}"#)
            #expect(reused.status == .unprocessableContent)
            #expect(String(buffer: reused.body).contains("urn:aviary:problem:idempotency-key-reused"))
            #expect(runs.count == 1)
        }
    }

    @Test("a duplicate while the first is in progress is a 409 with Retry-After; afterwards it replays")
    func concurrentDuplicate() async throws {
        let gate = RequestGate()
        let (app, runs, _) = try await Self.fixture(gate: gate)
        try await app.test(.router) { client in
            async let first = Self.post(client, key: "k1", body: #"{"amount":10}"#)
            await eventually("the first request is in its handler") { gate.entered == 1 }
            let duplicate = try await Self.post(client, key: "k1", body: #"{"amount":10}"#)
            #expect(duplicate.status == .conflict)
            #expect(duplicate.headers[.retryAfter] == "1")
            gate.open()
            #expect(try await first.status == .created)
            let replay = try await Self.post(client, key: "k1", body: #"{"amount":10}"#)
            #expect(replay.status == .created)
            #expect(replay.headers[IdempotencyMiddleware<BasicRequestContext>.replayedHeaderName] == "true")
            #expect(runs.count == 1)
        }
    }

    @Test("a 5xx answer is not stored: a retry runs the handler again")
    func serverErrorReleasesKey() async throws {
        let (app, runs, keys) = try await Self.fixture(statuses: Statuses([503]))
        try await app.test(.router) { client in
            let reply1 = try await Self.post(client, key: "k1", body: "{}")

            #expect(reply1.status == .serviceUnavailable)
            let stored = try await keys.count()
            #expect(stored == 0)
            let reply2 = try await Self.post(client, key: "k1", body: "{}")

            #expect(reply2.status == .created)
            #expect(runs.count == 2)
        }
    }

    @Test("keys expire after the TTL, and a lock left by a crashed request is taken over after the lock timeout")
    func expiryAndAbandonedLocks() async throws {
        let clock = TestWallClock()
        let (app, runs, keys) = try await Self.fixture(clock: clock)
        try await app.test(.router) { client in
            _ = try await Self.post(client, key: "k1", body: #"{"amount":10}"#)
            clock.advance(seconds: 3599)
            let reply3 = try await Self.post(client, key: "k1", body: #"{"amount":99}"#)

            #expect(reply3.status == .unprocessableContent)
            clock.advance(seconds: 1)
            let reply4 = try await Self.post(client, key: "k1", body: #"{"amount":99}"#)

            #expect(reply4.status == .created)
            #expect(runs.count == 2)
        }
        // A request that claimed a key and never finished (the process died).
        let claim = try await keys.claimForTesting(key: "k9", now: clock.now)
        #expect(claim == "acquired")
        try await app.test(.router) { client in
            // Held by another request (here with another fingerprint, so 422 rather than 409).
            let reply5 = try await Self.post(client, key: "k9", body: "{}")

            #expect(reply5.status == .unprocessableContent)
            clock.advance(seconds: 60)
            let reply6 = try await Self.post(client, key: "k9", body: "{}")

            #expect(reply6.status == .created)
        }
    }

    @Test("keys are validated, required when configured, and other methods pass through")
    func validation() async throws {
        let (app, runs, _) = try await Self.fixture(requireKey: true)
        try await app.test(.router) { client in
            let long = try await Self.post(client, key: String(repeating: "k", count: 256), body: "{}")
            #expect(long.status == .badRequest)
            #expect(String(buffer: long.body).contains("invalid-idempotency-key"))
            let missing = try await Self.post(client, key: nil, body: "{}")
            #expect(missing.status == .badRequest)
            #expect(String(buffer: missing.body).contains("idempotency-key-required"))
            try await client.execute(uri: "/charges", method: .get) { #expect($0.status == .ok) }
            #expect(runs.count == 0)
        }
    }
}
