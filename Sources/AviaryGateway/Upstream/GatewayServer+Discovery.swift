//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryDiscovery
import Logging
import NIOCore
import Synchronization

// Clusters with `discovery: {service: NAME}` take their endpoints from a ServiceDirectory (the
// embedder's, or a FileDiscovery of `discovery: {file: …}`). Each change of a service's list
// makes a new configuration generation, as a reload does: requests in flight finish on the
// endpoints they started with, and endpoints that stay keep their health and ejection
// (ClusterState's carry-over). A configuration that names discovered clusters holds their
// current endpoints in `endpoints`, so that the admin API's `/config` shows them.

extension GatewayServer {
    /// Before start: finds the directory (reading the discovery file if the gateway has no
    /// directory of its own), reads each discovered service's endpoints now, and returns
    /// `configuration` with them filled in.
    func prepareDiscovery(_ configuration: GatewayConfiguration) throws -> GatewayConfiguration {
        let services = Set(configuration.clusters.compactMap(\.discovery))
        guard !services.isEmpty else { return configuration }
        if self.state.withLock({ $0.directory == nil }) {
            guard let settings = configuration.discovery else {
                let names = configuration.clusters.filter { $0.discovery != nil }.map {
                    "clusters.\($0.name).discovery"
                }
                throw GatewayServerError.discoveryUnavailable(
                    "\(names.joined(separator: ", ")): no discovery source: add discovery: {file: PATH} at the top level"
                )
            }
            let file: FileDiscovery
            do {
                file = try FileDiscovery(
                    path: settings.file, interval: settings.interval, clock: self.clock, logger: self.logger)
            } catch {
                throw GatewayServerError.discoveryUnavailable("discovery.file: \(error.message)")
            }
            self.state.withLock { state in
                state.directory = file
                state.fileDiscovery = file
            }
        }
        return self.state.withLock { state in
            var problems: [String] = []
            return Self.discover(into: configuration, &state, problems: &problems)
        }
    }

    /// `configuration` with the endpoints of its discovered clusters filled in from `state`
    /// (asking the directory for services not seen before); a problem for each discovered
    /// cluster when there is no directory, or when `discovery:` changed (it cannot, while running).
    static func discover(
        into configuration: GatewayConfiguration, _ state: inout State, problems: inout [String]
    ) -> GatewayConfiguration {
        var configuration = configuration
        if case .running = state.phase, configuration.discovery != state.core.configuration.discovery,
            state.fileDiscovery != nil || configuration.discovery != nil
        {
            problems.append("discovery: cannot change while running; restart the gateway")
        }
        for index in configuration.clusters.indices {
            guard let service = configuration.clusters[index].discovery else { continue }
            guard let directory = state.directory else {
                problems.append(
                    "clusters.\(configuration.clusters[index].name).discovery: no discovery source; add discovery: {file: PATH} and restart the gateway"
                )
                continue
            }
            let endpoints: [Endpoint]
            if let known = state.discovered[service] {
                endpoints = known
            } else {
                endpoints = directory.endpoints(of: service).endpoints()
                state.discovered[service] = endpoints
            }
            configuration.clusters[index].endpoints = endpoints
        }
        return configuration
    }

    /// Follows each discovered service of the current configuration (and re-reads the discovery
    /// file, when the gateway reads one); stops following services no cluster uses any more.
    func startDiscoveryWatchers() {
        self.state.withLock { state in
            guard case .running = state.phase, let directory = state.directory else { return }
            if let file = state.fileDiscovery, state.fileDiscoveryTask == nil {
                state.fileDiscoveryTask = Task { try? await file.run() }
            }
            let wanted = Set(state.core.configuration.clusters.compactMap(\.discovery))
            for (service, task) in state.discoveryWatchers where !wanted.contains(service) {
                task.cancel()
                state.discoveryWatchers[service] = nil
                state.discovered[service] = nil
            }
            for service in wanted where state.discoveryWatchers[service] == nil {
                let provider = directory.endpoints(of: service)
                state.discoveryWatchers[service] = Task { [self] in
                    for await endpoints in provider.updates() {
                        await self.apply(discovered: endpoints, of: service)
                    }
                }
            }
        }
    }

    /// Serves `endpoints` for every cluster that discovers `service`, as a new generation.
    func apply(discovered endpoints: [Endpoint], of service: String) async {
        let installed = self.state.withLock { state -> ([NIOLoopBound<GatewayLoop>], GatewayCore)? in
            guard case .running = state.phase, state.discovered[service] != endpoints else { return nil }
            state.discovered[service] = endpoints
            var configuration = state.core.configuration
            var uses = false
            for index in configuration.clusters.indices where configuration.clusters[index].discovery == service {
                configuration.clusters[index].endpoints = endpoints
                uses = true
            }
            guard uses else { return nil }
            let core = GatewayCore(
                configuration: configuration, statistics: self.statistics, random: self.random, logger: self.logger,
                authenticator: state.core.authenticator, clock: self.clock, tracer: self.tracer, previous: state.core)
            state.core = core
            for loop in state.loops {
                loop.eventLoop.execute { loop.value.install(core) }
            }
            return (state.loops, core)
        }
        guard let (loops, core) = installed else { return }
        for loop in loops {
            try? await loop.eventLoop.submit {}.get()
        }
        self.startHealthCheckers(core)
        self.statistics.discoveryUpdates.add(1, ordering: .relaxed)
        self.logger.info(
            "endpoints discovered",
            metadata: ["aviary.service": "\(service)", "aviary.endpoints": "\(endpoints.map(\.description))"])
    }
}
