//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Synchronization

/// Counters of what a gateway did, for tests, the admin API and metrics.
///
/// Relaxed atomics: each counter is exact, but two counters read together may be from slightly
/// different moments.
///
/// ```swift
/// let statistics = server.statistics
/// statistics.upstreamConnectionsReused.load(ordering: .relaxed)
/// ```
public final class GatewayStatistics: Sendable {
    /// Downstream connections accepted.
    public let connectionsAccepted = Atomic<Int>(0)
    /// Downstream connections closed at once because `limits.max_connections` was reached.
    public let connectionsRejected = Atomic<Int>(0)
    /// Requests whose head was received.
    public let requests = Atomic<Int>(0)
    /// Responses the gateway made itself (404, 413, 502, ...), not the upstream's.
    public let localResponses = Atomic<Int>(0)
    /// Upstream connections opened.
    public let upstreamConnectionsOpened = Atomic<Int>(0)
    /// Requests sent on a kept-alive upstream connection.
    public let upstreamConnectionsReused = Atomic<Int>(0)
    /// Requests sent again on a new connection because a kept-alive one closed before answering
    /// (the upstream closed it while it was idle; nothing of the request body had been sent).
    public let upstreamStaleRetries = Atomic<Int>(0)
    /// Requests sent again under their route's `retry` policy.
    public let retries = Atomic<Int>(0)
    /// Requests copied to a route's `mirror` cluster (shadow traffic).
    public let mirroredRequests = Atomic<Int>(0)
    /// Requests whose body was larger than `limits.request_buffer_bytes` when it had to be kept
    /// (for a retry or a mirror copy): streamed on without a copy, so neither retried nor mirrored.
    public let requestBufferOverflows = Atomic<Int>(0)
    /// Retries not made because the route's retry budget was spent.
    public let retryBudgetExhausted = Atomic<Int>(0)
    /// Requests refused with `503` because their cluster had `circuit_breaker.max_requests` in flight.
    public let circuitBreakerOverflows = Atomic<Int>(0)
    /// Connections closed for sending no request within `limits.idle_timeout`.
    public let idleTimeouts = Atomic<Int>(0)
    /// Connections answered `408` for not finishing a request head within `limits.header_timeout`.
    public let headerTimeouts = Atomic<Int>(0)
    /// Times the gateway stopped reading a request body because the upstream could not take more.
    public let requestBodyPauses = Atomic<Int>(0)
    /// Times the gateway stopped reading a response body because the client could not take more.
    public let responseBodyPauses = Atomic<Int>(0)
    /// Changes of a discovered service's endpoints that made a new configuration generation.
    public let discoveryUpdates = Atomic<Int>(0)

    /// Creates zeroed counters.
    public init() {}
}
