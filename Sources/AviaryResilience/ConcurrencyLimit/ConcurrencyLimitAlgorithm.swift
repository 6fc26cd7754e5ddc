//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore

/// How an ``AdaptiveConcurrencyLimit`` learns its limit from the calls it admits.
///
/// An algorithm is a plain value: it sees one sample per finished call (the call's round-trip
/// time, how many calls were in flight when it started, and whether it was dropped) and answers
/// the new limit. It does no I/O, reads no clock and holds no lock; the policy serialises calls to
/// ``update(rtt:inflight:didDrop:now:)`` under its own lock, so an implementation needs no
/// synchronisation. Aviary ships ``AIMDLimit`` and ``GradientLimit``.
///
/// The policy never passes its own rejections, and never passes calls that inner policies
/// rejected (``ResilienceError/Code-swift.struct/isRejection``): those did not run, so they say
/// nothing about the upstream's latency or capacity.
///
/// ```swift
/// struct FixedLimit: ConcurrencyLimitAlgorithm {
///     var limit: Int
///     mutating func update(rtt: Duration, inflight: Int, didDrop: Bool, now: MonotonicInstant) -> Int {
///         limit
///     }
/// }
/// let limiter = AdaptiveConcurrencyLimit(.init(algorithm: .custom { initial, _, _ in FixedLimit(limit: initial) }))
/// ```
public protocol ConcurrencyLimitAlgorithm: Sendable {
    /// The current limit: how many calls may be in flight at once (before priority headroom).
    var limit: Int { get }

    /// Takes one sample and returns the new limit.
    ///
    /// - Parameters:
    ///   - rtt: how long the call took, from admission to completion.
    ///   - inflight: how many calls were in flight when this one was admitted, itself included.
    ///   - didDrop: whether the call failed in a way that signals overload (a timeout, a 503, a
    ///     reset connection). A drop's `rtt` is not a latency sample.
    ///   - now: when the call finished, on the policy's clock.
    /// - Returns: the new limit, the same value ``limit`` returns afterwards.
    mutating func update(rtt: Duration, inflight: Int, didDrop: Bool, now: MonotonicInstant) -> Int
}
