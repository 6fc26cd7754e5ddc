//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

// The `aviary` command line: argument parsing and calls into libraries, nothing else.
//
//   aviary gateway --config gateway.yaml [--threads N] [--check]

import AviaryGateway
import Dispatch
import Foundation
import Logging
import NIOCore
import NIOPosix

/// Exit codes from sysexits.h.
enum ExitCode {
    static let usage: Int32 = 64
    static let config: Int32 = 78
    static let unavailable: Int32 = 69
}

let usage = """
    usage: aviary gateway --config FILE [--threads N] [--check]
           aviary broker topics|dlq --url URL ...   (aviary broker --help)

      gateway   run the API gateway
        --config FILE   the gateway's YAML configuration
        --threads N     event loop threads (default: one per core)
        --check         validate the configuration and exit
    """

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
    let server = GatewayServer(
        configuration: configuration, eventLoopGroup: group, logger: Logger(label: "aviary.gateway"))
    do {
        let address = try await server.start()
        print("aviary gateway listening on \(address.ipAddress ?? "?"):\(address.port ?? 0)")
    } catch {
        fail("aviary gateway: cannot listen on \(configuration.listen.address): \(error)", code: ExitCode.unavailable)
    }
    // Wait for SIGINT or SIGTERM, then stop accepting and exit.
    let signals = [SIGINT, SIGTERM].map { number in
        signal(number, SIG_IGN)
        return DispatchSource.makeSignalSource(signal: number, queue: .main)
    }
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let resumed = AtomicFlag()
        for source in signals {
            source.setEventHandler {
                if resumed.set() { continuation.resume() }
            }
            source.resume()
        }
    }
    try? await server.stop()
    exit(0)
case "broker":
    exit(await brokerCommand(arguments))
default:
    fail("aviary: unknown command \"\(command)\"\n\(usage)", code: ExitCode.usage)
}
