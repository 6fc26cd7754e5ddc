//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

// The `aviary` command line: argument parsing and calls into libraries, nothing else.
//
//   aviary gateway --config gateway.yaml [--threads N] [--watch-interval 2s] [--check]

import AviaryCore
import AviaryGateway
import AviaryTelemetry
import Dispatch
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Exit codes from sysexits.h.
enum ExitCode {
    static let usage: Int32 = 64
    static let config: Int32 = 78
    static let unavailable: Int32 = 69
}

let usage = """
    usage: aviary gateway --config FILE [--threads N] [--watch-interval DURATION] [--check]
           aviary broker topics|dlq --url URL ...   (aviary broker --help)
           aviary events streams|show|follow|projections|rebuild --store URL ...
           aviary sagas list|show|retry|abandon --store URL ...

      gateway   run the API gateway
        --config FILE               the gateway's YAML configuration
        --threads N                 event loop threads (default: one per core)
        --watch-interval DURATION   reload FILE when its content changes, checking this often (e.g. 2s)
        --check                     validate the configuration and exit

      tracing   OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) set: a span per request, exported over OTLP
      signals   SIGHUP reloads FILE (an invalid one is refused and the running one stays);
                SIGTERM and SIGINT drain (limits.drain_timeout), then exit
    """

/// Writes a line to standard output at once (unbuffered, so that a supervisor sees it).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

func fail(_ message: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data((message + "\n").utf8))
    exit(code)
}

var arguments = Array(CommandLine.arguments.dropFirst())
guard let command = arguments.first else { fail(usage, code: ExitCode.usage) }
arguments.removeFirst()

switch command {
case "gateway":
    var configPath: String?
    var checkOnly = false
    var watchInterval: Duration?
    var threads = System.coreCount
    var index = 0
    while index < arguments.count {
        switch arguments[index] {
        case "--config", "-c":
            guard index + 1 < arguments.count else {
                fail("aviary gateway: --config needs a file\n\(usage)", code: ExitCode.usage)
            }
            configPath = arguments[index + 1]
            index += 2
        case let argument where argument.hasPrefix("--config="):
            configPath = String(argument.dropFirst("--config=".count))
            index += 1
        case "--threads":
            guard index + 1 < arguments.count, let count = Int(arguments[index + 1]), count > 0 else {
                fail("aviary gateway: --threads needs a positive number\n\(usage)", code: ExitCode.usage)
            }
            threads = count
            index += 2
        case "--watch-interval":
            guard index + 1 < arguments.count, let interval = Duration(aviaryText: arguments[index + 1]),
                interval > .zero
            else {
                fail("aviary gateway: --watch-interval needs a duration such as 2s\n\(usage)", code: ExitCode.usage)
            }
            watchInterval = interval
            index += 2
        case "--check":
            checkOnly = true
            index += 1
        case "--help", "-h":
            print(usage)
            exit(0)
        default:
            fail("aviary gateway: unknown argument \"\(arguments[index])\"\n\(usage)", code: ExitCode.usage)
        }
    }
    guard let configPath else { fail("aviary gateway: --config FILE is required\n\(usage)", code: ExitCode.usage) }
    let configuration: GatewayConfiguration
    do {
        configuration = try GatewayConfiguration(contentsOfFile: configPath)
    } catch {
        fail(error.problems.joined(separator: "\n"), code: ExitCode.config)
    }
    if checkOnly {
        print("\(configPath): valid (\(configuration.clusters.count) clusters, \(configuration.routes.count) routes)")
        exit(0)
    }
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = .info
        return handler
    }
    let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
    let logger = Logger(label: "aviary.gateway")
    // Traces go out over OTLP when the standard OpenTelemetry variables name a collector.
    let tracing: TracingBackend?
    do {
        tracing = try TracingConfiguration(service: "aviary-gateway").map { try TracingBackend($0, logger: logger) }
    } catch {
        fail("aviary gateway: \(error)", code: ExitCode.config)
    }
    let exporters = tracing.map { ServiceGroup(services: [$0.service], logger: logger) }
    let exporting = exporters.map { exporters in Task { try await exporters.run() } }
    let server = GatewayServer(
        configuration: configuration, eventLoopGroup: group, logger: logger, tracer: tracing?.tracer,
        configurationFile: configPath)
    // Signals are handled on the main queue; ignore their default action before the server starts.
    let stopSignals = [SIGINT, SIGTERM].map { number in
        signal(number, SIG_IGN)
        return DispatchSource.makeSignalSource(signal: number, queue: .main)
    }
    signal(SIGHUP, SIG_IGN)
    let reloadSignal = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .main)
    do {
        let address = try await server.start()
        var line = "aviary gateway listening on \(address.ipAddress ?? "?"):\(address.port ?? 0)"
        if let admin = server.adminAddress {
            line += ", admin on \(admin.ipAddress ?? "?"):\(admin.port ?? 0)"
        }
        say(line)
    } catch GatewayServerError.authenticationUnavailable(let message) {
        fail("aviary gateway: \(message)", code: ExitCode.config)
    } catch GatewayServerError.discoveryUnavailable(let message) {
        fail("aviary gateway: \(message)", code: ExitCode.config)
    } catch {
        fail("aviary gateway: cannot listen on \(configuration.listen.address): \(error)", code: ExitCode.unavailable)
    }
    if let watchInterval { server.watchConfigurationFile(every: watchInterval) }
    reloadSignal.setEventHandler {
        Task {
            do throws(GatewayConfigurationError) {
                try await server.reloadFromFile()
                say("aviary gateway: reloaded \(configPath)")
            } catch {
                FileHandle.standardError.write(Data((error.problems.joined(separator: "\n") + "\n").utf8))
            }
        }
    }
    reloadSignal.resume()
    // Wait for SIGINT or SIGTERM, then drain: stop accepting, let requests in flight finish.
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let resumed = AtomicFlag()
        for source in stopSignals {
            source.setEventHandler {
                if resumed.set() { continuation.resume() }
            }
            source.resume()
        }
    }
    say("aviary gateway: draining")
    await server.drain(timeout: server.configuration.limits.drainTimeout)
    try? await server.stop()
    if let exporters {
        // Flushes the spans of the last requests.
        await exporters.triggerGracefulShutdown()
        try? await exporting?.value
    }
    exit(0)
case "events": await EventsCommand.run(arguments)
case "sagas": await SagasCommand.run(arguments)
case "broker":
    exit(await brokerCommand(arguments))
default:
    fail("aviary: unknown command \"\(command)\"\n\(usage)", code: ExitCode.usage)
}
