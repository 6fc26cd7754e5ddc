//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore
import NIOHTTP1
import Synchronization

/// What one event loop keeps for the server's whole life: the configuration generation it serves
/// now, its counters, and the proxy handlers of its connections (for draining). Touched only on
/// its loop (it travels between threads only inside `NIOLoopBound`).
final class GatewayLoop {
    let eventLoop: any EventLoop
    /// The generation new requests use; a reload replaces it, exchanges keep theirs.
    private(set) var current: LoopUpstreams
    let metrics: LoopMetrics
    /// The proxy handlers of open downstream connections.
    private var handlers: [ObjectIdentifier: ProxyHandler] = [:]
    /// HTTP/2 connections (their streams are drained with them, not registered), for draining.
    private var connections: [ObjectIdentifier: any DrainableConnection] = [:]
    /// Set by a drain: connections close after their current response.
    private(set) var draining = false
    /// Access log lines of this loop iteration, and the log they go to.
    var logBuffer: [UInt8] = []
    var logTarget: AccessLog?
    var logFlushScheduled = false
    /// The source of the proxy's timers on this loop (the loop's scheduler outside tests).
    let timers: any GatewayTimers

    init(eventLoop: any EventLoop, core: GatewayCore, timers: any GatewayTimers = EventLoopTimers()) {
        self.eventLoop = eventLoop
        self.timers = timers
        let metrics = LoopMetrics()
        self.metrics = metrics
        self.current = LoopUpstreams(eventLoop: eventLoop, core: core, metrics: metrics, previous: nil)
    }

    /// Serves `core` to new requests, keeping the pools of clusters it did not change.
    func install(_ core: GatewayCore) {
        let previous = self.current
        self.current = LoopUpstreams(eventLoop: self.eventLoop, core: core, metrics: self.metrics, previous: previous)
        let kept = Set(self.current.clusters.map { ObjectIdentifier($0) })
        for cluster in previous.clusters where !kept.contains(ObjectIdentifier(cluster)) {
            cluster.retire()
        }
    }

    func register(_ handler: ProxyHandler) {
        self.handlers[ObjectIdentifier(handler)] = handler
        if self.draining { handler.drain() }
    }

    func unregister(_ handler: ProxyHandler) {
        self.handlers.removeValue(forKey: ObjectIdentifier(handler))
    }

    func registerConnection(_ connection: any DrainableConnection) {
        self.connections[ObjectIdentifier(connection)] = connection
        if self.draining { connection.drain() }
    }

    func unregisterConnection(_ connection: any DrainableConnection) {
        self.connections.removeValue(forKey: ObjectIdentifier(connection))
    }

    /// Asks every connection to close once its current response is written (idle ones at once).
    func drain() {
        self.draining = true
        for handler in Array(self.handlers.values) { handler.drain() }
        for connection in Array(self.connections.values) { connection.drain() }
    }

    /// Closes every downstream connection now.
    func closeAll() {
        for handler in Array(self.handlers.values) { handler.closeNow() }
        for connection in Array(self.connections.values) { connection.closeNow() }
    }

    /// What `/clusters` shows of this loop: per cluster and endpoint, requests in flight and
    /// pooled connections.
    func poolSnapshot() -> [String: [String: PoolSnapshot]] {
        var result: [String: [String: PoolSnapshot]] = [:]
        for cluster in self.current.clusters {
            var endpoints: [String: PoolSnapshot] = [:]
            for pool in cluster.pools {
                endpoints[pool.endpoint.description] = PoolSnapshot(
                    inFlight: pool.inFlight, idle: pool.idleCount, open: pool.openConnections)
            }
            result[cluster.cluster.name] = endpoints
        }
        return result
    }
}

/// One endpoint's pool on one loop, for `/clusters` and `/metrics`.
struct PoolSnapshot: Sendable {
    var inFlight = 0
    var idle = 0
    var open = 0

    static func + (a: PoolSnapshot, b: PoolSnapshot) -> PoolSnapshot {
        PoolSnapshot(inFlight: a.inFlight + b.inFlight, idle: a.idle + b.idle, open: a.open + b.open)
    }
}

/// Everything the data plane of one event loop needs for one configuration generation: the route
/// table, and per cluster its endpoint pools and balancer state.
final class LoopUpstreams {
    let eventLoop: any EventLoop
    let core: GatewayCore
    let clusters: [ClusterPools]
    /// Counters per route, by route index.
    let routeCounters: [RouteCounters]

    init(eventLoop: any EventLoop, core: GatewayCore, metrics: LoopMetrics, previous: LoopUpstreams?) {
        self.eventLoop = eventLoop
        self.core = core
        let reusable = Dictionary(
            (previous?.clusters ?? []).map { (ObjectIdentifier($0.state), $0) }, uniquingKeysWith: { a, _ in a })
        let byName = Dictionary(
            (previous?.clusters ?? []).map { ($0.cluster.name, $0) }, uniquingKeysWith: { a, _ in a })
        self.clusters = core.clusters.map { state in
            if let kept = reusable[ObjectIdentifier(state)] { return kept }
            let cluster = state.cluster
            let pools = ClusterPools(
                state: state, metrics: metrics.cluster(cluster.name),
                pools: state.endpoints.map {
                    UpstreamPool(
                        cluster: cluster, endpoint: $0.endpoint, eventLoop: eventLoop, statistics: core.statistics,
                        state: $0, clusterState: state,
                        metrics: metrics.endpoint(cluster: cluster.name, endpoint: $0.endpoint.description))
                })
            // A discovered cluster whose endpoints changed, and nothing else: endpoints that stay
            // keep their idle connections.
            if let before = byName[cluster.name], cluster.discovery != nil, before.cluster.discovery != nil {
                var unchanged = before.cluster
                unchanged.endpoints = cluster.endpoints
                if unchanged == cluster {
                    let old = Dictionary(before.pools.map { ($0.endpoint, $0) }, uniquingKeysWith: { a, _ in a })
                    for pool in pools.pools {
                        if let previousPool = old[pool.endpoint] { pool.adoptIdle(from: previousPool) }
                    }
                }
            }
            return pools
        }
        self.routeCounters = core.routeLabels.map { metrics.route($0) }
    }

    func closeIdle() {
        for cluster in self.clusters {
            for pool in cluster.pools { pool.closeIdle() }
        }
    }
}

/// One cluster's pools on one event loop, and how a request picks one.
final class ClusterPools {
    let cluster: GatewayConfiguration.Cluster
    let state: ClusterState
    let metrics: ClusterCounters
    let pools: [UpstreamPool]
    private var next = 0
    /// The consistent-hash ring of a `ring_hash` cluster, the same on every loop.
    let ring: HashRing?

    init(state: ClusterState, metrics: ClusterCounters, pools: [UpstreamPool]) {
        self.cluster = state.cluster
        self.state = state
        self.metrics = metrics
        self.pools = pools
        self.ring =
            state.cluster.loadBalancer == .ringHash && state.cluster.hashOn != nil
            ? HashRing(endpoints: pools.map(\.endpoint.description)) : nil
    }

    /// The endpoint pool for a request: by its hash key on a `ring_hash` cluster (the first
    /// available endpoint clockwise, or the owner itself when none is available), else as
    /// ``pick(_:)`` does, which also serves requests without the key.
    func pick(_ random: GatewayRandom, request headers: HTTPHeaders) -> UpstreamPool? {
        if let ring = self.ring, let hashOn = self.cluster.hashOn, let key = HashRing.key(hashOn, in: headers) {
            let checkAvailability = self.state.unavailable.load(ordering: .relaxed) != 0
            let pools = self.pools
            let state = self.state
            let index =
                ring.endpoint(for: key.utf8) { !checkAvailability || state.isAvailable(pools[$0].state) }
                ?? ring.endpoint(for: key.utf8)
            return index.map { self.pools[$0] }
        }
        return self.pick(random)
    }

    /// A reload dropped or changed this cluster: its idle connections close, and connections of
    /// exchanges still running close when they end.
    func retire() {
        for pool in self.pools {
            pool.retired = true
            pool.closeIdle()
        }
    }

    /// The endpoint pool for the next request, or `nil` when the cluster has none.
    ///
    /// Round robin takes each in turn. Least-request draws two distinct endpoints and takes the
    /// one with fewer requests in flight on this loop (power of two choices; ties go to the
    /// first drawn). In-flight counts are per loop, as Envoy's are per worker. Endpoints that
    /// are unhealthy or ejected are skipped, unless none is left: then all are used (Envoy's
    /// panic routing), as refusing every request helps no one.
    func pick(_ random: GatewayRandom) -> UpstreamPool? {
        if self.state.unavailable.load(ordering: .relaxed) != 0 {
            let available = self.pools.filter { self.state.isAvailable($0.state) }
            if !available.isEmpty && available.count < self.pools.count {
                return self.pick(random, among: available)
            }
        }
        return self.pick(random, among: self.pools)
    }

    private func pick(_ random: GatewayRandom, among pools: [UpstreamPool]) -> UpstreamPool? {
        switch pools.count {
        case 0: return nil
        case 1: return pools[0]
        default: break
        }
        if self.cluster.loadBalancer == .leastRequest {
            let count = UInt64(pools.count)
            let first = Int(random.next(below: count))
            let second = (first + 1 + Int(random.next(below: count - 1))) % pools.count
            let a = pools[first]
            let b = pools[second]
            return b.inFlight < a.inFlight ? b : a
        }
        // round_robin, and ring_hash for requests without the key.
        let pool = pools[self.next % pools.count]
        self.next = (self.next + 1) % self.pools.count
        return pool
    }
}
