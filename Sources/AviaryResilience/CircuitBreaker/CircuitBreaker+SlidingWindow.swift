//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore

extension CircuitBreaker {
    /// Counts of recorded calls by kind. Not API.
    struct Tally: Hashable, Sendable {
        var calls = 0
        var failures = 0
        var slowCalls = 0
        var slowFailures = 0

        /// The code of one call: bit 0 failed, bit 1 slow.
        static let failureBit: UInt8 = 1
        static let slowBit: UInt8 = 2

        static func code(failed: Bool, slow: Bool) -> UInt8 {
            (failed ? Self.failureBit : 0) | (slow ? Self.slowBit : 0)
        }

        @inline(__always)
        mutating func add(_ code: UInt8, count: Int = 1) {
            let failed = code & Self.failureBit != 0
            let slow = code & Self.slowBit != 0
            self.calls += count
            if failed { self.failures += count }
            if slow { self.slowCalls += count }
            if failed && slow { self.slowFailures += count }
        }

        @inline(__always)
        mutating func remove(_ code: UInt8) {
            let failed = code & Self.failureBit != 0
            let slow = code & Self.slowBit != 0
            self.calls -= 1
            if failed { self.failures -= 1 }
            if slow { self.slowCalls -= 1 }
            if failed && slow { self.slowFailures -= 1 }
        }

        mutating func add(_ other: Tally) {
            self.calls += other.calls
            self.failures += other.failures
            self.slowCalls += other.slowCalls
            self.slowFailures += other.slowFailures
        }

        mutating func remove(_ other: Tally) {
            self.calls -= other.calls
            self.failures -= other.failures
            self.slowCalls -= other.slowCalls
            self.slowFailures -= other.slowFailures
        }

        /// `failures / calls`; callers check `calls > 0`. Division (not `threshold * calls`) so
        /// that a rate exactly at a decimal threshold (3 of 10 against 0.3) compares equal.
        var failureRate: Double { Double(self.failures) / Double(self.calls) }
        var slowCallRate: Double { Double(self.slowCalls) / Double(self.calls) }
    }

    /// The closed state's sliding window: the last N calls (a ring of call codes) or the calls of
    /// the last N seconds (one ``Tally`` per second, Resilience4j's partial aggregations), with a
    /// running total so that judging is O(1). Not API.
    ///
    /// One struct for both kinds (rather than an enum with payloads) so that mutating the arrays
    /// in place never copies them.
    struct CallWindow: Sendable {
        private let isTimeBased: Bool
        /// The number of calls (count-based) or seconds (time-based).
        let size: Int
        /// Count-based: the call codes, oldest at `head` once full.
        private var ring: [UInt8]
        private var head = 0
        private var filled = 0
        /// Time-based: the tally of second `s` is at `buckets[slot(s)]` while `s` is in the window.
        private var buckets: [Tally]
        /// Time-based: the newest second recorded; the window is `(latestSecond - size, latestSecond]`.
        private(set) var latestSecond: Int64?
        /// The sum over the window.
        private(set) var total = Tally()

        init(_ window: SlidingWindow) {
            self.size = window.size
            self.isTimeBased = window.isTimeBased
            self.ring = self.isTimeBased ? [] : Array(repeating: 0, count: self.size)
            self.buckets = self.isTimeBased ? Array(repeating: Tally(), count: self.size) : []
        }

        /// Empties the window.
        mutating func removeAll() {
            if self.isTimeBased {
                for index in self.buckets.indices { self.buckets[index] = Tally() }
                self.latestSecond = nil
            } else {
                for index in self.ring.indices { self.ring[index] = 0 }
                self.head = 0
                self.filled = 0
            }
            self.total = Tally()
        }

        /// Records `count` calls with `code` at `second` (time-based; ignored when count-based).
        /// Returns false when the calls are older than a time-based window and were dropped.
        @discardableResult
        mutating func record(_ code: UInt8, count: Int = 1, second: Int64) -> Bool {
            guard count > 0 else { return true }
            if self.isTimeBased {
                return self.recordTimed(code, count: count, second: second)
            }
            if count >= self.size {
                for index in self.ring.indices { self.ring[index] = code }
                self.head = 0
                self.filled = self.size
                self.total = Tally()
                self.total.add(code, count: self.size)
                return true
            }
            for _ in 0..<count { self.append(code) }
            return true
        }

        @inline(__always)
        private mutating func append(_ code: UInt8) {
            if self.filled == self.size {
                self.total.remove(self.ring[self.head])
            } else {
                self.filled += 1
            }
            self.ring[self.head] = code
            self.total.add(code)
            self.head += 1
            if self.head == self.size { self.head = 0 }
        }

        private mutating func recordTimed(_ code: UInt8, count: Int, second: Int64) -> Bool {
            self.advance(to: second)
            // `advance` has set latestSecond.
            let latest = self.latestSecond ?? second
            if second <= latest - Int64(self.size) { return false }
            self.buckets[self.slot(second)].add(code, count: count)
            self.total.add(code, count: count)
            return true
        }

        /// Moves a time-based window forward to `second`, dropping the seconds that leave it.
        private mutating func advance(to second: Int64) {
            guard let latest = self.latestSecond else {
                self.latestSecond = second
                return
            }
            guard second > latest else { return }
            if second - latest >= Int64(self.size) {
                for index in self.buckets.indices { self.buckets[index] = Tally() }
                self.total = Tally()
            } else {
                var leaving = latest + 1
                while leaving <= second {
                    let slot = self.slot(leaving)
                    self.total.remove(self.buckets[slot])
                    self.buckets[slot] = Tally()
                    leaving += 1
                }
            }
            self.latestSecond = second
        }

        /// The window's sum as it would be at `second`, without moving it (for snapshots).
        func tally(at second: Int64) -> Tally {
            guard self.isTimeBased, let latest = self.latestSecond, second > latest else { return self.total }
            let oldest = max(second - Int64(self.size) + 1, latest - Int64(self.size) + 1)
            guard oldest <= latest else { return Tally() }
            var sum = Tally()
            for included in oldest...latest { sum.add(self.buckets[self.slot(included)]) }
            return sum
        }

        @inline(__always)
        private func slot(_ second: Int64) -> Int {
            let size = Int64(self.size)
            return Int(((second % size) + size) % size)
        }

        /// The whole second (floor) of `instant`: the bucket a call recorded then belongs to.
        @inline(__always)
        static func second(of instant: MonotonicInstant) -> Int64 {
            let (seconds, attoseconds) = instant.offset.components
            return attoseconds < 0 ? seconds - 1 : seconds
        }
    }
}
