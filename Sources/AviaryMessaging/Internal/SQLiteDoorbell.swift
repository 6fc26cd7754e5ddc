//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Wake-ups across the processes of one machine for a SQLite log (Linux, inotify): after a
/// publish commits, the publisher rings the topic's bell, a file `<database>-wakeups/t-<topic>`
/// of at most one byte: a log writes one byte at its start through a descriptor it keeps
/// (``Bells``; `IN_MODIFY`), the static ``ring(store:topic:)`` opens it for writing and closes it
/// (`IN_CLOSE_WRITE`; nothing is synced either way). Every process with consumers on that file
/// watches the folder for both and wakes its consumers of that topic through ``WakeUpHub`` at
/// once, instead of at their next poll.
///
/// Best effort by design: a bell that cannot be rung or watched (another user's folder, no
/// inotify, not Linux) only means consumers fall back to their poll timer, never a lost message.
/// One watcher thread per process serves every watched file; it blocks in `read` on the inotify
/// descriptor (never on the concurrency pool) and lives as long as the process.
final class SQLiteDoorbell: Sendable {
    static let shared = SQLiteDoorbell()

    /// The folder of a database's bells.
    static func folder(store: String) -> String { store + "-wakeups" }

    /// The bell's file name; prefixed, because `.` and `..` are valid topic names.
    static func bell(topic: String) -> String { "t-" + topic }

    private struct State {
        var descriptor: Int32 = -1
        /// Watched stores: their watch descriptor and how many wake-up streams want them.
        var stores: [String: (watch: Int32, users: Int)] = [:]
        var storeOfWatch: [Int32: String] = [:]
    }

    private let state = Mutex<State>(State())

    /// Rings `topic`'s bell of the database at `store` (after a commit).
    static func ring(store: String, topic: String) {
        #if os(Linux)
        let descriptor = Self.openBell(store: store, topic: topic)
        if descriptor >= 0 { close(descriptor) }
        #endif
    }

    /// A log's bells: the descriptor of each topic's bell, opened at its first ring and kept
    /// until the log closes, so that a ring is one `pwrite` of one byte at offset 0. Opening and
    /// closing the file took about 2.6 µs per publish (path lookup, a `struct file` allocated and
    /// freed), a tenth of a single publish's CPU time on tmpfs; the write takes 0.6 to 0.9 µs
    /// (tmpfs and ext4, in a C loop). The file stays one byte long.
    ///
    /// A watcher of a build before this one watches `IN_CLOSE_WRITE` only, and wakes for these
    /// rings at its next poll. If the folder is removed while the log is open, its rings go to
    /// the removed file until the log closes: consumers in other processes then wake at their
    /// poll, as the doorbell's best effort allows.
    final class Bells: Sendable {
        private struct State {
            var descriptors: [String: Int32] = [:]
            var closed = false
        }

        /// The most bells a log keeps open; the rings of further topics open and close theirs,
        /// so that a log publishing to thousands of topics does not hold as many descriptors.
        static let kept = 64

        private let store: String
        /// Rings write under the lock, so that ``close()`` never closes a descriptor a ring is
        /// writing to (its number could be reused by another file of the process).
        private let state = Mutex(State())

        init(store: String) {
            self.store = store
        }

        deinit {
            self.close()
        }

        /// Rings `topic`'s bell (after a commit); after ``close()``, or when ``kept`` other bells
        /// are open, by opening and closing it.
        func ring(topic: String) {
            #if os(Linux)
            let rung = self.state.withLock { state -> Bool in
                guard !state.closed else { return false }
                var descriptor = state.descriptors[topic] ?? -1
                if descriptor < 0 {
                    guard state.descriptors.count < Self.kept else { return false }
                    descriptor = SQLiteDoorbell.openBell(store: self.store, topic: topic)
                    // Not kept when it cannot be opened: the next ring tries again.
                    guard descriptor >= 0 else { return true }
                    state.descriptors[topic] = descriptor
                }
                // One byte at offset 0: an `IN_MODIFY` event for the watchers. A write of no
                // bytes makes none.
                var byte: UInt8 = 0x2A
                _ = pwrite(descriptor, &byte, 1, 0)
                return true
            }
            if !rung { SQLiteDoorbell.ring(store: self.store, topic: topic) }
            #endif
        }

        /// How many bells are open (for tests).
        var openCount: Int { self.state.withLock { $0.descriptors.count } }

        /// Closes the kept descriptors; later rings open and close the bell.
        func close() {
            #if os(Linux)
            self.state.withLock { state in
                for descriptor in state.descriptors.values { closeDescriptor(descriptor) }
                state.descriptors = [:]
                state.closed = true
            }
            #endif
        }
    }

    #if os(Linux)
    /// Opens (creating it and its folder if needed) `topic`'s bell for writing; -1 when it cannot.
    static func openBell(store: String, topic: String) -> Int32 {
        let path = Self.folder(store: store) + "/" + Self.bell(topic: topic)
        var descriptor = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0o666)
        if descriptor < 0 && errno == ENOENT {
            mkdir(Self.folder(store: store), 0o777)
            descriptor = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0o666)
        }
        return descriptor
    }
    #endif

    /// Starts delivering rings of `store`'s bells to ``WakeUpHub`` (counted: one ``unwatch(store:)``
    /// per call stops it).
    func watch(store: String) {
        #if os(Linux)
        let start: Int32? = self.state.withLock { state in
            if let entry = state.stores[store] {
                state.stores[store] = (entry.watch, entry.users + 1)
                return nil
            }
            var started: Int32?
            if state.descriptor < 0 {
                let descriptor = inotify_init1(Int32(IN_CLOEXEC))
                guard descriptor >= 0 else { return nil }
                state.descriptor = descriptor
                started = descriptor
            }
            let folder = Self.folder(store: store)
            mkdir(folder, 0o777)
            let watch = inotify_add_watch(state.descriptor, folder, UInt32(IN_CLOSE_WRITE) | UInt32(IN_MODIFY))
            if watch >= 0 {
                state.stores[store] = (watch, 1)
                state.storeOfWatch[watch] = store
            }
            return started
        }
        if let start {
            let thread = Thread { self.readEvents(start) }
            thread.name = "aviary.messaging.sqlite-wakeups"
            thread.start()
        }
        #endif
    }

    /// Stops what one ``watch(store:)`` started.
    func unwatch(store: String) {
        #if os(Linux)
        self.state.withLock { state in
            guard let entry = state.stores[store] else { return }
            if entry.users > 1 {
                state.stores[store] = (entry.watch, entry.users - 1)
                return
            }
            state.stores[store] = nil
            state.storeOfWatch[entry.watch] = nil
            inotify_rm_watch(state.descriptor, entry.watch)
        }
        #endif
    }

    #if os(Linux)
    /// The watcher thread: reads inotify events and wakes the bells' topics.
    private func readEvents(_ descriptor: Int32) {
        let capacity = 64 * 1024
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
        defer { buffer.deallocate() }
        let header = MemoryLayout<inotify_event>.size
        while true {
            let count = read(descriptor, buffer, capacity)
            if count < 0 {
                if errno == EINTR { continue }
                return
            }
            var offset = 0
            while offset + header <= count {
                let event = buffer.load(fromByteOffset: offset, as: inotify_event.self)
                let nameLength = Int(event.len)
                defer { offset += header + nameLength }
                guard nameLength > 0, offset + header + nameLength <= count else { continue }
                let name = String(cString: buffer.advanced(by: offset + header).assumingMemoryBound(to: CChar.self))
                guard name.hasPrefix("t-"),
                    let store = self.state.withLock({ $0.storeOfWatch[event.wd] })
                else { continue }
                WakeUpHub.shared.notify(store: store, topic: String(name.dropFirst(2)))
            }
        }
    }
    #endif
}

/// `close(2)`, for ``SQLiteDoorbell/Bells``, whose own `close()` hides the C function's name.
private func closeDescriptor(_ descriptor: Int32) {
    _ = close(descriptor)
}
