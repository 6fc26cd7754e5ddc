//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryService
import AviaryStorage
import AviaryTelemetry
import Foundation
import Logging
import Shop

// `swift run shop`: users, orders, payments, notifications and inventory in one process, on
// 8101-8105 by default, behind the API gateway on 8080; orders' events go through the message log
// at .aviary/shop/broker.db. Options: --data-dir PATH, --broker-url URL, --host ADDRESS,
// --<service>-port N (0 = any free port), --gateway-port N, --no-gateway,
// --payments-decline-above CENTS, --config PATH (default aviary.yaml), --print-config.
// Each service's port also comes from its section of aviary.yaml and AVIARY_<SERVICE>_PORT; a
// command-line port wins.

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("shop: \(message)\n".utf8))
    exit(2)
}

var options = ShopOptions()
var configFile = ServiceConfiguration.defaultFile
var printConfig = false
var portsFromCommandLine: Set<String> = []
var declineAboveFromCommandLine = false
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    func value() -> String {
        guard let value = arguments.popFirst() else { fail("\(argument): expected a value") }
        return value
    }
    switch argument {
    case "--help", "-h":
        print(
            """
            usage: shop [--data-dir PATH] [--broker-url URL] [--host ADDRESS] [--users-port N] [--orders-port N]
                        [--payments-port N] [--notifications-port N] [--inventory-port N]
                        [--gateway-port N | --no-gateway] [--payments-decline-above CENTS]
                        [--config PATH] [--print-config]
            Runs the Shop reference system (users, orders, payments, notifications, inventory) in one
            process, behind the API gateway (port 8080 by default: /api/login, /api/users/, /api/orders,
            /api/payments, /api/inventory/, /api/notifications). Placing an order runs a saga in orders:
            reserve stock (inventory), charge (payments), confirm; with --payments-decline-above CENTS
            (or AVIARY_PAYMENTS_DECLINE_ABOVE) payments declines larger charges and the saga
            compensates. Orders publish their events through the message log at --broker-url
            (default sqlite://<data-dir>/broker.db); notifications consume them.
            """)
        exit(0)
    case "--data-dir": options.dataDirectory = value()
    case "--broker-url":
        let text = value()
        do {
            _ = try StoreURL(parsing: text)
        } catch {
            fail("--broker-url: \(error.message)")
        }
        options.brokerURL = text
    case "--config": configFile = value()
    case "--print-config": printConfig = true
    case "--host": options.host = value()
    case "--no-gateway": options.gatewayPort = nil
    case "--payments-decline-above":
        let text = value()
        guard let cents = Int(text), cents >= 1 else {
            fail("--payments-decline-above: expected a positive number of cents, got \"\(text)\"")
        }
        options.paymentsDeclineAbove = cents
        declineAboveFromCommandLine = true
    case "--gateway-port":
        let text = value()
        guard let port = Int(text), (1...65535).contains(port) else {
            fail("--gateway-port: expected a port in 1...65535, got \"\(text)\"")
        }
        options.gatewayPort = port
    case let flag where flag.hasPrefix("--") && flag.hasSuffix("-port"):
        let service = String(flag.dropFirst(2).dropLast(5))
        guard ShopOptions.services.contains(service) else {
            fail(
                "\(flag): unknown service \"\(service)\"; expected one of \(ShopOptions.services.joined(separator: ", "))"
            )
        }
        let text = value()
        guard let port = Int(text), (0...65535).contains(port) else {
            fail("\(flag): expected a port in 0...65535, got \"\(text)\"")
        }
        options.ports[service] = port
        portsFromCommandLine.insert(service)
    default:
        fail("unknown argument \"\(argument)\"; try --help")
    }
}

// Each service's configuration: defaults < its aviary.yaml section < AVIARY_<SERVICE>_*. PORT and
// HOST are not read: the services share one process.
var environment = ProcessInfo.processInfo.environment
environment["PORT"] = nil
environment["HOST"] = nil
var problems: [String] = []
for service in ShopOptions.services {
    let defaults = ServiceOptions(
        name: service, port: ShopOptions().ports[service] ?? 8100, drainDelay: .zero, gracePeriod: .seconds(30))
    // payments: decline_above (AVIARY_PAYMENTS_DECLINE_ABOVE), 0 declines nothing.
    let keys: [ConfigurationKey] =
        service == "payments"
        ? [.int("decline_above", in: 0...Int.max, default: 0, "Decline charges above this many cents (0: none)")]
        : []
    do {
        let configuration = try ServiceConfiguration.load(
            ConfigurationSchema(defaults, keys: keys), file: configFile, environment: environment)
        var lines = configuration.rendered().split(separator: "\n").map(String.init)
        if portsFromCommandLine.contains(service), let port = options.ports[service] {
            lines = lines.map { $0.hasPrefix("port = ") ? "port = \(port)  (--\(service)-port)" : $0 }
        } else {
            options.ports[service] = configuration.int("port")
        }
        if service == "payments" {
            if declineAboveFromCommandLine, let cents = options.paymentsDeclineAbove {
                lines = lines.map {
                    $0.hasPrefix("decline_above = ") ? "decline_above = \(cents)  (--payments-decline-above)" : $0
                }
            } else {
                let cents = configuration.int("decline_above")
                options.paymentsDeclineAbove = cents > 0 ? cents : nil
            }
        }
        // One process: the longest drain delay of all applies to all.
        options.drainDelay = max(options.drainDelay, configuration.duration("drain_delay"))
        if printConfig {
            print("[\(service)]\n" + lines.joined(separator: "\n"))
        }
    } catch {
        problems.append(error.message)
    }
}
// Tracing: the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT turns it on).
do {
    _ = try TracingConfiguration(service: "shop")
} catch {
    problems.append((error as? AviaryError)?.message ?? "\(error)")
}
if !problems.isEmpty {
    FileHandle.standardError.write(
        Data(("shop: invalid configuration\n" + problems.joined(separator: "\n") + "\n").utf8))
    exit(78)
}
if printConfig {
    exit(0)
}

// Logs: a readable line in a terminal, JSON lines otherwise; AVIARY_LOG_LEVEL / AVIARY_LOG_FORMAT
// override. Metrics: one registry for the process, served at every service's /metrics.
var telemetryConfiguration = TelemetryConfiguration(service: "shop")
do {
    try telemetryConfiguration.applyEnvironment()
} catch {
    fail(error.message)
}
let telemetry = Telemetry.bootstrap(telemetryConfiguration)
options.metrics = telemetry.metrics
options.logger = Logger(label: "aviary.shop")
options.onListening = { service, endpoint in
    print("\(service) listening on \(endpoint.url)")
}

do {
    let shop = try ShopSystem(options: options)
    try await shop.run(handleSignals: true)
} catch {
    fail("\(error)")
}
