//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryMessaging
import Synchronization

/// Shop's connection to its message log, opened on first use (opening is asynchronous, and a
/// system that starts no messaging service never opens it) and shared by every service.
final class Broker: Sendable {
    /// The log's store URL.
    let url: String
    private let opening = Mutex<Task<any MessageLog, any Error>?>(nil)

    init(url: String) {
        self.url = url
    }

    /// The log; every caller gets the same one.
    ///
    /// - Throws: ``AviaryMessaging/MessagingError`` when the URL cannot be opened.
    func log() async throws -> any MessageLog {
        let url = self.url
        let task = self.opening.withLock { opening in
            if let opening { return opening }
            let task = Task { try await MessageLogs.open(url: url) }
            opening = task
            return task
        }
        return try await task.value
    }

    /// Closes the log if it was opened.
    func close() async throws {
        guard let task = self.opening.withLock({ $0 }), let log = try? await task.value else { return }
        try await log.close()
    }
}
