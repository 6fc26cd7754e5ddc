//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryDiscovery
import Foundation
import Logging
import ServiceLifecycle
import Testing

private func endpoints(_ ports: Int...) -> [Endpoint] {
    ports.map { Endpoint(host: "127.0.0.1", port: $0) }
}

@Suite("Endpoint sets")
struct EndpointSetTests {
    @Test("a watcher sees the list now, then each change once; an equal list is no change")
    func watch() async throws {
        let set = EndpointSet(endpoints(8101))
        var updates = set.updates().makeAsyncIterator()
        #expect(await updates.next() == endpoints(8101))
        #expect(set.set(endpoints(8101, 8102)))
        #expect(!set.set(endpoints(8101, 8102)))
        #expect(await updates.next() == endpoints(8101, 8102))
        #expect(set.set([]))
        #expect(await updates.next() == [])
        #expect(set.endpoints() == [])
        set.finish()
        #expect(await updates.next() == nil)
    }

    @Test("a slow watcher skips to the newest list")
    func slowWatcher() async throws {
        let set = EndpointSet()
        var updates = set.updates().makeAsyncIterator()
        for port in 8101...8110 {
            set.set(endpoints(port))
        }
        #expect(await updates.next() == endpoints(8110))
    }

    @Test("a watcher that stops watching is forgotten")
    func cancelledWatcher() async throws {
        let set = EndpointSet(endpoints(8101))
        do {
            var updates = set.updates().makeAsyncIterator()
            _ = await updates.next()
            #expect(set.watcherCount == 1)
        }
        #expect(set.watcherCount == 0)
    }

    @Test("a static list never changes: its updates give it once and end")
    func staticEndpoints() async throws {
        let provider: any EndpointProvider = StaticEndpoints(endpoints(8101, 8102))
        var seen: [[Endpoint]] = []
        for await list in provider.updates() {
            seen.append(list)
        }
        #expect(seen == [endpoints(8101, 8102)])
    }
}

@Suite("File discovery")
struct FileDiscoveryTests {
    final class TempFile: Sendable {
        let directory: String
        let path: String
        init() throws {
            self.directory = NSTemporaryDirectory() + "aviary-discovery-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
            self.path = self.directory + "/endpoints.json"
        }
        /// Writes atomically, as the documentation tells writers to.
        func write(_ text: String) throws {
            try Data(text.utf8).write(to: URL(fileURLWithPath: self.path), options: .atomic)
        }
        deinit { try? FileManager.default.removeItem(atPath: self.directory) }
    }

    @Test("the file names each service's endpoints; an unnamed service has none")
    func read() throws {
        let file = try TempFile()
        try file.write(#"{"orders": ["127.0.0.1:8102", "127.0.0.1:8112", "127.0.0.1:8102"], "users": ["[::1]:8101"]}"#)
        let discovery = try FileDiscovery(path: file.path)
        #expect(discovery.services == ["orders", "users"])
        #expect(discovery.provider(for: "orders").endpoints() == endpoints(8102, 8112))
        #expect(discovery.provider(for: "users").endpoints() == [Endpoint(host: "::1", port: 8101)])
        #expect(discovery.provider(for: "payments").endpoints() == [])
    }

    @Test(
        "bad files are refused with the file and the entry named",
        arguments: [
            ("", "not valid JSON"),
            (#"["127.0.0.1:8102"]"#, "expected an object of service names"),
            (#"{"orders": "127.0.0.1:8102"}"#, #"orders: expected a list of "host:port""#),
            (#"{"orders": ["127.0.0.1:8102", 8112]}"#, #"orders[1]: expected a "host:port" string"#),
            (#"{"orders": ["127.0.0.1:http"]}"#, #"orders[0]: invalid endpoint "127.0.0.1:http""#),
            (#"{"orders": ["127.0.0.1:0"]}"#, "orders[0]: expected a port in 1...65535, got 0"),
        ])
    func refused(contents: String, expected: String) throws {
        let file = try TempFile()
        try file.write(contents)
        let error = #expect(throws: AviaryError.self) { try FileDiscovery(path: file.path) }
        #expect(error?.message.contains("discovery file \(file.path): ") == true)
        #expect(error?.message.contains(expected) == true, "\(error?.message ?? "")")
    }

    @Test("a missing file is refused at start")
    func missing() throws {
        let file = try TempFile()
        let error = #expect(throws: AviaryError.self) { try FileDiscovery(path: file.path) }
        #expect(error?.message.contains("cannot be read") == true)
    }

    @Test("while running, a changed file reaches watchers; a broken one keeps the last good lists")
    func follow() async throws {
        let file = try TempFile()
        try file.write(#"{"orders": ["127.0.0.1:8102"]}"#)
        let clock = ManualClock()
        let discovery = try FileDiscovery(path: file.path, interval: .seconds(1), clock: clock)
        let orders = discovery.provider(for: "orders")
        var updates = orders.updates().makeAsyncIterator()
        #expect(await updates.next() == endpoints(8102))

        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await discovery.run() }

            await clock.waitForSleepers(count: 1)
            try file.write(#"{"orders": ["127.0.0.1:8102", "127.0.0.1:8112"]}"#)
            clock.advance(by: .seconds(1))
            #expect(await updates.next() == endpoints(8102, 8112))

            await clock.waitForSleepers(count: 1)
            try file.write(#"{"orders": ["127.0.0.1:8102", "#)  // a writer that did not rename
            clock.advance(by: .seconds(1))
            await clock.waitForSleepers(count: 1)
            #expect(orders.endpoints() == endpoints(8102, 8112))
            #expect(#expect(throws: AviaryError.self) { try discovery.reload() } != nil)

            try file.write(#"{"users": ["127.0.0.1:8101"]}"#)
            clock.advance(by: .seconds(1))
            #expect(await updates.next() == [])
            #expect(discovery.provider(for: "users").endpoints() == endpoints(8101))

            group.cancelAll()
        }
        // A stopped discovery ends its watchers' streams.
        #expect(await updates.next() == nil)
    }

    @Test("a graceful shutdown stops the polling")
    func gracefulShutdown() async throws {
        let file = try TempFile()
        try file.write(#"{"orders": ["127.0.0.1:8102"]}"#)
        let clock = ManualClock()
        let discovery = try FileDiscovery(path: file.path, clock: clock)
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: [discovery], logger: Logger(label: "test")))
        var updates = discovery.provider(for: "orders").updates().makeAsyncIterator()
        #expect(await updates.next() == endpoints(8102))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            await clock.waitForSleepers(count: 1)
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        #expect(await updates.next() == nil)
    }
}
