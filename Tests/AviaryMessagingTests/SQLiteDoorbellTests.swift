//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
import Testing

@testable import AviaryMessaging

/// The doorbell's rings as a watcher (the inotify thread of a process with consumers) sees them.
/// The rings here bypass ``WakeUpHub/notify(store:topic:)``: only the watcher can wake the streams,
/// whose poll timer would take an hour.
@Suite("SQLiteDoorbell", .timeLimit(.minutes(1)))
struct SQLiteDoorbellTests {
    @Test("a log's kept bell wakes a watcher at every ring, and after the log closed by opening and closing it")
    func keptBellRingsEveryTime() async throws {
        #if os(Linux)
        let store = FileManager.default.temporaryDirectory.appendingPathComponent("aviary-bell-\(UUID()).db").path
        defer { try? FileManager.default.removeItem(atPath: SQLiteDoorbell.folder(store: store)) }
        let ids = Locked<[UUID]>([])
        let wakeUps = WakeUpHub.shared.stream(store: store, topic: "orders", poll: .seconds(3600)) { id in
            ids.withLock { $0.append(id) }
        }
        var iterator = wakeUps.makeAsyncIterator()
        let bells = SQLiteDoorbell.Bells(store: store)
        // The first ring opens the bell; the later ones write through the kept descriptor.
        for _ in 0..<3 {
            bells.ring(topic: "orders")
            #expect(await iterator.next() != nil)
        }
        bells.close()
        bells.ring(topic: "orders")
        #expect(await iterator.next() != nil)
        // The file a kept descriptor writes stays one byte long.
        let size =
            try FileManager.default.attributesOfItem(
                atPath: SQLiteDoorbell.folder(store: store) + "/" + SQLiteDoorbell.bell(topic: "orders"))[.size] as? Int
        #expect(size == 1)
        WakeUpHub.shared.finish(ids.withLock { $0 })
        #endif
    }

    @Test("a log keeps at most Bells.kept bells open; the others still ring, by opening and closing theirs")
    func keptBellsAreCapped() async throws {
        #if os(Linux)
        let store = FileManager.default.temporaryDirectory.appendingPathComponent("aviary-bell-\(UUID()).db").path
        defer { try? FileManager.default.removeItem(atPath: SQLiteDoorbell.folder(store: store)) }
        let topic = "t\(SQLiteDoorbell.Bells.kept)"
        let ids = Locked<[UUID]>([])
        let wakeUps = WakeUpHub.shared.stream(store: store, topic: topic, poll: .seconds(3600)) { id in
            ids.withLock { $0.append(id) }
        }
        var iterator = wakeUps.makeAsyncIterator()
        let bells = SQLiteDoorbell.Bells(store: store)
        for index in 0..<SQLiteDoorbell.Bells.kept { bells.ring(topic: "t\(index)") }
        #expect(bells.openCount == SQLiteDoorbell.Bells.kept)
        bells.ring(topic: topic)
        #expect(await iterator.next() != nil)
        #expect(bells.openCount == SQLiteDoorbell.Bells.kept)
        bells.close()
        #expect(bells.openCount == 0)
        WakeUpHub.shared.finish(ids.withLock { $0 })
        #endif
    }
}
