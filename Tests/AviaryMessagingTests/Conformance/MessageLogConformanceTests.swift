//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import Foundation
import Synchronization
import Testing

/// The ``MessageLog`` contract, run against every backend in ``MessageLogBackends/all``. Time is a
/// ``ManualWallClock``: leases, delays and retention move only when a test advances it.
@Suite("MessageLog conformance", .timeLimit(.minutes(5)))
struct MessageLogConformanceTests {
    // MARK: Publishing and ordering

    @Test("publish is atomic: a batch with one bad message appends nothing", arguments: MessageLogBackends.all)
    func atomicPublish(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, _ in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            await expectMessagingError(.notFound) {
                try await log.publish([
                    OutgoingMessage(topic: "orders", key: "a", event: try numbered(1)),
                    OutgoingMessage(topic: "nowhere", key: "a", event: try numbered(2)),
                ])
            }
            let empty = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "c"))
            #expect(empty.deliveries.isEmpty)
            #expect(try await log.topics().first { $0.name == "orders" }?.partitions.first?.depth == 0)

            let positions = try await log.publish(
                (1...3).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            #expect(positions.map(\.offset) == [1, 2, 3])
            let batch = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "c"))
            #expect(batch.deliveries.map(\.n) == [1, 2, 3])
            #expect(batch.deliveries.map(\.message.position) == positions)
            #expect(batch.deliveries.allSatisfy { $0.deliveryCount == 1 })
        }
    }

    @Test(
        "a batch across partitions: each message is delivered where publish said, offsets consecutive per partition",
        arguments: MessageLogBackends.all)
    func batchPositions(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            try await log.createTopic("orders", TopicOptions(partitions: 3))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            try await log.publish([OutgoingMessage(topic: "orders", key: "key-0", event: try numbered(0))])
            var batch: [OutgoingMessage] = []
            for n in 1...12 {
                batch.append(OutgoingMessage(topic: "orders", key: "key-\(n % 4)", event: try numbered(n)))
            }
            batch[5].deliverAt = clock.now.addingTimeInterval(3600)  // delayed: no offset yet
            let positions = try await log.publish(batch)
            #expect(positions[5].offset == 0)
            var delivered: [Int: MessagePosition] = [:]
            while true {
                let received = try await log.receive(
                    ReceiveRequest(group: "g", topic: "orders", consumer: "c", maxMessages: 50, maxPartitions: 3))
                if received.deliveries.isEmpty { break }
                for delivery in received.deliveries {
                    delivered[delivery.n] = delivery.message.position
                    try await log.ack(delivery)
                }
            }
            #expect(delivered.count == 12)
            for (index, message) in batch.enumerated() where index != 5 {
                #expect(delivered[index + 1] == positions[index], "message \(index + 1) (key \(message.key))")
            }
            for partition in 0..<3 {
                let offsets = positions.enumerated().filter { $0.offset != 5 && $0.element.partition == partition }
                    .map(\.element.offset)
                let start = offsets.first ?? 0
                #expect(offsets == Array(start..<(start + Int64(offsets.count))), "partition \(partition)")
            }
        }
    }

    @Test(
        "a batch for now across two topics lands in each key's partition, in order; due scheduled messages go first",
        arguments: MessageLogBackends.all)
    func batchAcrossTopics(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            let topics = ["orders": 3, "payments": 5]
            for (topic, partitions) in topics {
                try await log.createTopic(topic, TopicOptions(partitions: partitions))
                try await log.subscribe(group: "g", topic: topic, options: GroupOptions())
            }
            // A message scheduled for later, then due: the next publish appends it before its own.
            let early = try await log.publish([
                OutgoingMessage(
                    topic: "payments", key: "key-0", event: try numbered(100),
                    deliverAt: clock.now.addingTimeInterval(5))
            ])
            #expect(early.map(\.offset) == [0])
            clock.advance(by: .seconds(10))

            var batch: [OutgoingMessage] = []
            for n in 1...40 {
                batch.append(
                    OutgoingMessage(
                        topic: n % 3 == 0 ? "payments" : "orders", key: "key-\(n % 7)", event: try numbered(n)))
            }
            let positions = try await log.publish(batch)
            #expect(positions.count == batch.count)
            for (message, position) in zip(batch, positions) {
                #expect(position.topic == message.topic)
                let partitions = topics[message.topic] ?? 0
                #expect(position.partition == Partitioner.partition(forKey: message.key, partitions: partitions))
            }
            for (topic, partitions) in topics {
                for partition in 0..<partitions {
                    let offsets = positions.filter { $0.topic == topic && $0.partition == partition }.map(\.offset)
                    let start = offsets.first ?? 0
                    #expect(offsets == Array(start..<(start + Int64(offsets.count))), "\(topic) partition \(partition)")
                }
            }

            // Every message is delivered where publish said, in publish order per key, the due one first.
            var delivered: [Int: MessagePosition] = [:]
            var orderPerKey: [String: [Int]] = [:]
            for topic in topics.keys.sorted() {
                while true {
                    let received = try await log.receive(
                        ReceiveRequest(group: "g", topic: topic, consumer: "c", maxMessages: 100, maxPartitions: 5))
                    if received.deliveries.isEmpty { break }
                    for delivery in received.deliveries {
                        delivered[delivery.n] = delivery.message.position
                        orderPerKey["\(topic)/\(delivery.message.key)", default: []].append(delivery.n)
                        try await log.ack(delivery)
                    }
                }
            }
            #expect(delivered.count == batch.count + 1)
            for (index, position) in positions.enumerated() {
                #expect(delivered[index + 1] == position, "message \(index + 1)")
            }
            #expect(orderPerKey["payments/key-0"]?.first == 100)
            for (key, order) in orderPerKey {
                let published = order.filter { $0 != 100 }
                #expect(published == published.sorted(), "\(key)")
            }
        }
    }

    @Test("messages round-trip: event, key and headers as published", arguments: MessageLogBackends.all)
    func roundTrip(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            try await log.createTopic("orders", TopicOptions(partitions: 3))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            let event = try CloudEvent(
                id: "e-1", source: "/shop/orders", type: "order.placed", subject: "order-17",
                time: Date(timeIntervalSince1970: 1_700_000_000), json: Numbered(n: 17), extensions: ["shard": "eu"])
            let headers = ["traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x": "y"]
            let position = try await log.publish([OutgoingMessage(topic: "orders", event: event, headers: headers)])
            #expect(position.first?.partition == Partitioner.partition(forKey: "order-17", partitions: 3))
            let delivery = try #require(
                try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "c")).deliveries.first)
            #expect(delivery.message.event == event)
            #expect(delivery.message.key == "order-17")
            #expect(delivery.message.headers == headers)
            #expect(abs(delivery.message.appendedAt.timeIntervalSince(clock.now)) < 0.01)
            #expect(delivery.group == "g" && delivery.consumer == "c")
        }
    }

    @Test(
        "order per key holds with four concurrent consumers; each message is acked once",
        arguments: MessageLogBackends.all)
    func orderingUnderConcurrentConsumers(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, _ in
            try await log.createTopic("orders", TopicOptions(partitions: 4))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            let keys = 12
            let perKey = 25
            for round in 0..<perKey {
                try await log.publish(
                    (0..<keys).map { key in
                        OutgoingMessage(topic: "orders", key: "key-\(key)", event: try numbered(round))
                    })
            }
            let seen = Locked<[String: [Int]]>([:])
            let consumersThatWorked = Locked<Set<Int>>([])
            let deadline = ContinuousClock.now + .seconds(120)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for consumer in 0..<4 {
                    tasks.addTask {
                        while ContinuousClock.now < deadline {
                            let total = seen.withLock { $0.values.reduce(0) { $0 + $1.count } }
                            if total >= keys * perKey { return }
                            let batch = try await log.receive(
                                ReceiveRequest(
                                    group: "g", topic: "orders", consumer: "c\(consumer)", maxMessages: 7,
                                    maxPartitions: 1))
                            if batch.deliveries.isEmpty {
                                await Task.yield()
                                continue
                            }
                            consumersThatWorked.withLock { _ = $0.insert(consumer) }
                            for delivery in batch.deliveries {
                                seen.withLock { $0[delivery.message.key, default: []].append(delivery.n) }
                                try await log.ack(delivery)
                            }
                        }
                    }
                }
                try await tasks.waitForAll()
            }
            let result = seen.withLock { $0 }
            #expect(result.count == keys)
            for (key, numbers) in result {
                #expect(numbers == Array(0..<perKey), "key \(key) saw \(numbers)")
            }
            #expect(consumersThatWorked.withLock { $0.count } >= 2)
            let group = try #require(try await log.topics().first { $0.name == "orders" }?.groups.first)
            #expect(group.lag == 0)
        }
    }

    // MARK: Leases

    @Test(
        "a partition is leased to one consumer of a group, and independently to each group",
        arguments: MessageLogBackends.all)
    func exclusiveLeases(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, _ in
            try await log.createTopic("orders", TopicOptions(partitions: 2))
            try await log.subscribe(group: "g1", topic: "orders", options: GroupOptions())
            try await log.subscribe(group: "g2", topic: "orders", options: GroupOptions())
            let (keyA, keyB) = keysInDifferentPartitions(2)
            try await log.publish([
                OutgoingMessage(topic: "orders", key: keyA, event: try numbered(1)),
                OutgoingMessage(topic: "orders", key: keyB, event: try numbered(2)),
            ])
            let first = try await log.receive(
                ReceiveRequest(group: "g1", topic: "orders", consumer: "a", maxPartitions: 1))
            let second = try await log.receive(
                ReceiveRequest(group: "g1", topic: "orders", consumer: "b", maxPartitions: 1))
            #expect(first.deliveries.count == 1 && second.deliveries.count == 1)
            #expect(Set((first.deliveries + second.deliveries).map(\.n)) == [1, 2])
            // A new message in a leased partition waits for the lease.
            try await log.publish([OutgoingMessage(topic: "orders", key: keyA, event: try numbered(3))])
            let third = try await log.receive(ReceiveRequest(group: "g1", topic: "orders", consumer: "c"))
            #expect(third.deliveries.isEmpty)
            // Another group sees everything, whatever g1 holds.
            let other = try await log.receive(ReceiveRequest(group: "g2", topic: "orders", consumer: "a"))
            #expect(Set(other.deliveries.map(\.n)) == [1, 2, 3])
            // Once the holder of keyA's partition acks, the next message goes to whoever asks.
            let holder = first.deliveries[0].message.key == keyA ? first : second
            try await log.ack(holder.deliveries[0])
            let next = try await log.receive(ReceiveRequest(group: "g1", topic: "orders", consumer: "c"))
            #expect(next.deliveries.map(\.n) == [3])
        }
    }

    @Test(
        "ack is cumulative; an expired lease redelivers what was not acked, with counts",
        arguments: MessageLogBackends.all)
    func cumulativeAckAndExpiry(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            try await log.publish((1...5).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            let batch = try await log.receive(
                ReceiveRequest(group: "g", topic: "orders", consumer: "a", lease: .seconds(30)))
            #expect(batch.deliveries.map(\.n) == [1, 2, 3, 4, 5])
            try await log.ack(batch.deliveries[2])  // acks 1, 2 and 3
            #expect(
                try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "b")).deliveries.isEmpty)
            #expect(try await log.topics().first { $0.name == "orders" }?.groups.first?.lag == 2)
            clock.advance(by: .seconds(29))
            #expect(
                try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "b")).deliveries.isEmpty)
            clock.advance(by: .seconds(2))
            let again = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "b"))
            #expect(again.deliveries.map(\.n) == [4, 5])
            // The lease failed on 4: 5 was not attempted, so its delivery does not count.
            #expect(again.deliveries.map(\.deliveryCount) == [2, 1])
            #expect(again.deliveries.allSatisfy { $0.consumer == "b" })
            try await log.ack(again.deliveries[1])
            #expect(try await log.topics().first { $0.name == "orders" }?.groups.first?.lag == 0)
            try await log.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(6))])
            let last = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
            #expect(last.deliveries.map(\.n) == [6])
            #expect(last.deliveries.map(\.deliveryCount) == [1])
        }
    }

    @Test("a stale lease cannot ack, nack or extend: leaseLost", arguments: MessageLogBackends.all)
    func staleLease(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            try await log.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(1))])
            let old = try #require(
                try await log.receive(
                    ReceiveRequest(group: "g", topic: "orders", consumer: "a", lease: .seconds(10))
                ).deliveries.first)
            clock.advance(by: .seconds(11))
            let new = try #require(
                try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "b")).deliveries.first)
            #expect(new.deliveryCount == 2)
            #expect(new.leaseID != old.leaseID)
            await expectMessagingError(.leaseLost) { try await log.ack(old) }
            await expectMessagingError(.leaseLost) {
                try await log.nack(old, redeliverAfter: .zero, error: "late")
            }
            await expectMessagingError(.leaseLost) { try await log.extendLeases([old], by: .seconds(30)) }
            // The new holder is unaffected.
            try await log.ack(new)
            #expect(try await log.topics().first { $0.name == "orders" }?.groups.first?.lag == 0)
        }
    }

    @Test("extending a lease keeps the partition from being redelivered", arguments: MessageLogBackends.all)
    func extendLease(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            try await log.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(1))])
            let delivery = try #require(
                try await log.receive(
                    ReceiveRequest(group: "g", topic: "orders", consumer: "a", lease: .seconds(10))
                ).deliveries.first)
            clock.advance(by: .seconds(8))
            try await log.extendLeases([delivery], by: .seconds(10))
            clock.advance(by: .seconds(8))
            #expect(
                try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "b")).deliveries.isEmpty)
            try await log.ack(delivery)
            clock.advance(by: .seconds(60))
            #expect(
                try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "b")).deliveries.isEmpty)
        }
    }

    @Test(
        "nack acks the earlier messages and redelivers the partition after the delay", arguments: MessageLogBackends.all
    )
    func nackDelay(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            try await log.publish((1...3).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            let batch = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
            try await log.nack(batch.deliveries[1], redeliverAfter: .seconds(10), error: "try later")
            #expect(
                try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a")).deliveries.isEmpty)
            clock.advance(by: .seconds(9))
            #expect(
                try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a")).deliveries.isEmpty)
            clock.advance(by: .seconds(2))
            let again = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "b"))
            #expect(again.deliveries.map(\.n) == [2, 3])
            #expect(again.deliveries.map(\.deliveryCount) == [2, 1])
        }
    }

    @Test(
        "a receive fills its batch from the free partitions in order, from at most maxPartitions of them; the rest stay free",
        arguments: MessageLogBackends.all)
    func batchSharedAcrossPartitions(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, _ in
            try await log.createTopic("orders", TopicOptions(partitions: 3))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            let positions = try await log.publish(
                (0..<18).map { OutgoingMessage(topic: "orders", key: "key-\($0)", event: try numbered($0)) })
            var offsets = [[Int64]](repeating: [], count: 3)
            for position in positions { offsets[position.partition].append(position.offset) }
            let counts = offsets.map(\.count)
            let busy = (0..<3).filter { counts[$0] > 0 }
            try #require(busy.count >= 2, "18 keys over 3 partitions: \(counts)")
            // The first busy partition holds fewer than 50: it is leased whole, the next one gives
            // the rest of the batch (room for one more than the first holds).
            let room = counts[busy[0]] + 1
            let first = try await log.receive(
                ReceiveRequest(group: "g", topic: "orders", consumer: "a", maxMessages: room, maxPartitions: 2))
            #expect(first.deliveries.count == min(room, counts[busy[0]] + counts[busy[1]]))
            let leased = Dictionary(grouping: first.deliveries, by: \.message.position.partition)
            #expect(leased[busy[0]]?.map(\.message.position.offset) == offsets[busy[0]])
            #expect(leased[busy[1]]?.map(\.message.position.offset) == [offsets[busy[1]][0]])
            // A second receiver gets what is free: the partitions the first did not lease.
            let second = try await log.receive(
                ReceiveRequest(group: "g", topic: "orders", consumer: "b", maxMessages: 100, maxPartitions: 3))
            let untouched = busy.dropFirst(2)
            #expect(Set(second.deliveries.map(\.message.position.partition)) == Set(untouched))
            #expect(second.deliveries.count == untouched.map { counts[$0] }.reduce(0, +))
            // Once the first receiver acknowledges its lease, the partly leased partition goes on
            // from where that lease ended.
            for delivery in first.deliveries { try await log.ack(delivery) }
            let third = try await log.receive(
                ReceiveRequest(group: "g", topic: "orders", consumer: "c", maxMessages: 100, maxPartitions: 3))
            #expect(third.deliveries.map(\.message.position.partition).allSatisfy { $0 == busy[1] })
            #expect(third.deliveries.map(\.message.position.offset) == Array(offsets[busy[1]].dropFirst()))
        }
    }

    @Test(
        "acknowledging part of a lease keeps the rest leased; counts after a nack, cumulative and repeated acks hold",
        arguments: MessageLogBackends.all)
    func partialAcknowledgements(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, _ in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions(maxDeliveries: 5))
            try await log.publish((1...3).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            let request = ReceiveRequest(group: "g", topic: "orders", consumer: "a")
            let first = try await log.receive(request)
            #expect(first.deliveries.map(\.n) == [1, 2, 3])
            try await log.ack(first.deliveries[0])
            // The rest of the lease is still the holder's.
            #expect(try await log.receive(request).deliveries.isEmpty)
            try await log.nack(first.deliveries[1], redeliverAfter: .zero, error: "second failed")
            let second = try await log.receive(request)
            #expect(second.deliveries.map(\.n) == [2, 3])
            #expect(second.deliveries.map(\.deliveryCount) == [2, 1])
            // The first lease is over: its holder can no longer acknowledge what it did not.
            await #expect(throws: MessagingError.self) { try await log.ack(first.deliveries[2]) }
            try await log.ack(second.deliveries[1])  // cumulative: 2 and 3
            try await log.ack(second.deliveries[0])  // acknowledged already: nothing to do
            #expect(try await log.receive(request).deliveries.isEmpty)
            try await log.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(4))])
            let third = try await log.receive(request)
            #expect(third.deliveries.map(\.n) == [4])
            #expect(third.deliveries.map(\.deliveryCount) == [1])
        }
    }

    @Test("release gives partitions back at once without counting the delivery", arguments: MessageLogBackends.all)
    func releaseDoesNotCount(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, _ in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions(maxDeliveries: 2))
            try await log.publish((1...2).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            for _ in 0..<3 {
                let batch = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
                #expect(batch.deliveries.map(\.n) == [1, 2])
                #expect(batch.deliveries.map(\.deliveryCount) == [1, 1])
                try await log.release(batch.deliveries)
            }
            // Released three times and never dead-lettered: release is not a failed delivery.
            let batch = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "b"))
            try await log.nack(batch.deliveries[0], redeliverAfter: .zero, error: "first failure")
            let retried = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "b"))
            #expect(retried.deliveries.map(\.n) == [1, 2])
            #expect(retried.deliveries.map(\.deliveryCount) == [2, 1])
            #expect(try await log.topics().first { $0.name == "orders" }?.groups.first?.deadLettered == 0)
        }
    }

    // MARK: Poison

    @Test(
        "after maxDeliveries a message goes to the dead-letter topic with why, and the partition moves on",
        arguments: MessageLogBackends.all)
    func maxDeliveriesToDeadLetter(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, _ in
            try await log.createTopic("orders", TopicOptions(partitions: 2))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions(maxDeliveries: 3))
            let headers = ["traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
            let poison = try numbered(1, subject: "order-1")
            let positions = try await log.publish([
                OutgoingMessage(topic: "orders", event: poison, headers: headers),
                OutgoingMessage(topic: "orders", event: try numbered(2, subject: "order-1")),
            ])
            for attempt in 1...3 {
                let batch = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
                #expect(batch.deliveries.first?.n == 1)
                #expect(batch.deliveries.first?.deliveryCount == attempt)
                try await log.nack(batch.deliveries[0], redeliverAfter: .zero, error: "boom #\(attempt)")
            }
            let next = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
            // Message 2 came with every failed lease of 1 but was never attempted: a first delivery.
            #expect(next.deliveries.map(\.n) == [2])
            #expect(next.deliveries.map(\.deliveryCount) == [1])

            let dlq = SQLiteMessageLog.deadLetterTopic(for: "orders", group: "g")
            #expect(dlq == "orders.g.dlq")
            let letters = try await log.deadLetters(topic: dlq, limit: 10)
            #expect(letters.count == 1)
            let letter = try #require(letters.first)
            #expect(letter.origin == positions[0])
            #expect(letter.group == "g")
            #expect(letter.reason == "max-deliveries")
            #expect(letter.lastError == "boom #3")
            #expect(letter.deliveries == 3)
            #expect(letter.message.event == poison)
            #expect(letter.message.key == "order-1")
            #expect(letter.message.headers["traceparent"] == headers["traceparent"])
            #expect(letter.message.headers[DeadLetterHeader.topic] == "orders")
            #expect(letter.message.position.topic == dlq)
            let group = try #require(try await log.topics().first { $0.name == "orders" }?.groups.first)
            #expect(group.deadLettered == 1)
        }
    }

    @Test(
        "a lease that expires on the last allowed delivery dead-letters with reason lease-expired",
        arguments: MessageLogBackends.all)
    func expiryToDeadLetter(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions(maxDeliveries: 2))
            try await log.publish((1...2).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            for attempt in 1...2 {
                let batch = try await log.receive(
                    ReceiveRequest(group: "g", topic: "orders", consumer: "a", maxMessages: 1, lease: .seconds(5)))
                #expect(batch.deliveries.map(\.n) == [1])
                #expect(batch.deliveries.map(\.deliveryCount) == [attempt])
                clock.advance(by: .seconds(6))
            }
            let next = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
            #expect(next.deliveries.map(\.n) == [2])
            let letters = try await log.deadLetters(topic: "orders.g.dlq", limit: 10)
            #expect(letters.map(\.reason) == ["lease-expired"])
            #expect(letters.map(\.deliveries) == [2])
        }
    }

    @Test(
        "stop-partition stops on poison; resume retries it or skips it to the dead letters",
        arguments: MessageLogBackends.all)
    func stopPartitionAndResume(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, _ in
            try await log.createTopic("orders", TopicOptions(partitions: 2))
            try await log.subscribe(
                group: "g", topic: "orders", options: GroupOptions(maxDeliveries: 2, onPoison: .stopPartition))
            let (key, otherKey) = keysInDifferentPartitions(2)
            let partition = Partitioner.partition(forKey: key, partitions: 2)
            try await log.publish((1...2).map { OutgoingMessage(topic: "orders", key: key, event: try numbered($0)) })

            func failTwice() async throws {
                for attempt in 1...2 {
                    let batch = try await log.receive(
                        ReceiveRequest(group: "g", topic: "orders", consumer: "a", maxMessages: 1))
                    #expect(batch.deliveries.map(\.n) == [1])
                    #expect(batch.deliveries.map(\.deliveryCount) == [attempt])
                    try await log.nack(batch.deliveries[0], redeliverAfter: .zero, error: "bad data")
                }
            }
            try await failTwice()
            #expect(
                try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a")).deliveries.isEmpty)
            var group = try #require(try await log.topics().first { $0.name == "orders" }?.groups.first)
            #expect(group.stoppedPartitions == [partition])
            #expect(group.deadLettered == 0)
            // Other partitions keep going.
            try await log.publish([OutgoingMessage(topic: "orders", key: otherKey, event: try numbered(9))])
            let other = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
            #expect(other.deliveries.map(\.n) == [9])
            try await log.ack(other.deliveries[0])

            await expectMessagingError(.invalidArgument) {
                try await log.resumePartition(group: "g", topic: "orders", partition: 1 - partition, skipHead: false)
            }
            try await log.resumePartition(group: "g", topic: "orders", partition: partition, skipHead: false)
            try await failTwice()  // the poison gets its full number of attempts again
            group = try #require(try await log.topics().first { $0.name == "orders" }?.groups.first)
            #expect(group.stoppedPartitions == [partition])

            try await log.resumePartition(group: "g", topic: "orders", partition: partition, skipHead: true)
            let next = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
            #expect(next.deliveries.map(\.n) == [2])
            let letters = try await log.deadLetters(topic: "orders.g.dlq", limit: 10)
            #expect(letters.map(\.message.key) == [key])
            #expect(letters.map(\.lastError) == ["bad data"])
            group = try #require(try await log.topics().first { $0.name == "orders" }?.groups.first)
            #expect(group.stoppedPartitions.isEmpty)
            #expect(group.deadLettered == 1)
        }
    }

    // MARK: Delayed delivery

    @Test(
        "delayed messages join their partition when due, in the order they are due", arguments: MessageLogBackends.all)
    func delayedDelivery(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            let start = clock.now
            let positions = try await log.publish([
                OutgoingMessage(topic: "orders", key: "k", event: try numbered(1), deliverAt: start + 20),
                OutgoingMessage(topic: "orders", key: "k", event: try numbered(2), deliverAt: start + 10),
                OutgoingMessage(topic: "orders", key: "k", event: try numbered(3)),
                OutgoingMessage(topic: "orders", key: "k", event: try numbered(4), deliverAt: start + 15),
            ])
            #expect(positions.map(\.offset) == [0, 0, 1, 0])
            #expect(try await log.topics().first { $0.name == "orders" }?.scheduled == 3)

            var batch = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
            #expect(batch.deliveries.map(\.n) == [3])
            try await log.ack(batch.deliveries[0])
            clock.advance(by: .seconds(10))
            batch = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
            #expect(batch.deliveries.map(\.n) == [2])
            try await log.ack(batch.deliveries[0])
            clock.advance(by: .seconds(11))
            batch = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
            #expect(batch.deliveries.map(\.n) == [4, 1])
            #expect(batch.deliveries.map(\.message.position.offset) == [3, 4])
            #expect(try await log.topics().first { $0.name == "orders" }?.scheduled == 0)
        }
    }

    @Test(
        "a publish promotes due messages first, so they keep their place before it", arguments: MessageLogBackends.all)
    func publishPromotesDue(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            try await log.publish([
                OutgoingMessage(topic: "orders", key: "k", event: try numbered(1), deliverAt: clock.now + 5)
            ])
            clock.advance(by: .seconds(6))
            let positions = try await log.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(2))])
            #expect(positions.map(\.offset) == [2])
            let batch = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
            #expect(batch.deliveries.map(\.n) == [1, 2])
        }
    }

    // MARK: Retention

    @Test("retention by age: groups behind are told once and the loss is counted", arguments: MessageLogBackends.all)
    func retentionByAge(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            try await log.createTopic(
                "orders", TopicOptions(partitions: 1, retention: Retention(maxAge: .seconds(60))))
            try await log.subscribe(group: "fast", topic: "orders", options: GroupOptions())
            try await log.subscribe(group: "slow", topic: "orders", options: GroupOptions())
            try await log.publish((1...3).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            let fast = try await log.receive(
                ReceiveRequest(group: "fast", topic: "orders", consumer: "a", maxMessages: 1))
            try await log.ack(fast.deliveries[0])
            clock.advance(by: .seconds(59))
            #expect(try await log.applyRetention() == 0)
            clock.advance(by: .seconds(2))
            try await log.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(4))])
            #expect(try await log.applyRetention() == 3)
            #expect(try await log.applyRetention() == 0)

            var topic = try #require(try await log.topics().first { $0.name == "orders" })
            #expect(topic.partitions.map(\.depth) == [1])
            #expect(topic.partitions.map(\.firstOffset) == [4])
            #expect(topic.groups.map(\.lostToRetention) == [2, 3])

            let slow = try await log.receive(ReceiveRequest(group: "slow", topic: "orders", consumer: "a"))
            #expect(
                slow.gaps == [RetentionGap(group: "slow", topic: "orders", partition: 0, firstMissed: 1, lastMissed: 3)]
            )
            #expect(slow.deliveries.map(\.n) == [4])
            try await log.release(slow.deliveries)
            let slowAgain = try await log.receive(ReceiveRequest(group: "slow", topic: "orders", consumer: "a"))
            #expect(slowAgain.gaps.isEmpty)
            #expect(slowAgain.deliveries.map(\.n) == [4])
            let fastAgain = try await log.receive(ReceiveRequest(group: "fast", topic: "orders", consumer: "a"))
            #expect(
                fastAgain.gaps == [
                    RetentionGap(group: "fast", topic: "orders", partition: 0, firstMissed: 2, lastMissed: 3)
                ]
            )
            #expect(fastAgain.deliveries.map(\.n) == [4])
            topic = try #require(try await log.topics().first { $0.name == "orders" })
            #expect(topic.groups.map(\.lostToRetention) == [2, 3])
        }
    }

    @Test(
        "retention by age deletes the messages before the oldest one young enough to keep, never a younger one (a clock stepped back)",
        arguments: MessageLogBackends.all)
    func retentionByAgeKeepsYoungerMessages(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            try await log.createTopic(
                "orders", TopicOptions(partitions: 1, retention: Retention(maxAge: .seconds(60))))
            try await log.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(1))])  // at 0 s
            clock.advance(by: .seconds(30))
            try await log.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(2))])  // at 30 s
            clock.advance(by: .seconds(-20))
            try await log.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(3))])  // at 10 s
            clock.advance(by: .seconds(65))  // now 75 s: 1 and 3 are older than 60 s, 2 is not
            #expect(try await log.applyRetention() == 1)
            var partition = try #require(try await log.topics().first { $0.name == "orders" }?.partitions.first)
            #expect(partition.firstOffset == 2)
            #expect(partition.depth == 2)
            clock.advance(by: .seconds(20))  // now 95 s: 2 is older than 60 s too
            #expect(try await log.applyRetention() == 2)
            partition = try #require(try await log.topics().first { $0.name == "orders" }?.partitions.first)
            #expect(partition.depth == 0)
            #expect(partition.lastOffset == 3)
        }
    }

    @Test("retention by bytes keeps the newest messages of each partition", arguments: MessageLogBackends.all)
    func retentionByBytes(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, _ in
            try await log.createTopic("orders", TopicOptions(partitions: 1, retention: .forever))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            try await log.publish((1...5).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            let bytes = try #require(try await log.topics().first { $0.name == "orders" }?.partitions.first?.bytes)
            #expect(bytes > 0)
            let perMessage = bytes / 5
            #expect(try await log.applyRetention() == 0)
            try await log.createTopic(
                "orders",
                TopicOptions(
                    partitions: 1,
                    retention: Retention(maxAge: nil, maxBytesPerPartition: 2 * perMessage + perMessage / 2)))
            #expect(try await log.applyRetention() == 3)
            let topic = try #require(try await log.topics().first { $0.name == "orders" })
            #expect(topic.partitions.first?.depth == 2)
            #expect(topic.partitions.first?.firstOffset == 4)
            #expect(topic.partitions.first?.lastOffset == 5)
            #expect(topic.groups.first?.lostToRetention == 3)
            let batch = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
            #expect(batch.gaps.map(\.firstMissed) == [1])
            #expect(batch.gaps.map(\.lastMissed) == [3])
            #expect(batch.deliveries.map(\.n) == [4, 5])
        }
    }

    @Test(
        "offsets are never given twice: not after retention deleted every message of a partition, nor after the newest dead letters were purged or replayed",
        arguments: MessageLogBackends.all)
    func offsetsNeverReused(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            try await log.createTopic(
                "orders", TopicOptions(partitions: 1, retention: Retention(maxAge: .seconds(60))))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            let first = try await log.publish(
                (1...3).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            #expect(first.map(\.offset) == [1, 2, 3])
            clock.advance(by: .seconds(61))
            #expect(try await log.applyRetention() == 3)
            var topic = try #require(try await log.topics().first { $0.name == "orders" })
            #expect(topic.partitions.map(\.depth) == [0])
            #expect(topic.partitions.map(\.lastOffset) == [3])
            #expect(topic.groups.map(\.lag) == [0])
            // A group that starts at the latest offset starts after the deleted messages.
            try await log.subscribe(group: "late", topic: "orders", options: GroupOptions(start: .latest))
            let next = try await log.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(4))])
            #expect(next.map(\.offset) == [4])
            topic = try #require(try await log.topics().first { $0.name == "orders" })
            #expect(topic.partitions.map(\.lastOffset) == [4])
            #expect(topic.partitions.map(\.firstOffset) == [4])
            let behind = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
            #expect(
                behind.gaps == [RetentionGap(group: "g", topic: "orders", partition: 0, firstMissed: 1, lastMissed: 3)])
            #expect(behind.deliveries.map(\.n) == [4])
            #expect(behind.deliveries.map(\.message.position.offset) == [4])
            let late = try await log.receive(ReceiveRequest(group: "late", topic: "orders", consumer: "a"))
            #expect(late.gaps.isEmpty)
            #expect(late.deliveries.map(\.n) == [4])

            // Dead letters: each new letter goes after every earlier one, purged or replayed.
            try await log.createTopic("jobs", TopicOptions(partitions: 1))
            try await log.subscribe(group: "d", topic: "jobs", options: GroupOptions(maxDeliveries: 1))
            let letters = "jobs.d.dlq"
            func deadLetter(_ n: Int) async throws -> Int64 {
                try await log.publish([OutgoingMessage(topic: "jobs", key: "k", event: try numbered(n))])
                let batch = try await log.receive(ReceiveRequest(group: "d", topic: "jobs", consumer: "a"))
                #expect(batch.deliveries.map(\.n) == [n])
                try await log.nack(batch.deliveries[0], redeliverAfter: .zero, error: "failed \(n)")
                let stored = try await log.deadLetters(topic: letters, limit: 10)
                return try #require(stored.last?.message.position.offset)
            }
            let one = try await deadLetter(1)
            #expect(
                try await log.purgeDeadLetters(
                    topic: letters, positions: [MessagePosition(topic: letters, partition: 0, offset: one)]) == 1)
            let two = try await deadLetter(2)
            #expect(two == one + 1)
            #expect(try await log.purgeDeadLetters(topic: letters, positions: nil) == 1)
            let three = try await deadLetter(3)
            #expect(three == two + 1)
            try await log.replayDeadLetter(MessagePosition(topic: letters, partition: 0, offset: three))
            #expect(try await log.deadLetters(topic: letters, limit: 10).isEmpty)
            let replayed = try await log.receive(ReceiveRequest(group: "d", topic: "jobs", consumer: "a"))
            #expect(replayed.deliveries.map(\.n) == [3])
            try await log.ack(replayed.deliveries[0])
            let four = try await deadLetter(4)
            #expect(four == three + 1)
            let info = try #require(try await log.topics().first { $0.name == letters })
            #expect(info.partitions.map(\.lastOffset) == [four])
            #expect(info.partitions.map(\.depth) == [1])
        }
    }

    // MARK: Dead letters and inspection

    @Test(
        "dead letters: list oldest first, replay one to its topic, purge one and all", arguments: MessageLogBackends.all
    )
    func deadLetterRepair(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            try await log.createTopic("orders", TopicOptions(partitions: 4))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions(maxDeliveries: 1))
            try await log.subscribe(group: "audit", topic: "orders", options: GroupOptions())
            for n in 1...3 {
                try await log.publish([
                    OutgoingMessage(topic: "orders", key: "key-\(n)", event: try numbered(n), headers: ["h": "\(n)"])
                ])
                let batch = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
                try await log.nack(batch.deliveries[0], redeliverAfter: .zero, error: "failed \(n)")
                clock.advance(by: .seconds(1))
            }
            let letters = try await log.deadLetters(topic: "orders.g.dlq", limit: 10)
            #expect(letters.map(\.lastError) == ["failed 1", "failed 2", "failed 3"])
            #expect(try await log.deadLetters(topic: "orders.g.dlq", limit: 2).count == 2)
            await expectMessagingError(.invalidArgument) { _ = try await log.deadLetters(topic: "orders", limit: 10) }
            await expectMessagingError(.notFound) { _ = try await log.deadLetters(topic: "nothing.dlq", limit: 10) }

            try await log.replayDeadLetter(letters[1].message.position)
            let replayed = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "a"))
            #expect(replayed.deliveries.map(\.n) == [2])
            #expect(replayed.deliveries.first?.message.headers == ["h": "2"])
            #expect(replayed.deliveries.first?.message.event == letters[1].message.event)
            #expect(replayed.deliveries.first?.deliveryCount == 1)
            try await log.ack(replayed.deliveries[0])
            #expect(
                try await log.deadLetters(topic: "orders.g.dlq", limit: 10).map(\.lastError) == [
                    "failed 1", "failed 3",
                ])
            await expectMessagingError(.notFound) { try await log.replayDeadLetter(letters[1].message.position) }

            #expect(
                try await log.purgeDeadLetters(topic: "orders.g.dlq", positions: [letters[0].message.position]) == 1)
            #expect(try await log.deadLetters(topic: "orders.g.dlq", limit: 10).map(\.lastError) == ["failed 3"])
            #expect(try await log.purgeDeadLetters(topic: "orders.g.dlq", positions: nil) == 1)
            #expect(try await log.deadLetters(topic: "orders.g.dlq", limit: 10).isEmpty)
        }
    }

    @Test(
        "topics() reports depth, lag per group and the age of the oldest unacked message",
        arguments: MessageLogBackends.all)
    func inspection(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, clock in
            try await log.createTopic("orders", TopicOptions(partitions: 2))
            try await log.subscribe(group: "a", topic: "orders", options: GroupOptions())
            try await log.subscribe(group: "b", topic: "orders", options: GroupOptions())
            let (key1, key2) = keysInDifferentPartitions(2)
            try await log.publish((1...3).map { OutgoingMessage(topic: "orders", key: key1, event: try numbered($0)) })
            clock.advance(by: .seconds(5))
            try await log.publish([OutgoingMessage(topic: "orders", key: key2, event: try numbered(4))])
            clock.advance(by: .seconds(2))
            try await log.subscribe(group: "late", topic: "orders", options: GroupOptions(start: .latest))

            // Group a acks everything of key1's partition; b nothing.
            let batch = try await log.receive(ReceiveRequest(group: "a", topic: "orders", consumer: "x"))
            for delivery in batch.deliveries where delivery.message.key == key1 { try await log.ack(delivery) }

            let topics = try await log.topics()
            let orders = try #require(topics.first { $0.name == "orders" })
            #expect(orders.partitions.count == 2)
            #expect(orders.partitions.map(\.depth).reduce(0, +) == 4)
            #expect(orders.partitions.map(\.lastOffset).sorted() == [1, 3])
            let groups = Dictionary(uniqueKeysWithValues: orders.groups.map { ($0.name, $0) })
            #expect(groups["a"]?.lag == 1)
            #expect(groups["a"]?.oldestUnackedAge == .seconds(2))
            #expect(groups["b"]?.lag == 4)
            #expect(groups["b"]?.oldestUnackedAge == .seconds(7))
            #expect(groups["late"]?.lag == 0)
            #expect(groups["late"]?.oldestUnackedAge == nil)
            #expect(topics.contains { $0.name == "orders.a.dlq" })
        }
    }

    @Test("bad names, counts and unknown topics or groups are clear errors", arguments: MessageLogBackends.all)
    func invalidArguments(backend: MessageLogBackend) async throws {
        try await backend.withLog { log, _ in
            await expectMessagingError(.invalidArgument) { try await log.createTopic("a b", TopicOptions()) }
            await expectMessagingError(.invalidArgument) { try await log.createTopic("t", TopicOptions(partitions: 0)) }
            try await log.createTopic("t", TopicOptions(partitions: 2))
            try await log.createTopic("t", TopicOptions(partitions: 2))
            await expectMessagingError(.invalidArgument) { try await log.createTopic("t", TopicOptions(partitions: 3)) }
            await expectMessagingError(.notFound) {
                try await log.subscribe(group: "g", topic: "missing", options: GroupOptions())
            }
            await expectMessagingError(.invalidArgument) {
                try await log.subscribe(group: "g", topic: "t", options: GroupOptions(maxDeliveries: 0))
            }
            await expectMessagingError(.notFound) {
                _ = try await log.receive(ReceiveRequest(group: "nobody", topic: "t", consumer: "c"))
            }
        }
    }
}
