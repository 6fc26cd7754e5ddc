//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore

/// Where a service's replicas are now, and as they change.
///
/// `ServiceClient` (AviaryService) reads ``endpoints()`` on every call; the gateway follows
/// ``updates()`` and rebuilds a cluster's balancer when the list changes. Implementations must
/// answer ``endpoints()`` quickly and without blocking: callers are on request paths.
///
/// ```swift
/// struct OneReplica: EndpointProvider {
///     func endpoints() -> [Endpoint] { [Endpoint(host: "127.0.0.1", port: 8103)] }
/// }
/// ```
public protocol EndpointProvider: Sendable {
    /// The endpoints to choose from now, in a stable order (balancers index into it).
    func endpoints() -> [Endpoint]

    /// The endpoint list now, then each new list whenever it changes, until the provider stops
    /// or the consumer cancels. The default yields the current list once and finishes: a
    /// provider that never changes needs nothing more.
    func updates() -> AsyncStream<[Endpoint]>
}

extension EndpointProvider {
    /// The current list, once.
    public func updates() -> AsyncStream<[Endpoint]> {
        let (stream, continuation) = AsyncStream.makeStream(of: [Endpoint].self)
        continuation.yield(self.endpoints())
        continuation.finish()
        return stream
    }
}

/// A fixed list of endpoints.
///
/// ```swift
/// let payments = StaticEndpoints([Endpoint(host: "127.0.0.1", port: 8103)])
/// ```
public struct StaticEndpoints: EndpointProvider {
    let list: [Endpoint]

    /// Uses `endpoints`, in this order.
    public init(_ endpoints: [Endpoint]) {
        self.list = endpoints
    }

    /// The list.
    public func endpoints() -> [Endpoint] { self.list }
}

/// Where to find the endpoints of any service by name: what a gateway or a platform hands its
/// parts, so that each looks its upstreams up in one place.
///
/// ```swift
/// let directory: any ServiceDirectory = try FileDiscovery(path: "endpoints.json")
/// let orders = directory.endpoints(of: "orders")
/// ```
public protocol ServiceDirectory: Sendable {
    /// The endpoints of `service`, following their changes (an empty list for an unknown one).
    func endpoints(of service: String) -> any EndpointProvider
}
