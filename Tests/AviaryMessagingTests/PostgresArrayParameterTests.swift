//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryStorage
import AviaryTestSupport
import Logging
import PostgresNIO
import Testing

@testable import AviaryMessaging

/// The batched publish's array parameters, written in PostgreSQL's binary array format by hand:
/// the server must read back exactly the values given, with the bounds a literal array has.
@Suite("PostgresArrayParameter", .timeLimit(.minutes(5)))
struct PostgresArrayParameterTests {
    @Test("INTEGER[] and TEXT[] parameters reach the server as the values given, empty ones included")
    func roundTrip() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let store = try PostgresStore(url: url, migrations: PostgresMigrations())
        let running = Task { try await store.run() }
        try await store.ready()
        let logger = Logger(label: "aviary.test")
        let integers: [Int32] = [0, 1, -1, .max, .min] + (1...1000).map { Int32($0 * 7919) }
        let texts: [String] =
            ["", "plain", "a \"quoted\" \\ text", "ünïcødé 🐦", "line\nbreak", String(repeating: "x", count: 70_000)]
            + (1...1000).map { "key-\($0)" }
        let (readIntegers, readTexts, bounds, emptyCounts) = try await store.withConnection { connection in
            var result: ([Int32], [String], String, String) = ([], [], "", "")
            for try await row in try await connection.query(
                """
                SELECT \(PostgresArrayParameter(integers)) AS i, \(PostgresArrayParameter(texts)) AS t,
                    array_dims(\(PostgresArrayParameter(integers))) || array_dims(\(PostgresArrayParameter(texts))),
                    cardinality(\(PostgresArrayParameter([Int32]()))) || ',' || cardinality(\(PostgresArrayParameter([String]())))
                        || ',' || pg_typeof(\(PostgresArrayParameter([String]())))
                """, logger: logger
            ).decode(([Int32], [String], String, String).self) {
                result = row
            }
            return result
        }
        #expect(readIntegers == integers)
        #expect(readTexts == texts)
        #expect(bounds == "[1:\(integers.count)][1:\(texts.count)]")
        #expect(emptyCounts == "0,0,text[]")
        running.cancel()
        _ = try? await running.value
    }
}
