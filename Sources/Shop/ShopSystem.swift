//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AsyncHTTPClient
import AviaryAuth
public import AviaryCore
public import AviaryGateway
public import AviaryMessaging
import AviaryResilience
import AviaryService
import AviaryStorage
public import AviaryTelemetry
import Hummingbird
public import Logging
import NIOCore
import ServiceLifecycle
import UnixSignals

/// How to run Shop.
///
/// ```swift
/// var options = ShopOptions()
/// options.ports["orders"] = 0          // any free port
/// options.dataDirectory = "/tmp/shop"
/// ```
public struct ShopOptions: Sendable {
    /// The address every service binds to.
    public var host: String = "127.0.0.1"
    /// The port of each service; 0 picks a free one.
    public var ports: [String: Int] = [
        "users": 8101, "orders": 8102, "payments": 8103, "notifications": 8104, "inventory": 8105,
    ]
    /// The port of the API gateway in front of the services (``ShopSystem/gatewayYAML(port:)``);
    /// nil runs no gateway.
    public var gatewayPort: Int? = 8080
    /// The folder that holds each service's SQLite database (`<service>.db`).
    public var dataDirectory: String = ".aviary/shop"
    /// The message log the services publish to and consume from; nil means
    /// `sqlite://<dataDirectory>/broker.db`.
    public var brokerURL: String?
    /// How often the outbox relay of `orders` looks for events that no in-process wake-up
    /// announced (written by another process).
    public var messagingPollInterval: Duration = .seconds(1)
    /// The clock the circuit breakers use (tests inject a ``AviaryCore/ManualClock``).
    public var breakerClock: any MonotonicClock = SystemClock()
    /// How long a dependency's breaker stays open before it lets a probe through.
    public var breakerOpenDuration: Duration = .seconds(10)
    /// Calls a breaker must see before it judges the failure rate.
    public var breakerMinimumCalls: Int = 5
    /// How long one attempt of a call to another service may take (a timed-out GET is retried).
    public var upstreamAttemptTimeout: Duration = .milliseconds(500)
    /// How long a call to another service may take in all, retries included.
    public var upstreamTotalTimeout: Duration = .seconds(2)
    /// Attempts per call to another service (idempotent calls only are retried).
    public var upstreamAttempts: Int = 3
    /// Whether those retries draw from a retry budget (20 % of calls plus 10 per second), so that
    /// an outage is not multiplied by retries. Crash tests turn it off to ride out restarts.
    public var upstreamRetryBudget: Bool = true
    /// `payments` declines charges above this many cents (`402` `payment-declined`), which
    /// makes orders' saga compensate: the stock is released and the order cancelled. nil declines
    /// none. `shop --payments-decline-above CENTS`, `AVIARY_PAYMENTS_DECLINE_ABOVE`, or
    /// `payments: {decline_above: CENTS}` in `aviary.yaml`.
    public var paymentsDeclineAbove: Int?
    /// The stock `inventory` starts with: SKUs it does not have yet are added at start with
    /// this many units (a restart keeps the stock it has).
    public var inventorySeed: [String: Int] = [
        "book-1": 1000, "book-2": 1000, "mug-1": 500, "poster-1": 200, "pen-1": 5000,
    ]
    /// Whether the services require tokens from `users` (and orders' saga sends its own service
    /// token). Off only for crash tests and experiments that run a few services without `users`.
    public var requireTokens: Bool = true
    /// A failpoint: called with a name at each boundary crash tests kill a process at (the saga's
    /// `saga.<step>.before` / `.after` for `place`, `reserve`, `charge`, `commit`, `confirm`,
    /// `release`, `refund`, `cancel`; `inventory.reserve.committed`, `inventory.release.committed`,
    /// `inventory.commit.committed`, `payments.charge.committed`, `payments.refund.committed` after
    /// a callee's transaction and before its answer). Does nothing by default.
    public var failpoint: @Sendable (String) -> Void = { _ in }
    /// Called once per service when it listens (the executable prints the address).
    public var onListening: @Sendable (String, Endpoint) async -> Void = { _, _ in }
    /// The logger every service logs through.
    public var logger: Logger = Logger(label: "aviary.shop")
    /// The registry every service records its HTTP metrics in and serves at `/metrics`; nil
    /// gives each service its own. The executable passes the one it bootstrapped swift-metrics
    /// with, so that resilience metrics appear too.
    public var metrics: MetricsRegistry?
    /// How long `/readyz` fails at shutdown before a service stops accepting connections; zero
    /// for a developer's machine, a few seconds behind a load balancer.
    public var drainDelay: Duration = .zero

    /// Each service's tracing: `nil` for a service that is not traced. By default the standard
    /// `OTEL_*` variables decide (see `TracingConfiguration`): with
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` set, every service exports its spans under its own name.
    public var tracing: @Sendable (_ service: String) throws -> TracingBackend? = { service in
        try TracingConfiguration(service: service, version: ShopOptions.version).map { try TracingBackend($0) }
    }

    /// The version every Shop service reports.
    public static let version = "0.1.0"

    /// The services, in start order.
    public static let services = ["users", "inventory", "payments", "orders", "notifications"]

    /// The `orders` topic's layout in the message log.
    public static let ordersTopic = TopicOptions(partitions: 4)

    /// The message log's URL: ``brokerURL``, or the SQLite file `broker.db` in ``dataDirectory``.
    public var resolvedBrokerURL: String { self.brokerURL ?? "sqlite://\(self.dataDirectory)/broker.db" }

    /// Default options: ports 8101-8105 on 127.0.0.1, data under `.aviary/shop`, the message log
    /// in `.aviary/shop/broker.db`.
    public init() {}
}

/// The Shop reference system: `users`, `inventory`, `payments`, `orders` and `notifications`, each
/// a Hummingbird application on its own port with its own SQLite database, run together in one
/// process (or one per process: ``run(services:handleSignals:)``).
///
/// `orders` is event-sourced and places each order with a saga (reserve stock in `inventory`,
/// charge with `payments`, commit the stock, confirm; compensated by refund, release and cancel),
/// run by a `SagaRunner` that resumes unfinished sagas after a restart. Each order event and its
/// CloudEvent commit in one transaction (its outbox); its ``AviaryMessaging/OutboxRelay``
/// publishes the events to the message log (`broker.db`), and `notifications` consumes them
/// idempotently (its inbox) into notifications.
///
/// ```swift
/// let shop = try ShopSystem(options: ShopOptions())
/// try await shop.run()   // until cancelled, or SIGTERM/SIGINT when run by `swift run shop`
/// ```
public final class ShopSystem: Sendable {
    /// Where each service listens once it has started.
    public let addressBook = AddressBook()
    let options: ShopOptions
    let users: UsersService
    let inventory: InventoryService
    let payments: PaymentsService
    let orders: OrdersService
    let notifications: NotificationsService
    /// The message log between the services.
    let broker: Broker
    let tracing: [String: TracingBackend]

    /// Opens (and migrates) every service's database.
    ///
    /// - Throws: `AviaryError` naming the database that could not be opened, or an invalid
    ///   tracing variable.
    public init(options: ShopOptions) throws {
        self.options = options
        var tracing: [String: TracingBackend] = [:]
        for service in ShopOptions.services {
            tracing[service] = try options.tracing(service)
        }
        self.tracing = tracing
        func url(_ service: String) -> StoreURL {
            StoreURL(.sqlite(path: "\(options.dataDirectory)/\(service).db"))
        }
        func logger(_ service: String) -> Logger {
            var logger = options.logger
            logger[metadataKey: "service"] = "\(service)"
            return logger
        }
        var policy = Upstream.Policy()
        policy.breaker.waitDurationInOpenState = options.breakerOpenDuration
        policy.breaker.minimumNumberOfCalls = options.breakerMinimumCalls
        policy.breaker.slidingWindow = .countBased(max(10, options.breakerMinimumCalls))
        policy.breaker.permittedNumberOfCallsInHalfOpenState = 1
        policy.perTryTimeout = options.upstreamAttemptTimeout
        policy.totalTimeout = options.upstreamTotalTimeout
        policy.maxAttempts = max(1, options.upstreamAttempts)
        policy.retryBudget = options.upstreamRetryBudget
        let users = try UsersService(url: url("users"), logger: logger("users"), tracer: tracing["users"]?.tracer)
        self.users = users
        self.inventory = try InventoryService(
            url: url("inventory"), seed: options.inventorySeed, logger: logger("inventory"),
            tracer: tracing["inventory"]?.tracer, failpoint: options.failpoint)
        self.payments = try PaymentsService(
            url: url("payments"), logger: logger("payments"), declineAbove: options.paymentsDeclineAbove,
            tracer: tracing["payments"]?.tracer, failpoint: options.failpoint)
        let book = self.addressBook
        func upstream(_ name: String) -> Upstream {
            Upstream(
                service: "orders", name: name, book: book, policy: policy, breakerClock: options.breakerClock,
                metrics: options.metrics, tracer: tracing["orders"]?.tracer)
        }
        // orders' saga calls inventory and payments on its own behalf (also after a restart, when
        // the customer's token is long gone) with a service token from users.
        var mint: (@Sendable () async throws -> String)?
        if options.requireTokens {
            mint = {
                try await users.makeIssuer().issue(
                    subject: "orders", scopes: ["inventory", "payments"], roles: ["service"])
            }
        }
        let serviceToken = ServiceToken(mint: mint)
        self.orders = try OrdersService(
            url: url("orders"), logger: logger("orders"), users: upstream("users"), inventory: upstream("inventory"),
            payments: upstream("payments"), serviceToken: serviceToken, tracer: tracing["orders"]?.tracer,
            failpoint: options.failpoint)
        self.notifications = try NotificationsService(
            url: url("notifications"), logger: logger("notifications"), tracer: tracing["notifications"]?.tracer)
        self.broker = Broker(url: options.resolvedBrokerURL)
    }

    /// The id of the order that `POST /orders` with `Idempotency-Key: idempotencyKey` places for
    /// `user`: the same for every repeat of the request (which is what makes it idempotent).
    ///
    /// ```swift
    /// let id = ShopSystem.orderID(user: "alice", idempotencyKey: "checkout-42")   // "ord-…"
    /// ```
    public static func orderID(user: String, idempotencyKey: String) -> String {
        OrdersService.orderID(user: user, idempotencyKey: idempotencyKey)
    }

    /// One service as an ``AviaryService/AviaryApplication`` bound to `port` (0 for any), which
    /// records its address when it listens. `orders` and `payments` serve their routes behind
    /// `authenticator`: a valid token from `users`, with the service's scope.
    func application(
        _ service: String, port: Int, authenticator: JWTAuthenticator?, issuer: JWTIssuer?,
        metrics: MetricsRegistry
    ) -> AviaryApplication<AviaryRequestContext> {
        var app = AviaryApplication(
            ServiceOptions(
                name: service, version: ShopOptions.version, host: self.options.host, port: port,
                drainDelay: self.options.drainDelay, gracePeriod: self.options.drainDelay + .seconds(30)),
            context: AviaryRequestContext.self,
            logger: self.options.logger,
            metrics: metrics,
            tracing: self.tracing[service]
        )
        func secured(_ scope: String) -> RouterGroup<AviaryRequestContext> {
            // Probes and /metrics stay open; the API needs a token.
            let group = app.router.group()
            if let authenticator {
                group.add(middleware: JWTAuthMiddleware(authenticator, realm: "shop"))
                    .add(middleware: RequireScopes([scope], realm: "shop"))
            }
            return group
        }
        switch service {
        case "notifications":
            self.notifications.addRoutes(to: secured("notifications"))
            self.notifications.healthChecks.forEach { app.addHealthCheck($0) }
        case "users":
            if let issuer { self.users.addRoutes(to: app.router, issuer: issuer) }
            self.users.healthChecks.forEach { app.addHealthCheck($0) }
        case "payments":
            self.payments.addRoutes(to: secured("payments"))
            self.payments.healthChecks.forEach { app.addHealthCheck($0) }
        case "inventory":
            self.inventory.addRoutes(open: app.router, secured: secured("inventory"))
            self.inventory.healthChecks.forEach { app.addHealthCheck($0) }
        default:
            self.orders.addRoutes(to: secured("orders"))
            self.orders.healthChecks.forEach { app.addHealthCheck($0) }
        }
        let book = self.addressBook
        let onListening = self.options.onListening
        app.onListening = { endpoint in
            book.set(service, endpoint)
            await onListening(service, endpoint)
        }
        return app
    }

    /// Where `service` listens: from the address book once it has started, otherwise its
    /// configured port, which must then not be 0 (a free port is known only once it listens).
    func knownEndpoint(of service: String, neededBy dependent: String) throws -> Endpoint {
        if let endpoint = self.addressBook.endpoint(of: service) { return endpoint }
        let port = self.options.ports[service] ?? 0
        guard port != 0 else {
            throw AviaryError(
                .failedPrecondition, "\(service) is on port 0 (any free port), so it must listen before \(dependent)")
        }
        return Endpoint(host: self.options.host, port: port)
    }

    /// How `orders` and `payments` verify tokens: ES256 only, issuer `shop-users`, audience
    /// `shop`, keys from the JWKS `users` publishes (fetched on first use, refetched for an
    /// unknown `kid`).
    func authenticator() async throws -> JWTAuthenticator {
        let users = try self.knownEndpoint(of: "users", neededBy: "orders and payments start")
        let configuration = JWTVerifierConfiguration(
            keys: [.jwksURL(users.url + "/.well-known/jwks.json")],
            issuer: ShopTokens.issuer,
            audiences: [ShopTokens.audience],
            allowedAlgorithms: [.es256]
        )
        return try await JWTAuthenticator(configuration, logger: self.options.logger)
    }

    /// What runs for one service: its server and health monitor (see
    /// ``AviaryService/AviaryApplication/makeServices()``), with its checks already run once;
    /// for `orders` also its outbox relay, for `notifications` its consumer of `orders` and the
    /// message log's metrics (``AviaryMessaging/MessageLogMetrics``).
    func services(_ service: String, port: Int) async throws -> [any Service] {
        let isUsers = service == "users"
        let authenticator = isUsers || !self.options.requireTokens ? nil : try await self.authenticator()
        let issuer = isUsers ? try await self.users.makeIssuer() : nil
        // One registry for the service's HTTP metrics and its messaging metrics.
        let metrics = self.options.metrics ?? MetricsRegistry()
        var services = await self.application(
            service, port: port, authenticator: authenticator, issuer: issuer, metrics: metrics
        )
        .makeServices().services
        var logger = self.options.logger
        logger[metadataKey: "service"] = "\(service)"
        switch service {
        case "orders":
            let broker = try await self.broker.log()
            services.append(
                OutboxRelay(
                    store: self.orders.store, log: broker,
                    configuration: .init(
                        pollInterval: self.options.messagingPollInterval,
                        topics: [OrderPlaced.topic: ShopOptions.ordersTopic]),
                    logger: logger, metricsFactory: metrics.factory))
            // The saga runner resumes unfinished sagas (after a crash, or waiting for a retry);
            // the projection keeps the order history caught up.
            services.append(self.orders.runner)
            services.append(ProjectionService(runner: self.orders.history))
        case "notifications":
            let broker = try await self.broker.log()
            // The consumer subscribes at start, so the topic must exist even before orders runs.
            try await broker.createTopic(OrderPlaced.topic, ShopOptions.ordersTopic)
            let apply = self.notifications.inbox.handler { db, message in
                try NotificationsService.apply(message, in: db)
            }
            services.append(
                MessageConsumer(
                    log: broker, configuration: .init(group: NotificationsService.group, topic: OrderPlaced.topic),
                    logger: logger, tracer: self.tracing["notifications"]?.tracer, metricsFactory: metrics.factory,
                    handler: apply))
            // The log's topics and groups (lag above all) at notifications' /metrics.
            services.append(MessageLogMetrics(log: broker, logger: logger, metricsFactory: metrics.factory))
        default:
            break
        }
        return services
    }

    /// The gateway's configuration: `/api/users/…`, `/api/login`, `/api/orders…`, `/api/payments…`,
    /// `/api/inventory/…`, `/api/notifications…` and `/.well-known/jwks.json`, each to its service (which checks
    /// tokens itself).
    ///
    /// - Throws: `AviaryError` when a service's port is still unknown (0 and not listening yet).
    public func gatewayYAML(port: Int) throws -> String {
        var endpoints: [String: String] = [:]
        for service in ShopOptions.services {
            let endpoint = try self.knownEndpoint(
                of: service, neededBy: "the gateway starts (or run shop with --no-gateway)")
            endpoints[service] = "\(endpoint.host):\(endpoint.port)"
        }
        return """
            listen: {address: \(self.options.host):\(port)}
            clusters:
              users: {endpoints: [\(endpoints["users"]!)]}
              orders: {endpoints: [\(endpoints["orders"]!)]}
              payments: {endpoints: [\(endpoints["payments"]!)]}
              inventory: {endpoints: [\(endpoints["inventory"]!)]}
              notifications: {endpoints: [\(endpoints["notifications"]!)]}
            routes:
              - {match: {path: /api/login}, rewrite: {path_prefix: /login}, cluster: users}
              - {match: {path: /.well-known/jwks.json}, cluster: users}
              - {match: {path_prefix: /api/users/}, rewrite: {path_prefix: /users/}, cluster: users}
              - {match: {path_prefix: /api/orders}, rewrite: {path_prefix: /orders}, cluster: orders}
              - {match: {path_prefix: /api/payments}, rewrite: {path_prefix: /payments}, cluster: payments}
              - {match: {path_prefix: /api/inventory/}, rewrite: {path_prefix: /inventory/}, cluster: inventory}
              - {match: {path_prefix: /api/notifications}, rewrite: {path_prefix: /notifications}, cluster: notifications}
            """
    }

    /// The gateway as a service, listening on `port` (0 for any) in front of the services.
    public func gatewayService(port: Int) throws -> GatewayService {
        let configuration = try GatewayConfiguration(yaml: try self.gatewayYAML(port: port), file: "shop-gateway.yaml")
        var logger = self.options.logger
        logger[metadataKey: "service"] = "gateway"
        let onListening = self.options.onListening
        return GatewayService(GatewayServer(configuration: configuration, logger: logger)) { endpoint in
            await onListening("gateway", endpoint)
        }
    }

    /// Runs every service (or only those named in `names`, in start order) until the task is
    /// cancelled, or until SIGTERM/SIGINT when `handleSignals` is true (then in-flight requests
    /// finish before the process exits).
    ///
    /// ```swift
    /// try await shop.run(services: ["inventory"])   // one service per process
    /// ```
    public func run(services names: [String] = ShopOptions.services, handleSignals: Bool = false) async throws {
        var services: [any Service] = []
        for name in ShopOptions.services where names.contains(name) {
            services += try await self.services(name, port: self.options.ports[name] ?? 0)
        }
        if let gatewayPort = self.options.gatewayPort {
            // Last, so that it stops first at shutdown: no new requests reach draining services.
            services.append(try self.gatewayService(port: gatewayPort))
        }
        let group = ServiceGroup(
            configuration: .init(
                services: services.map { .init(service: $0) },
                gracefulShutdownSignals: handleSignals ? [.sigterm, .sigint] : [],
                logger: self.options.logger))
        do {
            try await group.run()
        } catch {
            try? await self.broker.close()
            throw error
        }
        try await self.broker.close()
    }
}
