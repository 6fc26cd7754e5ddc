//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Foundation
import Synchronization

/// Wall-clock time for state shared between processes (leases, delays, retention), which a
/// monotonic clock cannot express. Tests inject ``ManualWallClock``.
///
/// ```swift
/// let clock = ManualWallClock()
/// let log = try SQLiteMessageLog(path: path, clock: clock)
/// clock.advance(by: .seconds(31))   // leases of 30 s have now expired
/// ```
public protocol WallClock: Sendable {
    /// The current time.
    var now: Date { get }
}

/// The system's wall clock.
public struct SystemWallClock: WallClock {
    /// Creates the system clock.
    public init() {}

    /// `Date()`.
    public var now: Date { Date() }
}

/// A wall clock that moves only when told to.
public final class ManualWallClock: WallClock {
    private let current: Mutex<Date>

    /// Starts at `start` (a fixed, whole-second date by default).
    public init(start: Date = Date(timeIntervalSince1970: 1_800_000_000)) {
        self.current = Mutex(start)
    }

    /// The current time.
    public var now: Date { self.current.withLock { $0 } }

    /// Moves time forward.
    public func advance(by duration: Duration) {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        self.current.withLock { $0 = $0.addingTimeInterval(seconds) }
    }
}
