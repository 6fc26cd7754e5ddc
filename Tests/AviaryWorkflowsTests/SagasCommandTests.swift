//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryStorage
import AviaryTestSupport
import AviaryWorkflows
import Foundation
import Testing

/// `aviary sagas` run as a child process (built next to the test bundle by
/// `swift build --build-tests`) against a real PostgreSQL saga store.
@Suite("aviary sagas command on PostgreSQL", .timeLimit(.minutes(2)))
struct SagasCommandTests {
    static var executable: URL { ChildProcess.aviary }

    typealias Outcome = ChildProcess.Outcome

    static func run(_ arguments: [String]) async throws -> Outcome {
        try await ChildProcess.run(Self.executable, arguments)
    }

    @Test("list, show, retry and abandon work on a postgres:// store; a database without sagas is an error")
    func postgresStore() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.executable.path), "build aviary first")
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let url = try await directory.postgresURL().description
        let store = try await directory.openPostgresSagaStore()
        let t0 = Date(timeIntervalSince1970: 1_800_000_000)
        for (id, status) in [
            ("order-1", SagaStatus.completed), ("order-2", .needsAttention), ("order-3", .needsAttention),
        ] {
            try await store.create(
                SagaInstance(
                    id: id, name: "order", status: status, step: 1, state: Data(#"{"n":1}"#.utf8),
                    lastError: status == .needsAttention ? "compensating charge: refused" : nil, createdAt: t0,
                    updatedAt: t0),
                events: [
                    SagaEvent(
                        step: 1, stepName: "charge", kind: .compensationFailed, attempt: 0, error: "refused", at: t0)
                ])
        }

        let list = try await Self.run(["sagas", "list", "--store", url, "--state", "needs-attention"])
        #expect(list.status == 0, "\(list.standardError)")
        let ids = list.standardOutput.split(separator: "\n").dropFirst().map {
            $0.split(separator: " ").first.map(String.init)
        }
        #expect(Set(ids) == ["order-2", "order-3"])

        let show = try await Self.run(["sagas", "show", "order-2", "--store", url])
        #expect(show.status == 0, "\(show.standardError)")
        #expect(show.standardOutput.contains("saga order-2 (order): needs-attention at step 1"))
        #expect(show.standardOutput.contains("compensation-failed"))

        let retry = try await Self.run(["sagas", "retry", "order-2", "--store", url])
        #expect(retry.status == 0, "\(retry.standardError)")
        #expect(try await store.instance("order-2")?.status == .compensating)
        let abandon = try await Self.run(["sagas", "abandon", "order-3", "--store", url])
        #expect(abandon.status == 0, "\(abandon.standardError)")
        #expect(try await store.instance("order-3")?.status == .abandoned)
        let refused = try await Self.run(["sagas", "abandon", "order-1", "--store", url])
        #expect(refused.status != 0)
        #expect(refused.standardError.contains("only a needs-attention saga can be changed"))

        // A database that holds no saga store is reported, and left without saga tables.
        let empty = try await PostgresTestServer.shared().makeDatabase()
        let missing = try await Self.run(["sagas", "list", "--store", empty.description])
        #expect(missing.status == 69)
        #expect(missing.standardError.contains("no aviary_sagas table"), "\(missing.standardError)")
        let again = try await Self.run(["sagas", "list", "--store", empty.description])
        #expect(again.standardError.contains("no aviary_sagas table"))
        await directory.close()
    }
}
