// A prototype of the frontend/backend protocol v3 on a bare NIO channel: trust authentication
// only, statements prepared once by name, each call one Bind/Execute per statement and one Sync,
// written in one buffer. Measures what a client that does nothing else costs per call.
import NIOCore
import NIOPosix

/// One call: the statements to bind and execute (name, parameters as text) before one Sync.
struct WireCall {
    var statements: [(name: String, parameters: [String?])]
    var promise: EventLoopPromise<[String?]>
}

/// Made in the channel's initializer and used only on its loop (``WireConnection`` reaches it
/// through a `NIOLoopBound`).
final class WireHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    var inbox = ByteBuffer()
    var ready: EventLoopPromise<Void>?
    var waiting: [WireCall] = []
    var values: [String?] = []
    var failure: String?
    var prepared: Set<String> = []

    init(ready: EventLoopPromise<Void>) { self.ready = ready }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        self.inbox.writeBuffer(&bytes)
        while self.inbox.readableBytes >= 5 {
            let start = self.inbox.readerIndex
            let tag = self.inbox.getInteger(at: start, as: UInt8.self)!
            let length = Int(self.inbox.getInteger(at: start + 1, as: Int32.self)!)
            guard self.inbox.readableBytes >= 1 + length else { break }
            self.inbox.moveReaderIndex(forwardBy: 5)
            var body = self.inbox.readSlice(length: length - 4)!
            self.handle(tag, &body)
        }
        self.inbox.discardReadBytes()
    }

    func handle(_ tag: UInt8, _ body: inout ByteBuffer) {
        switch tag {
        case UInt8(ascii: "R"):
            let kind = body.readInteger(as: Int32.self)
            precondition(kind == 0, "the prototype speaks trust authentication only")
        case UInt8(ascii: "D"):
            let count = Int(body.readInteger(as: Int16.self)!)
            for _ in 0..<count {
                let length = Int(body.readInteger(as: Int32.self)!)
                self.values.append(length < 0 ? nil : body.readString(length: length))
            }
        case UInt8(ascii: "E"):
            var message = ""
            while let field = body.readInteger(as: UInt8.self), field != 0 {
                let text = body.readNullTerminatedString() ?? ""
                if field == UInt8(ascii: "M") { message = text }
            }
            self.failure = message
        case UInt8(ascii: "Z"):
            if let ready = self.ready {
                self.ready = nil
                ready.succeed()
            } else if !self.waiting.isEmpty {
                let call = self.waiting.removeFirst()
                if let failure = self.failure {
                    call.promise.fail(WireError(message: failure))
                } else {
                    call.promise.succeed(self.values)
                }
                self.values.removeAll(keepingCapacity: true)
                self.failure = nil
            }
        default:
            break  // ParseComplete, BindComplete, CommandComplete, ParameterStatus, BackendKeyData, ...
        }
    }
}

struct WireError: Error { var message: String }

extension ByteBuffer {
    /// Writes a message: its tag, then its length (itself included), then what `body` writes.
    mutating func writeMessage(_ tag: UInt8?, _ body: (inout ByteBuffer) -> Void) {
        if let tag { self.writeInteger(tag) }
        let lengthAt = self.writerIndex
        self.writeInteger(Int32(0))
        body(&self)
        self.setInteger(Int32(self.writerIndex - lengthAt), at: lengthAt)
    }
}

final class WireConnection: Sendable {
    let channel: Channel
    let handler: NIOLoopBound<WireHandler>

    init(channel: Channel, handler: NIOLoopBound<WireHandler>) {
        self.channel = channel
        self.handler = handler
    }

    static func connect(
        on loop: EventLoop, host: String, port: Int, user: String, database: String,
        settings: [(String, String)] = []
    ) async throws -> WireConnection {
        let ready = loop.makePromise(of: Void.self)
        let channel = try await ClientBootstrap(group: loop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(WireHandler(ready: ready))
                }
            }
            .connect(host: host, port: port).get()
        let handler = try await channel.eventLoop.submit {
            NIOLoopBound(
                try channel.pipeline.syncOperations.handler(type: WireHandler.self), eventLoop: channel.eventLoop)
        }.get()
        var startup = channel.allocator.buffer(capacity: 64)
        startup.writeMessage(nil) { body in
            body.writeInteger(Int32(196_608))
            for (name, value) in [("user", user), ("database", database)] + settings {
                body.writeNullTerminatedString(name)
                body.writeNullTerminatedString(value)
            }
            body.writeInteger(UInt8(0))
        }
        try await channel.writeAndFlush(startup).get()
        try await ready.futureResult.get()
        return WireConnection(channel: channel, handler: handler)
    }

    /// On the loop: sends Parse for statements not yet prepared, then Bind and Execute for each, then Sync.
    func call(_ statements: [(name: String, sql: String, parameters: [String?])]) -> EventLoopFuture<[String?]> {
        let promise = self.channel.eventLoop.makePromise(of: [String?].self)
        var out = self.channel.allocator.buffer(capacity: 1024)
        for statement in statements {
            if !self.handler.value.prepared.contains(statement.name) {
                self.handler.value.prepared.insert(statement.name)
                out.writeMessage(UInt8(ascii: "P")) { body in
                    body.writeNullTerminatedString(statement.name)
                    body.writeNullTerminatedString(statement.sql)
                    body.writeInteger(Int16(0))
                }
            }
            out.writeMessage(UInt8(ascii: "B")) { body in
                body.writeInteger(UInt8(0))  // unnamed portal
                body.writeNullTerminatedString(statement.name)
                body.writeInteger(Int16(0))  // all parameters as text
                body.writeInteger(Int16(statement.parameters.count))
                for parameter in statement.parameters {
                    if let parameter {
                        let lengthAt = body.writerIndex
                        body.writeInteger(Int32(0))
                        let written = body.writeString(parameter)
                        body.setInteger(Int32(written), at: lengthAt)
                    } else {
                        body.writeInteger(Int32(-1))
                    }
                }
                body.writeInteger(Int16(0))  // results as text
            }
            out.writeMessage(UInt8(ascii: "E")) { body in
                body.writeInteger(UInt8(0))
                body.writeInteger(Int32(0))
            }
        }
        out.writeMessage(UInt8(ascii: "S")) { _ in }
        self.handler.value.waiting.append(WireCall(statements: [], promise: promise))
        self.channel.writeAndFlush(out, promise: nil)
        return promise.futureResult
    }
}
