//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore
import PostgresNIO
import Synchronization

// Why a connection's close answers the call running on it:
//
// postgres-nio's `PostgresConnection.query` writes its query to the channel with no write promise.
// A query whose write reaches the channel after the channel closed (its handlers are gone by then)
// is dropped by NIO, and nothing ever answers the query's own promise: its caller waits forever.
// Checking `isClosed` before the call narrows that window but cannot close it, since the channel can
// close between the check and the write (a terminated backend, a restart, TCP_USER_TIMEOUT).
//
// So every pooled connection is watched: the pool's factory registers it, with one callback on its
// close future (per connection, not per call), and each call registers its answer while it runs.
// A dedicated connection (`withDedicatedConnection`, a LISTEN session) has a watch of its own.
// When the connection closes, the call still running on it after a short grace is answered with
// `unavailable`. The grace lets postgres-nio answer first with its own error, which it does for
// every query it received before the close (the channel's inactive event fails them before the
// close future completes): the close only answers what postgres-nio dropped.
//
// The dropped query's task itself stays suspended (its promise is never completed, and nothing
// can cancel it): a task and its lease per dropped query, which happens only in the instant a
// connection closes. The caller, and the pool, go on.

extension PostgresStore {
    /// The pooled connections that are open, each with its ``ConnectionWatch``.
    final class ConnectionCalls: Sendable {
        /// How long a call may still run after its connection closed before it is answered.
        let grace: TimeAmount
        private let address: PostgresAddress
        private let open = Mutex<[PostgresConnection.ID: ConnectionWatch]>([:])

        init(address: PostgresAddress, grace: TimeAmount = .milliseconds(500)) {
            self.address = address
            self.grace = grace
        }

        /// Watches a connection the pool opened, until it closes.
        func opened(_ connection: PostgresConnection) {
            let id = connection.id
            self.open.withLock { $0[id] = ConnectionWatch() }
            // Registered after the entry: a connection that has already closed removes it at once.
            connection.closeFuture.whenComplete { _ in self.closed(id, on: connection.eventLoop) }
        }

        /// The watch of connection `id`; `nil` once it has closed.
        func watch(_ id: PostgresConnection.ID) -> ConnectionWatch? {
            self.open.withLock { $0[id] }
        }

        /// The number of connections watched (for tests).
        var count: Int { self.open.withLock { $0.count } }

        /// Watches a connection outside the pool (``PostgresStore/withDedicatedConnection(_:)``)
        /// until it closes: the watch is the caller's, not in the table.
        func watchDedicated(_ connection: PostgresConnection) -> ConnectionWatch {
            let watch = ConnectionWatch()
            connection.closeFuture.whenComplete { _ in
                guard let call = watch.close() else { return }
                self.answer(call, closedOn: connection.eventLoop)
            }
            return watch
        }

        private func closed(_ id: PostgresConnection.ID, on eventLoop: any EventLoop) {
            guard let call = self.open.withLock({ $0.removeValue(forKey: id) })?.close() else { return }
            self.answer(call, closedOn: eventLoop)
        }

        /// Answers `call`, whose connection closed, after the grace.
        private func answer(_ call: any ClosableCall, closedOn eventLoop: any EventLoop) {
            let error = AviaryError(
                .unavailable,
                "the connection to PostgreSQL at \(self.address) closed during the call; if it was committing a transaction, whether that committed is unknown"
            )
            eventLoop.scheduleTask(in: self.grace) { call.connectionClosed(error) }
        }
    }

    /// One pooled connection: whether it has closed, and the call running on it (the pool leases a
    /// connection to one call at a time). A call looks its connection's watch up once; beginning
    /// and ending it take the watch's own lock, not the store's table.
    final class ConnectionWatch: Sendable {
        private let state = Mutex<(closed: Bool, call: (any ClosableCall)?)>((false, nil))

        /// Records `call` as running on the connection; false when the connection has closed.
        private func begin(_ call: any ClosableCall) -> Bool {
            self.state.withLock { state in
                guard !state.closed else { return false }
                state.call = call
                return true
            }
        }

        /// The call has ended.
        private func end() {
            self.state.withLock { $0.call = nil }
        }

        /// Runs `body` as the connection's call, answerable by its close through `answer`; throws
        /// `closed` without running it when the connection has closed already.
        func run<T: Sendable>(
            _ answer: CallAnswer<T>, closed: @autoclosure () -> AviaryError, _ body: () async throws -> T
        ) async throws -> T {
            guard self.begin(answer) else { throw closed() }
            defer { self.end() }
            return try await body()
        }

        /// The connection closed: no call begins on it any more; returns the one running.
        func close() -> (any ClosableCall)? {
            self.state.withLock { state in
                state.closed = true
                defer { state.call = nil }
                return state.call
            }
        }
    }
}

/// A call that its connection's close can answer.
protocol ClosableCall: Sendable {
    /// Answers the call with `error` unless it has been answered.
    func connectionClosed(_ error: AviaryError)
}

/// The answer of one call, given once: by the call when it ends, or by its connection's close
/// (``PostgresStore/ConnectionCalls``), whichever comes first; the later one is ignored.
final class CallAnswer<T: Sendable>: ClosableCall {
    private enum State {
        case pending
        // Unchecked: the state below resumes it exactly once (the checked kind costs an allocation
        // per call, on every query's path).
        case waiting(UnsafeContinuation<T, any Error>)
        case answered(Result<T, any Error>)
        case taken
    }

    private let state = Mutex<State>(.pending)

    /// Gives the answer, unless one was given.
    func answer(_ result: Result<T, any Error>) {
        let waiter: UnsafeContinuation<T, any Error>? = self.state.withLock { state in
            switch state {
            case .pending:
                state = .answered(result)
                return nil
            case .waiting(let continuation):
                state = .taken
                return continuation
            case .answered, .taken:
                return nil
            }
        }
        waiter?.resume(with: result)
    }

    func connectionClosed(_ error: AviaryError) {
        self.answer(.failure(error))
    }

    /// Waits for the answer; call once.
    var value: T {
        get async throws {
            try await withUnsafeThrowingContinuation { continuation in
                let ready: Result<T, any Error>? = self.state.withLock { state in
                    switch state {
                    case .pending:
                        state = .waiting(continuation)
                        return nil
                    case .answered(let result):
                        state = .taken
                        return result
                    case .waiting, .taken:
                        preconditionFailure("a call's answer was awaited twice")
                    }
                }
                if let ready { continuation.resume(with: ready) }
            }
        }
    }
}
