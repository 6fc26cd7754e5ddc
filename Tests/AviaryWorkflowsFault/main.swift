//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import AviaryStorage
import AviaryWorkflows
import Foundation
import GRDB
import Logging

// A saga runner for the workflows crash test (SagaCrashTests), which runs it as a child process,
// SIGKILLs it at random moments and starts it again, over and over:
//
//   aviary-workflows-fault run --sagas PATH|URL --callee PATH --count N [--lease-seconds S]
//     Resumes unfinished sagas, then starts the sagas `order-1` ... `order-N` that do not exist
//     yet (eight at a time), each reserve stock → charge → confirm against a callee database
//     with an idempotency table (every effect applied once per key). Every third order's charge
//     is declined, so its reservation is compensated. Exits 0 once every saga is final.
//     --sagas is a SQLite path or a store URL (`sqlite://...`, `postgres://...`); on PostgreSQL
//     the sagas a killed runner held are resumed once their leases (S seconds, default 2) expire.

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("aviary-workflows-fault: \(message)\n".utf8))
    exit(2)
}

var arguments = Array(CommandLine.arguments.dropFirst())
guard arguments.first == "run" else {
    fail("usage: aviary-workflows-fault run --sagas PATH|URL --callee PATH --count N [--lease-seconds S]")
}
arguments.removeFirst()
var options: [String: String] = [:]
while arguments.count >= 2 {
    options[arguments[0]] = arguments[1]
    arguments.removeFirst(2)
}
guard let sagasLocation = options["--sagas"], let calleePath = options["--callee"],
    let count = options["--count"].flatMap(Int.init), count > 0,
    let leaseSeconds = Int(options["--lease-seconds"] ?? "2"), leaseSeconds > 0
else {
    fail("expected --sagas PATH|URL --callee PATH --count N [--lease-seconds S]")
}

/// The callee's database: `effects` holds one row per applied idempotency key; `balances` the
/// sums the test checks.
var calleeMigrations = Migrations()
calleeMigrations.add("callee v1") { db in
    try db.execute(sql: "CREATE TABLE effects (key TEXT PRIMARY KEY, account TEXT NOT NULL, amount INTEGER NOT NULL)")
    try db.execute(sql: "CREATE TABLE balances (account TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    try db.execute(sql: "INSERT INTO balances VALUES ('stock', 0), ('charged', 0), ('confirmed', 0)")
}

struct Order: Codable, Sendable {
    var number: Int
    var quantity: Int { self.number % 5 + 1 }
    var amount: Int { self.quantity * 100 }
    var declined: Bool { self.number % 3 == 0 }
}

struct Declined: Error {}

do {
    let callee = try SQLiteStore(url: StoreURL(.sqlite(path: calleePath)), migrations: calleeMigrations)
    var logger = Logger(label: "aviary.workflows.fault")
    logger.logLevel = .warning
    let sagasURL =
        sagasLocation.contains("://") ? try StoreURL(parsing: sagasLocation) : StoreURL(.sqlite(path: sagasLocation))
    let store: any SagaStore
    switch sagasURL.kind {
    case .postgres: store = try await PostgresSagaStore(url: sagasURL, logger: logger)
    default: store = try SQLiteSagaStore(url: sagasURL)
    }
    let runner = SagaRunner(
        store: store, logger: logger, configuration: .init(leaseDuration: .seconds(leaseSeconds)))

    @Sendable func apply(_ key: String, _ account: String, _ amount: Int) async throws {
        try await callee.write { db in
            try db.execute(
                sql: "INSERT INTO effects VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING",
                arguments: [key, account, amount])
            if db.changesCount == 1 {
                try db.execute(
                    sql: "UPDATE balances SET value = value + ? WHERE account = ?", arguments: [amount, account])
            }
        }
    }

    let saga = Saga<Order>(
        "order",
        steps: [
            SagaStep("reserve stock") { order, context in
                try await apply(context.idempotencyKey, "stock", order.quantity)
                return order
            } compensate: { order, context in
                try await apply(context.idempotencyKey, "stock", -order.quantity)
            },
            SagaStep("charge", retry: .once) { order, context in
                if order.declined { throw Declined() }
                try await apply(context.idempotencyKey, "charged", order.amount)
                return order
            } compensate: { order, context in
                try await apply(context.idempotencyKey, "charged", -order.amount)
            },
            SagaStep("confirm") { order, context in
                try await apply(context.idempotencyKey, "confirmed", 1)
                return order
            },
        ],
        compensationRetry: StepRetryPolicy(maxAttempts: 5, backoff: .immediate))
    runner.register(saga)

    try await runner.runDue()
    try await withThrowingTaskGroup(of: Void.self) { group in
        for worker in 0..<8 {
            group.addTask {
                for number in stride(from: worker + 1, through: count, by: 8) {
                    if try await store.instance("order-\(number)") != nil { continue }
                    try await runner.start(saga, id: "order-\(number)", state: Order(number: number))
                }
            }
        }
        try await group.waitForAll()
    }
    // Finish what waits for a retry after backoff.
    let giveUp = Date().addingTimeInterval(60)
    while let waiting = try await store.due(at: Date.distantFuture, limit: 1).first {
        guard Date() < giveUp else { fail("saga \(waiting.id) is still \(waiting.status.rawValue)") }
        if try await runner.runDue() == 0 { try await Task.sleep(for: .milliseconds(20)) }
    }
    exit(0)
} catch {
    fail("\(error)")
}
