//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import PostgresNIO
import Synchronization
import _ConnectionPoolModule

extension PostgresStore {
    /// A request for a connection from the store's pool: its id, and the waiting task's
    /// continuation.
    ///
    /// The store's own request type, not postgres-nio's `ConnectionRequest` (whose initialiser is
    /// not public): with it a call can give up its wait by its request's id
    /// (`pool.cancelLeaseConnection(id)`), so an acquire deadline cancels the request rather than
    /// a task made for the call, and a caller on the pool's loop can wait in its own task
    /// (``execute(_:)``).
    struct LeaseRequest: ConnectionRequestProtocol {
        typealias Connection = PostgresConnection

        let id: Int
        // Unsafe: the pool completes a request exactly once. Its state machine hands a request a
        // connection, or fails it (cancelled, shut down), and forgets it when it does; a later
        // cancellation of that id finds nothing to do. postgres-nio's `ConnectionRequest` relies on
        // the same with a checked continuation, which allocates per lease.
        let continuation: UnsafeContinuation<ConnectionLease<PostgresConnection>, any Error>

        func complete(with result: Result<ConnectionLease<PostgresConnection>, ConnectionPoolError>) {
            self.continuation.resume(with: result.mapError { $0 })
        }
    }

    /// Ids of lease requests, unique per process.
    private static let leaseRequestIDs = Atomic<Int>(0)

    /// A new lease request id.
    static func nextLeaseRequestID() -> Int {
        Self.leaseRequestIDs.wrappingAdd(1, ordering: .relaxed).newValue
    }

    /// A connection from the pool under request `id`, to be released once. Cancelling the task, or
    /// `pool.cancelLeaseConnection(id)`, ends the wait with the pool's `requestCancelled`.
    ///
    /// Not generic, unlike the pool's `withConnection`: called from a generic function (this
    /// store's calls are generic in their result) that one ran unspecialized, and with it the
    /// pool's whole state machine, which then looked its generic types' metadata up at run time at
    /// every lease and release (about 4% of a single publish's client CPU samples more than
    /// `PostgresClient`'s specialised pool). Here the pool's type is concrete, so its inlinable
    /// code is specialised.
    func lease(_ id: Int) async throws -> ConnectionLease<PostgresConnection> {
        try await withTaskCancellationHandler {
            // As postgres-nio's own lease: a task cancelled before its request reaches the pool
            // would otherwise cancel nothing and wait on.
            if Task.isCancelled { throw CancellationError() }
            return try await withUnsafeThrowingContinuation { continuation in
                self.pool.leaseConnection(LeaseRequest(id: id, continuation: continuation))
            }
        } onCancel: {
            self.pool.cancelLeaseConnection(id)
        }
    }
}
