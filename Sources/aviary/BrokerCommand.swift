//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

// `aviary broker`: inspection and repair of a message log, straight against its store URL.
//
//   aviary broker topics --url URL [--json]
//   aviary broker publish --url URL --topic T [--key K] [--type TYPE] [--source SRC] [--data JSON] [--count N]
//   aviary broker dlq --url URL --topic T [--group G] [list [--limit N] | show POS | replay POS | replay --all | purge [POS]]

import AviaryCore
import AviaryMessaging
import AviaryStorage
import Foundation

let brokerUsage = """
    usage: aviary broker topics --url URL [--json]
           aviary broker publish --url URL --topic T [--key K] [--type TYPE] [--source SRC] [--data JSON] [--count N]
           aviary broker dlq --url URL --topic T [--group G] COMMAND

      topics    topics, partitions, depth, and per group: lag, oldest unacknowledged age,
                stopped partitions, dead-lettered and lost-to-retention counts
        --json          one JSON document instead of the table
      publish   append CloudEvents to an existing topic, one durable transaction each
        --key K         the ordering key (default: the event id)
        --type TYPE     the event type (default: aviary.cli)
        --source SRC    the event source (default: /aviary/cli)
        --data JSON     the event data (default: {"n": i} for the i-th of --count)
        --count N       how many events (default 1)
      dlq       a dead-letter topic: T is the dead-letter topic itself, or the topic a group
                consumes when --group G is given (its dead-letter topic is T.G.dlq)
        list [--limit N]        the dead letters, oldest first (default limit 100)
        show POS                one dead letter with its event and headers
        replay POS | --all      publish again to the topic it came from, and remove it
        purge [POS]             remove one dead letter, or all of them

      URL is a store URL: sqlite:///path/broker.db or postgres://user:password@host:port/database.
      POS is a position as list prints it (topic/partition@offset), partition@offset, or an offset.
    """

/// Runs `aviary broker ...` and returns the exit status.
func brokerCommand(_ arguments: [String]) async -> Int32 {
    do {
        var parsed = try BrokerArguments(arguments)
        if parsed.help {
            print(brokerUsage)
            return 0
        }
        let log = try await parsed.openLog()
        switch parsed.command {
        case "topics":
            try parsed.expectNoMoreWords()
            try await printTopics(try await log.topics(), json: parsed.json)
        case "publish":
            try parsed.expectNoMoreWords()
            try await publish(log, parsed)
        case "dlq":
            try await runDeadLetters(log, &parsed)
        default:
            throw BrokerError.usage("unknown broker command \"\(parsed.command)\"")
        }
        try? await log.close()
        return 0
    } catch let error as BrokerError {
        switch error {
        case .usage(let message):
            FileHandle.standardError.write(Data("aviary broker: \(message)\n\(brokerUsage)\n".utf8))
            return 64
        case .failed(let message, let status):
            FileHandle.standardError.write(Data("aviary broker: \(message)\n".utf8))
            return status
        }
    } catch let error as MessagingError {
        FileHandle.standardError.write(Data("aviary broker: \(error.message)\n".utf8))
        switch error.kind {
        case .notFound: return 66
        case .invalidArgument: return 65
        case .unavailable, .leaseLost: return 69
        }
    } catch {
        FileHandle.standardError.write(Data("aviary broker: \(error)\n".utf8))
        return 70
    }
}

enum BrokerError: Error {
    case usage(String)
    case failed(String, status: Int32)
}

/// `aviary broker` arguments: a command, options anywhere, and the remaining words.
struct BrokerArguments {
    var command = ""
    var url: String?
    var topic: String?
    var group: String?
    var json = false
    var all = false
    var help = false
    var limit = 100
    var count = 1
    var key: String?
    var type = "aviary.cli"
    var source = "/aviary/cli"
    var data: String?
    var words: [String] = []

    init(_ arguments: [String]) throws {
        var index = 0
        func value(_ name: String) throws -> String {
            guard index + 1 < arguments.count else { throw BrokerError.usage("\(name) needs a value") }
            index += 1
            return arguments[index]
        }
        while index < arguments.count {
            let argument = arguments[index]
            switch argument {
            case "--url": self.url = try value(argument)
            case "--topic": self.topic = try value(argument)
            case "--group": self.group = try value(argument)
            case "--json": self.json = true
            case "--all": self.all = true
            case "--help", "-h": self.help = true
            case "--key": self.key = try value(argument)
            case "--type": self.type = try value(argument)
            case "--source": self.source = try value(argument)
            case "--data": self.data = try value(argument)
            case "--count":
                let text = try value(argument)
                guard let count = Int(text), count > 0 else {
                    throw BrokerError.usage("--count: expected a positive number, got \"\(text)\"")
                }
                self.count = count
            case "--limit":
                let text = try value(argument)
                guard let limit = Int(text), limit > 0 else {
                    throw BrokerError.usage("--limit: expected a positive number, got \"\(text)\"")
                }
                self.limit = limit
            case let option where option.hasPrefix("--url="): self.url = String(option.dropFirst(6))
            case let option where option.hasPrefix("--topic="): self.topic = String(option.dropFirst(8))
            case let option where option.hasPrefix("--group="): self.group = String(option.dropFirst(8))
            case let option where option.hasPrefix("-"): throw BrokerError.usage("unknown option \"\(option)\"")
            default:
                if self.command.isEmpty { self.command = argument } else { self.words.append(argument) }
            }
            index += 1
        }
        if self.command.isEmpty && !self.help { throw BrokerError.usage("expected topics or dlq") }
    }

    /// Opens the log; a SQLite file must exist already (inspection never creates an empty log).
    func openLog() async throws -> any MessageLog {
        guard let url = self.url else { throw BrokerError.usage("--url URL is required") }
        let store: StoreURL
        do {
            store = try StoreURL(parsing: url)
        } catch {
            throw BrokerError.usage(error.message)
        }
        if case .sqlite(let path) = store.kind, !FileManager.default.fileExists(atPath: path) {
            throw BrokerError.failed("no message log at \(path) (from --url \(url))", status: 66)
        }
        return try await MessageLogs.open(url: store)
    }

    mutating func nextWord() -> String? {
        self.words.isEmpty ? nil : self.words.removeFirst()
    }

    func expectNoMoreWords() throws {
        if let extra = self.words.first { throw BrokerError.usage("unexpected argument \"\(extra)\"") }
    }

    /// The dead-letter topic named by --topic (and --group).
    func deadLetterTopic() throws -> String {
        guard let topic = self.topic else { throw BrokerError.usage("dlq needs --topic T") }
        guard let group = self.group else { return topic }
        return SQLiteMessageLog.deadLetterTopic(for: topic, group: group)
    }

    /// Parses `topic/partition@offset`, `partition@offset` or `offset`.
    static func position(_ text: String, topic: String) throws -> MessagePosition {
        var rest = Substring(text)
        if let slash = rest.lastIndex(of: "/") {
            guard rest[..<slash] == topic else {
                throw BrokerError.usage("position \(text) is not in dead-letter topic \(topic)")
            }
            rest = rest[rest.index(after: slash)...]
        }
        var partition = 0
        if let at = rest.firstIndex(of: "@") {
            guard let value = Int(rest[..<at]), value >= 0 else {
                throw BrokerError.usage("position \"\(text)\": expected partition@offset")
            }
            partition = value
            rest = rest[rest.index(after: at)...]
        }
        guard let offset = Int64(rest), offset > 0 else {
            throw BrokerError.usage("position \"\(text)\": expected topic/partition@offset, partition@offset or offset")
        }
        return MessagePosition(topic: topic, partition: partition, offset: offset)
    }
}

// MARK: topics

/// The JSON shape of `aviary broker topics --json` (durations in seconds).
struct TopicsDocument: Encodable {
    struct Topic: Encodable {
        var name: String
        var partitions: [PartitionInfo]
        var scheduled: Int
        var depth: Int64
        var groups: [Group]
    }

    struct Group: Encodable {
        var name: String
        var lag: Int64
        var oldestUnackedAgeSeconds: Double?
        var stoppedPartitions: [Int]
        var deadLettered: Int64
        var lostToRetention: Int64
    }

    var topics: [Topic]
}

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

func printTopics(_ topics: [TopicInfo], json: Bool) async throws {
    if json {
        let document = TopicsDocument(
            topics: topics.map { topic in
                TopicsDocument.Topic(
                    name: topic.name, partitions: topic.partitions, scheduled: topic.scheduled,
                    depth: topic.partitions.map(\.depth).reduce(0, +),
                    groups: topic.groups.map { group in
                        TopicsDocument.Group(
                            name: group.name, lag: group.lag,
                            oldestUnackedAgeSeconds: group.oldestUnackedAge.map(seconds),
                            stoppedPartitions: group.stoppedPartitions, deadLettered: group.deadLettered,
                            lostToRetention: group.lostToRetention)
                    })
            })
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        print(String(decoding: try encoder.encode(document), as: UTF8.self))
        return
    }
    var rows = [
        [
            "TOPIC", "PARTITIONS", "DEPTH", "SCHEDULED", "GROUP", "LAG", "OLDEST UNACKED", "STOPPED", "DEAD-LETTERED",
            "LOST",
        ]
    ]
    for topic in topics {
        let base = [
            topic.name, "\(topic.partitions.count)", "\(topic.partitions.map(\.depth).reduce(0, +))",
            "\(topic.scheduled)",
        ]
        if topic.groups.isEmpty {
            rows.append(base + ["-", "-", "-", "-", "-", "-"])
        }
        for group in topic.groups {
            rows.append(
                base + [
                    group.name, "\(group.lag)", group.oldestUnackedAge.map(formatAge) ?? "-",
                    group.stoppedPartitions.isEmpty
                        ? "-" : group.stoppedPartitions.map(String.init).joined(separator: ","),
                    "\(group.deadLettered)", "\(group.lostToRetention)",
                ])
        }
    }
    print(table(rows), terminator: "")
}

func formatAge(_ duration: Duration) -> String {
    let total = seconds(duration)
    if total < 60 { return String(format: "%.1fs", total) }
    if total < 3600 { return String(format: "%ldm%02lds", Int(total) / 60, Int(total) % 60) }
    if total < 86400 { return String(format: "%ldh%02ldm", Int(total) / 3600, Int(total) % 3600 / 60) }
    return String(format: "%ldd%02ldh", Int(total) / 86400, Int(total) % 86400 / 3600)
}

/// Left-aligned columns separated by two spaces.
func table(_ rows: [[String]]) -> String {
    let columns = rows.map(\.count).max() ?? 0
    let widths = (0..<columns).map { column in rows.map { column < $0.count ? $0[column].count : 0 }.max() ?? 0 }
    return rows.map { row in
        row.enumerated().map { column, cell in
            column == row.count - 1 ? cell : cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }.joined(separator: "\n") + "\n"
}

// MARK: publish

func publish(_ log: any MessageLog, _ arguments: BrokerArguments) async throws {
    guard let topic = arguments.topic else { throw BrokerError.usage("publish needs --topic T") }
    if let data = arguments.data,
        (try? JSONSerialization.jsonObject(with: Data(data.utf8), options: .fragmentsAllowed)) == nil
    {
        throw BrokerError.usage("--data: expected JSON, got \(data)")
    }
    var last: MessagePosition?
    for index in 1...arguments.count {
        let event = CloudEvent(
            source: arguments.source, type: arguments.type, subject: arguments.key,
            dataContentType: "application/json", data: Data((arguments.data ?? "{\"n\":\(index)}").utf8))
        last = try await log.publish([OutgoingMessage(topic: topic, key: arguments.key, event: event)]).first
    }
    if arguments.count == 1, let last {
        print("published \(last)")
    } else {
        print("published \(arguments.count) events to \(topic)")
    }
}

// MARK: dlq

func runDeadLetters(_ log: any MessageLog, _ arguments: inout BrokerArguments) async throws {
    let topic = try arguments.deadLetterTopic()
    let action = arguments.nextWord() ?? "list"
    switch action {
    case "list":
        try arguments.expectNoMoreWords()
        let letters = try await log.deadLetters(topic: topic, limit: arguments.limit)
        if arguments.json {
            print(try deadLettersJSON(letters))
            return
        }
        var rows = [["POSITION", "ORIGIN", "GROUP", "REASON", "DELIVERIES", "TYPE", "ID", "ERROR"]]
        for letter in letters {
            rows.append([
                letter.message.position.description, letter.origin.description, letter.group, letter.reason,
                "\(letter.deliveries)", letter.message.event.type, letter.message.event.id,
                oneLine(letter.lastError ?? "-"),
            ])
        }
        print(table(rows), terminator: "")
        print("\(letters.count) dead letter\(letters.count == 1 ? "" : "s") in \(topic)")
    case "show":
        guard let text = arguments.nextWord() else { throw BrokerError.usage("dlq show needs a position") }
        try arguments.expectNoMoreWords()
        let position = try BrokerArguments.position(text, topic: topic)
        guard let letter = try await findDeadLetter(log, topic: topic, position: position) else {
            throw BrokerError.failed("no dead letter at \(position)", status: 66)
        }
        if arguments.json {
            print(try deadLettersJSON([letter]))
            return
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        print(
            """
            position:   \(letter.message.position)
            origin:     \(letter.origin)
            group:      \(letter.group)
            reason:     \(letter.reason)
            deliveries: \(letter.deliveries)
            error:      \(letter.lastError ?? "-")
            key:        \(letter.message.key)
            appended:   \(letter.message.appendedAt.ISO8601Format())
            headers:
            """)
        for (name, value) in letter.message.headers.sorted(by: { $0.key < $1.key }) { print("  \(name): \(value)") }
        print("event:")
        print(String(decoding: try encoder.encode(letter.message.event), as: UTF8.self))
    case "replay":
        if arguments.all {
            try arguments.expectNoMoreWords()
            var replayed = 0
            while true {
                let letters = try await log.deadLetters(topic: topic, limit: 500)
                if letters.isEmpty { break }
                for letter in letters {
                    try await log.replayDeadLetter(letter.message.position)
                    replayed += 1
                }
            }
            print("replayed \(replayed) dead letter\(replayed == 1 ? "" : "s") from \(topic)")
        } else {
            guard let text = arguments.nextWord() else {
                throw BrokerError.usage("dlq replay needs a position or --all")
            }
            try arguments.expectNoMoreWords()
            let position = try BrokerArguments.position(text, topic: topic)
            guard let letter = try await findDeadLetter(log, topic: topic, position: position) else {
                throw BrokerError.failed("no dead letter at \(position)", status: 66)
            }
            try await log.replayDeadLetter(position)
            print("replayed \(position) to \(letter.origin.topic)")
        }
    case "purge":
        let text = arguments.nextWord()
        try arguments.expectNoMoreWords()
        let positions = try text.map { [try BrokerArguments.position($0, topic: topic)] }
        let purged = try await log.purgeDeadLetters(topic: topic, positions: positions)
        if let positions, purged == 0 {
            throw BrokerError.failed("no dead letter at \(positions[0])", status: 66)
        }
        print("purged \(purged) dead letter\(purged == 1 ? "" : "s") from \(topic)")
    default:
        throw BrokerError.usage("unknown dlq command \"\(action)\"")
    }
}

func findDeadLetter(_ log: any MessageLog, topic: String, position: MessagePosition) async throws -> DeadLetter? {
    try await log.deadLetters(topic: topic, limit: Int.max).first { $0.message.position == position }
}

func oneLine(_ text: String) -> String {
    let line = text.split(whereSeparator: \.isNewline).joined(separator: " ")
    return line.count > 80 ? String(line.prefix(77)) + "..." : line
}

/// Dead letters as JSON: position, origin, group, reason, deliveries, error, key, headers, event.
func deadLettersJSON(_ letters: [DeadLetter]) throws -> String {
    struct Letter: Encodable {
        var position: String
        var origin: String
        var group: String
        var reason: String
        var deliveries: Int
        var error: String?
        var key: String
        var headers: [String: String]
        var event: CloudEventBox
    }
    struct CloudEventBox: Encodable {
        var event: AviaryMessaging.Message
        func encode(to encoder: any Encoder) throws { try self.event.event.encode(to: encoder) }
    }
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    let document = letters.map { letter in
        Letter(
            position: letter.message.position.description, origin: letter.origin.description, group: letter.group,
            reason: letter.reason, deliveries: letter.deliveries, error: letter.lastError, key: letter.message.key,
            headers: letter.message.headers, event: CloudEventBox(event: letter.message))
    }
    return String(decoding: try encoder.encode(document), as: UTF8.self)
}
