//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryTestSupport
import Foundation
import Testing

/// `aviary gateway --config FILE`, run as a process (`swift build --build-tests` builds it next to
/// the test bundle).
@Suite("aviary gateway command", .timeLimit(.minutes(2)))
struct CommandLineTests {
    static var executable: URL { ChildProcess.aviary }

    typealias Outcome = ChildProcess.Outcome

    static func run(_ arguments: [String]) async throws -> Outcome {
        try await ChildProcess.run(Self.executable, arguments)
    }

    static func temporaryFile(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("gateway-\(UUID().uuidString).yaml")
            .path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("the issue's example passes --check")
    func validConfiguration() async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.executable.path), "build the aviary product first")
        let path = try Self.temporaryFile(issueExample)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let outcome = try await Self.run(["gateway", "--config", path, "--check"])
        #expect(outcome.status == 0)
        #expect(outcome.standardOutput == "\(path): valid (4 clusters, 4 routes)\n")
    }

    @Test("an invalid configuration exits 78 with one line per problem and nothing else")
    func invalidConfiguration() async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.executable.path), "build the aviary product first")
        let yaml =
            issueExample
            .replacingOccurrences(of: "attempts: 3", with: "attempts: three")
            .replacingOccurrences(of: "cluster: catalog\n", with: "cluster: katalog\n")
        let path = try Self.temporaryFile(yaml)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let outcome = try await Self.run(["gateway", "--config", path])
        #expect(outcome.status == 78)
        #expect(outcome.standardOutput.isEmpty)
        #expect(
            outcome.standardError.split(separator: "\n") == [
                #"routes[2].retry.attempts: expected a positive integer, got "three" (\#(path):29)"#,
                #"routes[3].cluster: unknown cluster "katalog", expected one of catalog, orders, orders-v2, users (\#(path):33)"#,
            ])
    }

    @Test("a missing file exits 78; a wrong argument exits 64 with the usage")
    func usageErrors() async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.executable.path), "build the aviary product first")
        let missing = try await Self.run(["gateway", "--config", "/nonexistent/gateway.yaml"])
        #expect(missing.status == 78)
        #expect(missing.standardError.hasPrefix("/nonexistent/gateway.yaml: cannot read the file"))
        #expect(missing.standardError.split(separator: "\n").count == 1)
        let wrong = try await Self.run(["gateway", "--conf", "x"])
        #expect(wrong.status == 64)
        #expect(wrong.standardError.contains("usage: aviary gateway --config FILE"))
    }

    @Test("a JWKS file that cannot be read stops the gateway at start: exit 78, one line naming auth.jwt")
    func unreadableJWKSFile() async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.executable.path), "build the aviary product first")
        let path = try Self.temporaryFile(
            """
            listen: {address: 127.0.0.1:0}
            clusters: {a: {endpoints: [127.0.0.1:1]}}
            auth: {jwt: {issuer: idp, jwks_file: /nonexistent/jwks.json}}
            routes: [{match: {path_prefix: /}, cluster: a, auth: {require: jwt}}]
            """)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let outcome = try await Self.run(["gateway", "--config", path])
        #expect(outcome.status == 78)
        #expect(
            outcome.standardError == "aviary gateway: auth.jwt: jwksFile \"/nonexistent/jwks.json\" cannot be read\n")
    }

    @Test("a discovery file that cannot be read stops the gateway at start: exit 78, one line naming it")
    func unreadableDiscoveryFile() async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.executable.path), "build the aviary product first")
        let path = try Self.temporaryFile(
            """
            listen: {address: 127.0.0.1:0}
            discovery: {file: /nonexistent/endpoints.json}
            clusters: {a: {discovery: {service: orders}}}
            routes: [{match: {path_prefix: /}, cluster: a}]
            """)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let outcome = try await Self.run(["gateway", "--config", path])
        #expect(outcome.status == 78)
        #expect(
            outcome.standardError.hasPrefix(
                "aviary gateway: discovery.file: discovery file /nonexistent/endpoints.json: cannot be read ("))
        #expect(outcome.standardError.split(separator: "\n").count == 1)
    }
}
