//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

/// An error response in RFC 9457 form, with extra headers (such as `Retry-After`).
///
/// Shop's handlers throw it, or any ``AviaryCore/ProblemDetailsConvertible`` error, and
/// ``ProblemMiddleware`` renders it. (This moves into AviaryService when the SDK exists.)
struct Problem: Error, ProblemDetailsConvertible, HTTPResponseError {
    var problemDetails: ProblemDetails
    var headers: HTTPFields

    init(_ problemDetails: ProblemDetails, headers: HTTPFields = [:]) {
        self.problemDetails = problemDetails
        self.headers = headers
    }

    init(status: Int, slug: String, detail: String, extensions: [String: String] = [:], headers: HTTPFields = [:]) {
        self.init(ProblemDetails(status: status, detail: detail, slug: slug, extensions: extensions), headers: headers)
    }

    var status: HTTPResponse.Status { .init(code: self.problemDetails.status) }

    func response(from request: Request, context: some RequestContext) throws -> Response {
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
/// status, malformed bodies as 400, and anything else as a 500 whose detail hides the internals.
struct ProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    let logger: Logger

    func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let problem as Problem {
            return try problem.response(from: request, context: context)
        } catch let error as ResilienceError {
            var headers = HTTPFields()
            if let retryAfter = error.retryAfter {
                headers[.retryAfter] = String(Int(retryAfter.aviarySeconds.rounded(.up)))
            }
            return try Problem(error.problemDetails, headers: headers).response(from: request, context: context)
        } catch let error as any ProblemDetailsConvertible {
            return try Problem(error.problemDetails).response(from: request, context: context)
        } catch let error as HTTPError {
            let slug = error.status.code == 404 ? "not-found" : "http-\(error.status.code)"
            return try Problem(
                status: error.status.code, slug: slug,
                detail: error.body ?? error.status.reasonPhrase, headers: error.headers
            ).response(from: request, context: context)
        } catch let error as DecodingError {
            return try Problem(status: 400, slug: "invalid-body", detail: Self.describe(error))
                .response(from: request, context: context)
        } catch let error as any HTTPResponseError {
            return try Problem(status: error.status.code, slug: "http-\(error.status.code)", detail: "\(error)")
                .response(from: request, context: context)
        } catch {
            self.logger.error(
                "unhandled error", metadata: ["error.type": "\(type(of: error))", "error.message": "\(error)"])
            return try Problem(status: 500, slug: "internal", detail: "an unexpected error occurred")
                .response(from: request, context: context)
        }
    }

    /// A one-line description of a JSON decoding error naming the field.
    static func describe(_ error: DecodingError) -> String {
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
    func decodeJSON<T: Decodable>(as type: T.Type, limit: Int = 1 << 20) async throws -> T {
        let buffer: ByteBuffer
        do {
            buffer = try await self.body.collect(upTo: limit)
        } catch {
            throw Problem(status: 413, slug: "payload-too-large", detail: "the body is larger than \(limit) bytes")
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView))
        } catch let error as DecodingError {
            throw Problem(
                status: 400, slug: "invalid-body", detail: ProblemMiddleware<BasicRequestContext>.describe(error))
        }
    }
}

/// A JSON response with a status.
struct JSONResponse<Value: Encodable & Sendable>: ResponseGenerator {
    var status: HTTPResponse.Status
    var value: Value
    var headers: HTTPFields = [:]

    func response(from request: Request, context: some RequestContext) throws -> Response {
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
