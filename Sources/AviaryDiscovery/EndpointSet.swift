//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Synchronization

/// A list of endpoints that its owner changes, and that readers follow.
///
/// The building block of every changing provider: ``FileDiscovery`` keeps one per service, and a
/// process that knows where its peers are (Shop's address book, a test whose upstream listens on
/// port 0) sets one directly. Setting the same list again notifies nobody.
///
/// ```swift
/// let orders = EndpointSet()
/// orders.set([Endpoint(host: "127.0.0.1", port: 8102)])
/// for await list in orders.updates() { print(list) }   // the list now, then every change
/// ```
public final class EndpointSet: EndpointProvider {
    private struct State {
        var list: [Endpoint]
        var nextWatcher = 0
        var watchers: [Int: AsyncStream<[Endpoint]>.Continuation] = [:]
    }

    private let state: Mutex<State>

    /// A set holding `endpoints` (none by default).
    public init(_ endpoints: [Endpoint] = []) {
        self.state = Mutex(State(list: endpoints))
    }

    /// The endpoints now.
    public func endpoints() -> [Endpoint] {
        self.state.withLock { $0.list }
    }

    /// Replaces the list; watchers see the new one unless it equals the old.
    ///
    /// - Returns: whether the list changed.
    @discardableResult
    public func set(_ endpoints: [Endpoint]) -> Bool {
        self.state.withLock { state in
            guard state.list != endpoints else { return false }
            state.list = endpoints
            for watcher in state.watchers.values {
                watcher.yield(endpoints)
            }
            return true
        }
    }

    /// The list now, then every change. Each watcher keeps only the newest list it has not read
    /// yet, so a slow reader skips intermediate lists instead of queueing them.
    public func updates() -> AsyncStream<[Endpoint]> {
        let (stream, continuation) = AsyncStream.makeStream(of: [Endpoint].self, bufferingPolicy: .bufferingNewest(1))
        self.state.withLock { state in
            let id = state.nextWatcher
            state.nextWatcher += 1
            state.watchers[id] = continuation
            continuation.yield(state.list)
            continuation.onTermination = { [weak self] _ in
                self?.state.withLock { _ = $0.watchers.removeValue(forKey: id) }
            }
        }
        return stream
    }

    /// Ends every watcher's stream (the provider is going away).
    public func finish() {
        let watchers = self.state.withLock { state in
            defer { state.watchers = [:] }
            return Array(state.watchers.values)
        }
        for watcher in watchers {
            watcher.finish()
        }
    }

    /// How many watchers follow the set (tests wait for a reader to subscribe).
    public var watcherCount: Int {
        self.state.withLock { $0.watchers.count }
    }
}
