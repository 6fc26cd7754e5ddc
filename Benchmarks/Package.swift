// swift-tools-version: 6.1
// Aviary's benchmarks: a separate package so that `swift test` and CI never build ordo-one/benchmark.
//   cd Benchmarks && swift package --disable-sandbox benchmark
import PackageDescription

let package = Package(
    name: "AviaryBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "aviary", path: ".."),
        .package(url: "https://github.com/apple/swift-service-context.git", from: "1.5.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
    ],
    targets: [
        // scripts/bench-service.sh: a bare Hummingbird application and the same route in an
        // AviaryApplication, compared with wrk.
        .executableTarget(
            name: "HelloHummingbird",
            dependencies: [.product(name: "Hummingbird", package: "hummingbird")],
            path: "Sources/HelloHummingbird",
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "HelloAviary",
            dependencies: [
                .product(name: "AviaryService", package: "aviary"),
                .product(name: "AviaryTelemetry", package: "aviary"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            path: "Sources/HelloAviary",
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // scripts/bench-gateway.sh: a bare SwiftNIO byte relay, the floor of any NIO proxy.
        .executableTarget(
            name: "RelayFloor",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Sources/RelayFloor",
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // scripts/bench-broker.sh: AviaryMessaging's publish, consume-and-ack and latency figures on
        // SQLite and PostgreSQL, printed as JSON lines next to the raw engines measured by the script.
        .executableTarget(
            name: "BrokerBench",
            dependencies: [
                .product(name: "AviaryCore", package: "aviary"),
                .product(name: "AviaryMessaging", package: "aviary"),
                .product(name: "AviaryStorage", package: "aviary"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/BrokerBench",
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // Not part of a script: postgres-nio's own cost of one prepared statement per call, the
        // floor under the log's single publish (see the file's header).
        .executableTarget(
            name: "PostgresFloor",
            dependencies: [
                .product(name: "AviaryStorage", package: "aviary"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Sources/PostgresFloor",
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // Not a benchmark: one shared breaker from N threads, to profile contention.
        .executableTarget(
            name: "ContentionProfile",
            dependencies: [
                .product(name: "AviaryCore", package: "aviary"),
                .product(name: "AviaryResilience", package: "aviary"),
            ],
            path: "Sources/ContentionProfile",
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // Not a benchmark: a loop to profile with `perf record` (swift build -c release --product TimeoutProfile).
        .executableTarget(
            name: "TimeoutProfile",
            dependencies: [
                .product(name: "AviaryCore", package: "aviary"),
                .product(name: "AviaryResilience", package: "aviary"),
            ],
            path: "Sources/TimeoutProfile",
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // scripts/bench-sagas.sh: saga completions/s on SQLite and PostgreSQL next to the raw
        // single-row transaction rate of the same engine.
        .executableTarget(
            name: "SagaBench",
            dependencies: [
                .product(name: "AviaryStorage", package: "aviary"),
                .product(name: "AviaryWorkflows", package: "aviary"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            path: "Sources/SagaBench",
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // scripts/bench-eventstore.sh: the SQLite and PostgreSQL event stores next to raw inserts.
        .executableTarget(
            name: "EventStoreBench",
            dependencies: [
                .product(name: "AviaryEventSourcing", package: "aviary"),
                .product(name: "AviaryStorage", package: "aviary"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            path: "Sources/EventStoreBench",
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "ResilienceBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "AviaryCore", package: "aviary"),
                .product(name: "AviaryResilience", package: "aviary"),
                .product(name: "ServiceContextModule", package: "swift-service-context"),
            ],
            path: "Benchmarks/ResilienceBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
