//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Testing

@testable import AviaryMessaging

@Suite("DeliveryCounts")
struct DeliveryCountsTests {
    @Test("leases from the head add up per offset; acks forget; text round-trips")
    func steps() {
        var counts = DeliveryCounts()
        counts.add(1, from: 5, through: 10)  // lease 5...10
        counts.add(1, from: 5, through: 7)  // expired; lease 5...7
        #expect((4...12).map { counts.count(at: $0) } == [0, 2, 2, 2, 1, 1, 1, 0, 0])
        counts.forget(before: 5)
        #expect(counts.text == "7:2,10:1")
        #expect(DeliveryCounts(text: counts.text) == counts)
        counts.forget(before: 8)
        counts.add(1, from: 8, through: 12)
        #expect((8...13).map { counts.count(at: $0) } == [2, 2, 2, 1, 1, 0])
        counts.add(-1, from: 8, through: 12)  // that lease given back
        #expect((8...13).map { counts.count(at: $0) } == [1, 1, 1, 0, 0, 0])
        #expect(counts.steps.count == 1)
        #expect(DeliveryCounts(text: "garbage").steps.isEmpty)
    }

    @Test("a model of per-offset counters agrees over random leases, acks and releases")
    func againstModel() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var counts = DeliveryCounts()
            var model: [Int64: Int] = [:]
            var head: Int64 = 1
            for _ in 0..<30 {
                let through = head + Int64.random(in: 0...6, using: &generator)
                switch Int.random(in: 0..<3, using: &generator) {
                case 0:
                    counts.add(1, from: head, through: through)
                    for offset in head...through { model[offset, default: 0] += 1 }
                case 1:
                    head += Int64.random(in: 0...3, using: &generator)
                    counts.forget(before: head)
                default:
                    // Release the last lease: only when every offset it covered was counted.
                    if (head...through).allSatisfy({ model[$0, default: 0] > 0 })
                        && (head...through).map({ model[$0, default: 0] })
                            == (head...through).map({ counts.count(at: $0) })
                        && ((through + 1)...(through + 8)).allSatisfy({
                            model[$0, default: 0] < model[through, default: 0]
                        })
                    {
                        counts.add(-1, from: head, through: through)
                        for offset in head...through { model[offset, default: 0] -= 1 }
                    }
                }
                for offset in head...(head + 10) {
                    #expect(counts.count(at: offset) == model[offset, default: 0])
                }
            }
        }
    }
}
