//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryService
import Foundation
import Testing

/// The schema of a made-up orders service: the built-in keys plus one of each type.
let ordersSchema = ConfigurationSchema(
    ServiceOptions(name: "orders", port: 8102),
    keys: [
        .url("database_url", default: URL(string: "postgres://admin:hunter2@db/orders"), secret: true, "The database"),
        .int("pool_size", in: 1...100, default: 10, "Connections in the pool"),
        .bool("dry_run", default: false, "Log payments instead of making them"),
        .oneOf("region", ["eu", "us"], default: "eu", "Where the data lives"),
        .duration("request_timeout", default: .milliseconds(250), "How long a call may take"),
    ]
)

/// A temporary directory holding one YAML file, removed when the test ends.
final class TemporaryYAML {
    let directory: URL
    let path: String

    init(_ contents: String, name: String = "aviary.yaml") throws {
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("aviary-config-\(UUID())")
        try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
        self.path = self.directory.appendingPathComponent(name).path
        try Data(contents.utf8).write(to: URL(fileURLWithPath: self.path))
    }

    deinit {
        try? FileManager.default.removeItem(at: self.directory)
    }
}

/// The message of the `AviaryError` that loading throws, or `nil` (and a recorded issue) when it succeeds.
func loadingProblems(
    _ schema: ConfigurationSchema = ordersSchema,
    file: String? = nil,
    environment: [String: String] = [:]
) -> String? {
    do {
        let configuration = try ServiceConfiguration.load(schema, file: file, environment: environment)
        Issue.record("expected loading to fail, got:\n\(configuration.rendered())")
        return nil
    } catch {
        #expect(error.code == .invalidArgument)
        return error.message
    }
}

@Suite("ServiceConfiguration", .timeLimit(.minutes(3)))
struct ServiceConfigurationTests {
    // MARK: Precedence

    @Test("without a file or variables every key has its default")
    func defaults() throws {
        let configuration = try ServiceConfiguration.load(ordersSchema, file: nil, environment: [:])
        #expect(configuration.int("port") == 8102)
        #expect(configuration.string("host") == "127.0.0.1")
        #expect(configuration.duration("drain_delay") == .seconds(5))
        #expect(configuration.duration("grace_period") == .seconds(30))
        #expect(configuration.string("version") == "0.0.0")
        #expect(configuration.int("pool_size") == 10)
        #expect(configuration.bool("dry_run") == false)
        #expect(configuration.string("region") == "eu")
        #expect(configuration.duration("request_timeout") == .milliseconds(250))
        #expect(configuration.source(of: "port") == .default)
    }

    @Test("a missing file leaves the defaults")
    func missingFile() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aviary-config-\(UUID())")
        let path = directory.appendingPathComponent("aviary.yaml").path
        let configuration = try ServiceConfiguration.load(ordersSchema, file: path, environment: [:])
        #expect(configuration.int("port") == 8102)
        #expect(configuration.source(of: "port") == .default)
    }

    @Test("the service's section of the file overrides defaults; other sections are ignored")
    func fileOverridesDefaults() throws {
        let yaml = try TemporaryYAML(
            """
            payments:
              port: 8103
              whatever: 1
            orders:
              port: 8200
              drain_delay: 2s
              region: us
              dry_run: yes
            """
        )
        let configuration = try ServiceConfiguration.load(ordersSchema, file: yaml.path, environment: [:])
        #expect(configuration.int("port") == 8200)
        #expect(configuration.duration("drain_delay") == .seconds(2))
        #expect(configuration.string("region") == "us")
        #expect(configuration.bool("dry_run") == true)
        #expect(configuration.source(of: "port") == .file(path: yaml.path, line: 5))
        #expect(configuration.source(of: "drain_delay")?.description == "\(yaml.path):6")
        #expect(configuration.source(of: "host") == .default)
    }

    @Test("the environment overrides the file; AVIARY_<SERVICE>_<KEY> wins over PORT and HOST")
    func environmentOverridesFile() throws {
        let yaml = try TemporaryYAML("orders:\n  port: 8200\n  pool_size: 20\n  drain_delay: 2s\n")
        let configuration = try ServiceConfiguration.load(
            ordersSchema,
            file: yaml.path,
            environment: [
                "AVIARY_ORDERS_POOL_SIZE": "30",
                "AVIARY_ORDERS_REQUEST_TIMEOUT": "2m",
                "PORT": "9000",
                "HOST": "0.0.0.0",
                "AVIARY_ORDERS_HOST": "10.0.0.1",
                "AVIARY_PAYMENTS_PORT": "1",  // another service's: ignored
            ]
        )
        #expect(configuration.int("port") == 9000)
        #expect(configuration.source(of: "port") == .environment("PORT"))
        #expect(configuration.int("pool_size") == 30)
        #expect(configuration.source(of: "pool_size") == .environment("AVIARY_ORDERS_POOL_SIZE"))
        #expect(configuration.duration("request_timeout") == .seconds(120))
        #expect(configuration.string("host") == "10.0.0.1")
        #expect(configuration.source(of: "host") == .environment("AVIARY_ORDERS_HOST"))
        #expect(configuration.duration("drain_delay") == .seconds(2))
        #expect(configuration.source(of: "drain_delay") == .file(path: yaml.path, line: 4))
    }

    @Test("AVIARY_<SERVICE>_PORT wins over PORT")
    func prefixedPortWins() throws {
        let configuration = try ServiceConfiguration.load(
            ordersSchema,
            file: nil,
            environment: ["PORT": "9000", "AVIARY_ORDERS_PORT": "9001"]
        )
        #expect(configuration.int("port") == 9001)
        #expect(configuration.source(of: "port") == .environment("AVIARY_ORDERS_PORT"))
    }

    @Test("service and key names become upper case with - and . as _ in the environment")
    func environmentNames() throws {
        let schema = ConfigurationSchema(
            ServiceOptions(name: "order-api.v2"),
            keys: [.int("pool_size", default: 1, "Pool")]
        )
        #expect(schema.environmentVariable(for: "pool_size") == "AVIARY_ORDER_API_V2_POOL_SIZE")
        let configuration = try ServiceConfiguration.load(
            schema,
            file: nil,
            environment: ["AVIARY_ORDER_API_V2_POOL_SIZE": "4"]
        )
        #expect(configuration.int("pool_size") == 4)
    }

    @Test("TelemetryConfiguration's variables are not unknown keys of a service named log or service")
    func telemetryVariablesIgnored() throws {
        for name in ["log", "service", "instance"] {
            let environment = [
                "AVIARY_LOG_LEVEL": "debug", "AVIARY_LOG_FORMAT": "json", "AVIARY_SERVICE_NAME": "x",
                "AVIARY_INSTANCE_ID": "y",
            ]
            let configuration = try ServiceConfiguration.load(
                ConfigurationSchema(ServiceOptions(name: name)),
                file: nil,
                environment: environment
            )
            #expect(configuration.int("port") == 8080)
        }
    }

    @Test("the built-in keys make ServiceOptions")
    func serviceOptions() throws {
        let configuration = try ServiceConfiguration.load(
            ordersSchema,
            file: nil,
            environment: [
                "AVIARY_ORDERS_VERSION": "1.2.0", "AVIARY_ORDERS_DRAIN_DELAY": "1500ms",
                "AVIARY_ORDERS_GRACE_PERIOD": "1m", "PORT": "8300",
            ]
        )
        let options = configuration.serviceOptions
        #expect(options.name == "orders")
        #expect(options.version == "1.2.0")
        #expect(options.host == "127.0.0.1")
        #expect(options.port == 8300)
        #expect(options.drainDelay == .milliseconds(1500))
        #expect(options.gracePeriod == .seconds(60))
    }

    @Test("an empty section or an empty file leaves the defaults")
    func emptySection() throws {
        for contents in ["orders:\n", "", "# nothing yet\n"] {
            let yaml = try TemporaryYAML(contents)
            let configuration = try ServiceConfiguration.load(ordersSchema, file: yaml.path, environment: [:])
            #expect(configuration.int("port") == 8102)
        }
    }

    // MARK: Errors

    static let knownKeys =
        "expected one of database_url, drain_delay, dry_run, grace_period, host, pool_size, port, region, "
        + "request_timeout, version"

    @Test(
        "an invalid value names the key, the value, the variable and what was expected",
        arguments: [
            (
                "AVIARY_ORDERS_PORT", "80a",
                #"orders: port = "80a" (from AVIARY_ORDERS_PORT): expected an integer in 1...65535"#
            ),
            (
                "AVIARY_ORDERS_PORT", "70000",
                #"orders: port = "70000" (from AVIARY_ORDERS_PORT): expected an integer in 1...65535"#
            ),
            ("PORT", "0", #"orders: port = "0" (from PORT): expected an integer in 1...65535"#),
            (
                "AVIARY_ORDERS_POOL_SIZE", "ten",
                #"orders: pool_size = "ten" (from AVIARY_ORDERS_POOL_SIZE): expected an integer in 1...100"#
            ),
            (
                "AVIARY_ORDERS_DRAIN_DELAY", "5 seconds",
                #"orders: drain_delay = "5 seconds" (from AVIARY_ORDERS_DRAIN_DELAY): expected a duration such as 250ms, 5s or 2m"#
            ),
            (
                "AVIARY_ORDERS_REQUEST_TIMEOUT", "-1s",
                #"orders: request_timeout = "-1s" (from AVIARY_ORDERS_REQUEST_TIMEOUT): expected a duration such as 250ms, 5s or 2m"#
            ),
            (
                "AVIARY_ORDERS_DRY_RUN", "maybe",
                #"orders: dry_run = "maybe" (from AVIARY_ORDERS_DRY_RUN): expected true or false"#
            ),
            (
                "AVIARY_ORDERS_REGION", "asia",
                #"orders: region = "asia" (from AVIARY_ORDERS_REGION): expected one of eu, us"#
            ),
        ]
    )
    func invalidEnvironmentValue(variable: String, value: String, expected: String) {
        #expect(loadingProblems(environment: [variable: value]) == expected)
    }

    @Test("an invalid value in the file names the file and line")
    func invalidFileValue() throws {
        let yaml = try TemporaryYAML("orders:\n  port: 8200\n  pool_size: 0\n")
        #expect(
            loadingProblems(file: yaml.path)
                == #"orders: pool_size = "0" (from \#(yaml.path):3): expected an integer in 1...100"#
        )
    }

    @Test("a list where a value belongs is not a scalar")
    func nonScalarValue() throws {
        let yaml = try TemporaryYAML("orders:\n  host: [a, b]\n")
        #expect(
            loadingProblems(file: yaml.path)
                == #"orders: host = <not a scalar> (from \#(yaml.path):2): expected a string"#
        )
    }

    @Test("an unknown key in the service's section names the file and line, not the value")
    func unknownFileKey() throws {
        let yaml = try TemporaryYAML("orders:\n  port: 8200\n  databse_url: postgres://admin:hunter2@db/orders\n")
        let message = loadingProblems(file: yaml.path)
        #expect(message == "orders: databse_url = <redacted> (from \(yaml.path):3): unknown key, \(Self.knownKeys)")
        #expect(message?.contains("hunter2") == false)
    }

    @Test("an unknown AVIARY_<SERVICE>_ variable fails")
    func unknownVariable() {
        #expect(
            loadingProblems(environment: ["AVIARY_ORDERS_PROT": "8200"])
                == "orders: prot = <redacted> (from AVIARY_ORDERS_PROT): unknown key, \(Self.knownKeys)"
        )
    }

    @Test(
        "invalid YAML names the file and the line",
        arguments: [
            (
                "orders:\n  port: 8200\n  host: a: b\n  version: 1\n", 3,
                "mapping values are not allowed in this context"
            ),
            (
                "orders:\n  port: 8200\n  drain_delay: [5s\n", 4,
                "did not find expected ',' or ']' (while parsing a flow sequence at line 3)"
            ),
        ]
    )
    func invalidYAML(contents: String, line: Int, problem: String) throws {
        let yaml = try TemporaryYAML(contents)
        #expect(loadingProblems(file: yaml.path) == "orders: invalid YAML (from \(yaml.path):\(line)): \(problem)")
    }

    @Test("duplicate keys are invalid YAML")
    func duplicateKeys() throws {
        let yaml = try TemporaryYAML("orders:\n  port: 8200\n  port: 8300\n")
        #expect(
            loadingProblems(file: yaml.path) == "orders: invalid YAML (from \(yaml.path):2): duplicate key port"
        )
    }

    @Test("a file that is not a mapping of services, or a section that is not a mapping, fails")
    func wrongShapes() throws {
        let list = try TemporaryYAML("- orders\n")
        #expect(
            loadingProblems(file: list.path)
                == "orders: invalid configuration (from \(list.path):1): expected a mapping of service names to settings"
        )
        let scalar = try TemporaryYAML("orders: 8102\n")
        #expect(
            loadingProblems(file: scalar.path)
                == "orders: section orders (from \(scalar.path):1): expected a mapping of keys to values"
        )
    }

    @Test("a file that cannot be read fails, naming it")
    func unreadableFile() throws {
        let yaml = try TemporaryYAML("orders: {}\n")
        let message = try #require(loadingProblems(file: yaml.directory.path))
        #expect(message.hasPrefix("orders: cannot read \(yaml.directory.path): "))
    }

    @Test("every problem is reported at once, one line each, file before environment")
    func severalProblems() throws {
        let yaml = try TemporaryYAML("orders:\n  port: http\n  colour: blue\n  dry_run: perhaps\n")
        let message = loadingProblems(
            file: yaml.path,
            environment: ["AVIARY_ORDERS_REGION": "mars", "AVIARY_ORDERS_DATABASE_URL": "hunter2", "PORT": "x"]
        )
        let expected = [
            #"orders: port = "http" (from \#(yaml.path):2): expected an integer in 1...65535"#,
            "orders: colour = <redacted> (from \(yaml.path):3): unknown key, \(Self.knownKeys)",
            #"orders: dry_run = "perhaps" (from \#(yaml.path):4): expected true or false"#,
            #"orders: port = "x" (from PORT): expected an integer in 1...65535"#,
            "orders: database_url = <redacted> (from AVIARY_ORDERS_DATABASE_URL): expected an absolute URL",
            #"orders: region = "mars" (from AVIARY_ORDERS_REGION): expected one of eu, us"#,
        ]
        #expect(message?.split(separator: "\n").map(String.init) == expected)
        #expect(message?.contains("hunter2") == false)
    }

    @Test("a secret's invalid value is redacted in the file too")
    func secretRedactedFromFile() throws {
        let yaml = try TemporaryYAML("orders:\n  database_url: hunter2\n")
        #expect(
            loadingProblems(file: yaml.path)
                == "orders: database_url = <redacted> (from \(yaml.path):2): expected an absolute URL"
        )
    }

    @Test("grace_period must be longer than drain_delay")
    func gracePeriodAfterDrainDelay() {
        #expect(
            loadingProblems(environment: ["AVIARY_ORDERS_GRACE_PERIOD": "5s"])
                == #"orders: grace_period = "5s" (from AVIARY_ORDERS_GRACE_PERIOD): expected a duration longer than drain_delay (5s)"#
        )
    }

    @Test("a key without a default must be set")
    func requiredKey() throws {
        let schema = ConfigurationSchema(
            ServiceOptions(name: "orders"),
            keys: [.url("database_url", secret: true, "The database")]
        )
        #expect(
            loadingProblems(schema)
                == "orders: database_url is not set: expected an absolute URL in orders.database_url or AVIARY_ORDERS_DATABASE_URL"
        )
        let configuration = try ServiceConfiguration.load(
            schema,
            file: nil,
            environment: ["AVIARY_ORDERS_DATABASE_URL": "postgres://db/orders"]
        )
        #expect(configuration.url("database_url") == URL(string: "postgres://db/orders"))
    }

    // MARK: --print-config

    @Test("--print-config renders every key sorted, with its source, secrets redacted")
    func rendered() throws {
        let yaml = try TemporaryYAML("orders:\n  port: 8200\n  drain_delay: 2s\n")
        let configuration = try ServiceConfiguration.load(
            ordersSchema,
            file: yaml.path,
            environment: [
                "AVIARY_ORDERS_DATABASE_URL": "postgres://admin:s3cret@db/orders", "AVIARY_ORDERS_DRY_RUN": "on",
            ]
        )
        let expected = """
            database_url = <redacted>  (AVIARY_ORDERS_DATABASE_URL)
            drain_delay = 2s  (\(yaml.path):3)
            dry_run = true  (AVIARY_ORDERS_DRY_RUN)
            grace_period = 30s  (default)
            host = 127.0.0.1  (default)
            pool_size = 10  (default)
            port = 8200  (\(yaml.path):2)
            region = eu  (default)
            request_timeout = 250ms  (default)
            version = 0.0.0  (default)
            """
        #expect(configuration.rendered() == expected)
        #expect(!configuration.rendered().contains("s3cret"))
        #expect("\(configuration)" == expected)
        var dumped = ""
        dump(configuration, to: &dumped)
        #expect(!dumped.contains("s3cret"))
        #expect(configuration.url("database_url").absoluteString == "postgres://admin:s3cret@db/orders")
    }

    @Test(
        "the command line names the file and asks for --print-config",
        arguments: [
            (["orders"], "aviary.yaml", false),
            (["orders", "--print-config"], "aviary.yaml", true),
            (["orders", "--config", "prod.yaml"], "prod.yaml", false),
            (["orders", "--verbose", "--config=/etc/aviary.yaml", "--print-config"], "/etc/aviary.yaml", true),
        ]
    )
    func commandLine(arguments: [String], file: String, printConfig: Bool) {
        let request = ServiceConfiguration.CommandLineRequest(arguments)
        #expect(request.file == file)
        #expect(request.printConfig == printConfig)
    }

    @Test("durations render in the largest exact unit", arguments: ["250ms", "5s", "2m", "1h", "1500ms", "0s"])
    func durationRoundTrip(text: String) throws {
        let value = try #require(ConfigurationType.duration.parse(text))
        #expect(value.description == text)
    }
}

@Suite("ServiceConfiguration.loadOrExit", .timeLimit(.minutes(3)))
struct LoadOrExitTests {
    @Test("--print-config prints the configuration and exits 0")
    func printConfigExits() async throws {
        let result = try await #require(
            processExitsWith: .success,
            observing: [\.standardOutputContent]
        ) {
            _ = ServiceConfiguration.loadOrExit(
                ordersSchema,
                arguments: ["orders", "--config", "/nonexistent/aviary.yaml", "--print-config"],
                environment: ["PORT": "8300"]
            )
            Issue.record("loadOrExit returned")
        }
        let output = String(decoding: result.standardOutputContent, as: UTF8.self)
        #expect(output.contains("port = 8300  (PORT)\n"))
        #expect(output.contains("database_url = <redacted>  (default)\n"))
    }

    @Test("an invalid configuration prints its problems to standard error and exits 78")
    func invalidExits() async throws {
        let result = try await #require(
            processExitsWith: .exitCode(78),
            observing: [\.standardErrorContent]
        ) {
            _ = ServiceConfiguration.loadOrExit(
                ordersSchema,
                arguments: ["orders"],
                environment: ["AVIARY_ORDERS_PORT": "80a"]
            )
        }
        let output = String(decoding: result.standardErrorContent, as: UTF8.self)
        #expect(output == "orders: port = \"80a\" (from AVIARY_ORDERS_PORT): expected an integer in 1...65535\n")
    }

    @Test("without --print-config it returns the configuration")
    func returns() {
        let configuration = ServiceConfiguration.loadOrExit(
            ordersSchema,
            arguments: ["orders", "--config", "/nonexistent/aviary.yaml"],
            environment: ["PORT": "8300"]
        )
        #expect(configuration.int("port") == 8300)
    }
}
