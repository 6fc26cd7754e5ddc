// swift-tools-version: 6.1
// Aviary: a microservices platform for Swift on Linux.
import PackageDescription

/// One set of settings for every target: Swift 6 language mode (strict concurrency) plus the
/// upcoming features that keep existentials and imports explicit.
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "aviary",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "AviaryCore", targets: ["AviaryCore"]),
        .library(name: "AviaryResilience", targets: ["AviaryResilience"]),
        .library(name: "AviaryStorage", targets: ["AviaryStorage"]),
        .library(name: "AviaryDiscovery", targets: ["AviaryDiscovery"]),
        .library(name: "AviaryAuth", targets: ["AviaryAuth"]),
        .library(name: "AviaryTelemetry", targets: ["AviaryTelemetry"]),
        .library(name: "AviaryService", targets: ["AviaryService"]),
        .library(name: "AviaryMessaging", targets: ["AviaryMessaging"]),
        .library(name: "AviaryEventSourcing", targets: ["AviaryEventSourcing"]),
        .library(name: "AviaryGateway", targets: ["AviaryGateway"]),
        .library(name: "AviaryWorkflows", targets: ["AviaryWorkflows"]),
        .executable(name: "aviary", targets: ["aviary"]),
        .executable(name: "shop", targets: ["shop"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        .package(url: "https://github.com/apple/swift-service-context.git", from: "1.5.1"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.1"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        // OTLP over HTTP only: the gRPC exporter (and its build minutes) stays out.
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.8.0"),
        // HTTP/2 (h2c and ALPN) and TLS on the gateway's listener: AviaryGateway only.
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        // X.509 parsing of clients' certificates on the gateway's listener (the subject and names
        // it forwards). Already in the build through jwt-kit: no extra build minutes.
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
    ],
    targets: [
        // MARK: Libraries (dependency direction: downward, as in ARCHITECTURE.md)
        .target(
            name: "AviaryCore",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceContextModule", package: "swift-service-context"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "AviaryResilience",
            dependencies: [
                "AviaryCore",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "HeapModule", package: "swift-collections"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "AviaryStorage",
            dependencies: [
                "AviaryCore",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                // postgres-nio's pool, run with connections whose sockets the store opens (TCP keep-alive).
                .product(name: "_ConnectionPoolModule", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "AviaryMessaging",
            dependencies: [
                "AviaryCore",
                "AviaryResilience",
                "AviaryStorage",
                .product(name: "GRDB", package: "GRDB.swift"),
                // SQLite's C API, for the one statement a batched publish runs per message.
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "AviaryEventSourcing",
            dependencies: [
                "AviaryCore",
                "AviaryStorage",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "AviaryWorkflows",
            dependencies: [
                "AviaryCore",
                "AviaryStorage",
                "AviaryMessaging",
                "AviaryResilience",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "AviaryTelemetry",
            dependencies: [
                "AviaryCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // JWT verification and issuing, free of any HTTP server library: AviaryService's
        // Hummingbird middleware and the gateway both use it.
        .target(
            name: "AviaryAuth",
            dependencies: [
                "AviaryCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "AviaryDiscovery",
            dependencies: [
                "AviaryCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "AviaryService",
            dependencies: [
                "AviaryAuth",
                "AviaryCore",
                "AviaryDiscovery",
                "AviaryResilience",
                "AviaryStorage",
                "AviaryTelemetry",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "AviaryGateway",
            dependencies: [
                "AviaryAuth",
                "AviaryCore",
                "AviaryDiscovery",
                "AviaryResilience",
                "AviaryTelemetry",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        // MARK: The CLI
        .executableTarget(
            name: "aviary",
            dependencies: [
                "AviaryCore",
                "AviaryEventSourcing",
                "AviaryGateway",
                "AviaryMessaging",
                "AviaryStorage",
                "AviaryTelemetry",
                "AviaryWorkflows",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // MARK: The reference system
        .target(
            name: "Shop",
            dependencies: [
                "AviaryAuth",
                "AviaryCore",
                "AviaryDiscovery",
                "AviaryEventSourcing",
                "AviaryGateway",
                "AviaryMessaging",
                "AviaryResilience",
                "AviaryService",
                "AviaryStorage",
                "AviaryTelemetry",
                "AviaryWorkflows",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "shop",
            dependencies: [
                "Shop", "AviaryCore", "AviaryService", "AviaryStorage", "AviaryTelemetry",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // MARK: Tests
        // Helpers shared by test targets (a real OTLP/HTTP collector, a throwaway PostgreSQL server);
        // not a product.
        .target(
            name: "AviaryTestSupport",
            dependencies: [
                "AviaryAuth",
                "AviaryCore",
                "AviaryStorage",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Tests/AviaryTestSupport",
            swiftSettings: swiftSettings
        ),
        // A producer and a consumer that the messaging fault tests run as child processes and
        // kill with SIGKILL; built next to the test bundle, not a product.
        .executableTarget(
            name: "aviary-messaging-fault",
            dependencies: [
                "AviaryMessaging",
                "AviaryCore",
                "AviaryResilience",
                "AviaryStorage",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/AviaryMessagingFault",
            swiftSettings: swiftSettings
        ),
        // A saga runner that the workflows crash test runs as a child process and kills with
        // SIGKILL; built next to the test bundle, not a product.
        .executableTarget(
            name: "aviary-workflows-fault",
            dependencies: [
                "AviaryWorkflows",
                "AviaryCore",
                "AviaryMessaging",
                "AviaryResilience",
                "AviaryStorage",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/AviaryWorkflowsFault",
            swiftSettings: swiftSettings
        ),
        // Shop's services as child processes that the Shop crash test kills with SIGKILL at the
        // saga's step boundaries; built next to the test bundle, not a product.
        .executableTarget(
            name: "aviary-shop-fault",
            dependencies: [
                "Shop",
                "AviaryCore",
                "AviaryMessaging",
                "AviaryStorage",
                "AviaryWorkflows",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Tests/ShopFault",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AviaryWorkflowsTests",
            dependencies: [
                "AviaryWorkflows",
                "AviaryCore",
                "AviaryMessaging",
                "AviaryResilience",
                "AviaryStorage",
                "AviaryTestSupport",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AviaryCoreTests",
            dependencies: ["AviaryCore"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AviaryDiscoveryTests",
            dependencies: [
                "AviaryCore",
                "AviaryDiscovery",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AviaryResilienceTests",
            dependencies: [
                "AviaryCore",
                "AviaryResilience",
                .product(name: "PropertyBased", package: "swift-property-based"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AviaryStorageTests",
            dependencies: [
                "AviaryStorage",
                "AviaryCore",
                "AviaryTestSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AviaryMessagingTests",
            dependencies: [
                "AviaryMessaging",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                "AviaryCore",
                "AviaryStorage",
                "AviaryTestSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AviaryEventSourcingTests",
            dependencies: [
                "AviaryEventSourcing",
                "AviaryCore",
                "AviaryMessaging",
                "AviaryStorage",
                "AviaryTestSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AviaryTelemetryTests",
            dependencies: [
                "AviaryCore",
                "AviaryTelemetry",
                "AviaryTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AviaryAuthTests",
            dependencies: [
                "AviaryAuth",
                "AviaryCore",
                "AviaryTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AviaryServiceTests",
            dependencies: [
                "AviaryAuth",
                "AviaryDiscovery",
                "AviaryService",
                "AviaryTestSupport",
                "AviaryCore",
                "AviaryResilience",
                "AviaryStorage",
                "AviaryTelemetry",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AviaryGatewayTests",
            dependencies: [
                "AviaryDiscovery",
                "AviaryAuth",
                "AviaryTestSupport",
                "AviaryGateway",
                "AviaryCore",
                "AviaryTelemetry",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "OTel", package: "swift-otel"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ShopTests",
            dependencies: [
                "AviaryAuth",
                "AviaryEventSourcing",
                "AviaryWorkflows",
                "Shop",
                "AviaryGateway",
                "AviaryMessaging",
                "AviaryService",
                "AviaryTelemetry",
                "AviaryTestSupport",
                .product(name: "OTel", package: "swift-otel"),
                "AviaryCore",
                "AviaryResilience",
                "AviaryStorage",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),
        // The helpers of AviaryTestSupport themselves (starting and reaping child processes).
        .testTarget(
            name: "AviaryTestSupportTests",
            dependencies: ["AviaryTestSupport"],
            swiftSettings: swiftSettings
        ),
    ]
)
