//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOHTTP1

/// A consistent-hash ring over a cluster's endpoints (`load_balancer: ring_hash`).
///
/// Each endpoint owns ``pointsPerEndpoint`` points on a 64-bit ring, placed by hashing
/// `"<host:port>#<i>"`; a key belongs to the first point at or after its own hash. The ring
/// depends only on the endpoints' addresses, so every event loop (and every gateway process)
/// builds the same one, and adding or removing one of N endpoints moves only the keys of its
/// points: about 1/N of them.
///
/// ```swift
/// let ring = HashRing(endpoints: ["127.0.0.1:8102", "127.0.0.1:8112"])
/// let index = ring.endpoint(for: "user-42")   // the same index every time
/// ```
struct HashRing: Sendable {
    /// Points per endpoint: enough that each endpoint's share is within a few percent of 1/N.
    static let pointsPerEndpoint = 160

    /// Ring positions, sorted, with the index of the endpoint owning each.
    let points: [(hash: UInt64, endpoint: Int)]

    init(endpoints: [String]) {
        var points: [(hash: UInt64, endpoint: Int)] = []
        points.reserveCapacity(endpoints.count * Self.pointsPerEndpoint)
        for (index, endpoint) in endpoints.enumerated() {
            for point in 0..<Self.pointsPerEndpoint {
                points.append((Self.hash("\(endpoint)#\(point)".utf8), index))
            }
        }
        // Equal hashes (vanishingly rare) are ordered by endpoint so that every loop agrees.
        self.points = points.sorted { ($0.hash, $0.endpoint) < ($1.hash, $1.endpoint) }
    }

    /// The index of the endpoint owning `key`, or nil for an empty ring.
    func endpoint<Key: Collection<UInt8>>(for key: Key) -> Int? {
        self.endpoint(for: key, where: { _ in true })
    }

    /// The first endpoint clockwise from `key`'s position that `isAvailable` accepts (so an
    /// unavailable endpoint's keys spread over the others, and come back when it does).
    func endpoint<Key: Collection<UInt8>>(for key: Key, where isAvailable: (Int) -> Bool) -> Int? {
        guard !self.points.isEmpty else { return nil }
        let target = Self.hash(key)
        // Binary search for the first point at or after the key.
        var low = 0
        var high = self.points.count
        while low < high {
            let middle = (low + high) / 2
            if self.points[middle].hash < target { low = middle + 1 } else { high = middle }
        }
        for offset in 0..<self.points.count {
            let endpoint = self.points[(low + offset) % self.points.count].endpoint
            if isAvailable(endpoint) { return endpoint }
        }
        return nil
    }

    /// A stable 64-bit hash: FNV-1a over the bytes, then the SplitMix64 finalizer to spread
    /// FNV's weak low bits. Written here because Swift's `Hasher` is seeded per process (rings
    /// must agree across processes and restarts), and a cryptographic hash per request would be
    /// needless cost for a key that is not a secret.
    static func hash<Bytes: Sequence<UInt8>>(_ bytes: Bytes) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        hash = (hash ^ (hash >> 30)) &* 0xbf58_476d_1ce4_e5b9
        hash = (hash ^ (hash >> 27)) &* 0x94d0_49bb_1331_11eb
        return hash ^ (hash >> 31)
    }

    /// The key `hashOn` names in a request, if present.
    static func key(_ hashOn: GatewayConfiguration.HashOn, in headers: HTTPHeaders) -> Substring? {
        switch hashOn {
        case .header(let name):
            return headers.first(name: name).map { Substring($0) }
        case .cookie(let name):
            for header in headers["cookie"] {
                for pair in header.split(separator: ";") {
                    let trimmed = pair.drop { $0 == " " }
                    guard let equals = trimmed.firstIndex(of: "="), trimmed[..<equals] == name else { continue }
                    return Substring(trimmed[trimmed.index(after: equals)...])
                }
            }
            return nil
        }
    }
}
