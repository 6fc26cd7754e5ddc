//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Synchronization

extension AdaptiveConcurrencyLimit {
    /// One admitted unit of work, for callers whose work is not a closure (a streamed body, a
    /// NIO handler). Get one from ``AdaptiveConcurrencyLimit/tryAcquire(priority:)``.
    ///
    /// The slot is freed exactly once: the first ``release(outcome:)`` frees it and feeds the
    /// sample, later calls do nothing, and a permit that is never released frees its slot as
    /// ``AdaptiveConcurrencyLimit/Outcome/ignored`` (no sample) when its last reference goes away.
    /// The round-trip time is measured from acquisition to release on the limiter's clock.
    ///
    /// A permit is a class, so that it can be captured by the escaping closures that end streamed
    /// work (a body writer, an `onTermination` handler); acquiring one allocates it. The closure
    /// API, ``AdaptiveConcurrencyLimit/execute(_:_:)``, does not allocate.
    ///
    /// ```swift
    /// guard let permit = limiter.tryAcquire(priority: context.priority) else { throw overloaded }
    /// let body = ResponseBody { writer in
    ///     defer { permit.release() }
    ///     try await upstream.stream(into: &writer)
    /// }
    /// ```
    public final class Permit: Sendable {
        private let limiter: AdaptiveConcurrencyLimit
        private let start: MonotonicInstant
        private let inflightAtStart: Int
        private let released = Atomic(false)

        init(limiter: AdaptiveConcurrencyLimit, start: MonotonicInstant, inflightAtStart: Int) {
            self.limiter = limiter
            self.start = start
            self.inflightAtStart = inflightAtStart
        }

        /// Whether the permit has been released.
        public var isReleased: Bool {
            self.released.load(ordering: .acquiring)
        }

        /// Ends the work: frees the slot and, unless `outcome` is
        /// ``AdaptiveConcurrencyLimit/Outcome/ignored``, feeds the round-trip time since acquisition
        /// to the limit algorithm. Only the first call has an effect.
        ///
        /// - Parameter outcome: what the work says about load; `.success` by default.
        /// - Returns: true if this call released the permit, false if it was already released.
        @discardableResult
        public func release(outcome: Outcome = .success) -> Bool {
            let (exchanged, _) = self.released.compareExchange(
                expected: false, desired: true, ordering: .acquiringAndReleasing)
            guard exchanged else { return false }
            self.limiter.complete(
                inflightAtStart: self.inflightAtStart, start: self.start, outcome: outcome, context: nil)
            self.limiter.countRelease(outcome)
            return true
        }

        deinit {
            self.release(outcome: .ignored)
        }
    }
}
