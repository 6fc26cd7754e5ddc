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
    /// Times the gateway stopped reading a request body because the upstream could not take more.
    public let requestBodyPauses = Atomic<Int>(0)
    /// Times the gateway stopped reading a response body because the client could not take more.
    public let responseBodyPauses = Atomic<Int>(0)

    /// Creates zeroed counters.
    public init() {}
}
