//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// The closed breaker's hot path, and why it looks like this.
//
// Target: a call admitted by a closed breaker that succeeds costs ≤ 100 ns, and two threads
// calling one breaker get ≥ 1.5× the throughput of one. A `Mutex` around the state machine on
// every call fails the second target by design: both threads write the same cache line on every
// call. So the common case writes no shared line at all:
//
// - Admission reads one atomic *token* (mode, generation, batch) that the lock holder publishes
//   whenever the state machine changes. Closed and disabled breakers admit without the lock.
// - A success that is not slow, while the window already holds at least the minimum number of
//   calls, is counted in a per-CPU *stripe* (one atomic word on its own cache line) instead of the
//   window. Such a success cannot open the breaker: it lowers both rates and the number of calls
//   stays at or above the minimum. Its only effect is its place in the window, so it is enough to
//   put it there before anything reads or judges the window: every locked operation first moves
//   the stripes' counts into the window (`recordSuccesses`). For a count-based window the
//   successes land before the call being recorded, which is one valid order of concurrent calls;
//   for a time-based window the stripes count for one second only (the token's second), and the
//   first call of a later second takes the lock, which moves the window and judges it. The
//   documented semantics (Resilience4j's, judged on every call) are therefore kept exactly.
// - Failures, slow calls, ignored outcomes, probes, every call below the minimum, and every
//   transition take the lock; they are rare in a healthy closed state, and when they are not the
//   breaker opens soon.
//
// Stripe words are tagged with the token's batch. Whenever the token changes (a transition, a new
// second, reaching the minimum), the lock holder swaps every stripe to the new batch with a count
// of zero, credits the old counts to the old generation and second, and only then stores the new
// token. A fast-path writer compares-and-swaps its stripe only if the tag is the batch of the
// token it read, so a count can never be credited to a batch it was not made in; when the swap
// fails it takes the lock. Writer: swap stripes, store second (release), store token (release).
// Reader: load token (acquire), load second (acquire), CAS stripe.
//
// Open, half-open and forced-open breakers take the lock on every call: rejections are cheap
// enough, and probes must be counted exactly.
//
// Other costs of the closure path: `execute` is `@inlinable`, so the generic closure call is
// specialized at the call site (unspecialized, the async generic frame cost more than everything
// else together); the system clock is read without going through the `any MonotonicClock`
// existential; the two clock reads (start and end, needed for slow-call detection) are then the
// largest part. Measured in release mode on a 2-vCPU VM (AMD EPYC): with a clock that costs
// nothing, a closed `execute` adds about 50 ns to calling the closure directly, and two threads
// each get the same per-call time as one (2× the throughput); `clock_gettime` costs about 50 ns
// there (about 20 ns on bare metal) and is read twice. The permit API retains the breaker for each
// permit (a shared reference count), so it scales less (about 1.4× with two threads).

extension CircuitBreaker {
    /// What an admitted call carries until its outcome is recorded. Not API.
    @usableFromInline
    struct Ticket: Sendable {
        @usableFromInline var start: MonotonicInstant
        @usableFromInline var generation: UInt32

        @usableFromInline
        init(start: MonotonicInstant, generation: UInt32) {
            self.start = start
            self.generation = generation
        }
    }

    /// How calls may use the fast path, as published in the token. Not API.
    enum FastMode: UInt64, Sendable {
        /// Admission and recording take the lock (open, half-open, forced open).
        case locked = 0
        /// Admit without the lock; record under the lock (closed, below the minimum).
        case closed = 1
        /// Admit without the lock; successes that are not slow go to the stripes.
        case closedBulk = 2
        /// Admit without the lock; record nothing.
        case disabled = 3
    }

    /// The fast-path token: bits 0-1 mode, 2-33 generation, 34-63 batch. Not API.
    struct Token: Hashable, Sendable {
        var raw: UInt64

        static let batchMask: UInt32 = (1 << 30) - 1

        init(raw: UInt64) { self.raw = raw }

        init(mode: FastMode, generation: UInt32, batch: UInt32) {
            self.raw = mode.rawValue | (UInt64(generation) << 2) | (UInt64(batch & Self.batchMask) << 34)
        }

        var mode: FastMode { FastMode(rawValue: self.raw & 3) ?? .locked }
        var generation: UInt32 { UInt32(truncatingIfNeeded: self.raw >> 2) }
        var batch: UInt32 { UInt32(truncatingIfNeeded: self.raw >> 34) }
    }

    /// A stripe word: the batch tag in the high 32 bits, the count of successes in the low 32.
    enum StripeWord {
        /// Counts stop here and further successes take the lock (which empties the stripe).
        static let countLimit: UInt64 = 1 << 31

        static func make(tag: UInt32, count: UInt64 = 0) -> UInt64 { (UInt64(tag) << 32) | count }
        static func tag(_ word: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: word >> 32) }
        static func count(_ word: UInt64) -> UInt64 { word & 0xFFFF_FFFF }
    }

    /// One stripe: an atomic word alone on its cache line (64 bytes of padding before it, 56
    /// after, so that neither the fields before the stripes nor a neighbouring stripe share its
    /// line, with or without adjacent-line prefetching). Not API.
    struct Stripe: ~Copyable, Sendable {
        private let before: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
        let word: Atomic<UInt64>
        private let after: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0)

        init() { self.word = Atomic(0) }
    }

    /// The number of stripes: a power of two. Threads on CPUs that are equal modulo this share a
    /// stripe, which is correct but slower.
    static let stripeCount = 16

    typealias Stripes = InlineArray<16, Stripe>

    /// Returns the number of the CPU the calling thread runs on (`sched_getcpu`, a few
    /// nanoseconds with glibc's rseq), or a hash of the thread where that is unavailable.
    typealias CurrentCPU = @convention(c) () -> Int32

    static let currentCPU: CurrentCPU = {
        #if os(Linux)
        if let handle = dlopen(nil, RTLD_LAZY), let symbol = dlsym(handle, "sched_getcpu") {
            return unsafeBitCast(symbol, to: CurrentCPU.self)
        }
        #endif
        return {
            let thread = pthreadIdentity()
            return Int32(truncatingIfNeeded: (thread >> 8) ^ (thread >> 16))
        }
    }()
}

/// The calling thread's `pthread_t` as a number (for hashing threads onto stripes).
private func pthreadIdentity() -> UInt {
    #if canImport(Darwin)
    return UInt(bitPattern: pthread_self())
    #else
    return UInt(pthread_self())
    #endif
}
