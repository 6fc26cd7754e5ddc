//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryMessaging
import Testing

@Suite("Partitioner")
struct PartitionerTests {
    @Test("a key always maps to the same partition, and keys spread over all partitions")
    func stableAndSpread() {
        // FNV-1a 64 of the empty string is the offset basis itself.
        #expect(
            Partitioner.partition(forKey: "", partitions: 1_000_003) == Int(UInt64(0xcbf2_9ce4_8422_2325) % 1_000_003))
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the published test vector).
        #expect(
            Partitioner.partition(forKey: "a", partitions: 1_000_003) == Int(UInt64(0xaf63_dc4c_8601_ec8c) % 1_000_003))
        var seen = Set<Int>()
        for index in 0..<400 {
            let partition = Partitioner.partition(forKey: "order-\(index)", partitions: 8)
            #expect(partition == Partitioner.partition(forKey: "order-\(index)", partitions: 8))
            seen.insert(partition)
        }
        #expect(seen == Set(0..<8))
    }

    @Test("names: letters, digits, dot, underscore and dash only")
    func names() {
        #expect(Partitioner.isValidName("order.placed_v2-eu"))
        #expect(!Partitioner.isValidName(""))
        #expect(!Partitioner.isValidName("orders placed"))
        #expect(!Partitioner.isValidName("orders/placed"))
        #expect(!Partitioner.isValidName(String(repeating: "a", count: 201)))
    }
}
