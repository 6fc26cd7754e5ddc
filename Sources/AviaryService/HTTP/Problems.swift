//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import AviaryResilience
import Foundation
public import HTTPTypes
public import Hummingbird
public import Logging
import NIOCore

/// An error response in RFC 9457 form (`application/problem+json`), with extra headers such as
/// `Retry-After`.
///
/// Handlers throw it, or any ``AviaryCore/ProblemDetailsConvertible`` error, and
/// ``ProblemMiddleware`` renders it. The `type` is `urn:aviary:problem:<slug>`, stable per error.
///
/// ```swift
/// throw HTTPProblem(status: 404, slug: "user-not-found", detail: "no user \"\(id)\"",
///                   extensions: ["user_id": id])
/// ```
public struct HTTPProblem: Error, ProblemDetailsConvertible, HTTPResponseError {
    /// The problem's fields.
    public var problemDetails: ProblemDetails
    /// Headers sent with the problem.
    public var headers: HTTPFields

    /// Creates a problem from its fields.
    public init(_ problemDetails: ProblemDetails, headers: HTTPFields = [:]) {
        self.problemDetails = problemDetails
        self.headers = headers
    }

    /// Creates a problem with a status, a stable slug for its `type`, a human-readable detail and
    /// extension members.
    public init(
        status: Int, slug: String, detail: String, extensions: [String: String] = [:], headers: HTTPFields = [:]
    ) {
        self.init(ProblemDetails(status: status, detail: detail, slug: slug, extensions: extensions), headers: headers)
    }

    /// The HTTP status.
    public var status: HTTPResponse.Status { .init(code: self.problemDetails.status) }

    /// The problem as a response; `instance` defaults to the request's path.
    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var problem = self.problemDetails
        if problem.instance == nil { problem.instance = request.uri.path }
        let body = try problem.jsonData()
        var headers = self.headers
        headers[.contentType] = ProblemDetails.mediaType
        return Response(status: self.status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }
}

/// Renders every error a handler throws as `application/problem+json`: problems as they are,
/// resilience rejections as 503/429/504 with `Retry-After`, Hummingbird's own errors with their
/// status, malformed bodies as 400, and anything else as a 500 whose detail hides the internals
/// (the error is logged).
///
/// ```swift
/// let router = Router()
/// router.add(middleware: ProblemMiddleware(logger: logger))
/// ```
public struct ProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    let logger: Logger

    /// Creates the middleware; unexpected errors are logged to `logger`.
    public init(logger: Logger) {
        self.logger = logger
    }

    /// Runs the rest of the chain and renders its error, if any, as a problem.
    public func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let problem as HTTPProblem {
            return try problem.response(from: request, context: context)
        } catch let error as ResilienceError {
            var headers = HTTPFields()
            if let retryAfter = error.retryAfter {
                headers[.retryAfter] = String(Int(retryAfter.aviarySeconds.rounded(.up)))
            }
            return try HTTPProblem(error.problemDetails, headers: headers).response(from: request, context: context)
        } catch let error as any ProblemDetailsConvertible {
            return try HTTPProblem(error.problemDetails).response(from: request, context: context)
        } catch let error as HTTPError {
            let slug = error.status.code == 404 ? "not-found" : "http-\(error.status.code)"
            return try HTTPProblem(
                status: error.status.code, slug: slug,
                detail: error.body ?? error.status.reasonPhrase, headers: error.headers
            ).response(from: request, context: context)
        } catch let error as DecodingError {
            return try HTTPProblem(status: 400, slug: "invalid-body", detail: Self.describe(error))
                .response(from: request, context: context)
        } catch let error as any HTTPResponseError {
            return try HTTPProblem(status: error.status.code, slug: "http-\(error.status.code)", detail: "\(error)")
                .response(from: request, context: context)
        } catch {
            self.logger.error(
                "unhandled error", metadata: ["error.type": "\(type(of: error))", "error.message": "\(error)"])
            return try HTTPProblem(status: 500, slug: "internal", detail: "an unexpected error occurred")
                .response(from: request, context: context)
        }
    }

    /// A one-line description of a JSON decoding error naming the field.
    ///
    /// ```swift
    /// ProblemMiddleware<BasicRequestContext>.describe(error)  // "items[0].quantity: expected Int"
    /// ```
    public static func describe(_ error: DecodingError) -> String {
        func path(_ codingPath: [any CodingKey]) -> String {
            let text = codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return text.hasPrefix(".") ? String(text.dropFirst()) : (text.isEmpty ? "body" : text)
        }
        switch error {
        case .keyNotFound(let key, let context):
            return "\(path(context.codingPath + [key])): required field is missing"
        case .typeMismatch(let type, let context):
            return "\(path(context.codingPath)): expected \(type)"
        case .valueNotFound(let type, let context):
            return "\(path(context.codingPath)): expected \(type), got null"
        case .dataCorrupted(let context):
            return "\(path(context.codingPath)): \(context.debugDescription)"
        @unknown default:
            return "the body is not valid JSON for this request"
        }
    }
}

extension Request {
    /// Decodes a JSON body of at most `limit` bytes, answering 413 or 400 problems.
    ///
    /// ```swift
    /// let order = try await request.decodeJSON(as: NewOrder.self)
    /// ```
    public func decodeJSON<T: Decodable>(as type: T.Type, limit: Int = 1 << 20) async throws -> T {
        let buffer: ByteBuffer
        do {
            buffer = try await self.body.collect(upTo: limit)
        } catch {
            throw HTTPProblem(status: 413, slug: "payload-too-large", detail: "the body is larger than \(limit) bytes")
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView))
        } catch let error as DecodingError {
            throw HTTPProblem(
                status: 400, slug: "invalid-body", detail: ProblemMiddleware<BasicRequestContext>.describe(error))
        }
    }
}

/// A JSON response with a status (keys sorted, dates in ISO 8601).
///
/// ```swift
/// return JSONResponse(status: .created, value: order)
/// ```
public struct JSONResponse<Value: Encodable & Sendable>: ResponseGenerator {
    /// The HTTP status.
    public var status: HTTPResponse.Status
    /// The value encoded as the body.
    public var value: Value
    /// Extra headers.
    public var headers: HTTPFields

    /// Creates a response.
    public init(status: HTTPResponse.Status, value: Value, headers: HTTPFields = [:]) {
        self.status = status
        self.value = value
        self.headers = headers
    }

    /// The response.
    public func response(from request: Request, context: some RequestContext) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        var headers = self.headers
        headers[.contentType] = "application/json"
        return Response(
            status: self.status, headers: headers,
            body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(self.value))))
    }
}
