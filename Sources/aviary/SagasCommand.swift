//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

// `aviary sagas ...`: inspect a saga store, retry or abandon parked sagas. Argument parsing and
// calls into AviaryWorkflows, nothing else.

import AviaryCore
import AviaryStorage
import AviaryWorkflows
import Foundation
import Logging

enum SagasCommand {
    static let usage = """
        usage: aviary sagas COMMAND --store URL [options]

          list                     list sagas, newest first
            --state STATE            only running|compensating|completed|compensated|needs-attention|abandoned
            --limit N                at most N sagas (default 100)
          show ID                  print one saga and its timeline
          retry ID                 send a needs-attention saga back to compensating (a runner resumes it)
          abandon ID               give up on a needs-attention saga (kept, final)

          --store URL              sqlite:///path.db, sqlite://relative.db or postgres://user:password@host:port/db
                                   (env AVIARY_SAGA_STORE)
        """

    static func run(_ arguments: [String]) async -> Never {
        guard let subcommand = arguments.first, subcommand != "--help", subcommand != "-h" else {
            if arguments.first != nil {
                print(Self.usage)
                exit(0)
            }
            Self.fail(Self.usage, code: 64)
        }
        var positional: [String] = []
        var store = ProcessInfo.processInfo.environment["AVIARY_SAGA_STORE"]
        var state: SagaStatus?
        var limit = 100
        var index = 1
        let rest = arguments
        func value(_ name: String) -> String {
            guard index + 1 < rest.count else {
                Self.fail("aviary sagas \(subcommand): \(name) needs a value", code: 64)
            }
            index += 1
            return rest[index]
        }
        while index < rest.count {
            switch rest[index] {
            case "--store": store = value("--store")
            case "--state":
                let text = value("--state")
                guard let parsed = SagaStatus(rawValue: text) else {
                    Self.fail("aviary sagas \(subcommand): --state: unknown state \"\(text)\"\n\(Self.usage)", code: 64)
                }
                state = parsed
            case "--limit":
                let text = value("--limit")
                guard let parsed = Int(text), parsed >= 1 else {
                    Self.fail(
                        "aviary sagas \(subcommand): --limit: expected a positive number, got \"\(text)\"", code: 64)
                }
                limit = parsed
            case let argument where argument.hasPrefix("-"):
                Self.fail("aviary sagas \(subcommand): unknown option \"\(argument)\"\n\(Self.usage)", code: 64)
            case let argument: positional.append(argument)
            }
            index += 1
        }
        guard let store else {
            Self.fail("aviary sagas \(subcommand): --store URL is required (or set AVIARY_SAGA_STORE)", code: 64)
        }
        func id() -> String {
            guard positional.count == 1 else {
                Self.fail("aviary sagas \(subcommand): expected one saga id, got \(positional.count)", code: 64)
            }
            return positional[0]
        }
        do {
            let sagas = try await Self.open(try StoreURL(parsing: store))
            switch subcommand {
            case "list":
                let instances = try await sagas.instances(status: state, limit: limit)
                print("ID  NAME  STATUS  STEP  UPDATED  LAST ERROR")
                for instance in instances {
                    print(
                        "\(instance.id)  \(instance.name)  \(instance.status.rawValue)  \(instance.step)  "
                            + "\(Self.time(instance.updatedAt))  \(instance.lastError ?? "-")")
                }
            case "show":
                let id = id()
                guard let instance = try await sagas.instance(id) else {
                    throw AviaryError(.notFound, "no saga \(id)")
                }
                print("saga \(instance.id) (\(instance.name)): \(instance.status.rawValue) at step \(instance.step)")
                if let wake = instance.wakeAt { print("wakes at \(Self.time(wake))") }
                if let error = instance.lastError { print("last error: \(error)") }
                print("state: " + String(decoding: instance.state, as: UTF8.self))
                for event in try await sagas.history(id) {
                    var line = "\(Self.time(event.at))  step \(event.step) \(event.stepName)  \(event.kind.rawValue)"
                    line += "  attempt \(event.attempt)"
                    if let error = event.error { line += "  \(error)" }
                    print(line)
                }
            case "retry":
                try await sagas.retryParked(id())
                print("saga \(positional[0]) is compensating again; its runner resumes it")
            case "abandon":
                try await sagas.abandon(id())
                print("saga \(positional[0]) abandoned")
            default:
                Self.fail("aviary sagas: unknown command \"\(subcommand)\"\n\(Self.usage)", code: 64)
            }
        } catch let error as AviaryError {
            Self.fail("aviary sagas \(subcommand): \(error.message)", code: error.code == .invalidArgument ? 64 : 69)
        } catch let error as SagaError {
            Self.fail("aviary sagas \(subcommand): \(error.message)", code: error.kind == .notFound ? 69 : 65)
        } catch {
            Self.fail("aviary sagas \(subcommand): \(error)", code: 69)
        }
        exit(0)
    }

    /// Opens an existing store; never creates one (a mistyped path is an error, not a new file;
    /// a PostgreSQL database without the saga tables is an error, not migrated).
    static func open(_ url: StoreURL) async throws -> any SagaStore {
        switch url.kind {
        case .sqlite(let path):
            guard FileManager.default.fileExists(atPath: path) else {
                throw AviaryError(.notFound, "no database at \(path)")
            }
            return try SQLiteSagaStore(url: url)
        case .sqliteInMemory:
            throw AviaryError(.invalidArgument, "an in-memory store has nothing to inspect; give a file")
        case .postgres:
            var logger = Logger(label: "aviary.sagas")
            logger.logLevel = .error
            let options = PostgresStore.Options(
                maximumConnections: 2, connectTimeout: .seconds(5), acquireTimeout: .seconds(10),
                applicationName: "aviary-sagas")
            return try await PostgresSagaStore(url: url, options: options, logger: logger, migrate: false)
        }
    }

    static func time(_ date: Date) -> String {
        date.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true))
    }

    static func fail(_ message: String, code: Int32) -> Never {
        FileHandle.standardError.write(Data((message + "\n").utf8))
        exit(code)
    }
}
