//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
import Testing

@testable import AviaryTelemetry

@Suite("ProcessMetrics", .timeLimit(.minutes(1)))
struct ProcessMetricsTests {
    /// A real `/proc/self/stat` shape whose command name contains spaces and `)`.
    static let stat =
        "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 "
        + "123400 987654321 1234 18446744073709551615 1 1 0 0 0 0 0 4096 17922 0 0 0 17 1 0 0 0 0 0\n"
    static let systemStat = "cpu  1 2 3 4\nintr 5\nctxt 6\nbtime 1700000000\nprocesses 7\n"

    @Test("stat fields are counted from the last parenthesis")
    func parsing() throws {
        let metrics = try #require(
            ProcessMetrics(
                parsingStat: Self.stat, systemStat: Self.systemStat, clockTicksPerSecond: 100, pageSize: 4096)
        )
        #expect(metrics.cpuSeconds == 3.0)  // (250 + 50) ticks / 100
        #expect(metrics.virtualMemoryBytes == 987_654_321)
        #expect(metrics.residentMemoryBytes == 1234 * 4096)
        #expect(metrics.startTimeSeconds == 1_700_000_000 + 1234.0)  // 123400 ticks / 100
    }

    @Test(
        "malformed input gives nil, not a crash",
        arguments: [
            ("", systemStat),
            ("4242 (name) S 1 2", systemStat),
            (stat, "cpu 1 2 3\n"),
            (stat, "btime soon\n"),
        ])
    func malformed(stat: String, systemStat: String) {
        #expect(
            ProcessMetrics(parsingStat: stat, systemStat: systemStat, clockTicksPerSecond: 100, pageSize: 4096) == nil)
    }

    #if os(Linux)
    @Test("collect reads plausible values for this process")
    func collect() throws {
        let metrics = try #require(ProcessMetrics.collect())
        #expect(metrics.cpuSeconds > 0)
        #expect(metrics.residentMemoryBytes > 1 << 20)
        #expect(metrics.virtualMemoryBytes >= metrics.residentMemoryBytes)
        #expect(metrics.openFileDescriptors >= 3)
        let limit = try #require(metrics.maxFileDescriptors)
        #expect(limit >= metrics.openFileDescriptors)
        let now = Date().timeIntervalSince1970
        #expect(metrics.startTimeSeconds <= now + 1)
        #expect(metrics.startTimeSeconds > now - 24 * 3600, "this test process started today")
    }

    @Test("open descriptors are counted from /proc/self/fd")
    func openDescriptors() throws {
        let count = try #require(ProcFiles.countOpenFileDescriptors())
        let entries = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")
        // FileManager's listing holds one descriptor of its own; other tests may open or close
        // a few meanwhile, so the two readings agree within a small margin.
        #expect(abs(entries.count - 1 - count) <= 4, "\(count) vs \(entries.count)")
    }
    #endif
}
