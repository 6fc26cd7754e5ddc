//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryEventSourcing
import Foundation
import Testing

@Suite("EventID")
struct EventIDTests {
    @Test("version 7 UUIDs: the time in the first 48 bits, version and variant set, random rest")
    func layout() {
        let now = Date(timeIntervalSince1970: 1_800_000_000.123)
        let id = EventID.make(now: now)
        let bytes = withUnsafeBytes(of: id.uuid) { Array($0) }
        let milliseconds = bytes[0..<6].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        #expect(milliseconds == 1_800_000_000_123)
        #expect(bytes[6] >> 4 == 7)
        #expect(bytes[8] >> 6 == 0b10)
        #expect(id.uuidString.dropFirst(14).first == "7")
        let many = (0..<1000).map { _ in EventID.make(now: now) }
        #expect(Set(many).count == 1000)
    }

    @Test("later ids sort after earlier ones (byte order, as the index stores them)")
    func ordered() {
        let ids = (0..<50).map { EventID.make(now: Date(timeIntervalSince1970: 1_800_000_000 + Double($0) * 0.002)) }
        let keys = ids.map { id in withUnsafeBytes(of: id.uuid) { Array($0) } }
        #expect(zip(keys, keys.dropFirst()).allSatisfy { $0.lexicographicallyPrecedes($1) })
    }
}
