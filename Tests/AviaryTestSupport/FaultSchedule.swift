//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Foundation

/// The random schedule of a crash test (when to SIGKILL whom), replayable from its seed.
///
/// The seed comes from `AVIARY_FAULT_SEED` when it is set, else at random; it is printed, so that
/// a failing run can be replayed with `AVIARY_FAULT_SEED=<seed> swift test --filter <Suite>`.
///
/// ```swift
/// var schedule = FaultSchedule("SagaCrashTests")
/// try await Task.sleep(for: .milliseconds(Int.random(in: 30...400, using: &schedule)))
/// Issue.record("seed \(schedule.seed): the runner failed")
/// ```
public struct FaultSchedule: RandomNumberGenerator, Sendable {
    /// The seed this schedule started from.
    public let seed: UInt64
    private var state: UInt64

    /// A schedule from `AVIARY_FAULT_SEED` or a random seed, printed with `label`.
    public init(_ label: String, environment: [String: String] = ProcessInfo.processInfo.environment) {
        let seed = environment["AVIARY_FAULT_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...UInt64.max)
        print("\(label) seed \(seed) (replay with AVIARY_FAULT_SEED=\(seed))")
        self.init(seed: seed)
    }

    /// A schedule from a given seed (the same seed gives the same numbers).
    ///
    /// ```swift
    /// var a = FaultSchedule(seed: 7), b = FaultSchedule(seed: 7)
    /// #expect(a.next() == b.next())
    /// ```
    public init(seed: UInt64) {
        self.seed = seed
        self.state = seed
    }

    /// The next number: SplitMix64 (Steele, Lea and Flood), small and good enough for schedules.
    public mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
