// The floor of a SwiftNIO proxy: each accepted connection gets its own upstream connection on the
// same event loop and bytes are relayed unchanged both ways, one handler per channel, no HTTP
// parsing. scripts/bench-gateway.sh runs it next to the gateway, nginx and HAProxy so that the
// gateway's cost can be read as "what NIO costs" plus "what the proxy adds".
//   RelayFloor <listen port> <upstream port> [threads, default 1]
import NIOCore
import NIOHTTP1
import NIOPosix

/// Relays what one channel reads to its peer, and closes the peer when it closes.
final class RelayHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: all state is touched on the one event loop both channels of a pair share.
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    var peer: Channel?
    var pending: [ByteBuffer] = []
    var peerContextFlushNeeded = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        if let peer {
            peer.write(bytes, promise: nil)
            peerContextFlushNeeded = true
        } else {
            pending.append(bytes)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if peerContextFlushNeeded, let peer {
            peerContextFlushNeeded = false
            peer.flush()
        }
    }

    func connected(to peer: Channel) {
        self.peer = peer
        for bytes in pending { peer.write(bytes, promise: nil) }
        pending.removeAll()
        peer.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        peer?.close(promise: nil)
        peer = nil
    }
}

/// Relays NIO HTTP/1 parts between the server codec and the client codec of a connection pair.
final class HTTPRelayHandler<In: Sendable, Out: Sendable>: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: all state is touched on the one event loop both channels of a pair share.
    typealias InboundIn = In
    var peer: Channel?
    var pending: [Out] = []
    let convert: (In) -> Out
    var flushNeeded = false
    init(_ convert: @escaping (In) -> Out) { self.convert = convert }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = convert(self.unwrapInboundIn(data))
        if let peer {
            peer.pipeline.syncOperations.write(NIOAny(part), promise: nil)
            flushNeeded = true
        } else {
            pending.append(part)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if flushNeeded, let peer {
            flushNeeded = false
            peer.flush()
        }
    }

    func connected(to peer: Channel) {
        self.peer = peer
        for part in pending { peer.pipeline.syncOperations.write(NIOAny(part), promise: nil) }
        pending.removeAll()
        peer.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        peer?.close(promise: nil)
        peer = nil
    }
}

func toClient(_ part: HTTPServerRequestPart) -> HTTPClientRequestPart {
    switch part {
    case .head(let head): return .head(head)
    case .body(let buffer): return .body(.byteBuffer(buffer))
    case .end(let trailers): return .end(trailers)
    }
}

func toServer(_ part: HTTPClientResponsePart) -> HTTPServerResponsePart {
    switch part {
    case .head(let head): return .head(head)
    case .body(let buffer): return .body(.byteBuffer(buffer))
    case .end(let trailers): return .end(trailers)
    }
}

let arguments = CommandLine.arguments
guard arguments.count >= 3, let listenPort = Int(arguments[1]), let upstreamPort = Int(arguments[2]) else {
    print("usage: RelayFloor <listen port> <upstream port> [threads]")
    exit(2)
}
let threads = arguments.count > 3 ? Int(arguments[3]) ?? 1 : 1
let http = arguments.count > 4 && arguments[4] == "http"
let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
let server = try ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 1024)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { downstream in
        if http {
            let downstreamHandler = HTTPRelayHandler<HTTPServerRequestPart, HTTPClientRequestPart>(toClient)
            let upstreamHandler = HTTPRelayHandler<HTTPClientResponsePart, HTTPServerResponsePart>(toServer)
            let upstream = ClientBootstrap(group: downstream.eventLoop)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(upstreamHandler)
                    }
                }
                .connect(host: "127.0.0.1", port: upstreamPort)
            upstream.whenSuccess { channel in
                upstreamHandler.peer = downstream
                downstreamHandler.connected(to: channel)
            }
            upstream.whenFailure { _ in downstream.close(promise: nil) }
            return downstream.eventLoop.makeCompletedFuture {
                try downstream.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: false)
                try downstream.pipeline.syncOperations.addHandler(downstreamHandler)
            }
        }
        let downstreamHandler = RelayHandler()
        let upstreamHandler = RelayHandler()
        let upstream = ClientBootstrap(group: downstream.eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(upstreamHandler)
                }
            }
            .connect(host: "127.0.0.1", port: upstreamPort)
        upstream.whenSuccess { channel in
            upstreamHandler.peer = downstream
            downstreamHandler.connected(to: channel)
        }
        upstream.whenFailure { _ in downstream.close(promise: nil) }
        return downstream.eventLoop.makeCompletedFuture {
            try downstream.pipeline.syncOperations.addHandler(downstreamHandler)
        }
    }
    .bind(host: "127.0.0.1", port: listenPort)
    .wait()
try server.closeFuture.wait()
