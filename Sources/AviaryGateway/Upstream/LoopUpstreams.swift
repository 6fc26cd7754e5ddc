//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore

/// Everything the data plane of one event loop needs: the route table, and per cluster its
/// endpoint pools and balancer state. Owned by that loop; touched only there (it travels between
/// threads only inside `NIOLoopBound`).
final class LoopUpstreams {
    let eventLoop: any EventLoop
    let core: GatewayCore
    let clusters: [ClusterPools]

    init(eventLoop: any EventLoop, core: GatewayCore) {
        self.eventLoop = eventLoop
        self.core = core
        self.clusters = core.configuration.clusters.map { cluster in
            ClusterPools(
                cluster: cluster,
                pools: cluster.endpoints.map {
                    UpstreamPool(cluster: cluster, endpoint: $0, eventLoop: eventLoop, statistics: core.statistics)
                })
        }
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
    let pools: [UpstreamPool]
    private var next = 0

    init(cluster: GatewayConfiguration.Cluster, pools: [UpstreamPool]) {
        self.cluster = cluster
        self.pools = pools
    }

    /// The endpoint pool for the next request, or `nil` when the cluster has none.
    ///
    /// Round robin takes each in turn. Least-request draws two distinct endpoints and takes the
    /// one with fewer requests in flight on this loop (power of two choices; ties go to the
    /// first drawn). In-flight counts are per loop, as Envoy's are per worker.
    func pick(_ random: GatewayRandom) -> UpstreamPool? {
        switch self.pools.count {
        case 0: return nil
        case 1: return self.pools[0]
        default: break
        }
        if self.cluster.loadBalancer == .leastRequest {
            let count = UInt64(self.pools.count)
            let first = Int(random.next(below: count))
            let second = (first + 1 + Int(random.next(below: count - 1))) % self.pools.count
            let a = self.pools[first]
            let b = self.pools[second]
            return b.inFlight < a.inFlight ? b : a
        }
        // round_robin, and ring_hash until it exists.
        let pool = self.pools[self.next]
        self.next = (self.next + 1) % self.pools.count
        return pool
    }
}
