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
/// publish commits, the publisher touches the topic's bell, an empty file
/// `<database>-wakeups/t-<topic>` (opened for writing and closed; nothing is written or synced);
/// every process with consumers on that file watches the folder and wakes its consumers of that
/// topic through ``WakeUpHub`` at once, instead of at their next poll.
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
        let path = Self.folder(store: store) + "/" + Self.bell(topic: topic)
        var descriptor = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0o666)
        if descriptor < 0 && errno == ENOENT {
            mkdir(Self.folder(store: store), 0o777)
            descriptor = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0o666)
        }
        if descriptor >= 0 { close(descriptor) }
        #endif
    }

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
            let watch = inotify_add_watch(state.descriptor, folder, UInt32(IN_CLOSE_WRITE))
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
