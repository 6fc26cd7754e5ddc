//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHTTP1

/// Routes the gateway answers itself: `direct_response` and `redirect`.
extension ProxyHandler {
    /// Answers a request on a route without a cluster, after its policies (CORS, auth, rate
    /// limit, fault) admitted it; the route's `response_headers` apply.
    func answerLocalRoute(
        _ answer: LocalAnswer, head request: HTTPRequestHead, route: CompiledRoute, headers extra: [(String, String)],
        close: Bool, context: ChannelHandlerContext
    ) {
        let close = close || self.drainRequested
        let status: HTTPResponseStatus
        var headers = HTTPHeaders()
        var body = ByteBuffer()
        switch answer {
        case .direct(let directStatus, let directBody, let contentType):
            status = directStatus
            body = directBody
            if directBody.readableBytes > 0 { headers.add(name: "content-type", value: contentType) }
        case .redirect(let redirectStatus, let base, let appendPath, let stripQuery):
            status = redirectStatus
            let location = LocalAnswer.location(
                base, uri: route.rewrite(uri: request.uri), appendPath: appendPath, stripQuery: stripQuery)
            headers.add(name: "location", value: location)
        }
        self.endRecord(status: Int(status.code))
        let bodyless = status == .noContent || status == .notModified
        if !bodyless { headers.add(name: "content-length", value: String(body.readableBytes)) }
        for (name, value) in extra { headers.replaceOrAdd(name: name, value: value) }
        if let rewrite = route.responseHeaderRewrite {
            let variables =
                route.usesHeaderVariables ? HeaderVariables(clientIP: self.clientAddress, request: request) : nil
            rewrite.apply(to: &headers, variables)
        }
        headers.replaceOrAdd(name: "connection", value: close ? "close" : "keep-alive")
        let head = HTTPResponseHead(version: .http1_1, status: status, headers: headers)
        self.emit(.head(head), context: context)
        if !self.answeringHead && !bodyless && body.readableBytes > 0 {
            self.emit(.body(.byteBuffer(body)), context: context)
        }
        if close {
            self.discarding = true
            self.closeAfterWriting(.end(nil), context: context)
        } else {
            self.emit(.end(nil), context: context, flush: true)
            self.continueWithQueued(context: context)
            self.startIdleTimer(context: context)
        }
    }
}
