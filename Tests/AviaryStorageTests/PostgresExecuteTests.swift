//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryStorage
import AviaryTestSupport
import NIOCore
import NIOPosix
import PostgresNIO
import Synchronization
import Testing

/// The tasks a statement's bindings were made in (postgres-nio makes them in the task that calls
/// `execute`), by the hash of the running task.
final class BindingTasks: Sendable {
    private let tasks = Mutex<[Int]>([])

    func record() {
        let task = withUnsafeCurrentTask { $0?.hashValue } ?? 0
        self.tasks.withLock { $0.append(task) }
    }

    var all: [Int] { self.tasks.withLock { $0 } }
}

/// `SELECT $1 + n FROM generate_series(1, 3) AS n`, recording where its bindings were made.
struct ThreeRows: PostgresPreparedStatement {
    static let sql = "SELECT ($1::BIGINT + n)::BIGINT FROM generate_series(1, 3) AS n"
    typealias Row = Int64

    var base: Int64
    var tasks: BindingTasks

    func makeBindings() throws -> PostgresBindings {
        self.tasks.record()
        var bindings = PostgresBindings()
        bindings.append(self.base)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Int64.self) }
}

/// `SELECT pg_backend_pid()`.
struct BackendID: PostgresPreparedStatement {
    static let sql = "SELECT pg_backend_pid()"
    typealias Row = Int32

    func makeBindings() throws -> PostgresBindings { PostgresBindings() }
    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Int32.self) }
}

@Suite("PostgresStore.execute", .timeLimit(.minutes(5)))
struct PostgresExecuteTests {
    static func options(
        connections: Int = 1, acquireTimeout: Duration = .seconds(30), loop: any EventLoop
    ) -> PostgresStore.Options {
        PostgresStore.Options(maximumConnections: connections, acquireTimeout: acquireTimeout, eventLoop: loop)
    }

    static func currentTask() -> Int { withUnsafeCurrentTask { $0?.hashValue } ?? 0 }

    @Test(
        "with a loop a statement runs on it in the caller's task, which a caller from the pool leaves again; without one, in a task of its own; rows alike, prepared once"
    )
    func runsInTheCallersTaskOnTheLoop() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        try await PostgresStore.withStore(url: url, options: Self.options(loop: loop)) { store in
            let executor = try #require(store.executor)
            let tasks = BindingTasks()
            // From the concurrency pool: the caller's task makes the bindings (on the loop) and
            // goes on off the loop.
            let caller = Self.currentTask()
            #expect(try await store.execute(ThreeRows(base: 10, tasks: tasks)) == [11, 12, 13])
            #expect(!loop.inEventLoop)
            #expect(tasks.all == [caller])
            // From the loop: the caller's task does, three times in a row, and never leaves the loop.
            let onLoop = try await withTaskExecutorPreference(executor) {
                let caller = Self.currentTask()
                for base in [20, 30, 40] as [Int64] {
                    let rows = try await store.execute(ThreeRows(base: base, tasks: tasks))
                    #expect(rows == [base + 1, base + 2, base + 3])
                    #expect(loop.inEventLoop)
                }
                return caller
            }
            #expect(Array(tasks.all.dropFirst()) == [onLoop, onLoop, onLoop])
            // Both ways ran the one statement the connection prepared (one connection).
            let runs = try await store.withConnection { connection in
                try await connection.query(
                    "SELECT (generic_plans + custom_plans)::BIGINT FROM pg_prepared_statements WHERE statement LIKE '%generate_series(1, 3)%'",
                    logger: store.logger
                ).decode(Int64.self).reduce(0, +)
            }
            #expect(runs == 4)
        }
        // A store without a loop of its own runs the statement in a task of its own, watched.
        try await PostgresStore.withStore(url: url, options: .init(maximumConnections: 1)) { store in
            let tasks = BindingTasks()
            let caller = Self.currentTask()
            let rows = try await store.execute(ThreeRows(base: 50, tasks: tasks))
            #expect(rows == [51, 52, 53])
            #expect(tasks.all.count == 1 && tasks.all[0] != caller)
        }
    }

    @Test("a statement's error reaches the caller on the loop, and the connection serves on")
    func errorsOnTheLoop() async throws {
        struct DivideByZero: PostgresPreparedStatement {
            static let sql = "SELECT (1 / $1::INTEGER)::INTEGER"
            typealias Row = Int32
            var divisor: Int32
            func makeBindings() throws -> PostgresBindings {
                var bindings = PostgresBindings()
                bindings.append(self.divisor)
                return bindings
            }
            func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Int32.self) }
        }
        let url = try await PostgresTestServer.shared().makeDatabase()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        try await PostgresStore.withStore(url: url, options: Self.options(loop: loop)) { store in
            let executor = try #require(store.executor)
            try await withTaskExecutorPreference(executor) {
                let error = try await #require(throws: PSQLError.self) {
                    try await store.execute(DivideByZero(divisor: 0))
                }
                #expect(error.serverInfo?[.sqlState] == "22012", "\(String(reflecting: error))")
                #expect(try await store.execute(DivideByZero(divisor: 1)) == [1])
            }
        }
    }

    @Test(
        "from the loop, a wait for a busy pool fails after acquireTimeout as exhausted, and the pool serves afterwards")
    func busyPoolDeadlineOnTheLoop() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let options = Self.options(acquireTimeout: .seconds(5), loop: loop)
        try await PostgresStoreTests.withReadyStore(url: url, options: options) { store in
            let executor = try #require(store.executor)
            let (holder, releasing) = await PostgresStoreTests.holdConnection(store)
            // Without its deadline the wait would last until the holder lets go, which it does
            // only after the wait ended: the suite's time limit would fail the test.
            let start = ContinuousClock.now
            let error = try await withTaskExecutorPreference(executor) {
                try await #require(throws: AviaryError.self) { try await store.execute(BackendID()) }
            }
            let waited = ContinuousClock.now - start
            #expect(error.code == .resourceExhausted, "\(error.message)")
            #expect(error.message.contains("stayed busy"), "\(error.message)")
            #expect(waited >= .seconds(5) && waited < .seconds(60), "\(waited)")
            releasing.yield()
            try await holder.value
            // The cancelled request took no connection with it: the one connection serves again.
            let backend = try await withTaskExecutorPreference(executor) { try await store.execute(BackendID()) }
            #expect(backend.count == 1)
        }
    }

    @Test("cancelling a task that waits on the loop for a connection ends its wait, and the pool serves afterwards")
    func cancelledWaitOnTheLoop() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        try await PostgresStore.withStore(url: url, options: Self.options(acquireTimeout: .seconds(120), loop: loop)) {
            store in
            let executor = try #require(store.executor)
            let (holder, releasing) = await PostgresStoreTests.holdConnection(store)
            let waiter = Task(executorPreference: executor) { try await store.execute(BackendID()) }
            waiter.cancel()
            await #expect(throws: (any Error).self) { try await waiter.value }
            releasing.yield()
            try await holder.value
            #expect(try await store.execute(BackendID()).count == 1)
        }
    }

    @Test(
        "many statements at once from the loop and from the pool on two connections are all answered, in their own order"
    )
    func manyCallersShareThePool() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        try await PostgresStore.withStore(url: url, options: Self.options(connections: 2, loop: loop)) { store in
            let executor = try #require(store.executor)
            let tasks = BindingTasks()
            let sums = try await withThrowingTaskGroup(of: Int64.self) { group in
                for caller in 0..<40 {
                    let base = Int64(caller * 100)
                    let run: @Sendable () async throws -> Int64 = {
                        var sum: Int64 = 0
                        for round in 0..<5 {
                            let rows = try await store.execute(ThreeRows(base: base + Int64(round), tasks: tasks))
                            guard rows == [1, 2, 3].map({ base + Int64(round) + $0 }) else { return -1 }
                            sum += rows.reduce(0, +)
                        }
                        return sum
                    }
                    if caller.isMultiple(of: 2) {
                        group.addTask(executorPreference: executor, operation: run)
                    } else {
                        group.addTask(operation: run)
                    }
                }
                var sums: [Int64] = []
                for try await sum in group { sums.append(sum) }
                return sums
            }
            // Caller c's round r returns base + 1, + 2, + 3 with base = 100 c + r.
            var expected: [Int64] = []
            for caller in 0..<40 {
                var sum: Int64 = 0
                for round in 0..<5 {
                    let base = Int64(caller * 100 + round)
                    sum += 3 * base + 6
                }
                expected.append(sum)
            }
            #expect(sums.sorted() == expected.sorted())
            #expect(tasks.all.count == 200)
        }
    }

    @Test(
        "from the loop, a statement on a connection the server terminated returns (an error or, once replaced, rows) and later ones run on a new backend"
    )
    func terminatedConnectionOnTheLoop() async throws {
        let server = try await PostgresTestServer.shared()
        let url = try await server.makeDatabase()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        try await PostgresStore.withStore(url: url, options: Self.options(loop: loop)) { store in
            let executor = try #require(store.executor)
            @Sendable func backend() async throws -> Int32 {
                try await withTaskExecutorPreference(executor) { try await store.execute(BackendID()).first ?? 0 }
            }
            try await PostgresKeepAliveTests.expectReplacedAfterTermination(server, backend)
        }
    }
}
