//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Foundation

/// An RFC 9457 problem details object, the body of every Aviary error response
/// (`Content-Type: application/problem+json`).
///
/// `type` is stable per kind of error (`urn:aviary:problem:<slug>`), so clients branch on it, not
/// on `detail`. Extension members are flat string fields next to the standard ones.
///
/// ```swift
/// let problem = ProblemDetails(status: 404, detail: "no user 42", slug: "user-not-found")
/// let body = try problem.jsonData()   // {"type":"urn:aviary:problem:user-not-found","title":"Not Found",...}
/// ```
public struct ProblemDetails: Sendable, Hashable, Codable {
    /// The media type of a problem details body.
    public static let mediaType = "application/problem+json"

    /// A URI naming the kind of problem.
    public var type: String
    /// A short summary of the kind of problem (the HTTP reason phrase by default).
    public var title: String
    /// The HTTP status code.
    public var status: Int
    /// What happened this time, for people.
    public var detail: String?
    /// A URI naming this occurrence (for example the request path or a request id).
    public var instance: String?
    /// Extension members.
    public var extensions: [String: String]

    /// Creates a problem with every member given.
    public init(
        type: String,
        title: String,
        status: Int,
        detail: String? = nil,
        instance: String? = nil,
        extensions: [String: String] = [:]
    ) {
        self.type = type
        self.title = title
        self.status = status
        self.detail = detail
        self.instance = instance
        self.extensions = extensions
    }

    /// Creates a problem whose `type` is `urn:aviary:problem:<slug>` and whose title is the
    /// reason phrase of `status`.
    public init(status: Int, detail: String?, slug: String, extensions: [String: String] = [:]) {
        self.init(
            type: ProblemDetails.typeURI(slug),
            title: ProblemDetails.title(forStatus: status),
            status: status,
            detail: detail,
            extensions: extensions
        )
    }

    /// The stable problem type URI for `slug`.
    public static func typeURI(_ slug: String) -> String { "urn:aviary:problem:\(slug)" }

    /// The standard reason phrase for an HTTP status.
    public static func title(forStatus status: Int) -> String {
        switch status {
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 409: "Conflict"
        case 413: "Content Too Large"
        case 415: "Unsupported Media Type"
        case 422: "Unprocessable Content"
        case 429: "Too Many Requests"
        case 500: "Internal Server Error"
        case 502: "Bad Gateway"
        case 503: "Service Unavailable"
        case 504: "Gateway Timeout"
        default: "HTTP \(status)"
        }
    }

    private struct DynamicKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ string: String) { self.stringValue = string }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    private static let standardKeys: Set<String> = ["type", "title", "status", "detail", "instance"]

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: DynamicKey.self)
        self.type = try container.decodeIfPresent(String.self, forKey: DynamicKey("type")) ?? "about:blank"
        self.status = try container.decode(Int.self, forKey: DynamicKey("status"))
        self.title =
            try container.decodeIfPresent(String.self, forKey: DynamicKey("title"))
            ?? ProblemDetails.title(forStatus: self.status)
        self.detail = try container.decodeIfPresent(String.self, forKey: DynamicKey("detail"))
        self.instance = try container.decodeIfPresent(String.self, forKey: DynamicKey("instance"))
        var extensions: [String: String] = [:]
        for key in container.allKeys where !ProblemDetails.standardKeys.contains(key.stringValue) {
            if let value = try? container.decode(String.self, forKey: key) {
                extensions[key.stringValue] = value
            }
        }
        self.extensions = extensions
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: DynamicKey.self)
        try container.encode(self.type, forKey: DynamicKey("type"))
        try container.encode(self.title, forKey: DynamicKey("title"))
        try container.encode(self.status, forKey: DynamicKey("status"))
        try container.encodeIfPresent(self.detail, forKey: DynamicKey("detail"))
        try container.encodeIfPresent(self.instance, forKey: DynamicKey("instance"))
        for (key, value) in self.extensions.sorted(by: { $0.key < $1.key })
        where !ProblemDetails.standardKeys.contains(key) {
            try container.encode(value, forKey: DynamicKey(key))
        }
    }

    /// The JSON body, keys sorted for stable output.
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }
}

/// An error that knows how to render itself as problem details at an HTTP boundary.
///
/// ```swift
/// struct OutOfStock: Error, ProblemDetailsConvertible {
///     var sku: String
///     var problemDetails: ProblemDetails {
///         ProblemDetails(status: 409, detail: "\(sku) is out of stock", slug: "out-of-stock", extensions: ["sku": sku])
///     }
/// }
/// ```
public protocol ProblemDetailsConvertible: Error {
    /// The problem this error renders as.
    var problemDetails: ProblemDetails { get }
}
