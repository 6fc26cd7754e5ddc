//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import Synchronization
import Testing

/// Records the order in which policies run.
struct Recorder: ResiliencePolicy {
    let name: String
    let log: Log

    final class Log: Sendable {
        let entries = Mutex<[String]>([])
        func append(_ entry: String) { self.entries.withLock { $0.append(entry) } }
        var all: [String] { self.entries.withLock { $0 } }
    }

    func execute<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        self.log.append("enter \(self.name)")
        defer { self.log.append("leave \(self.name)") }
        return try await next(context)
    }
}

@Suite("ResiliencePipeline", .timeLimit(.minutes(1)))
struct PipelineTests {
    @Test("the first listed policy is the outermost")
    func order() async throws {
        let log = Recorder.Log()
        let pipeline = ResiliencePipeline<Int> {
            Recorder(name: "a", log: log)
            Recorder(name: "b", log: log)
            Recorder(name: "c", log: log)
        }
        let value = try await pipeline.run {
            log.append("operation")
            return 7
        }
        #expect(value == 7)
        #expect(log.all == ["enter a", "enter b", "enter c", "operation", "leave c", "leave b", "leave a"])
    }

    @Test("conditional policies are included only when their condition holds", arguments: [true, false])
    func conditional(include: Bool) async throws {
        let log = Recorder.Log()
        let pipeline = ResiliencePipeline<Int> {
            if include {
                Recorder(name: "optional", log: log)
            }
            Recorder(name: "always", log: log)
        }
        _ = try await pipeline.run { 1 }
        #expect(log.all.contains("enter optional") == include)
        #expect(log.all.contains("enter always"))
    }

    @Test("an empty pipeline runs the operation")
    func empty() async throws {
        let pipeline = ResiliencePipeline<String> {}
        #expect(try await pipeline.run { "x" } == "x")
    }

    @Test("the context reaches the operation")
    func contextReachesOperation() async throws {
        let pipeline = ResiliencePipeline<Bool> { Recorder(name: "a", log: Recorder.Log()) }
        let idempotent = try await pipeline.run(.idempotent) { context in context.idempotent }
        let keyed = try await pipeline.run(PolicyContext(key: "user-1")) { context in context.key == "user-1" }
        #expect(idempotent)
        #expect(keyed)
    }
}
