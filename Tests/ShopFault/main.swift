//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AsyncHTTPClient
import AviaryCore
import AviaryMessaging
import AviaryStorage
import AviaryWorkflows
import Foundation
import GRDB
import Logging
import NIOCore
import NIOHTTP1
import Shop
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Shop's services as separate processes for the Shop crash test (ShopCrashTests), which kills them
// with SIGKILL at the place-order saga's step boundaries and starts them again, over and over:
//
//   aviary-shop-fault inventory --data DIR --port P [--seed SKU=N,...] [--kill-at NAME --kill-after N]
//   aviary-shop-fault payments  --data DIR --port P --decline-above CENTS [--kill-at NAME --kill-after N]
//     Serves the service (without tokens) until killed.
//   aviary-shop-fault orders --data DIR --port P --users-port U --inventory-port I --payments-port Q
//                            --count N [--kill-at NAME --kill-after N]
//     Runs users and orders (saga runner, outbox relay, order history), then places the orders
//     1...N that have no saga yet through POST /orders (Idempotency-Key `order-<n>`, so a repeat
//     after a restart is the same order), 16 at a time. Exits 0 once every order's saga is final and the outbox is empty.
//
// --kill-at NAME --kill-after N: the process SIGKILLs itself the N-th time it passes the failpoint
// NAME (ShopOptions.failpoint), after printing "killed at NAME" to stderr.

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("aviary-shop-fault: \(message)\n".utf8))
    exit(2)
}

var arguments = Array(CommandLine.arguments.dropFirst())
guard let mode = arguments.first, ["inventory", "payments", "orders"].contains(mode) else {
    fail("usage: aviary-shop-fault inventory|payments|orders --data DIR --port P ...")
}
arguments.removeFirst()
var parsed: [String: String] = [:]
while arguments.count >= 2 {
    parsed[arguments[0]] = arguments[1]
    arguments.removeFirst(2)
}
let flags = parsed
func int(_ flag: String) -> Int {
    guard let value = flags[flag].flatMap(Int.init) else { fail("\(flag) N is required") }
    return value
}
guard let data = flags["--data"] else { fail("--data DIR is required") }
let port = int("--port")

/// Counts the passes of one failpoint and kills the process at the chosen one.
final class Killer: Sendable {
    let name: String?
    let after: Int
    let passes = Atomic<Int>(0)

    init(name: String?, after: Int) {
        self.name = name
        self.after = after
    }

    func pass(_ point: String) {
        guard point == self.name else { return }
        if self.passes.add(1, ordering: .relaxed).newValue == self.after {
            FileHandle.standardError.write(Data("aviary-shop-fault: killed at \(point)\n".utf8))
            kill(getpid(), SIGKILL)
        }
    }
}
let killer = Killer(name: flags["--kill-at"], after: flags["--kill-after"].flatMap(Int.init) ?? 1)

var logger = Logger(label: "aviary.shop.fault")
logger.logLevel = .error
var options = ShopOptions()
options.dataDirectory = data
options.requireTokens = false
options.gatewayPort = nil
options.logger = logger
options.failpoint = { killer.pass($0) }
options.tracing = { _ in nil }
options.messagingPollInterval = .milliseconds(100)
// Ride out a callee's restart inside one step: many attempts, no retry budget, a breaker that
// does not open (a crash test wants the sagas to complete, not to fail fast).
options.upstreamAttempts = 60
options.upstreamRetryBudget = false
options.breakerMinimumCalls = 10_000
options.upstreamAttemptTimeout = .seconds(5)
options.upstreamTotalTimeout = .seconds(30)
options.paymentsDeclineAbove = flags["--decline-above"].flatMap(Int.init)
// --seed sku=N,sku=N: inventory's stock at its first start.
if let seed = flags["--seed"] {
    options.inventorySeed = [:]
    for pair in seed.split(separator: ",") {
        let parts = pair.split(separator: "=")
        guard parts.count == 2, let quantity = Int(parts[1]) else { fail("--seed: expected sku=N,..., got \(seed)") }
        options.inventorySeed[String(parts[0])] = quantity
    }
}

if mode != "orders" {
    options.ports = [mode: port]
    do {
        let shop = try ShopSystem(options: options)
        try await shop.run(services: [mode])
    } catch {
        fail("\(error)")
    }
    exit(0)
}

// orders: users and orders in this process, inventory and payments in theirs.
let count = int("--count")
options.ports = ["users": int("--users-port"), "orders": port]
let shop: ShopSystem
do {
    shop = try ShopSystem(options: options)
} catch {
    fail("\(error)")
}
shop.addressBook.set("inventory", Endpoint(host: "127.0.0.1", port: int("--inventory-port")))
shop.addressBook.set("payments", Endpoint(host: "127.0.0.1", port: int("--payments-port")))
let server = Task { try await shop.run(services: ["users", "orders"]) }

/// The order `n` of the run: one to three SKUs, totals from 10.00 to 150.00.
func order(_ n: Int) -> String {
    let skus = ["book-1", "book-2", "mug-1", "poster-1", "pen-1"]
    var items: [String] = []
    for line in 0..<(n % 3 + 1) {
        let sku = skus[(n + line) % skus.count]
        let quantity = (n / 3 + line) % 3 + 1
        let price = 500 * ((n * 7 + line) % 10 + 1)
        items.append(#"{"sku":"\#(sku)","quantity":\#(quantity),"unitPriceCents":\#(price)}"#)
    }
    return #"{"userId":"alice","items":[\#(items.joined(separator: ","))]}"#
}

let ordersURL = "http://127.0.0.1:\(port)/orders"
func place(_ n: Int) async throws {
    var request = HTTPClientRequest(url: ordersURL)
    request.method = .POST
    request.headers.add(name: "content-type", value: "application/json")
    request.headers.add(name: "idempotency-key", value: "order-\(n)")
    request.body = .bytes(ByteBuffer(string: order(n)))
    // Any answer will do (201, 402, 409, 503 ...): the saga is recorded, and the runner finishes it.
    while true {
        do {
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
            _ = try await response.body.collect(upTo: 1 << 20)
            if response.status.code < 500 || response.status.code == 503 { return }
        } catch {
            // Not listening yet.
        }
        try await Task.sleep(for: .milliseconds(50))
    }
}

do {
    let sagas = try SQLiteSagaStore(url: StoreURL(.sqlite(path: "\(data)/orders.db")))
    // Orders placed before a restart have their saga already (the runner resumes it).
    let existing = Set(try await sagas.instances(status: nil, limit: count + 1).map(\.id))
    let todo = (1...count).filter {
        !existing.contains(ShopSystem.orderID(user: "alice", idempotencyKey: "order-\($0)"))
    }
    try await withThrowingTaskGroup(of: Void.self) { group in
        for worker in 0..<16 {
            group.addTask {
                for index in stride(from: worker, to: todo.count, by: 16) { try await place(todo[index]) }
            }
        }
        try await group.waitForAll()
    }
    // Wait for every saga to be final (the runner resumes those a crash interrupted) and the
    // outbox to be published.
    let giveUp = ContinuousClock.now.advanced(by: .seconds(120))
    while true {
        let all = try await sagas.instances(status: nil, limit: count + 1)
        let unfinished = all.filter { !($0.status == .completed || $0.status == .compensated) }
        let pending = try await sagas.store.read { db in try Outbox.pendingCount(in: db) }
        if all.count == count && unfinished.isEmpty && pending == 0 { break }
        guard ContinuousClock.now < giveUp else {
            fail(
                "\(all.count) sagas, unfinished: \(unfinished.prefix(5).map { "\($0.id) \($0.status.rawValue) \($0.lastError ?? "")" }), outbox \(pending)"
            )
        }
        try await Task.sleep(for: .milliseconds(50))
    }
    server.cancel()
    exit(0)
} catch {
    fail("\(error)")
}
