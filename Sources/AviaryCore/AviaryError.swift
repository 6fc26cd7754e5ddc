//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// The general error of Aviary's modules: a stable code, a human message and an optional cause.
///
/// Each code maps to an HTTP status and to a stable RFC 9457 problem `type`, so an error thrown
/// deep in a service renders itself at the HTTP boundary (see ``ProblemDetails``).
///
/// ```swift
/// throw AviaryError(.notFound, "no user 42")
/// // renders as: {"type":"urn:aviary:problem:not-found","title":"Not Found","status":404,"detail":"no user 42"}
/// ```
public struct AviaryError: Error, Sendable, CustomStringConvertible, ProblemDetailsConvertible {
    /// What kind of failure this is. Open-ended: new codes may be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Wrapped: Hashable, Sendable {
            case invalidArgument, notFound, conflict, unauthenticated, permissionDenied
            case unavailable, timedOut, resourceExhausted, failedPrecondition, payloadTooLarge
            case dependencyFailed, `internal`
        }
        private let wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// The input was malformed or out of range (400).
        public static let invalidArgument = Code(.invalidArgument)
        /// The named thing does not exist (404).
        public static let notFound = Code(.notFound)
        /// The request conflicts with the current state, e.g. a version check failed (409).
        public static let conflict = Code(.conflict)
        /// No valid credentials (401).
        public static let unauthenticated = Code(.unauthenticated)
        /// Credentials valid but not allowed (403).
        public static let permissionDenied = Code(.permissionDenied)
        /// A dependency or this service is temporarily unavailable (503).
        public static let unavailable = Code(.unavailable)
        /// The deadline passed before the work finished (504).
        public static let timedOut = Code(.timedOut)
        /// A quota or rate limit was reached (429).
        public static let resourceExhausted = Code(.resourceExhausted)
        /// The system is not in a state that allows the operation (422).
        public static let failedPrecondition = Code(.failedPrecondition)
        /// The body is larger than allowed (413).
        public static let payloadTooLarge = Code(.payloadTooLarge)
        /// A dependency answered with an error this service cannot fix (502).
        public static let dependencyFailed = Code(.dependencyFailed)
        /// A bug or an unexpected condition (500).
        public static let `internal` = Code(.internal)

        /// The stable slug used in problem `type` URIs and logs, e.g. `not-found`.
        public var slug: String {
            switch self.wrapped {
            case .invalidArgument: "invalid-argument"
            case .notFound: "not-found"
            case .conflict: "conflict"
            case .unauthenticated: "unauthenticated"
            case .permissionDenied: "permission-denied"
            case .unavailable: "unavailable"
            case .timedOut: "timed-out"
            case .resourceExhausted: "resource-exhausted"
            case .failedPrecondition: "failed-precondition"
            case .payloadTooLarge: "payload-too-large"
            case .dependencyFailed: "dependency-failed"
            case .internal: "internal"
            }
        }

        /// The HTTP status this code renders as.
        public var httpStatus: Int {
            switch self.wrapped {
            case .invalidArgument: 400
            case .notFound: 404
            case .conflict: 409
            case .unauthenticated: 401
            case .permissionDenied: 403
            case .unavailable: 503
            case .timedOut: 504
            case .resourceExhausted: 429
            case .failedPrecondition: 422
            case .payloadTooLarge: 413
            case .dependencyFailed: 502
            case .internal: 500
            }
        }

        public var description: String { self.slug }
    }

    /// What kind of failure this is.
    public var code: Code
    /// A message for people: what happened, naming the thing involved.
    public var message: String
    /// The underlying error, if any. Never rendered to clients.
    public var cause: (any Error)?
    /// Extra members for the problem details body (e.g. `["user_id": "42"]`).
    public var extensions: [String: String]

    /// Creates an error.
    public init(_ code: Code, _ message: String, cause: (any Error)? = nil, extensions: [String: String] = [:]) {
        self.code = code
        self.message = message
        self.cause = cause
        self.extensions = extensions
    }

    public var description: String {
        if let cause { return "\(self.code): \(self.message) (cause: \(cause))" }
        return "\(self.code): \(self.message)"
    }

    public var problemDetails: ProblemDetails {
        ProblemDetails(
            type: ProblemDetails.typeURI(self.code.slug),
            title: ProblemDetails.title(forStatus: self.code.httpStatus),
            status: self.code.httpStatus,
            detail: self.message,
            extensions: self.extensions
        )
    }
}
