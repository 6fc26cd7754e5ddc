//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

// The AviaryMessaging side of scripts/bench-broker.sh (not a benchmark of the harness: it prints
// one JSON object per line, which the script puts next to the raw engines measured in the same run).
//
//   BrokerBench run --url URL [--seconds S] [--rate R]
//       publish (one message per call, batches of 100 and 1000), consume-and-ack through
//       MessageConsumer, and publish-to-consume latency at R messages/s (consumer in this process
//       and in a child process), each for about S seconds (on SQLite also `publish_single_writer`:
//       single publishes from a task on the log's writer executor; on PostgreSQL also
//       `publish_single_executor`, `publish_batch_100_executor` and `publish_batch_1000_executor`:
//       publishes from a task on the event loop of the log's connections, `PostgresMessageLog.executor`);
//       `--only a,b` runs only the scenarios
//       named, and `--only publish_single_8` (never run by default) publishes one message per call
//       from 8 tasks at once
//   BrokerBench consume-latency --url URL --topic T --count N
//       the child: consumes N messages of T and prints their latencies' percentiles
//
// Every message is the same CloudEvent shape (a JSON payload of ~100 bytes); `row_bytes` reports
// the bytes the log stores per message (key + event JSON + headers JSON), so that the raw floors
// insert rows of the same size.
import AviaryCore
import AviaryMessaging
import AviaryStorage
import Dispatch
import Foundation
import Logging
import Synchronization

struct Payload: Codable {
    var orderID: String
    var customer: String
    var amountCents: Int
    var note: String
}

func makeMessage(topic: String, index: Int, headers: [String: String] = [:]) throws -> OutgoingMessage {
    let key = "order-\(index % 4096)"
    let event = try CloudEvent(
        source: "/bench/orders", type: "order.placed", subject: key,
        json: Payload(
            orderID: key, customer: "customer-\(index % 977)", amountCents: 1000 + index % 5000,
            note: "benchmark message with a modest payload"))
    return OutgoingMessage(topic: topic, key: key, event: event, headers: headers)
}

func emit(_ fields: [String: any Sendable]) {
    var parts: [String] = []
    for (name, value) in fields.sorted(by: { $0.key < $1.key }) {
        switch value {
        case let text as String: parts.append("\"\(name)\":\"\(text)\"")
        case let number as Double: parts.append("\"\(name)\":\(String(format: "%.3f", number))")
        default: parts.append("\"\(name)\":\(value)")
        }
    }
    writeLine("{" + parts.joined(separator: ",") + "}")
}

/// Writes a line to standard output at once (unbuffered: the script and the parent process read lines as they come).
func writeLine(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

func nowNanos() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// Wall-clock nanoseconds (CLOCK_REALTIME), comparable between processes of one machine.
func wallNanos() -> Int64 {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec)
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    let rank = Int((p * Double(sorted.count - 1)).rounded())
    return sorted[min(sorted.count - 1, max(0, rank))]
}

struct Arguments {
    var values: [String: String] = [:]
    init(_ arguments: ArraySlice<String>) {
        var iterator = arguments.makeIterator()
        while let name = iterator.next() {
            if name.hasPrefix("--"), let value = iterator.next() { self.values[String(name.dropFirst(2))] = value }
        }
    }
    func string(_ name: String) -> String? { self.values[name] }
    func int(_ name: String, _ fallback: Int) -> Int { self.values[name].flatMap { Int($0) } ?? fallback }
    func double(_ name: String, _ fallback: Double) -> Double { self.values[name].flatMap { Double($0) } ?? fallback }
}

final class Counter: Sendable {
    let value = Atomic<Int>(0)
    func increment() -> Int { self.value.add(1, ordering: .relaxed).newValue }
    var current: Int { self.value.load(ordering: .relaxed) }
}

final class Latencies: Sendable {
    let values = Mutex<[Double]>([])
    func record(_ milliseconds: Double) { self.values.withLock { $0.append(milliseconds) } }
    var all: [Double] { self.values.withLock { $0 } }
}

let logger: Logger = {
    var logger = Logger(label: "aviary.bench")
    logger.logLevel = .warning
    return logger
}()

// MARK: Publishing

/// Publishes batches of `batch` messages back to back for `seconds`; returns messages per second.
func publishThroughput(_ log: any MessageLog, topic: String, batch: Int, seconds: Double) async throws -> (Int, Double)
{
    var index = 0
    // Messages are built before the clock starts: the benchmark measures the log, not CloudEvent's encoder.
    var prepared: [[OutgoingMessage]] = []
    for _ in 0..<max(1, 20_000 / batch) {
        prepared.append(
            try (0..<batch).map { _ in
                index += 1; return try makeMessage(topic: topic, index: index)
            })
    }
    var sent = 0
    var calls = 0
    let start = nowNanos()
    let deadline = start + UInt64(seconds * 1e9)
    while nowNanos() < deadline {
        try await log.publish(prepared[calls % prepared.count])
        calls += 1
        sent += batch
    }
    let elapsed = Double(nowNanos() - start) / 1e9
    return (sent, Double(sent) / elapsed)
}

/// Publishes one message per call from `tasks` tasks at once for `seconds` (each task its own
/// messages, built beforehand); returns messages per second over all of them.
func publishConcurrently(
    _ log: any MessageLog, topic: String, tasks: Int, seconds: Double
) async throws -> (Int, Double) {
    var prepared: [[OutgoingMessage]] = []
    for task in 0..<tasks {
        prepared.append(
            try (0..<max(1, 20_000 / tasks)).map { try makeMessage(topic: topic, index: task * 100_000 + $0) })
    }
    let start = nowNanos()
    let deadline = start + UInt64(seconds * 1e9)
    let sent = try await withThrowingTaskGroup(of: Int.self) { group in
        for messages in prepared {
            group.addTask {
                var calls = 0
                while nowNanos() < deadline {
                    try await log.publish([messages[calls % messages.count]])
                    calls += 1
                }
                return calls
            }
        }
        return try await group.reduce(0, +)
    }
    let elapsed = Double(nowNanos() - start) / 1e9
    return (sent, Double(sent) / elapsed)
}

// MARK: Consuming

/// Runs a MessageConsumer (one partition at a time, a handler that does nothing, an ack after
/// each message as the consumer always does) over a prefilled topic for up to `seconds`.
func consumeThroughput(
    _ log: any MessageLog, topic: String, prefill: Int, concurrency: Int, seconds: Double
) async throws -> (Int, Double) {
    try await log.createTopic(topic, TopicOptions(partitions: 8))
    var index = 0
    while index < prefill {
        let batch = try (0..<1000).map { _ in
            index += 1; return try makeMessage(topic: topic, index: index)
        }
        try await log.publish(batch)
    }
    let handled = Counter()
    let consumer = MessageConsumer(
        log: log, configuration: .init(group: "bench", topic: topic, concurrency: concurrency, batchSize: 64),
        logger: logger, tracer: nil
    ) { _ in _ = handled.increment() }
    let start = nowNanos()
    let deadline = start + UInt64(seconds * 1e9)
    let running = Task { try await consumer.run() }
    while handled.current < prefill, nowNanos() < deadline {
        try await Task.sleep(for: .milliseconds(2))
    }
    let count = handled.current
    let elapsed = Double(nowNanos() - start) / 1e9
    running.cancel()
    _ = try? await running.value
    return (count, Double(count) / elapsed)
}

// MARK: Latency

/// Publishes one message per call at `rate` per second on a fixed schedule (a late publish does not
/// move the schedule); each carries its send time (CLOCK_REALTIME ns) in the `bench-sent` header.
func publishAtRate(_ log: any MessageLog, topic: String, rate: Double, count: Int) async throws {
    let interval = 1e9 / rate
    let start = nowNanos()
    for index in 0..<count {
        let due = start + UInt64(Double(index) * interval)
        let now = nowNanos()
        if due > now { try await Task.sleep(for: .nanoseconds(Int64(due - now))) }
        try await log.publish([
            try makeMessage(topic: topic, index: index, headers: ["bench-sent": String(wallNanos())])
        ])
    }
}

func latencyConsumer(_ log: any MessageLog, topic: String, latencies: Latencies, received: Counter) -> MessageConsumer {
    MessageConsumer(
        log: log, configuration: .init(group: "latency", topic: topic), logger: logger, tracer: nil
    ) { delivery in
        if let sent = delivery.message.headers["bench-sent"].flatMap({ Int64($0) }) {
            latencies.record(Double(wallNanos() - sent) / 1e6)
        }
        _ = received.increment()
    }
}

func report(_ backend: String, _ scenario: String, _ values: [Double], warmup: Int) {
    let sorted = values.dropFirst(warmup).sorted()
    emit([
        "backend": backend, "scenario": scenario, "messages": sorted.count,
        "p50_ms": percentile(sorted, 0.50), "p99_ms": percentile(sorted, 0.99), "max_ms": sorted.last ?? .nan,
    ])
}

/// Consumer and producer in this process: the in-process wake-up fires at once on publish.
func latencyInProcess(_ log: any MessageLog, backend: String, rate: Double, seconds: Double) async throws {
    let topic = "latency-local"
    try await log.createTopic(topic, TopicOptions(partitions: 8))
    let latencies = Latencies()
    let received = Counter()
    let consumer = latencyConsumer(log, topic: topic, latencies: latencies, received: received)
    let running = Task { try await consumer.run() }
    // Let the consumer subscribe and go idle first.
    try await Task.sleep(for: .milliseconds(300))
    let count = Int(rate * seconds)
    try await publishAtRate(log, topic: topic, rate: rate, count: count)
    let deadline = nowNanos() + 30_000_000_000
    while received.current < count, nowNanos() < deadline { try await Task.sleep(for: .milliseconds(5)) }
    running.cancel()
    _ = try? await running.value
    report(backend, "latency_in_process", latencies.all, warmup: count / 10)
}

/// Consumer in a child process (this executable's `consume-latency`), producer here: the
/// deployment the issue describes (services in their own processes sharing a broker).
func latencyCrossProcess(
    _ log: any MessageLog, url: String, backend: String, rate: Double, seconds: Double
)
    async throws
{
    let topic = "latency-remote"
    try await log.createTopic(topic, TopicOptions(partitions: 8))
    let count = Int(rate * seconds)
    let child = Process()
    child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL
    child.arguments = [
        "consume-latency", "--url", url, "--topic", topic, "--count", "\(count)", "--backend", backend,
        "--warmup", "\(count / 10)",
    ]
    let pipe = Pipe()
    child.standardOutput = pipe
    let exited = AsyncStream<Void>.makeStream()
    child.terminationHandler = { _ in
        exited.continuation.yield(); exited.continuation.finish()
    }
    try child.run()
    // The child prints "ready" once subscribed and idle; read lines off the pool.
    let lines = AsyncStream<String>.makeStream()
    Thread {
        var buffer = Data()
        while true {
            let chunk = pipe.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            buffer.append(chunk)
            while let newline = buffer.firstIndex(of: 0x0a) {
                lines.continuation.yield(String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self))
                buffer.removeSubrange(buffer.startIndex...newline)
            }
        }
        lines.continuation.finish()
    }.start()
    var iterator = lines.stream.makeAsyncIterator()
    guard await iterator.next() == "ready" else { throw MessagingError(.unavailable, "latency child did not start") }
    try await publishAtRate(log, topic: topic, rate: rate, count: count)
    while let line = await iterator.next() { writeLine(line) }
    for await _ in exited.stream {}
}

func consumeLatencyChild(_ arguments: Arguments) async throws {
    guard let url = arguments.string("url"), let topic = arguments.string("topic") else { return }
    let count = arguments.int("count", 1000)
    let log = try await openLog(url)
    let latencies = Latencies()
    let received = Counter()
    let consumer = latencyConsumer(log, topic: topic, latencies: latencies, received: received)
    try await log.subscribe(group: "latency", topic: topic, options: GroupOptions())
    let running = Task { try await consumer.run() }
    try await Task.sleep(for: .milliseconds(300))
    writeLine("ready")
    let deadline = nowNanos() + 120_000_000_000
    while received.current < count, nowNanos() < deadline { try await Task.sleep(for: .milliseconds(5)) }
    running.cancel()
    _ = try? await running.value
    report(
        arguments.string("backend") ?? "?", "latency_cross_process", latencies.all, warmup: arguments.int("warmup", 0))
    try await log.close()
}

// MARK: Main

/// Opens the log at `url`. `BROKERBENCH_PG_POOL` in the environment changes a PostgreSQL log's
/// pool (scripts/bench-broker.sh runs without it):
/// - `no-keep-alive`: no keep-alive (one connection kept open, as the log's default pool does):
///   with builds before the store's TCP keep-alive, this measured what postgres-nio's per-lease
///   keep-alive timer cost; since, the two should not differ;
/// - `minimum-0`: no connection kept open (`PostgresStore.Options`' default before the
///   sixteenth session), so every lease of a connection cancels the idle timer its release armed.
///
/// `BROKERBENCH_COMMIT_SPIN_US` sets the log's `commitSpin` (SQLite's configuration, PostgreSQL's
/// store options) in microseconds (0: callers always suspend, as before the twenty-third
/// session), for A/B runs of one binary.
func openLog(_ url: String) async throws -> any MessageLog {
    let environment = ProcessInfo.processInfo.environment
    let pool = environment["BROKERBENCH_PG_POOL"]
    let spin = environment["BROKERBENCH_COMMIT_SPIN_US"].flatMap(Int.init).map { Duration.microseconds($0) }
    guard url.hasPrefix("postgres") else {
        var sqlite = SQLiteMessageLog.Configuration()
        if let spin { sqlite.commitSpin = spin }
        return try await MessageLogs.open(url: url, sqlite: sqlite)
    }
    var configuration = PostgresMessageLog.Configuration()
    switch pool {
    case "minimum-0":
        configuration.store = PostgresStore.Options(minimumConnections: 0, applicationName: "aviary-message-log")
    case "no-keep-alive":
        configuration.store = PostgresStore.Options(
            minimumConnections: 1, applicationName: "aviary-message-log", keepAliveFrequency: nil)
    default: break
    }
    if let spin { configuration.store.commitSpin = spin }
    return try await PostgresMessageLog(url: StoreURL(parsing: url), configuration: configuration)
}

func run(_ arguments: Arguments) async throws {
    guard let url = arguments.string("url") else {
        FileHandle.standardError.write(Data("usage: BrokerBench run --url URL [--seconds S] [--rate R]\n".utf8))
        exit(2)
    }
    let seconds = arguments.double("seconds", 4)
    let rate = arguments.double("rate", 1000)
    let backend = url.hasPrefix("sqlite") ? "sqlite" : "postgres"
    let only = arguments.string("only").map { Set($0.split(separator: ",").map(String.init)) }
    func wanted(_ name: String) -> Bool { only?.contains(name) ?? true }
    let log = try await openLog(url)

    // What the log stores per message (key, event JSON, headers JSON), as it counts it for retention.
    try await log.createTopic("rowsize", TopicOptions(partitions: 1))
    try await log.publish(try (1...100).map { try makeMessage(topic: "rowsize", index: $0) })
    let partitions = try await log.topics().first { $0.name == "rowsize" }?.partitions ?? []
    let rowBytes = partitions.map(\.bytes).reduce(0, +) / max(1, partitions.map(\.depth).reduce(0, +))
    emit(["backend": backend, "scenario": "row_bytes", "bytes": rowBytes])

    try await log.createTopic("publish", TopicOptions(partitions: 8))
    if wanted("publish_single") || wanted("publish_batch_100") || wanted("publish_batch_1000")
        || wanted("publish_single_8") || wanted("publish_single_writer") || wanted("publish_single_executor")
        || wanted("publish_batch_100_executor") || wanted("publish_batch_1000_executor")
    {
        // Warm-up, past SQLite's first checkpoint (as sqlite-floor does) and PostgreSQL's first
        // pages: the measured commits see a log that has been running, not a new file.
        try await log.createTopic("warmup", TopicOptions(partitions: 8))
        _ = try await publishThroughput(log, topic: "warmup", batch: 1000, seconds: 1)
    }
    for (scenario, batch) in [("publish_single", 1), ("publish_batch_100", 100), ("publish_batch_1000", 1000)]
    where wanted(scenario) {
        let (messages, perSecond) = try await publishThroughput(log, topic: "publish", batch: batch, seconds: seconds)
        emit(["backend": backend, "scenario": scenario, "messages": messages, "per_second": perSecond])
    }
    // SQLite: single publishes again, from a task on the log's writer thread
    // (`SQLiteMessageLog.writerExecutor`), which saves the two hand-offs between threads.
    if let sqlite = log as? SQLiteMessageLog, wanted("publish_single_writer") {
        let (messages, perSecond) = try await withTaskExecutorPreference(sqlite.writerExecutor) {
            try await publishThroughput(log, topic: "publish", batch: 1, seconds: seconds)
        }
        emit(["backend": backend, "scenario": "publish_single_writer", "messages": messages, "per_second": perSecond])
    }
    // PostgreSQL: the same publishes from a task on the event loop of the log's connections
    // (`PostgresMessageLog.executor`), which saves the hand-offs between the caller's thread and the loop.
    if let postgres = log as? PostgresMessageLog {
        for (scenario, batch) in [
            ("publish_single_executor", 1), ("publish_batch_100_executor", 100), ("publish_batch_1000_executor", 1000),
        ] where wanted(scenario) {
            let (messages, perSecond) = try await withTaskExecutorPreference(postgres.executor) {
                try await publishThroughput(log, topic: "publish", batch: batch, seconds: seconds)
            }
            emit(["backend": backend, "scenario": scenario, "messages": messages, "per_second": perSecond])
        }
    }
    // Not part of the default run (scripts/bench-broker.sh): only with --only publish_single_8.
    if only?.contains("publish_single_8") == true {
        let (messages, perSecond) = try await publishConcurrently(log, topic: "publish", tasks: 8, seconds: seconds)
        emit(["backend": backend, "scenario": "publish_single_8", "messages": messages, "per_second": perSecond])
    }
    if wanted("consume_ack") {
        let (messages, perSecond) = try await consumeThroughput(
            log, topic: "consume", prefill: arguments.int("prefill", 40_000), concurrency: 1, seconds: seconds)
        emit(["backend": backend, "scenario": "consume_ack", "messages": messages, "per_second": perSecond])
    }
    if wanted("latency_in_process") {
        try await latencyInProcess(log, backend: backend, rate: rate, seconds: seconds)
    }
    if wanted("latency_cross_process") {
        try await latencyCrossProcess(log, url: url, backend: backend, rate: rate, seconds: seconds)
    }
    try await log.close()
}

let arguments = Arguments(CommandLine.arguments.dropFirst(2))
switch CommandLine.arguments.dropFirst().first {
case "consume-latency": try await consumeLatencyChild(arguments)
default: try await run(arguments)
}
