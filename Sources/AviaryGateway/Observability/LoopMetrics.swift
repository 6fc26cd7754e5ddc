//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryTelemetry

// Hot path: the counters of the data plane are plain integers owned by one event loop each
// (Envoy keeps per-worker stats the same way), so recording a request is a few additions with
// no atomic and no lock. A scrape asks each loop for a snapshot and adds them up.
// swift-prometheus is not used for these: its histograms take a lock per observation.

/// The latency buckets of `aviary_gateway_request_duration_seconds`, in nanoseconds.
enum GatewayBuckets {
    static let nanoseconds: [Int64] = HTTPMetrics.durationBuckets.map { $0.aviaryNanoseconds }
}

// The counters' arrays are `@exclusivity(unchecked)`: touched on their loop only, and modified
// only by `&+=` on an element, which calls nothing back (see `ProxyHandler` on exclusivity).

/// Counters of one route label on one loop.
final class RouteCounters {
    /// Responses by status class: index 1...5 for 1xx...5xx, 0 for none (the client left first).
    @exclusivity(unchecked) var responses = [Int](repeating: 0, count: 6)
    /// Latency histogram: `buckets[i]` counts durations up to `GatewayBuckets.nanoseconds[i]`
    /// (not cumulative here); the last slot is +Inf.
    @exclusivity(unchecked) var buckets = [Int](repeating: 0, count: GatewayBuckets.nanoseconds.count + 1)
    @exclusivity(unchecked) var durationNanoseconds: Int64 = 0
    /// `GatewayBuckets.nanoseconds`, held here: a computed `static let` is a lazily initialised
    /// global, and each read of it goes through `swift_once` (once per request here).
    private let bounds = GatewayBuckets.nanoseconds

    func record(statusClass: Int, nanoseconds: Int64) {
        self.responses[statusClass] &+= 1
        var slot = 0
        let bounds = self.bounds
        while slot < bounds.count && nanoseconds > bounds[slot] { slot += 1 }
        self.buckets[slot] &+= 1
        self.durationNanoseconds &+= nanoseconds
    }
}

/// Counters of one cluster on one loop.
final class ClusterCounters {
    @exclusivity(unchecked) var responses = [Int](repeating: 0, count: 6)
    var retries = 0
    var timeouts = 0
    var connectErrors = 0
    var resets = 0
}

/// Counters of one endpoint on one loop.
final class EndpointCounters {
    @exclusivity(unchecked) var responses = [Int](repeating: 0, count: 6)
    var connectErrors = 0
}

/// Every counter of one event loop, kept across reloads (keyed by label, not by position).
/// Touched only on its loop.
final class LoopMetrics {
    private(set) var routes: [String: RouteCounters] = [:]
    private(set) var clusters: [String: ClusterCounters] = [:]
    private(set) var endpoints: [EndpointKey: EndpointCounters] = [:]
    /// Exchanges this loop's proxies allocated rather than reused (see
    /// `ProxyHandler.makeExchange`): counted on the allocation only, so that tests can check that
    /// reuse happens; not exported.
    var exchangesMade = 0

    struct EndpointKey: Hashable, Sendable {
        var cluster: String
        var endpoint: String
    }

    func route(_ label: String) -> RouteCounters {
        if let counters = self.routes[label] { return counters }
        let counters = RouteCounters()
        self.routes[label] = counters
        return counters
    }

    func cluster(_ name: String) -> ClusterCounters {
        if let counters = self.clusters[name] { return counters }
        let counters = ClusterCounters()
        self.clusters[name] = counters
        return counters
    }

    func endpoint(cluster: String, endpoint: String) -> EndpointCounters {
        let key = EndpointKey(cluster: cluster, endpoint: endpoint)
        if let counters = self.endpoints[key] { return counters }
        let counters = EndpointCounters()
        self.endpoints[key] = counters
        return counters
    }

    /// A copy for a scrape.
    func snapshot() -> MetricsSnapshot {
        var snapshot = MetricsSnapshot()
        snapshot.exchangesMade = self.exchangesMade
        for (label, counters) in self.routes {
            snapshot.routes[label] = .init(
                responses: counters.responses, buckets: counters.buckets,
                durationNanoseconds: counters.durationNanoseconds)
        }
        for (name, counters) in self.clusters {
            snapshot.clusters[name] = .init(
                responses: counters.responses, retries: counters.retries, timeouts: counters.timeouts,
                connectErrors: counters.connectErrors, resets: counters.resets)
        }
        for (key, counters) in self.endpoints {
            snapshot.endpoints[key] = .init(responses: counters.responses, connectErrors: counters.connectErrors)
        }
        return snapshot
    }
}

/// Counters of every loop added up.
struct MetricsSnapshot: Sendable {
    struct Route: Sendable {
        var responses: [Int]
        var buckets: [Int]
        var durationNanoseconds: Int64
    }
    struct Cluster: Sendable {
        var responses: [Int]
        var retries: Int
        var timeouts: Int
        var connectErrors: Int
        var resets: Int
    }
    struct Endpoint: Sendable {
        var responses: [Int]
        var connectErrors: Int
    }
    var routes: [String: Route] = [:]
    var clusters: [String: Cluster] = [:]
    var endpoints: [LoopMetrics.EndpointKey: Endpoint] = [:]
    var exchangesMade = 0

    mutating func add(_ other: MetricsSnapshot) {
        self.exchangesMade += other.exchangesMade
        for (label, route) in other.routes {
            if var mine = self.routes[label] {
                mine.responses = zip(mine.responses, route.responses).map(+)
                mine.buckets = zip(mine.buckets, route.buckets).map(+)
                mine.durationNanoseconds += route.durationNanoseconds
                self.routes[label] = mine
            } else {
                self.routes[label] = route
            }
        }
        for (name, cluster) in other.clusters {
            if var mine = self.clusters[name] {
                mine.responses = zip(mine.responses, cluster.responses).map(+)
                mine.retries += cluster.retries
                mine.timeouts += cluster.timeouts
                mine.connectErrors += cluster.connectErrors
                mine.resets += cluster.resets
                self.clusters[name] = mine
            } else {
                self.clusters[name] = cluster
            }
        }
        for (key, endpoint) in other.endpoints {
            if var mine = self.endpoints[key] {
                mine.responses = zip(mine.responses, endpoint.responses).map(+)
                mine.connectErrors += endpoint.connectErrors
                self.endpoints[key] = mine
            } else {
                self.endpoints[key] = endpoint
            }
        }
    }
}

/// The status class slot of a status code: 1...5, or 0 for none.
@inline(__always)
func statusClass(_ status: Int) -> Int {
    (status >= 100 && status < 600) ? status / 100 : 0
}
