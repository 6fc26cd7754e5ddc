//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryEventSourcing
import AviaryMessaging
import AviaryStorage
import AviaryTestSupport
import AviaryWorkflows
import Foundation
import GRDB
import Testing

@testable import Shop

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The place-order saga under SIGKILL, with real processes: `aviary-shop-fault` (built next to the
/// test bundle) runs inventory, payments, and users + orders as three processes on 127.0.0.1;
/// orders places 2,000 orders through `POST /orders`. Each process is started with a failpoint at
/// which it SIGKILLs itself (every saga step boundary: before and after place, reserve, charge,
/// commit, confirm, and the compensations refund, release, cancel; in inventory and payments
/// after their transaction commits and before they answer), and restarted with the next one when
/// it dies; in between, the test SIGKILLs a random process at random moments. Afterwards every
/// saga must be completed or compensated, stock and payments must balance exactly, and the order
/// history must equal what the event store says.
///
/// `AVIARY_FAULT_SEED=<seed> swift test --filter ShopCrashTests` replays a schedule;
/// `AVIARY_SHOP_CRASH_ORDERS=N` places N orders instead of 2,000.
@Suite("Shop under SIGKILL", .serialized, .timeLimit(.minutes(5)))
struct ShopCrashTests {
    /// Orders placed in all (`AVIARY_SHOP_CRASH_ORDERS` overrides, at least 200).
    static let count = max(
        200, ProcessInfo.processInfo.environment["AVIARY_SHOP_CRASH_ORDERS"].flatMap(Int.init) ?? 2000)
    static let declineAbove = 16_000
    static let seed = ["book-1": 100_000, "book-2": 100_000, "mug-1": 100_000, "poster-1": 300, "pen-1": 100_000]
    static let calleeFailpoints = [
        "inventory": ["inventory.reserve.committed", "inventory.release.committed", "inventory.commit.committed"],
        "payments": ["payments.charge.committed", "payments.refund.committed"],
    ]

    static var executable: URL { ChildProcess.builtExecutable("aviary-shop-fault") }

    /// One child process: how to start it, its queue of failpoints, its log.
    final class Child {
        let name: String
        let arguments: [String]
        let log: String
        var failpoints: [(String, Int)]
        /// The failpoint the running process dies at.
        var armed: (String, Int)?
        var process: Spawn.Child?
        var starts = 0

        init(name: String, arguments: [String], log: String, failpoints: [(String, Int)]) {
            self.name = name
            self.arguments = arguments
            self.log = log
            self.failpoints = failpoints
            _ = FileManager.default.createFile(atPath: log, contents: nil)
        }

        func launch() throws {
            var arguments = self.arguments
            self.armed = self.failpoints.isEmpty ? nil : self.failpoints.removeFirst()
            if let (point, after) = self.armed {
                arguments += ["--kill-at", point, "--kill-after", "\(after)"]
            }
            self.process = try Spawn.start(
                ShopCrashTests.executable.path, arguments, stdout: .appending(to: self.log), stderr: .standardOutput)
            self.starts += 1
        }

        var tail: String {
            "\(self.name): " + String(((try? String(contentsOfFile: self.log, encoding: .utf8)) ?? "").suffix(1500))
        }

        var killedAt: [String] {
            ((try? String(contentsOfFile: self.log, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
                line -> String? in
                guard let range = line.range(of: "killed at ") else { return nil }
                return String(line[range.upperBound...])
            }
        }
    }

    @Test(
        "SIGKILL at every step boundary: every saga completed or compensated, stock and money balance, history = events"
    )
    func killAtEveryStepBoundary() async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.executable.path),
            "build the aviary-shop-fault target first (swift build --build-tests)")
        var random = FaultSchedule("ShopCrashTests")
        let seed = random.seed
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "aviary-shop-crash-\(UUID().uuidString.prefix(8))"
        ).path
        for sub in ["orders", "inventory", "payments"] {
            try FileManager.default.createDirectory(
                atPath: "\(directory)/\(sub)", withIntermediateDirectories: true)
        }
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ports = (
            users: try FreePort.next(), orders: try FreePort.next(), inventory: try FreePort.next(),
            payments: try FreePort.next()
        )

        // Every failpoint at least once, a few passes in (1...6) so that each is reached early.
        func schedule(_ points: [String], rounds: Int) -> [(String, Int)] {
            (0..<rounds).flatMap { _ in points }.shuffled(using: &random).map {
                ($0, Int.random(in: 1...6, using: &random))
            }
        }
        let seedFlag = Self.seed.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: ",")
        let inventory = Child(
            name: "inventory",
            arguments: [
                "inventory", "--data", "\(directory)/inventory", "--port", "\(ports.inventory)", "--seed", seedFlag,
            ],
            log: "\(directory)/inventory.log", failpoints: schedule(Self.calleeFailpoints["inventory"]!, rounds: 2))
        let payments = Child(
            name: "payments",
            arguments: [
                "payments", "--data", "\(directory)/payments", "--port", "\(ports.payments)", "--decline-above",
                "\(Self.declineAbove)",
            ],
            log: "\(directory)/payments.log", failpoints: schedule(Self.calleeFailpoints["payments"]!, rounds: 2))
        let orders = Child(
            name: "orders",
            arguments: [
                "orders", "--data", "\(directory)/orders", "--port", "\(ports.orders)", "--users-port",
                "\(ports.users)", "--inventory-port", "\(ports.inventory)", "--payments-port", "\(ports.payments)",
                "--count", "\(Self.count)",
            ],
            log: "\(directory)/orders.log", failpoints: schedule(PlaceOrderFailpoints.all, rounds: 1))
        let children = [inventory, payments, orders]
        defer {
            for child in children { child.process?.kill(SIGKILL) }
        }
        for child in children { try child.launch() }

        // Restart whatever died, until orders is done; SIGKILL a random process now and then.
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: .seconds(240))
        var nextRandomKill = clock.now.advanced(by: .milliseconds(Int.random(in: 500...3000, using: &random)))
        var randomKills = 0
        while true {
            guard clock.now < deadline else {
                Issue.record("seed \(seed): orders did not finish\n\(children.map(\.tail).joined(separator: "\n"))")
                return
            }
            var done = false
            for child in children {
                guard let exit = child.process?.exitIfFinished else { continue }
                if exit == .signaled(SIGKILL) {
                    try child.launch()
                } else if child === orders && exit == .exited(0) {
                    done = true
                } else {
                    Issue.record("seed \(seed): \(child.name) failed (\(exit))\n\(child.tail)")
                    return
                }
            }
            if done { break }
            if clock.now >= nextRandomKill {
                // A fault schedule, not a wait for anything: a SIGKILL at a random moment.
                let victim = children[Int.random(in: 0..<children.count, using: &random)]
                if let process = victim.process, process.kill(SIGKILL) {
                    randomKills += 1
                    // Its failpoint was not reached: the next start gets it again.
                    if let armed = victim.armed { victim.failpoints.insert(armed, at: 0) }
                }
                nextRandomKill = clock.now.advanced(by: .milliseconds(Int.random(in: 1000...4000, using: &random)))
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        // Stop the callees (their data is committed; a SIGKILL is as good as any stop) and wait.
        for child in [inventory, payments] {
            try await child.process?.stop(SIGKILL)
        }
        let killedAt = Set(children.flatMap(\.killedAt))
        print(
            "ShopCrashTests: \(children.map { "\($0.name) started \($0.starts)x" }.joined(separator: ", ")); "
                + "\(killedAt.count) failpoints killed at, \(randomKills) random kills")
        let everyPoint = Set(PlaceOrderFailpoints.all + Self.calleeFailpoints.values.flatMap { $0 })
        #expect(
            everyPoint.subtracting(killedAt).isEmpty, "never killed at \(everyPoint.subtracting(killedAt).sorted())")

        try await Self.verify(directory: directory)
    }

    /// Every saga final; the event store, the order history, inventory and payments agree exactly.
    static func verify(directory: String) async throws {
        let ordersStore = try SQLiteStore(url: StoreURL(.sqlite(path: "\(directory)/orders/orders.db")))
        let sagas = SQLiteSagaStore(store: ordersStore)
        let book = try OrderBook(store: ordersStore)
        let instances = try await sagas.instances(status: nil, limit: Self.count + 10)
        #expect(instances.count == Self.count)
        var orders: [String: Order] = [:]
        for instance in instances {
            let order = try #require(try await book.order(instance.id)?.order, "\(instance.id) has no events")
            orders[order.id] = order
            switch instance.status {
            case .completed:
                #expect(order.status == "confirmed", "\(instance.id): saga completed, order \(order.status)")
                #expect(order.totalCents <= Self.declineAbove, "\(order.id) was charged above the limit")
            case .compensated:
                #expect(order.status == "cancelled", "\(instance.id): saga compensated, order \(order.status)")
            default:
                Issue.record("saga \(instance.id) is \(instance.status.rawValue): \(instance.lastError ?? "")")
            }
        }
        let confirmed = orders.values.filter { $0.status == "confirmed" }
        print("ShopCrashTests: \(confirmed.count) confirmed, \(orders.count - confirmed.count) cancelled")
        #expect(confirmed.count > Self.count / 4, "too few orders went through to mean much")
        #expect(orders.values.contains { $0.status == "cancelled" })

        // The order history, caught up, equals the event store.
        let history = try ProjectionRunner(OrderHistory(), events: book.events, store: ordersStore)
        try await history.catchUp()
        let rows = try await ordersStore.read { db in
            try Row.fetchAll(db, sql: "SELECT DISTINCT user_id FROM order_history").map { $0[0] as String }
                .flatMap { try OrderHistory.orders(of: $0, limit: Self.count + 10, in: db) }
        }
        #expect(rows.count == orders.count)
        #expect(Dictionary(rows.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first }) == orders)
        #expect(try await ordersStore.read { db in try Outbox.pendingCount(in: db) } == 0)

        // Inventory: nothing held, every confirmed order's stock committed once, nothing else gone.
        let inventory = try SQLiteStore(url: StoreURL(.sqlite(path: "\(directory)/inventory/inventory.db")))
        let (stock, reservations) = try await inventory.read { db in
            (
                try Row.fetchAll(db, sql: "SELECT sku, on_hand, reserved FROM stock").map {
                    ($0[0] as String, $0[1] as Int, $0[2] as Int)
                },
                try Row.fetchAll(db, sql: "SELECT order_id, status, items FROM reservations").map {
                    ($0[0] as String, $0[1] as String, $0[2] as String)
                }
            )
        }
        var sold: [String: Int] = [:]
        for order in confirmed { for item in order.items { sold[item.sku, default: 0] += item.quantity } }
        for (sku, onHand, reserved) in stock {
            #expect(reserved == 0, "\(sku): \(reserved) units still reserved")
            #expect(onHand == (Self.seed[sku] ?? 0) - sold[sku, default: 0], "\(sku): \(onHand) on hand")
        }
        let reservationStatus = Dictionary(reservations.map { ($0.0, $0.1) }, uniquingKeysWith: { first, _ in first })
        #expect(reservations.count == reservationStatus.count)
        for order in orders.values {
            let status = reservationStatus[order.id]
            if order.status == "confirmed" {
                #expect(status == "committed", "\(order.id) is confirmed, its reservation \(status ?? "missing")")
            } else {
                #expect(status == nil || status == "released", "\(order.id) is cancelled, its reservation \(status!)")
            }
        }
        #expect(reservations.allSatisfy { orders[$0.0] != nil }, "a reservation for an order that does not exist")

        // Payments: one captured payment per confirmed order, of its total; none for a cancelled one.
        let paymentsStore = try SQLiteStore(url: StoreURL(.sqlite(path: "\(directory)/payments/payments.db")))
        let payments = try await paymentsStore.read { db in
            try Row.fetchAll(db, sql: "SELECT id, order_id, amount_cents, status FROM payments").map {
                ($0[0] as String, $0[1] as String, $0[2] as Int, $0[3] as String)
            }
        }
        let captured = payments.filter { $0.3 == "captured" }
        #expect(Set(captured.map(\.1)).count == captured.count, "an order was charged twice")
        #expect(Set(payments.map(\.1)).count == payments.count, "an order has two payments")
        #expect(Set(captured.map(\.1)) == Set(confirmed.map(\.id)))
        for (id, orderID, amount, _) in captured {
            #expect(orders[orderID]?.totalCents == amount, "\(id) of \(amount) for \(orderID)")
            #expect(orders[orderID]?.paymentId == id, "\(orderID) is confirmed with another payment than \(id)")
        }
        #expect(captured.reduce(0) { $0 + $1.2 } == confirmed.reduce(0) { $0 + $1.totalCents })
    }
}
