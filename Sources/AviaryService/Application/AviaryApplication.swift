//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
public import AviaryTelemetry
public import Hummingbird
public import Logging
import NIOCore
public import ServiceLifecycle
public import Tracing
public import UnixSignals

/// Where and how a service runs.
public struct ServiceOptions: Sendable {
    /// The service's name, in probe bodies, logs and the server header.
    public var name: String
    /// The service's version.
    public var version: String
    /// The address to listen on.
    public var host: String
    /// The port to listen on; 0 for any free port.
    public var port: Int
    /// How long `/readyz` fails at shutdown before the server stops accepting connections.
    public var drainDelay: Duration
    /// How long shutdown may take in all (drain, in-flight requests, background services) before
    /// what is left is cancelled.
    public var gracePeriod: Duration

    /// Creates options.
    ///
    /// - Precondition: `port` is in 0...65535, `drainDelay` is not negative and `gracePeriod`
    ///   is longer than `drainDelay`.
    public init(
        name: String,
        version: String = "0.0.0",
        host: String = "127.0.0.1",
        port: Int = 8080,
        drainDelay: Duration = .seconds(5),
        gracePeriod: Duration = .seconds(30)
    ) {
        precondition((0...65535).contains(port), "ServiceOptions.port must be in 0...65535, got \(port)")
        precondition(drainDelay >= .zero, "ServiceOptions.drainDelay must not be negative, got \(drainDelay)")
        precondition(gracePeriod > drainDelay, "ServiceOptions.gracePeriod must be longer than drainDelay")
        self.name = name
        self.version = version
        self.host = host
        self.port = port
        self.drainDelay = drainDelay
        self.gracePeriod = gracePeriod
    }
}

/// A service: a Hummingbird application with health probes, problem details and graceful
/// shutdown, run in a `ServiceGroup` with its background services.
///
/// ```swift
/// var app = AviaryApplication(ServiceOptions(name: "orders", port: 8102))
/// app.addHealthCheck(HealthCheck("database", probes: [.readiness, .startup]) { try await store.ping() })
/// app.router.get("/orders/:id") { _, context in try await orders.get(context.parameters.require("id")) }
/// app.addBackgroundService(outboxRelay)
/// try await app.run()
/// ```
///
/// At SIGTERM or SIGINT (or a graceful shutdown of an enclosing `ServiceGroup`) it shuts down in
/// this order: `/readyz` fails at once; after ``ServiceOptions/drainDelay`` the server stops
/// accepting connections and lets in-flight requests finish; then background services stop in
/// the reverse order they were added; then ``run(gracefulShutdownSignals:)`` returns. Whatever
/// is still running after ``ServiceOptions/gracePeriod`` is cancelled.
public struct AviaryApplication<Context: RequestContext> where Context.Source == ApplicationRequestContextSource {
    /// Where and how the service runs.
    public var options: ServiceOptions
    /// The routes. ``TelemetryMiddleware`` (RED metrics, access log), ``ProblemMiddleware`` and
    /// ``DeadlineMiddleware`` are installed first, so every route is measured, its errors are
    /// problem details and it runs within its caller's remaining budget;
    /// `/metrics` is added at once, `/livez`, `/readyz` and `/startupz` when the service runs.
    public let router: Router<Context>
    /// The registry served at `/metrics`, holding the HTTP server metrics.
    public let metrics: MetricsRegistry
    /// The health checks behind the probes.
    public private(set) var healthChecks: [HealthCheck] = []
    /// Services that run beside the server (relays, consumers), started in order.
    public private(set) var backgroundServices: [any Service] = []
    /// The service's logger; its metadata carries `service`.
    public var logger: Logger
    /// The clock for health schedules and the drain delay; tests pass a `ManualClock`.
    public var clock: any MonotonicClock
    /// The service's tracer when tracing is on (`nil` when off); give it to the service's
    /// `ServiceClient`s and `SQLiteStore`s so that their spans join the request's trace.
    public let tracer: (any Tracer)?
    /// Called when the server listens, with its address (useful with port 0).
    public var onListening: @Sendable (Endpoint) async -> Void = { _ in }

    /// Creates a service whose routes use `Context`.
    ///
    /// - Parameters:
    ///   - options: name, address and shutdown timing.
    ///   - context: the request context type of the routes.
    ///   - logger: the service's logger (label `aviary.<name>` by default).
    ///   - metrics: the registry served at `/metrics`; pass the one given to
    ///     `Telemetry.bootstrap` so that metrics recorded through swift-metrics appear too.
    ///   - clock: the clock for health schedules and the drain delay.
    ///   - tracing: the service's tracer and span exporter, when tracing is on: every request
    ///     then gets a server span (``TracingMiddleware``) and the exporter runs beside the
    ///     server, stopping last so that it flushes the spans of the drain.
    public init(
        _ options: ServiceOptions,
        context: Context.Type = Context.self,
        logger: Logger? = nil,
        metrics: MetricsRegistry = MetricsRegistry(),
        clock: any MonotonicClock = SystemClock(),
        tracing: TracingBackend? = nil
    ) {
        self.options = options
        var logger = logger ?? Logger(label: "aviary.\(options.name)")
        logger[metadataKey: "service"] = "\(options.name)"
        self.logger = logger
        self.metrics = metrics
        self.clock = clock
        self.router = Router(context: Context.self)
        self.tracer = tracing?.tracer
        if let tracing {
            // First, so that the access log line and everything below run inside the span.
            self.router.add(middleware: TracingMiddleware(tracer: tracing.tracer))
            self.backgroundServices.append(tracing.service)
        }
        self.router.add(middleware: TelemetryMiddleware(service: options.name, metrics: metrics, logger: logger))
        self.router.add(middleware: ProblemMiddleware(logger: logger))
        self.router.add(middleware: DeadlineMiddleware(clock: clock))
        self.router.get("/metrics") { _, _ -> Response in
            Response(
                status: .ok,
                headers: [.contentType: MetricsRegistry.contentType],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.expositionBytes()))
            )
        }
    }

    /// Adds a health check; see ``HealthMonitor`` for the probes' semantics.
    public mutating func addHealthCheck(_ check: HealthCheck) {
        self.healthChecks.append(check)
    }

    /// Adds a service that runs beside the server and stops after it, in reverse order.
    public mutating func addBackgroundService(_ service: any Service) {
        self.backgroundServices.append(service)
    }

    /// The health monitor and the services to run, in start order; for callers that run them in
    /// their own `ServiceGroup`. The checks run once before this returns, so that readiness is
    /// known before the first request, and startup is marked done.
    ///
    /// Call it (or ``run(gracefulShutdownSignals:)``) once per application: it adds the probe
    /// routes to ``router``.
    public func makeServices() async -> (health: HealthMonitor, services: [any Service]) {
        let health = HealthMonitor(
            service: self.options.name,
            checks: self.healthChecks,
            drainDelay: self.options.drainDelay,
            clock: self.clock,
            logger: self.logger
        )
        health.addRoutes(to: self.router)
        await health.runChecksOnce()
        health.markStarted()
        let options = self.options
        let onListening = self.onListening
        let server = Application(
            router: self.router,
            configuration: .init(
                address: .hostname(options.host, port: options.port),
                serverName: "\(options.name)/\(options.version)"
            ),
            onServerRunning: { channel in
                await onListening(Endpoint(host: options.host, port: channel.localAddress?.port ?? options.port))
            },
            logger: self.logger
        )
        // Shut down in reverse: health (drain) first, then the server, then background services.
        return (health, self.backgroundServices + [server, health])
    }

    /// Runs the service until a shutdown signal (or the task's cancellation), shutting down as
    /// described above.
    ///
    /// - Parameter gracefulShutdownSignals: the signals that start a graceful shutdown.
    /// - Throws: what a service throws when it fails.
    public func run(gracefulShutdownSignals: [UnixSignal] = [.sigterm, .sigint]) async throws {
        let (_, services) = await self.makeServices()
        var configuration = ServiceGroupConfiguration(
            services: services.map { .init(service: $0) },
            gracefulShutdownSignals: gracefulShutdownSignals,
            cancellationSignals: [],
            logger: self.logger
        )
        configuration.maximumGracefulShutdownDuration = self.options.gracePeriod
        try await ServiceGroup(configuration: configuration).run()
    }
}
