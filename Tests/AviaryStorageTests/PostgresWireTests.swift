//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryTestSupport
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PostgresNIO
import Testing

@testable import AviaryStorage

/// The store's wire connection (``PostgresStore/pipeline(_:)`` over ``PostgresWireConnection``)
/// against real PostgreSQL servers, and against peers that are not PostgreSQL.
@Suite("PostgresWireConnection", .timeLimit(.minutes(1)))
struct PostgresWireTests {
    // MARK: Helpers

    static let backendPID = PostgresWireStatement(name: "wire_test_pid", sql: "SELECT pg_backend_pid()")
    static let divide = PostgresWireStatement(name: "wire_test_divide", sql: "SELECT 1 / $1::int")
    static let insert = PostgresWireStatement(
        name: "wire_test_insert", sql: "INSERT INTO wire_items (id, name) VALUES ($1::int, $2)")

    /// The pid of the backend serving the store's wire connection, asked through the pipeline.
    static func backend(_ store: PostgresStore) async throws -> Int64 {
        let results = try await store.pipeline([PostgresWireStep(Self.backendPID, [])])
        return try #require(results.first?.rows.first?.integer(0))
    }

    /// A count through postgres-nio, on a pooled connection (not the wire connection).
    static func count(_ store: PostgresStore, _ sql: String) async throws -> Int {
        try await store.withConnection { connection in
            try await connection.query(PostgresQuery(unsafeSQL: sql), logger: store.logger).decode(Int.self)
                .reduce(0, +)
        }
    }

    /// Runs `sql` through postgres-nio, on a pooled connection.
    static func execute(_ store: PostgresStore, _ sql: String) async throws {
        try await store.withConnection { connection in
            _ = try await connection.query(PostgresQuery(unsafeSQL: sql), logger: store.logger)
        }
    }

    /// Terminates backend `pid` from a pooled connection and waits (up to 5 s) until it is gone.
    static func terminate(_ store: PostgresStore, pid: Int64) async throws -> Bool {
        try await store.withConnection { connection in
            try await connection.query("SELECT pg_terminate_backend(\(Int32(pid)), 5000)", logger: store.logger)
                .decode(Bool.self).reduce(false) { $0 || $1 }
        }
    }

    /// A wire call that cannot end by itself: it waits for an advisory lock that ``whileLocked(_:_:)``
    /// holds in another session (no timed sleep on the server).
    static let blocked = PostgresWireStatement(name: "wire_test_blocked", sql: "SELECT pg_advisory_lock(4242)")

    /// Runs `body` while another session of `url`'s database holds the advisory lock ``blocked``
    /// waits for; the lock goes when `body` returns (its connection closes).
    static func whileLocked<T: Sendable>(
        _ url: StoreURL, _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        try await PostgresStore.withStore(url: url) { holder in
            try await holder.withDedicatedConnection { connection in
                _ = try await connection.complete("SELECT pg_advisory_lock(4242)", logger: holder.logger)
                return try await body()
            }
        }
    }

    /// Polls (with a 4 s deadline) until backend `pid` is running a statement containing `text`.
    static func waitUntilRunning(_ store: PostgresStore, pid: Int64, _ text: String) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(4)
        while ContinuousClock.now < deadline {
            let running = try await Self.count(
                store,
                "SELECT count(*) FROM pg_stat_activity WHERE pid = \(pid) AND state = 'active' AND query LIKE '%\(text)%'"
            )
            if running == 1 { return true }
            await Task.yield()
        }
        return false
    }

    /// The wire lane's own call (``PostgresStore/pipeline(_:)`` without waiting for the store to
    /// be ready): for servers the store's pool cannot use either, so the store never gets ready.
    static func laneCall(_ store: PostgresStore, _ steps: [PostgresWireStep]) async throws -> [PostgresWireResult] {
        let connection = try await store.wireLane.connect().get()
        return try await connection.run(steps).get()
    }

    /// What `call` gives within `limit`, or `nil` when it is still running then (the keep-alive
    /// tests' deadline race, shared).
    static func outcome<T: Sendable>(
        within limit: Duration, _ call: @escaping @Sendable () async throws -> T
    ) async -> Result<T, any Error>? {
        await PostgresKeepAliveTests.answer(within: limit, call)
    }

    /// The `AviaryError` `outcome` failed with; records an issue for anything else.
    static func aviaryError<T>(
        _ outcome: Result<T, any Error>?, sourceLocation: SourceLocation = #_sourceLocation
    ) -> AviaryError? {
        switch outcome {
        case .failure(let error as AviaryError):
            return error
        case .failure(let error):
            Issue.record("expected an AviaryError, got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
        case .success(let value):
            Issue.record("expected the call to fail, it returned \(value)", sourceLocation: sourceLocation)
        case nil:
            Issue.record("the call did not return in time", sourceLocation: sourceLocation)
        }
        return nil
    }

    /// Runs `store` (without waiting for it to be ready) for the duration of `body`.
    static func whileRunning<T: Sendable>(
        _ store: PostgresStore, _ body: @Sendable (PostgresStore) async throws -> T
    ) async throws -> T {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await store.run() }
            defer { group.cancelAll() }
            return try await body(store)
        }
    }

    /// `address` as a store URL, with `sslmode` when given (prefer, the default, otherwise).
    static func url(_ address: PostgresAddress, sslmode: String? = nil) throws -> StoreURL {
        var text = "postgres://\(address.username)"
        if let password = address.password { text += ":\(password)" }
        text += "@\(address.host):\(address.port)/\(address.database)"
        if let sslmode { text += "?sslmode=\(sslmode)" }
        return try StoreURL(parsing: text)
    }

    // MARK: Rows and statements

    @Test("a statement's rows come back in text form, NULL as nil; five runs prepare it once")
    func rowsAndPreparedOnce() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        try await PostgresStore.withStore(url: url) { store in
            let series = PostgresWireStatement(
                name: "wire_test_series",
                sql: """
                    SELECT n, 'row ' || n, CASE WHEN n % 2 = 0 THEN NULL ELSE n * 10 END, ''
                    FROM generate_series($1::int, $2::int) AS n
                    """)
            for _ in 0..<5 {
                let results = try await store.pipeline([PostgresWireStep(series, [.integer(1), .integer(3)])])
                #expect(results.count == 1)
                let rows = results.first?.rows ?? []
                #expect(rows.map { $0.values.count } == [4, 4, 4])
                #expect(rows.map { $0.integer(0) } == [1, 2, 3])
                #expect(rows.map { $0.text(1) } == ["row 1", "row 2", "row 3"])
                #expect(rows.map { $0.integer(2) } == [10, nil, 30])
                #expect(rows.map { $0.text(2) } == ["10", nil, "30"])
                #expect(rows.map { $0.text(3) } == ["", "", ""])
                #expect(rows.map { $0.integer(1) } == [nil, nil, nil])
            }
            // No rows is an empty result, not a missing one.
            let nothing = PostgresWireStatement(name: "wire_test_nothing", sql: "SELECT 1 WHERE false")
            let none = try await store.pipeline([PostgresWireStep(nothing, [])])
            #expect(none.count == 1 && none.first?.rows.isEmpty == true)
            // A session sees only its own prepared statements: asked through the pipeline itself.
            let plans = PostgresWireStatement(
                name: "wire_test_plans",
                sql: "SELECT generic_plans + custom_plans FROM pg_prepared_statements WHERE name = $1")
            let counted = try await store.pipeline([PostgresWireStep(plans, [.text(series.name)])])
            #expect(counted.first?.rows.map { $0.integer(0) } == [5])
        }
    }

    static func items() -> PostgresMigrations {
        var migrations = PostgresMigrations()
        migrations.add("v1: wire items") { connection, logger in
            try await connection.query(
                "CREATE TABLE wire_items (id INT PRIMARY KEY, name TEXT NOT NULL)", logger: logger)
        }
        return migrations
    }

    @Test(
        "the steps of one call are one transaction: a failing step (23505, 22012) throws its SQLSTATE and undoes the others; the connection goes on"
    )
    func stepsAreOneTransaction() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        try await PostgresStore.withStore(url: url, migrations: Self.items()) { store in
            let pid = try await Self.backend(store)
            // Steps that all succeed commit together, in one transaction (one transaction id).
            let transaction = PostgresWireStatement(name: "wire_test_xid", sql: "SELECT txid_current()")
            let both = try await store.pipeline([
                PostgresWireStep(Self.insert, [.integer(1), .text("one")]),
                PostgresWireStep(transaction, []),
                PostgresWireStep(Self.insert, [.integer(2), .text("two")]),
                PostgresWireStep(transaction, []),
            ])
            #expect(both.count == 4)
            #expect(both.first?.rows.isEmpty == true)
            let first = both.count == 4 ? both[1].rows.first?.integer(0) : nil
            #expect(first != nil)
            #expect(both.count == 4 && first == both[3].rows.first?.integer(0))
            #expect(try await Self.count(store, "SELECT count(*) FROM wire_items") == 2)

            let failures: [(PostgresWireStep, String)] = [
                (PostgresWireStep(Self.insert, [.integer(1), .text("again")]), "23505"),
                (PostgresWireStep(Self.divide, [.integer(0)]), "22012"),
            ]
            for (failing, state) in failures {
                let error = try await #require(throws: PostgresWireServerError.self) {
                    try await store.pipeline([PostgresWireStep(Self.insert, [.integer(3), .text("three")]), failing])
                }
                #expect(error.sqlState == state, "\(error)")
                #expect(error.severity == "ERROR", "\(error)")
                #expect(PostgresStore.sqlState(error) == state)
                #expect(try await Self.count(store, "SELECT count(*) FROM wire_items WHERE id = 3") == 0)
                #expect(try await Self.backend(store) == pid)
            }
            // The row the failed calls undid can go in now.
            _ = try await store.pipeline([PostgresWireStep(Self.insert, [.integer(3), .text("three")])])
            #expect(try await Self.count(store, "SELECT count(*) FROM wire_items") == 3)
            #expect(try await Self.backend(store) == pid)
        }
    }

    static func fails(_ index: Int) -> Bool { index % 13 == 4 }

    @Test(
        "64 concurrent calls on one wire connection share its backend, each answered with its own rows; only the failing ones fail"
    )
    func pipelinedCalls() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        try await PostgresStore.withStore(url: url, options: .init(pipelineConnections: 1)) { store in
            let pid = try await Self.backend(store)
            let double = PostgresWireStatement(name: "wire_test_double", sql: "SELECT $1::int * 2, pg_backend_pid()")
            let results = await withTaskGroup(of: (Int, Result<[PostgresWireResult], any Error>).self) { group in
                for index in 0..<64 {
                    group.addTask {
                        let step =
                            Self.fails(index)
                            ? PostgresWireStep(Self.divide, [.integer(0)])
                            : PostgresWireStep(double, [.integer(Int64(index))])
                        do {
                            return (index, .success(try await store.pipeline([step])))
                        } catch {
                            return (index, .failure(error))
                        }
                    }
                }
                var results: [Int: Result<[PostgresWireResult], any Error>] = [:]
                for await (index, result) in group { results[index] = result }
                return results
            }
            #expect(results.count == 64)
            #expect((0..<64).filter(Self.fails).count == 5)
            for index in 0..<64 {
                switch results[index] {
                case .success(let answer) where !Self.fails(index):
                    let rows = answer.first?.rows ?? []
                    #expect(rows.count == 1, "call \(index)")
                    #expect(rows.first?.integer(0) == Int64(index * 2), "call \(index)")
                    #expect(rows.first?.integer(1) == pid, "call \(index)")
                case .failure(let error as PostgresWireServerError) where Self.fails(index):
                    #expect(error.sqlState == "22012", "call \(index): \(error)")
                case let other:
                    Issue.record("call \(index) (fails: \(Self.fails(index))): \(String(describing: other))")
                }
            }
            #expect(try await Self.backend(store) == pid)
        }
    }

    /// A wire call that waits while ``whileLocked(_:_:)`` holds its lock, and takes it shared
    /// for its transaction only: calls on several backends all end once the lock goes.
    static let blockedShared = PostgresWireStatement(
        name: "wire_test_blocked_shared", sql: "SELECT pg_advisory_xact_lock_shared(4242)")

    @Test(
        "a call that finds the wire connections busy opens another backend, up to pipelineConnections; beyond them it is pipelined on one"
    )
    func concurrentCallsSpreadOverConnections() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        try await PostgresStore.withStore(url: url, options: .init(pipelineConnections: 2)) { store in
            // One call at a time keeps to one connection.
            let first = try await Self.backend(store)
            #expect(try await Self.backend(store) == first)
            #expect(store.wireLane.openCount == 1)
            typealias Calls = (
                held: Task<[PostgresWireResult], any Error>, alsoHeld: Task<[PostgresWireResult], any Error>?,
                pipelined: Task<Int64, any Error>?, second: Int64?
            )
            let (held, alsoHeld, pipelined, second) = try await Self.whileLocked(url) { () async throws -> Calls in
                let held = Task { try await store.pipeline([PostgresWireStep(Self.blockedShared, [])]) }
                #expect(try await Self.waitUntilRunning(store, pid: first, "pg_advisory_xact_lock_shared"))
                // The first connection is busy: this call opens a second backend and answers
                // while the first call still waits (on one connection it would wait behind it).
                let outcome = await Self.outcome(within: .seconds(10)) { try await Self.backend(store) }
                guard case .success(let second) = outcome else {
                    Issue.record("a call beside a busy connection: \(String(describing: outcome))")
                    return (held, nil, nil, nil)
                }
                #expect(second != first)
                let alsoHeld = Task { try await store.pipeline([PostgresWireStep(Self.blockedShared, [])]) }
                #expect(try await Self.waitUntilRunning(store, pid: second, "pg_advisory_xact_lock_shared"))
                // Both busy and at the limit: the next call waits behind one of them.
                let pipelined = Task { try await Self.backend(store) }
                return (held, alsoHeld, pipelined, second)
            }
            // The lock is gone: every call ends.
            _ = try await held.value
            _ = try await alsoHeld?.value
            let pid = try await pipelined?.value
            #expect(
                pid == first || pid == second,
                "\(String(describing: pid)) is neither \(first) nor \(String(describing: second))")
            #expect(store.wireLane.openCount == 2)
        }
    }

    @Test("a statement whose Parse failed (42P01) is parsed again next time and then works, on the same connection")
    func failedParseIsRetried() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        try await PostgresStore.withStore(url: url) { store in
            let pid = try await Self.backend(store)
            let late = PostgresWireStatement(name: "wire_test_late", sql: "SELECT count(*) FROM wire_late")
            let before = PostgresWireStatement(name: "wire_test_before", sql: "SELECT 'before'")
            let after = PostgresWireStatement(name: "wire_test_after", sql: "SELECT 'after'")
            // `before` is parsed and confirmed ahead of the failing Parse; the server skips
            // `after`'s Parse once `late`'s failed. Twice: a Parse the client thought sent would
            // fail the second call with 26000 (no such prepared statement) instead.
            for _ in 0..<2 {
                let error = try await #require(throws: PostgresWireServerError.self) {
                    try await store.pipeline([
                        PostgresWireStep(before, []), PostgresWireStep(late, []), PostgresWireStep(after, []),
                    ])
                }
                #expect(error.sqlState == "42P01", "\(error)")
            }
            #expect(try await store.pipeline([PostgresWireStep(before, [])]).first?.rows.first?.text(0) == "before")
            #expect(try await store.pipeline([PostgresWireStep(after, [])]).first?.rows.first?.text(0) == "after")
            try await Self.execute(store, "CREATE TABLE wire_late (id INT)")
            let results = try await store.pipeline([PostgresWireStep(late, [])])
            #expect(results.first?.rows.first?.integer(0) == 0)
            #expect(try await Self.backend(store) == pid)
        }
    }

    @Test(
        "a call pipelined behind a failed call runs, although the failed call's error made the server skip a Parse it needs"
    )
    func callBehindASkippedParse() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        try await PostgresStore.withStore(url: url) { store in
            let pid = try await Self.backend(store)
            let connection = try #require(store.wireLane.openConnection())
            let fresh = PostgresWireStatement(name: "wire_test_fresh", sql: "SELECT 'fresh'")
            // Both written from the loop before any answer: the second call relies on the first's
            // Parse of `fresh`, which the server skips after the first call's division by zero.
            let (failing, following) = try await connection.channel.eventLoop.submit {
                (
                    connection.run([PostgresWireStep(Self.divide, [.integer(0)]), PostgresWireStep(fresh, [])]),
                    connection.run([PostgresWireStep(fresh, [])])
                )
            }.get()
            let error = try await #require(throws: PostgresWireServerError.self) { try await failing.get() }
            #expect(error.sqlState == "22012", "\(error)")
            switch await Self.outcome(within: .seconds(5), { try await following.get() }) {
            case .success(let results):
                #expect(results.first?.rows.first?.text(0) == "fresh")
            case .failure(let error):
                Issue.record("the call behind the failed one failed: \(error)")
            case nil:
                Issue.record("the call behind the failed one did not return within 5 s")
            }
            // Later calls prepare `fresh` again and run.
            #expect(try await store.pipeline([PostgresWireStep(fresh, [])]).first?.rows.first?.text(0) == "fresh")
            #expect(try await Self.backend(store) == pid)
        }
    }

    // MARK: Parameters and values

    @Test(
        "parameters round-trip in text form (non-ASCII, empty, NULL, Int64.min and max); a NUL byte is refused (22021) and the connection goes on"
    )
    func parameters() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        try await PostgresStore.withStore(url: url) { store in
            let pid = try await Self.backend(store)
            let echo = PostgresWireStatement(name: "wire_test_echo", sql: "SELECT $1::text, $2::bigint")
            let cases: [(PostgresWireValue, String?, PostgresWireValue, Int64?)] = [
                (.text("héllo wörld 🐦‍⬛ 日本"), "héllo wörld 🐦‍⬛ 日本", .integer(0), 0),
                (.text(""), "", .integer(-1), -1),
                (.null, nil, .integer(Int64.min), Int64.min),
                (.text("quote ' \" \\ $1"), "quote ' \" \\ $1", .integer(Int64.max), Int64.max),
                (.integer(Int64.min), String(Int64.min), .null, nil),
                (.integer(-42), "-42", .text("  17 "), 17),
            ]
            for (text, expectedText, number, expectedNumber) in cases {
                let results = try await store.pipeline([PostgresWireStep(echo, [text, number])])
                let row = try #require(results.first?.rows.first)
                #expect(row.text(0) == expectedText)
                #expect(row.text(1) == expectedNumber.map { String($0) }, "\(number)")
                #expect(row.integer(1) == expectedNumber, "\(number) read back from \(row.text(1) ?? "NULL")")
            }
            let error = try await #require(throws: PostgresWireServerError.self) {
                try await store.pipeline([PostgresWireStep(echo, [.text("nul \u{0} inside"), .integer(1)])])
            }
            #expect(error.sqlState == "22021", "\(error)")
            #expect(try await Self.backend(store) == pid)
        }
    }

    @Test(
        "PostgresWireRow.integer reads decimal text; nil for non-digits, overflow, a lone minus and empty text",
        arguments: [
            ("0", 0), ("7", 7), ("-7", -7), ("0042", 42), ("-0", 0),
            ("9223372036854775807", Int64.max), ("-9223372036854775807", -Int64.max),
            ("-9223372036854775808", Int64.min),
            ("9223372036854775808", nil), ("-9223372036854775809", nil), ("99999999999999999999", nil),
            ("123456789012345678901", nil), ("", nil), ("-", nil), ("--1", nil), ("+1", nil), (" 1", nil),
            ("1 ", nil), ("1-", nil), ("1.5", nil), ("1e3", nil), ("abc", nil), ("١٢", nil),
        ] as [(String, Int64?)])
    func rowInteger(text: String, expected: Int64?) {
        let row = PostgresWireRow(values: [ByteBuffer(string: text), nil])
        #expect(row.integer(0) == expected)
        #expect(row.text(0) == text)
        #expect(row.integer(1) == nil)
        #expect(row.text(1) == nil)
        #expect(row.integer(2) == nil)
        // A value read from the wire is a slice of a larger buffer.
        var slice = ByteBuffer(string: "xx" + text + "yy")
        slice.moveReaderIndex(forwardBy: 2)
        let value = slice.readSlice(length: text.utf8.count)
        #expect(PostgresWireRow(values: [value]).integer(0) == expected)
    }

    @Test(
        "ByteBuffer.writeDecimal writes what String(value) does and returns its length",
        arguments: [0, 7, -7, 9, 10, -10, 99, 100, -100, 1_000_000_007, Int64.min, Int64.min + 1, Int64.max] as [Int64])
    func writeDecimal(value: Int64) {
        var buffer = ByteBuffer(string: "ab")
        let written = buffer.writeDecimal(value)
        buffer.writeString("z")
        #expect(String(buffer: buffer) == "ab" + String(value) + "z")
        #expect(written == String(value).utf8.count)
    }

    // MARK: Connection loss

    @Test("after its backend is terminated, calls fail as unavailable or succeed on a new backend, and soon succeed")
    func terminatedBackend() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        try await PostgresStore.withStore(url: url) { store in
            let first = try await Self.backend(store)
            #expect(try await Self.terminate(store, pid: first))
            let deadline = ContinuousClock.now + .seconds(10)
            var calls = 0
            var second: Int64?
            while second == nil, ContinuousClock.now < deadline {
                calls += 1
                switch await Self.outcome(within: .seconds(5), { try await Self.backend(store) }) {
                case .success(let pid):
                    second = pid
                case .failure(let error as AviaryError) where error.code == .unavailable:
                    continue
                case .failure(let error):
                    Issue.record("call \(calls) failed with \(type(of: error)): \(error)")
                case nil:
                    Issue.record("call \(calls) did not return within 5 s")
                    return
                }
            }
            #expect(second != nil)
            #expect(second != first)
            #expect(calls <= 3, "\(calls) calls before one succeeded")
        }
    }

    @Test("a call in flight when its backend is terminated fails at once as unavailable, saying the connection closed")
    func terminatedDuringCall() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        try await Self.whileLocked(url) {
            try await PostgresStore.withStore(url: url) { store in
                let pid = try await Self.backend(store)
                let start = ContinuousClock.now
                let call = Task { try await store.pipeline([PostgresWireStep(Self.blocked, [])]) }
                #expect(try await Self.waitUntilRunning(store, pid: pid, "pg_advisory_lock"))
                #expect(try await Self.terminate(store, pid: pid))
                let outcome = await Self.outcome(within: .seconds(10)) { try await call.value }
                let elapsed = ContinuousClock.now - start
                if let error = Self.aviaryError(outcome) {
                    #expect(error.code == .unavailable, "\(error)")
                    #expect(error.message.contains("closed"), "\(error.message)")
                    #expect(error.message.contains("57P01"), "\(error.message)")
                }
                #expect(elapsed < .seconds(4), "\(elapsed)")
                // The next calls open a new connection.
                let deadline = ContinuousClock.now + .seconds(10)
                var next: Int64?
                while next == nil, ContinuousClock.now < deadline {
                    next = try? await Self.backend(store)
                }
                #expect(next != nil && next != pid)
            }
        }
    }

    // MARK: Authentication

    @Test("md5, password, trust and SCRAM authentication log in on a private server")
    func authenticationMethods() async throws {
        let server = try await PostgresTestServer.start()
        do {
            try await Self.checkAuthenticationMethods(server)
        } catch {
            await server.shutdown()
            throw error
        }
        await server.shutdown()
    }

    static func checkAuthenticationMethods(_ server: PostgresTestServer) async throws {
        let directory = try #require(server.directory)
        let hba = directory.appendingPathComponent("data").appendingPathComponent("pg_hba.conf")
        // Rewritten in place, keeping its owner (the postgres user when the tests run as root)
        // and mode. The first matching line wins; everyone else keeps initdb's scram-sha-256.
        let original = try String(contentsOf: hba, encoding: .utf8)
        let rules = """
            host all md5user 127.0.0.1/32 md5
            host all pwuser 127.0.0.1/32 password
            host all trustuser 127.0.0.1/32 trust

            """
        let file = try FileHandle(forWritingTo: hba)
        try file.truncate(atOffset: 0)
        try file.write(contentsOf: Data((rules + original).utf8))
        try file.close()
        let loadedBefore = try await server.withAdminConnection { connection, logger in
            // md5user's and pwuser's secrets are MD5 hashes, which SCRAM cannot use: they log in
            // only through their own lines.
            for sql in [
                "SET password_encryption = 'md5'",
                "CREATE ROLE md5user LOGIN PASSWORD 'md5secret'",
                "CREATE ROLE pwuser LOGIN PASSWORD 'pwsecret'",
                "RESET password_encryption",
                "CREATE ROLE scramuser LOGIN PASSWORD 'scramsecret'",
                "CREATE ROLE trustuser LOGIN",
                "CREATE DATABASE md5db OWNER md5user",
                "CREATE DATABASE pwdb OWNER pwuser",
                "CREATE DATABASE scramdb OWNER scramuser",
                "CREATE DATABASE trustdb OWNER trustuser",
                "ALTER SYSTEM SET log_connections = on",
            ] {
                _ = try await connection.query(PostgresQuery(unsafeSQL: sql), logger: logger)
            }
            let errors = try await connection.query(
                "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL", logger: logger
            ).decode(Int.self).reduce(0, +)
            #expect(errors == 0)
            let before = try await connection.query("SELECT pg_conf_load_time()::text", logger: logger)
                .decode(String.self).reduce("", +)
            _ = try await connection.query("SELECT pg_reload_conf()", logger: logger)
            return before
        }
        // New sessions see the reloaded files once the postmaster has read them.
        let deadline = ContinuousClock.now + .seconds(10)
        var reloaded = false
        while !reloaded, ContinuousClock.now < deadline {
            let loaded = try await server.withAdminConnection { connection, logger in
                try await connection.query("SELECT pg_conf_load_time()::text", logger: logger)
                    .decode(String.self).reduce("", +)
            }
            reloaded = loaded != loadedBefore
        }
        try #require(reloaded)

        let whoAmI = PostgresWireStatement(name: "wire_test_user", sql: "SELECT current_user, pg_backend_pid()")
        let users: [(user: String, password: String?, database: String, method: String?)] = [
            ("md5user", "md5secret", "md5db", "md5"),
            ("pwuser", "pwsecret", "pwdb", "password"),
            ("scramuser", "scramsecret", "scramdb", "scram-sha-256"),
            ("trustuser", nil, "trustdb", nil),
        ]
        for login in users {
            let address = PostgresAddress(
                host: server.address.host, port: server.address.port, username: login.user, password: login.password,
                database: login.database)
            let (user, pid) = try await PostgresStore.withStore(url: Self.url(address)) { store in
                let row = try await store.pipeline([PostgresWireStep(whoAmI, [])]).first?.rows.first
                return (row?.text(0), row?.integer(1))
            }
            #expect(user == login.user)
            // The server logs how the wire connection's backend authenticated (trust sets no identity).
            if let method = login.method, let pid, let logFile = server.logFile {
                let log = try String(contentsOf: logFile, encoding: .utf8)
                let line = log.split(separator: "\n").first { line in
                    line.contains("[\(pid)]") && line.contains("connection authenticated")
                }
                #expect(
                    line?.contains("identity=\"\(login.user)\" method=\(method) ") == true,
                    "\(login.user): \(String(describing: line))")
            }
        }
    }

    @Test("a wrong password fails with 28P01, at every call, without hanging")
    func wrongPassword() async throws {
        let server = try await PostgresTestServer.shared()
        var address = try await server.makeDatabase().postgresAddress()
        address.password = "not-the-password"
        let store = try PostgresStore(url: Self.url(address))
        for attempt in 1...2 {
            let start = ContinuousClock.now
            switch await Self.outcome(
                within: .seconds(10), { try await Self.laneCall(store, [PostgresWireStep(Self.backendPID, [])]) })
            {
            case .failure(let error):
                let text = PostgresStore.describe(error)
                #expect(text.contains("28P01") || text.contains("password authentication failed"), "\(text)")
            case .success:
                Issue.record("attempt \(attempt): logged in with a wrong password")
            case nil:
                Issue.record("attempt \(attempt): no answer within 10 s")
            }
            #expect(ContinuousClock.now - start < .seconds(5))
        }
        // Through the pipeline of a running store (whose pool cannot log in either): it fails, at once.
        let running = try PostgresStore(url: Self.url(address))
        try await Self.whileRunning(running) { store in
            for attempt in 1...2 {
                let outcome = await Self.outcome(within: .seconds(10)) {
                    try await store.pipeline([PostgresWireStep(Self.backendPID, [])])
                }
                switch outcome {
                case .failure(let error):
                    let text = PostgresStore.describe(error)
                    #expect(text.contains("28P01") || text.contains("password authentication failed"), "\(text)")
                case .success:
                    Issue.record("attempt \(attempt): logged in with a wrong password")
                case nil:
                    Issue.record("attempt \(attempt): no answer within 10 s")
                }
            }
        }
    }

    @Test("a database that does not exist fails with 3D000")
    func missingDatabase() async throws {
        let server = try await PostgresTestServer.shared()
        var address = server.address
        address.database = "wire_no_such_database"
        let store = try PostgresStore(url: Self.url(address))
        for _ in 1...2 {
            let outcome = await Self.outcome(within: .seconds(10)) {
                try await Self.laneCall(store, [PostgresWireStep(Self.backendPID, [])])
            }
            switch outcome {
            case .failure(let error):
                let text = PostgresStore.describe(error)
                #expect(text.contains("3D000"), "\(text)")
                // A refused login is the connection's failure, not a statement's: unavailable,
                // with no SQLSTATE of its own.
                #expect((error as? AviaryError)?.code == .unavailable)
                #expect(PostgresStore.sqlState(error) == nil)
            case .success:
                Issue.record("connected to a database that does not exist")
            case nil:
                Issue.record("no answer within 10 s")
            }
        }
    }

    // MARK: TLS

    @Test(
        "sslmode=require on a server without TLS fails as unavailable saying so; prefer (the default) runs in plain text"
    )
    func tlsModes() async throws {
        let server = try await PostgresTestServer.shared()
        let address = try await server.makeDatabase().postgresAddress()
        let require = try PostgresStore(url: Self.url(address, sslmode: "require"))
        let outcome = await Self.outcome(within: .seconds(10)) {
            try await Self.laneCall(require, [PostgresWireStep(Self.backendPID, [])])
        }
        if let error = Self.aviaryError(outcome) {
            #expect(error.code == .unavailable, "\(error)")
            #expect(error.message.contains("does not offer TLS"), "\(error.message)")
        }
        // A running store with sslmode=require never gets ready: its pipeline fails, and does not hang.
        let running = try PostgresStore(url: Self.url(address, sslmode: "require"))
        try await Self.whileRunning(running) { store in
            let outcome = await Self.outcome(within: .seconds(10)) {
                try await store.pipeline([PostgresWireStep(Self.backendPID, [])])
            }
            #expect(Self.aviaryError(outcome)?.code == .unavailable)
        }

        let ssl = PostgresWireStatement(
            name: "wire_test_ssl", sql: "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        let prefer = try Self.url(address)
        #expect(try prefer.postgresAddress().tls == .prefer)
        let encrypted = try await PostgresStore.withStore(url: prefer) { store in
            try await store.pipeline([PostgresWireStep(ssl, [])]).first?.rows.first?.text(0)
        }
        #expect(encrypted == "false")
    }

    // MARK: Peers that are not PostgreSQL

    @Test(
        "a peer that answers in HTTP fails the call promptly as unavailable, naming the problem",
        arguments: ["prefer", "disable"])
    func httpPeer(sslmode: String) async throws {
        let peer = try await FakePeer.start(answer: "HTTP/1.1 400 Bad Request\r\n\r\n")
        defer { peer.close() }
        let address = PostgresAddress(
            host: "127.0.0.1", port: peer.port, username: "u", password: "p", database: "db")
        // A connect timeout well above "promptly", so that running into it shows.
        let store = try PostgresStore(
            url: Self.url(address, sslmode: sslmode), options: .init(connectTimeout: .seconds(3)))
        let start = ContinuousClock.now
        let outcome = await Self.outcome(within: .seconds(10)) {
            try await Self.laneCall(store, [PostgresWireStep(Self.backendPID, [])])
        }
        let elapsed = ContinuousClock.now - start
        if let error = Self.aviaryError(outcome) {
            #expect(error.code == .unavailable, "\(error)")
            #expect(!error.message.contains("not ready within"), "\(error.message)")
            if sslmode == "prefer" {
                #expect(error.message.contains("answered the TLS request with something else"), "\(error.message)")
            }
        }
        #expect(elapsed < .milliseconds(1500), "\(elapsed)")
        #expect(peer.acceptedCount >= 1)
    }

    @Test("a peer that accepts and never answers fails the call as unavailable within the connect timeout")
    func silentPeer() async throws {
        let peer = try await FakePeer.start(answer: nil)
        defer { peer.close() }
        let address = PostgresAddress(
            host: "127.0.0.1", port: peer.port, username: "u", password: "p", database: "db")
        let store = try PostgresStore(url: Self.url(address), options: .init(connectTimeout: .seconds(1)))
        let start = ContinuousClock.now
        let outcome = await Self.outcome(within: .seconds(10)) {
            try await Self.laneCall(store, [PostgresWireStep(Self.backendPID, [])])
        }
        let elapsed = ContinuousClock.now - start
        if let error = Self.aviaryError(outcome) {
            #expect(error.code == .unavailable, "\(error)")
            #expect(error.message.contains("not ready within 1000 ms"), "\(error.message)")
        }
        #expect(elapsed >= .milliseconds(900) && elapsed < .seconds(5), "\(elapsed)")
        #expect(peer.acceptedCount >= 1)
        // Through a running store's pipeline (its pool cannot start either): it fails, no hang.
        let running = try PostgresStore(url: Self.url(address), options: .init(connectTimeout: .seconds(1)))
        try await Self.whileRunning(running) { store in
            let outcome = await Self.outcome(within: .seconds(10)) {
                try await store.pipeline([PostgresWireStep(Self.backendPID, [])])
            }
            #expect(Self.aviaryError(outcome) != nil)
        }
    }

    // MARK: Stopping

    @Test(
        "when the store stops, a call in flight fails as unavailable, later calls fail at once, the connection is closed"
    )
    func afterStop() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        try await Self.whileLocked(url) { try await Self.checkAfterStop(url) }
    }

    static func checkAfterStop(_ url: StoreURL) async throws {
        let store = try PostgresStore(url: url)
        let (connection, inFlight, start) = try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await store.run() }
            try await store.ready()
            let pid = try await Self.backend(store)
            let connection = try #require(store.wireLane.openConnection())
            let start = ContinuousClock.now
            let inFlight = Task { try await store.pipeline([PostgresWireStep(Self.blocked, [])]) }
            #expect(try await Self.waitUntilRunning(store, pid: pid, "pg_advisory_lock"))
            group.cancelAll()
            // run() ends (the group waits for it).
            return (connection, inFlight, start)
        }
        let outcome = await Self.outcome(within: .seconds(10)) { try await inFlight.value }
        #expect(Self.aviaryError(outcome)?.code == .unavailable)
        #expect(ContinuousClock.now - start < .seconds(4))
        #expect(connection.isClosed)

        for _ in 1...2 {
            let later = await Self.outcome(within: .seconds(5)) { try await Self.backend(store) }
            #expect(Self.aviaryError(later)?.code == .unavailable)
        }
        let lane = await Self.outcome(within: .seconds(5)) { try await store.wireLane.connect().get() }
        if let error = Self.aviaryError(lane) {
            #expect(error.message.contains("has stopped"), "\(error.message)")
        }
    }
}

/// A TCP server on 127.0.0.1 that is not PostgreSQL: it answers whatever it reads with `answer`
/// (keeping the connection open), or never answers when `answer` is nil.
final class FakePeer: Sendable {
    let port: Int
    private let listener: any Channel
    private let accepted: NIOLockedValueBox<[any Channel]>

    private init(port: Int, listener: any Channel, accepted: NIOLockedValueBox<[any Channel]>) {
        self.port = port
        self.listener = listener
        self.accepted = accepted
    }

    static func start(answer: String?) async throws -> FakePeer {
        let accepted = NIOLockedValueBox<[any Channel]>([])
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                accepted.withLockedValue { $0.append(channel) }
                guard let answer else { return channel.eventLoop.makeSucceededVoidFuture() }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Answer(answer))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return FakePeer(port: listener.localAddress?.port ?? 0, listener: listener, accepted: accepted)
    }

    /// How many connections it accepted.
    var acceptedCount: Int { self.accepted.withLockedValue { $0.count } }

    func close() {
        self.listener.close(promise: nil)
        for channel in self.accepted.withLockedValue({ $0 }) { channel.close(promise: nil) }
    }

    private final class Answer: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let text: String

        init(_ text: String) { self.text = text }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            context.writeAndFlush(
                self.wrapOutboundOut(context.channel.allocator.buffer(string: self.text)), promise: nil)
        }
    }
}
