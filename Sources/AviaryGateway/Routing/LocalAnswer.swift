//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
import NIOCore
import NIOHTTP1

/// What a route without a cluster answers: a `direct_response` (body built once) or a
/// `redirect` (its `Location` built per request from the target).
enum LocalAnswer: Sendable {
    case direct(status: HTTPResponseStatus, body: ByteBuffer, contentType: String)
    case redirect(status: HTTPResponseStatus, location: String, appendPath: Bool, stripQuery: Bool)

    init?(_ destination: GatewayConfiguration.Destination) {
        switch destination {
        case .cluster, .split, .compose:
            return nil
        case .directResponse(let direct):
            self = .direct(
                status: HTTPResponseStatus(statusCode: direct.status), body: ByteBuffer(string: direct.body),
                contentType: direct.contentType)
        case .redirect(let redirect):
            self = .redirect(
                status: HTTPResponseStatus(statusCode: redirect.status), location: redirect.location,
                appendPath: Self.hasNoPath(redirect.location), stripQuery: redirect.stripQuery)
        }
    }

    /// `https://host` or `https://host/`: the request's path is appended.
    static func hasNoPath(_ location: String) -> Bool {
        guard let scheme = location.range(of: "://") else { return false }
        let afterHost = location[scheme.upperBound...].drop { $0 != "/" }
        return afterHost.isEmpty || afterHost == "/"
    }

    /// The `Location` for a request whose (rewritten) target is `uri`.
    static func location(_ base: String, uri: String, appendPath: Bool, stripQuery: Bool) -> String {
        let path = RouteTable.path(of: uri)
        var location = base
        if appendPath {
            if location.hasSuffix("/") { location.removeLast() }
            location += path
        }
        if !stripQuery, let question = uri.firstIndex(of: "?") {
            var query = uri[uri.index(after: question)...]
            if let hash = query.firstIndex(of: "#") { query = query[..<hash] }
            if !query.isEmpty {
                location += location.contains("?") ? "&" : "?"
                location += query
            }
        }
        return location
    }
}
