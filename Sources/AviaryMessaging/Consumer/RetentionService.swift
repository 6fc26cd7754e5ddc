//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Logging
public import ServiceLifecycle

/// Applies the topics' retention (``MessageLog/applyRetention()``) at an interval: a lifecycle
/// `Service` that one process per log runs (several are harmless, each pass is one transaction).
///
/// ```swift
/// let retention = RetentionService(log: log, interval: .seconds(60), logger: logger)
/// let services = ServiceGroup(services: [retention, consumer], gracefulShutdownSignals: [.sigterm], logger: logger)
/// ```
public struct RetentionService: Service {
    let log: any MessageLog
    let interval: Duration
    let logger: Logger

    /// Creates the service.
    ///
    /// - Parameters:
    ///   - log: the message log.
    ///   - interval: the time between passes (the first runs at start).
    ///   - logger: failures are logged at `warning` and retried at the next pass; deletions at `info`.
    /// - Precondition: `interval` is positive.
    public init(log: any MessageLog, interval: Duration = .seconds(60), logger: Logger) {
        precondition(interval > .zero, "the retention interval must be positive")
        self.log = log
        self.interval = interval
        self.logger = logger
    }

    /// Runs passes until graceful shutdown or cancellation.
    public func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                let deleted = try await self.log.applyRetention()
                if deleted > 0 {
                    self.logger.info("retention deleted messages", metadata: ["aviary.deleted": "\(deleted)"])
                }
            } catch {
                self.logger.warning("applying retention failed", metadata: ["error.message": "\(error)"])
            }
            let interval = self.interval
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            } catch {
                return
            }
        }
    }
}
