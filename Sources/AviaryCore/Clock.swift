//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
#if canImport(SwiftOverlayShims)
// Some builds resolve `timespec` to the runtime shims' declaration, whose members
// MemberImportVisibility hides unless that module is imported too (as in TimerThread).
import SwiftOverlayShims
#endif

/// A point on a monotonic timeline, measured from an arbitrary origin that is fixed for one clock.
///
/// Every Aviary clock uses this one instant type, so that policies can hold an injected clock as
/// `any MonotonicClock` without becoming generic, and deadlines can be compared and propagated
/// across modules.
///
/// ```swift
/// let clock = SystemClock()
/// let start = clock.now
/// let later = start.advanced(by: .milliseconds(250))
/// print(start.duration(to: later)) // 0.25 seconds
/// ```
public struct MonotonicInstant: InstantProtocol, Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Time since the clock's origin.
    public var offset: Duration

    /// Creates an instant at `offset` from the clock's origin.
    @inlinable
    public init(offset: Duration) {
        self.offset = offset
    }

    @inlinable
    public func advanced(by duration: Duration) -> MonotonicInstant {
        MonotonicInstant(offset: self.offset + duration)
    }

    @inlinable
    public func duration(to other: MonotonicInstant) -> Duration {
        other.offset - self.offset
    }

    @inlinable
    public static func < (lhs: MonotonicInstant, rhs: MonotonicInstant) -> Bool {
        lhs.offset < rhs.offset
    }

    public var description: String { "MonotonicInstant(\(self.offset))" }
}

/// A monotonic clock that Aviary's time-based logic takes by injection.
///
/// Production code uses ``SystemClock``; tests use ``ManualClock`` and advance time themselves,
/// so that breakers, rate limiters, retries and timers are tested without sleeping.
///
/// ```swift
/// func expired(_ deadline: MonotonicInstant, clock: any MonotonicClock = SystemClock()) -> Bool {
///     clock.now >= deadline
/// }
/// ```
public protocol MonotonicClock: Clock, Sendable where Instant == MonotonicInstant, Duration == Swift.Duration {}

/// The process's monotonic clock (`CLOCK_MONOTONIC`), the default clock everywhere.
///
/// Reading it costs one vDSO call and no allocation, so it is fit for per-call hot paths.
///
/// ```swift
/// let clock = SystemClock()
/// try await clock.sleep(until: clock.now.advanced(by: .milliseconds(10)), tolerance: nil)
/// ```
public struct SystemClock: MonotonicClock {
    public init() {}

    @inlinable
    public var now: MonotonicInstant {
        MonotonicInstant(offset: SystemClock._monotonicNow())
    }

    public var minimumResolution: Duration { .nanoseconds(1) }

    public func sleep(until deadline: MonotonicInstant, tolerance: Duration? = nil) async throws {
        let remaining = self.now.duration(to: deadline)
        if remaining <= .zero {
            try Task.checkCancellation()
            return
        }
        try await ContinuousClock().sleep(for: remaining, tolerance: tolerance)
    }

    /// Reads `CLOCK_MONOTONIC`. Not API; `@usableFromInline` so that `now` inlines.
    @usableFromInline
    static func _monotonicNow() -> Duration {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return Duration(secondsComponent: Int64(spec.tv_sec), attosecondsComponent: Int64(spec.tv_nsec) * 1_000_000_000)
    }
}

extension Duration {
    /// The duration in seconds as a `Double`, for metrics and headers.
    ///
    /// ```swift
    /// Duration.milliseconds(1500).aviarySeconds // 1.5
    /// ```
    @inlinable
    public var aviarySeconds: Double {
        let (seconds, attoseconds) = self.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// The duration in whole nanoseconds, saturating at `Int64` bounds.
    @inlinable
    public var aviaryNanoseconds: Int64 {
        let (seconds, attoseconds) = self.components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        let (sum, overflow2) = product.addingReportingOverflow(attoseconds / 1_000_000_000)
        if overflow2 { return seconds < 0 ? .min : .max }
        return sum
    }

    /// Parses a configuration duration: a non-negative integer and `ms`, `s`, `m` or `h`, no spaces
    /// (`500ms`, `10s`, `5m`, `1h`); nil for anything else, or one that overflows. The one parser
    /// behind `aviary.yaml` and `gateway.yaml`.
    ///
    /// ```swift
    /// Duration(aviaryText: "500ms") // .milliseconds(500)
    /// ```
    public init?(aviaryText text: some StringProtocol) {
        let digits = text.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, let amount = Int64(digits) else { return nil }
        switch text.dropFirst(digits.count) {
        case "ms": self = .milliseconds(amount)
        case "s": self = .seconds(amount)
        case "m" where amount <= Int64.max / 60: self = .seconds(amount * 60)
        case "h" where amount <= Int64.max / 3600: self = .seconds(amount * 3600)
        default: return nil
        }
    }

    /// Creates a duration from seconds given as a `Double` (used for `Retry-After` and YAML).
    @inlinable
    public static func aviarySeconds(_ seconds: Double) -> Duration {
        .nanoseconds(Int64((seconds * 1e9).rounded()))
    }
}
