//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

#if os(Linux)
import AviaryCore
import Glibc
import HeapModule
#if canImport(SwiftOverlayShims)
// Release builds of this module resolve `timespec`, `pthread_mutex_t` and `pthread_cond_t` to the
// runtime shims' declarations, whose members MemberImportVisibility hides unless that module is
// imported too.
import SwiftOverlayShims
#endif

/// One OS thread that fires the timeouts of every ``Timeout`` on the ``AviaryCore/SystemClock``.
///
/// Why our own timer instead of a sleeping task per call: a `Task.sleep` that is started and
/// cancelled on every call costs about 4.5 µs and 15 allocations here (a dispatch timer and a task
/// each time), which made a timeout that does not fire the most expensive policy by far. Arming
/// this timer is a lock, a dictionary insert and a heap insert; disarming is a lock and a
/// dictionary removal. The thread only wakes for the earliest live deadline, and it is woken
/// early only when a new deadline comes before the one it sleeps until (with one timeout value
/// per policy, deadlines arrive in order, so in steady traffic it is almost never woken).
///
/// Cancelled entries stay in the heap (lazy deletion) and are skipped when they reach the top; the
/// heap is rebuilt from the live entries when it holds more than twice as many entries as are
/// live, so memory stays proportional to the calls in flight. The thread starts on first use.
///
/// `@unchecked Sendable`: every stored `var` (`heap`, `live`, `nextID`, `wakeTarget`, `started`)
/// is read and written only while `mutex` is held; `mutex` and `condition` are allocated once and,
/// as the only instance is the process-wide ``shared``, never freed. Actions run on the timer
/// thread outside the lock.
final class TimerThread: @unchecked Sendable {
    typealias Action = @Sendable () -> Void

    /// The process-wide timer for ``AviaryCore/SystemClock`` deadlines.
    static let shared = TimerThread()

    private struct Key: Comparable {
        var deadline: Int64
        var id: UInt64
        static func < (lhs: Key, rhs: Key) -> Bool {
            (lhs.deadline, lhs.id) < (rhs.deadline, rhs.id)
        }
    }

    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var heap = Heap<Key>()
    private var live: [UInt64: (deadline: Int64, action: Action)] = [:]
    private var nextID: UInt64 = 0
    /// The deadline the thread sleeps until (nanoseconds on `CLOCK_MONOTONIC`); `.max` when it
    /// waits for work.
    private var wakeTarget: Int64 = .max
    private var started = false

    private init() {
        self.mutex = .allocate(capacity: 1)
        self.mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(self.mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        self.condition = .allocate(capacity: 1)
        self.condition.initialize(to: pthread_cond_t())
        pthread_cond_init(self.condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    /// Runs `action` on the timer thread at `deadline` unless ``cancel(_:)`` comes first.
    ///
    /// - Returns: the id to pass to ``cancel(_:)``.
    func schedule(at deadline: MonotonicInstant, _ action: @escaping Action) -> UInt64 {
        let nanoseconds = deadline.offset.aviaryNanoseconds
        pthread_mutex_lock(self.mutex)
        defer { pthread_mutex_unlock(self.mutex) }
        self.nextID &+= 1
        let id = self.nextID
        self.live[id] = (nanoseconds, action)
        self.heap.insert(Key(deadline: nanoseconds, id: id))
        if self.heap.count > 2 * self.live.count + 64 {
            self.heap = Heap(self.live.map { Key(deadline: $0.value.deadline, id: $0.key) })
        }
        if !self.started {
            self.started = true
            self.startThread()
        }
        if nanoseconds < self.wakeTarget {
            pthread_cond_signal(self.condition)
        }
        return id
    }

    /// Disarms a timer.
    ///
    /// - Returns: true if the action had not run and now never will.
    @discardableResult
    func cancel(_ id: UInt64) -> Bool {
        pthread_mutex_lock(self.mutex)
        defer { pthread_mutex_unlock(self.mutex) }
        return self.live.removeValue(forKey: id) != nil
    }

    /// The number of armed timers (for tests).
    var armedCount: Int {
        pthread_mutex_lock(self.mutex)
        defer { pthread_mutex_unlock(self.mutex) }
        return self.live.count
    }

    private func startThread() {
        var thread = pthread_t()
        let context = Unmanaged.passUnretained(self).toOpaque()
        let result = pthread_create(
            &thread, nil,
            { context in
                Unmanaged<TimerThread>.fromOpaque(context!).takeUnretainedValue().run()
                return nil
            }, context)
        precondition(result == 0, "AviaryResilience: cannot start the timeout thread (pthread_create: \(result))")
        pthread_detach(thread)
    }

    private func run() {
        pthread_mutex_lock(self.mutex)
        var due: [Action] = []
        while true {
            let now = SystemClock().now.offset.aviaryNanoseconds
            while let first = self.heap.min, first.deadline <= now || self.live[first.id] == nil {
                self.heap.removeMin()
                if first.deadline <= now, let entry = self.live.removeValue(forKey: first.id) {
                    due.append(entry.action)
                }
            }
            if !due.isEmpty {
                pthread_mutex_unlock(self.mutex)
                for action in due { action() }
                due.removeAll(keepingCapacity: true)
                pthread_mutex_lock(self.mutex)
                continue
            }
            if let first = self.heap.min {
                self.wakeTarget = first.deadline
                var until = timespec()
                until.tv_sec = Int(first.deadline / 1_000_000_000)
                until.tv_nsec = Int(first.deadline % 1_000_000_000)
                pthread_cond_timedwait(self.condition, self.mutex, &until)
            } else {
                self.wakeTarget = .max
                pthread_cond_wait(self.condition, self.mutex)
            }
        }
    }
}
#endif
