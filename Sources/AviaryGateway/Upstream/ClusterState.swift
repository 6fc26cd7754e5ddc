//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Synchronization

// What every event loop must see of a cluster: circuit-breaking counts, and per endpoint its
// health (active checks) and ejection (outlier detection). Read on every request, so the hot
// reads are single relaxed atomic loads; locks are taken only when an ejection starts or ends.
// A cluster's state survives a reload that leaves the cluster unchanged.

/// The state of one cluster shared by every event loop.
final class ClusterState: Sendable {
    let cluster: GatewayConfiguration.Cluster
    let endpoints: [EndpointState]
    let clock: any MonotonicClock
    /// Requests in flight, across all loops (`circuit_breaker.max_requests`).
    let activeRequests = Atomic<Int>(0)
    /// Open upstream connections, across all loops (`circuit_breaker.max_connections`).
    let connections = Atomic<Int>(0)
    /// Requests waiting for a new upstream connection (`circuit_breaker.max_pending`).
    let pending = Atomic<Int>(0)
    /// Endpoints currently unhealthy or ejected; 0 lets balancing skip every availability check.
    let unavailable = Atomic<Int>(0)
    /// Requests refused by each threshold, for metrics.
    let overflows = Atomic<Int>(0)
    private let ejection = Mutex<EjectionBook>(EjectionBook())
    /// The client TLS context of `clusters.<name>.tls`, made once; a failure (settings given
    /// through the Swift API that the YAML reader would have refused) fails each connect with
    /// its reason.
    let tls: Result<UpstreamTLS, UpstreamTLSUnavailable>?

    /// The state of `cluster`. When `previous` is the state of the cluster of the same name before
    /// a change of its endpoints (discovery) and its checks are configured alike, endpoints that
    /// stay keep their health and ejection: a replica that failed its checks does not come back
    /// because another replica appeared.
    init(cluster: GatewayConfiguration.Cluster, clock: any MonotonicClock, previous: ClusterState? = nil) {
        self.cluster = cluster
        self.clock = clock
        if let previous, previous.cluster.tls == cluster.tls,
            previous.cluster.upstreamProtocol == cluster.upstreamProtocol
        {
            self.tls = previous.tls  // a discovered endpoint change: the same settings, the same context
        } else {
            self.tls = cluster.tls.map { UpstreamTLS.make($0, upstreamProtocol: cluster.upstreamProtocol) }
        }
        self.endpoints = cluster.endpoints.enumerated().map { EndpointState(endpoint: $1, index: $0) }
        guard let previous, previous.cluster.healthCheck == cluster.healthCheck,
            previous.cluster.outlierDetection == cluster.outlierDetection
        else { return }
        let before = Dictionary(previous.endpoints.map { ($0.endpoint, $0) }, uniquingKeysWith: { a, _ in a })
        let ejectedBefore = previous.ejection.withLock { $0.ejectedUntil }
        var book = EjectionBook()
        var unavailable = 0
        for endpoint in self.endpoints {
            guard let old = before[endpoint.endpoint] else { continue }
            endpoint.consecutiveFailures.store(old.consecutiveFailures.load(ordering: .relaxed), ordering: .relaxed)
            endpoint.ejections.store(old.ejections.load(ordering: .relaxed), ordering: .relaxed)
            endpoint.lastProbeFailure.withLock { $0 = old.lastProbeFailure.withLock { $0 } }
            if !old.healthy.load(ordering: .relaxed) {
                endpoint.healthy.store(false, ordering: .relaxed)
                unavailable += 1
            }
            if let until = ejectedBefore[old.index] {
                book.ejectedUntil[endpoint.index] = until
                endpoint.ejected.store(true, ordering: .relaxed)
                unavailable += 1
            }
        }
        self.ejection.withLock { $0 = book }
        self.unavailable.store(unavailable, ordering: .relaxed)
    }

    /// Whether `endpoint` may take requests now. An ejection whose time is over ends here (lazily:
    /// nothing runs on a timer), so that the first request after it sees the endpoint back.
    func isAvailable(_ endpoint: EndpointState) -> Bool {
        guard endpoint.healthy.load(ordering: .relaxed) else { return false }
        guard endpoint.ejected.load(ordering: .relaxed) else { return true }
        return self.returnIfDue(endpoint)
    }

    /// Ends the ejection of `endpoint` if its time is over; `true` when it is available now.
    @discardableResult
    func returnIfDue(_ endpoint: EndpointState) -> Bool {
        let now = self.clock.now
        return self.ejection.withLock { book in
            guard book.ejectedUntil[endpoint.index].map({ now >= $0 }) ?? true else { return false }
            if book.ejectedUntil.removeValue(forKey: endpoint.index) != nil {
                endpoint.ejected.store(false, ordering: .relaxed)
                endpoint.consecutiveFailures.store(0, ordering: .relaxed)
                self.unavailable.subtract(1, ordering: .relaxed)
            }
            return endpoint.healthy.load(ordering: .relaxed)
        }
    }

    /// Records an upstream answer (`status`) or a failure of the gateway's own to get one
    /// (`nil`: connect failure, reset, timeout; counted as a 5xx, as Envoy does by default).
    func record(_ endpoint: EndpointState, status: UInt?) {
        guard let detection = self.cluster.outlierDetection else { return }
        if let status, status < 500 {
            if endpoint.consecutiveFailures.load(ordering: .relaxed) != 0 {
                endpoint.consecutiveFailures.store(0, ordering: .relaxed)
            }
            return
        }
        let failures = endpoint.consecutiveFailures.add(1, ordering: .relaxed).newValue
        if failures == detection.consecutive5xx {
            self.eject(endpoint, detection)
        }
    }

    /// Ejects `endpoint` unless that would eject more than `max_ejection_percent` of the cluster.
    private func eject(_ endpoint: EndpointState, _ detection: GatewayConfiguration.OutlierDetection) {
        let now = self.clock.now
        self.ejection.withLock { book in
            guard book.ejectedUntil[endpoint.index] == nil else { return }
            let decision = OutlierEjection(
                ejectedNow: book.ejectedUntil.count, endpoints: self.endpoints.count, configuration: detection)
            guard let until = decision.eject(previousEjections: endpoint.ejections.load(ordering: .relaxed), now: now)
            else { return }
            book.ejectedUntil[endpoint.index] = until
            endpoint.ejections.add(1, ordering: .relaxed)
            endpoint.ejected.store(true, ordering: .relaxed)
            self.unavailable.add(1, ordering: .relaxed)
        }
    }

    /// Sets the active health of `endpoint`; `true` when it changed.
    @discardableResult
    func setHealthy(_ endpoint: EndpointState, _ healthy: Bool) -> Bool {
        self.ejection.withLock { _ in
            guard endpoint.healthy.load(ordering: .relaxed) != healthy else { return false }
            endpoint.healthy.store(healthy, ordering: .relaxed)
            self.unavailable.add(healthy ? -1 : 1, ordering: .relaxed)
            return true
        }
    }

    /// When the ejection of `endpoint` ends, if it is ejected.
    func ejectedUntil(_ endpoint: EndpointState) -> MonotonicInstant? {
        self.ejection.withLock { $0.ejectedUntil[endpoint.index] }
    }

    private struct EjectionBook {
        var ejectedUntil: [Int: MonotonicInstant] = [:]
    }
}

/// One endpoint's shared state.
final class EndpointState: Sendable {
    let endpoint: Endpoint
    let index: Int
    /// Active health; endpoints start healthy (a cluster without checks stays so).
    let healthy = Atomic<Bool>(true)
    /// Whether outlier detection ejected it (until ``ClusterState/ejectedUntil(_:)``).
    let ejected = Atomic<Bool>(false)
    /// 5xx answers and local failures in a row.
    let consecutiveFailures = Atomic<Int>(0)
    /// Times it was ejected; each ejection lasts `base_ejection` times this count (plus one).
    let ejections = Atomic<Int>(0)
    /// Requests in flight to it, across all loops.
    let inFlight = Atomic<Int>(0)
    /// Open connections to it, across all loops.
    let connections = Atomic<Int>(0)
    /// Idle pooled connections to it, across all loops.
    let idle = Atomic<Int>(0)
    /// Connect attempts that failed.
    let connectErrors = Atomic<Int>(0)
    /// Why its last active health probe failed; `nil` when it succeeded or none ran yet.
    let lastProbeFailure = Mutex<String?>(nil)

    init(endpoint: Endpoint, index: Int) {
        self.endpoint = endpoint
        self.index = index
    }
}

/// The decision of one ejection, Envoy-style: at most `max_ejection_percent` of a cluster is
/// ejected at once, and the n-th ejection of an endpoint lasts n × `base_ejection`, at most
/// `max(base_ejection, 300s)`.
///
/// ```swift
/// let decision = OutlierEjection(ejectedNow: 0, endpoints: 4, configuration: .init(baseEjection: .seconds(30)))
/// decision.eject(previousEjections: 1, now: clock.now)   // now + 60s
/// ```
struct OutlierEjection {
    let ejectedNow: Int
    let endpoints: Int
    let configuration: GatewayConfiguration.OutlierDetection

    /// The longest ejection (Envoy's default `max_ejection_time`).
    static let maximum: Duration = .seconds(300)

    /// When an ejection starting `now` ends, or `nil` when the cluster may not lose another endpoint.
    func eject(previousEjections: Int, now: MonotonicInstant) -> MonotonicInstant? {
        guard self.endpoints > 0,
            Double(self.ejectedNow + 1) / Double(self.endpoints) <= self.configuration.maxEjectionRatio + 1e-9
        else { return nil }
        return now.advanced(by: Self.duration(ejection: previousEjections + 1, base: self.configuration.baseEjection))
    }

    /// How long the `ejection`-th ejection (from 1) lasts.
    static func duration(ejection: Int, base: Duration) -> Duration {
        let cap = max(base, Self.maximum)
        let grown = base * max(1, min(ejection, 1 << 20))
        return min(grown, cap)
    }
}
