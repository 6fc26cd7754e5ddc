//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Foundation
public import Logging
public import ServiceLifecycle
import Synchronization

/// Service discovery from a JSON file that names each service's endpoints, re-read while it runs.
///
/// The embedded default for a machine without a registry, like Prometheus' `file_sd` or Envoy's
/// filesystem EDS: whatever starts replicas (a supervisor, a deploy script, a person) writes the
/// file, and every reader follows it. The file maps service names to lists of `host:port`:
///
/// ```json
/// {"orders": ["127.0.0.1:8102", "127.0.0.1:8112"], "users": ["127.0.0.1:8101"]}
/// ```
///
/// A service the file does not name has no endpoints. Write the file atomically (write a
/// temporary file, then rename it over the old one); a file that cannot be read or parsed while
/// running is reported once in the log and the last good lists stay in force.
///
/// ```swift
/// let discovery = try FileDiscovery(path: "/etc/aviary/endpoints.json", logger: logger)
/// let orders = discovery.provider(for: "orders")       // an EndpointProvider
/// // run `discovery` in a ServiceGroup; it re-reads the file every second
/// ```
public final class FileDiscovery: Service, ServiceDirectory, Sendable {
    /// The file's path.
    public let path: String
    private let interval: Duration
    private let clock: any MonotonicClock
    private let logger: Logger
    private struct State {
        var sets: [String: EndpointSet] = [:]
        var lists: [String: [Endpoint]] = [:]
        var lastContents: Data?
        var lastProblem: String?
    }
    private let state = Mutex(State())

    /// Reads `path` now, and every `interval` while ``run()`` runs.
    ///
    /// - Throws: ``AviaryCore/AviaryError`` naming the file and what is wrong with it, when it
    ///   cannot be read or is not a map of service names to endpoint lists.
    public init(
        path: String, interval: Duration = .seconds(1), clock: any MonotonicClock = SystemClock(),
        logger: Logger = Logger(label: "aviary.discovery")
    ) throws(AviaryError) {
        self.path = path
        self.interval = interval
        self.clock = clock
        self.logger = logger
        try self.reload()
    }

    /// The endpoints of `service`, following the file.
    public func provider(for service: String) -> EndpointSet {
        self.state.withLock { state in
            if let set = state.sets[service] { return set }
            let set = EndpointSet(state.lists[service] ?? [])
            state.sets[service] = set
            return set
        }
    }

    /// The endpoints of `service`, following the file (``ServiceDirectory``).
    public func endpoints(of service: String) -> any EndpointProvider {
        self.provider(for: service)
    }

    /// The services the file names now, sorted.
    public var services: [String] {
        self.state.withLock { $0.lists.keys.sorted() }
    }

    /// Reads the file again and updates every provider whose list changed.
    ///
    /// - Returns: whether any service's list changed.
    /// - Throws: ``AviaryCore/AviaryError`` when the file cannot be read or parsed; the lists in
    ///   force stay as they were.
    @discardableResult
    public func reload() throws(AviaryError) -> Bool {
        let contents: Data
        do {
            contents = try Data(contentsOf: URL(fileURLWithPath: self.path))
        } catch {
            throw AviaryError(.invalidArgument, "discovery file \(self.path): cannot be read (\(Self.reason(error)))")
        }
        if self.state.withLock({ $0.lastContents == contents }) { return false }
        let lists = try Self.parse(contents, path: self.path)
        return self.state.withLock { state in
            let changed = state.lists != lists
            state.lastContents = contents
            state.lists = lists
            for (service, set) in state.sets {
                set.set(lists[service] ?? [])
            }
            return changed
        }
    }

    /// Re-reads the file every `interval` until cancelled or the service group shuts down.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            await self.poll()
        }
        let sets = self.state.withLock { Array($0.sets.values) }
        for set in sets {
            set.finish()
        }
    }

    private func poll() async {
        while !Task.isCancelled {
            do {
                try await self.clock.sleep(until: self.clock.now.advanced(by: self.interval), tolerance: nil)
            } catch {
                return
            }
            do {
                try self.reload()
                self.state.withLock { $0.lastProblem = nil }
            } catch {
                let message = error.message
                let isNew = self.state.withLock { state in
                    defer { state.lastProblem = message }
                    return state.lastProblem != message
                }
                if isNew {
                    self.logger.warning("keeping the last good endpoints", metadata: ["problem": "\(message)"])
                }
            }
        }
    }

    static func parse(_ contents: Data, path: String) throws(AviaryError) -> [String: [Endpoint]] {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: contents)
        } catch {
            throw AviaryError(.invalidArgument, "discovery file \(path): not valid JSON (\(Self.reason(error)))")
        }
        guard let map = object as? [String: Any] else {
            throw AviaryError(
                .invalidArgument,
                "discovery file \(path): expected an object of service names to lists of \"host:port\"")
        }
        var lists: [String: [Endpoint]] = [:]
        var problems: [String] = []
        for (service, value) in map.sorted(by: { $0.key < $1.key }) {
            guard let items = value as? [Any] else {
                problems.append("\(service): expected a list of \"host:port\"")
                continue
            }
            var endpoints: [Endpoint] = []
            for (index, item) in items.enumerated() {
                guard let text = item as? String else {
                    problems.append("\(service)[\(index)]: expected a \"host:port\" string")
                    continue
                }
                do {
                    let endpoint = try Endpoint(parsing: text)
                    if endpoint.port == 0 {
                        problems.append("\(service)[\(index)]: expected a port in 1...65535, got 0")
                    } else if !endpoints.contains(endpoint) {
                        endpoints.append(endpoint)
                    }
                } catch {
                    problems.append("\(service)[\(index)]: \(error.message)")
                }
            }
            lists[service] = endpoints
        }
        if !problems.isEmpty {
            throw AviaryError(.invalidArgument, "discovery file \(path): " + problems.joined(separator: "; "))
        }
        return lists
    }

    private static func reason(_ error: any Error) -> String {
        let described = (error as NSError).localizedDescription
        return described.isEmpty ? "\(error)" : described
    }
}
