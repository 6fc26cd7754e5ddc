//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AsyncHTTPClient
import AviaryCore
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Synchronization

/// The keys of one JWKS URL: fetched on first use, refetched when stale or when a token names a
/// `kid` they lack, but never more often than the minimum interval, and one fetch at a time
/// (concurrent requests wait for the fetch in flight). A failed fetch keeps the keys it had.
/// While no keys were ever loaded (a service that started before its identity provider), a
/// failed fetch is retried sooner: after 1 s, then 2 s, 4 s, ... up to the minimum interval, so
/// that tokens are accepted soon after the provider answers instead of up to 30 s later.
final class JWKSCache: Sendable {
    private struct State {
        var keys = KeySet()
        var loadedAt: MonotonicInstant?
        var lastAttempt: MonotonicInstant?
        var inFlight: Task<Void, Never>?
        /// Failed fetches in a row.
        var failures = 0
    }

    /// How long after an attempt the next may start.
    private func interval(_ state: State) -> Duration {
        guard state.loadedAt == nil, state.failures > 0 else { return self.settings.minimumInterval }
        return min(Duration.seconds(1) * (1 << min(state.failures - 1, 16)), self.settings.minimumInterval)
    }

    let url: String
    private let settings: JWTVerifierConfiguration.JWKSRefresh
    private let httpClient: HTTPClient
    private let clock: any MonotonicClock
    private let logger: Logger
    private let state = Mutex(State())

    init(
        url: String,
        settings: JWTVerifierConfiguration.JWKSRefresh,
        httpClient: HTTPClient,
        clock: any MonotonicClock,
        logger: Logger
    ) {
        self.url = url
        self.settings = settings
        self.httpClient = httpClient
        self.clock = clock
        self.logger = logger
    }

    /// The keys, after a refresh if they were never loaded or are older than the maximum age.
    /// Also reports whether any keys were ever loaded.
    func keys() async -> (keys: KeySet, loaded: Bool) {
        let now = self.clock.now
        let fresh = self.state.withLock { state -> (KeySet, Bool)? in
            guard let loadedAt = state.loadedAt, loadedAt.duration(to: now) < self.settings.maximumAge else {
                return nil
            }
            return (state.keys, true)
        }
        if let fresh { return fresh }
        return await self.refresh()
    }

    /// The keys when they are loaded and younger than the maximum age, without waiting; nil when
    /// ``keys()`` would fetch them.
    func freshKeys() -> KeySet? {
        let now = self.clock.now
        return self.state.withLock { state -> KeySet? in
            guard let loadedAt = state.loadedAt, loadedAt.duration(to: now) < self.settings.maximumAge else {
                return nil
            }
            return state.keys
        }
    }

    /// Whether ``refresh()`` would fetch (or join a fetch in flight) now, rather than return the
    /// cached keys because the minimum interval has not passed.
    func mayRefresh() -> Bool {
        let now = self.clock.now
        return self.state.withLock { state in
            guard state.inFlight == nil, let last = state.lastAttempt else { return true }
            return last.duration(to: now) >= self.interval(state)
        }
    }

    /// Fetches the keys again if the minimum interval allows (joining a fetch in flight), and
    /// returns what is cached afterwards.
    @discardableResult
    func refresh() async -> (keys: KeySet, loaded: Bool) {
        let now = self.clock.now
        let task = self.state.withLock { state -> Task<Void, Never>? in
            if let inFlight = state.inFlight { return inFlight }
            if let last = state.lastAttempt, last.duration(to: now) < self.interval(state) {
                return nil
            }
            state.lastAttempt = now
            // The fetch cannot finish before it is recorded: it ends by taking this lock.
            let task = Task { await self.fetch() }
            state.inFlight = task
            return task
        }
        if let task { await task.value }
        return self.state.withLock { ($0.keys, $0.loadedAt != nil) }
    }

    private func fetch() async {
        var loaded: KeySet?
        do {
            loaded = try await self.download()
        } catch {
            self.logger.warning(
                "JWKS fetch failed; keeping the cached keys",
                metadata: ["url.full": "\(self.url)", "error.message": "\(error)"])
        }
        if let loaded {
            for reason in loaded.skipped {
                self.logger.info(
                    "JWKS key skipped", metadata: ["url.full": "\(self.url)", "aviary.reason": "\(reason)"])
            }
            self.logger.debug(
                "JWKS loaded", metadata: ["url.full": "\(self.url)", "aviary.keys": "\(loaded.keys.count)"])
        }
        let now = self.clock.now
        self.state.withLock { state in
            if let loaded {
                state.keys = loaded
                state.loadedAt = now
                state.failures = 0
            } else {
                state.failures += 1
            }
            state.inFlight = nil
        }
    }

    private func download() async throws -> KeySet {
        var request = HTTPClientRequest(url: self.url)
        request.headers.add(name: "Accept", value: "application/jwk-set+json, application/json")
        let timeout = TimeAmount.nanoseconds(self.settings.timeout.aviaryNanoseconds)
        let response = try await self.httpClient.execute(request, timeout: timeout)
        guard response.status == .ok else {
            throw AuthenticationError(.keysUnavailable, "the JWKS URL answered \(response.status.code)")
        }
        let body = try await response.body.collect(upTo: self.settings.maximumBytes)
        return try await KeySet.parse(jwks: Data(body.readableBytesView))
    }
}
