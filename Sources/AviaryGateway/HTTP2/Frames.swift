//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHTTP2

// The HTTP/2 wire format the listener's own frame layer reads and writes (RFC 9113, sections 4
// and 6): frame headers, the connection's control frames, and the errors of the protocol.
// HPACK stays NIOHPACK's (`HPACKDecoder`, `HPACKEncoder`); frame types and stream identifiers
// keep NIOHTTP2's public types (`HTTP2StreamID`, `HTTP2ErrorCode`), which the upstream side
// (NIOHTTP2's client) and the stream codec use too.
//
// Why our own layer on the listener side (StreamServer.swift) rather than `NIOHTTP2Handler`:
// the gateway's streams have no channels, so the handler's general machinery (a state machine
// of enums copied per frame, frames boxed as `NIOAny` twice on their way in and out, an outbound
// buffer and a flow-control buffer per stream, user events cast from `Any`) was most of the
// HTTP/2 path's cost per request beside the kernel's (see the gateway's design notes). A server
// that only answers streams needs a few integers per stream and one walk over the bytes.

/// Frame types, flags, settings and limits of RFC 9113.
enum H2Wire {
    static let frameHeaderLength = 9
    /// SETTINGS_MAX_FRAME_SIZE's initial value (section 6.5.2); the gateway never raises its own.
    static let defaultMaxFrameSize = 16_384
    static let largestMaxFrameSize = 16_777_215
    /// The largest flow-control window (section 6.9.1).
    static let maxWindow = Int(Int32.max)
    /// The initial flow-control window of a connection and of a stream (section 6.9.2).
    static let defaultWindow = 65_535
    static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    enum FrameType {
        static let data: UInt8 = 0x0
        static let headers: UInt8 = 0x1
        static let priority: UInt8 = 0x2
        static let rstStream: UInt8 = 0x3
        static let settings: UInt8 = 0x4
        static let pushPromise: UInt8 = 0x5
        static let ping: UInt8 = 0x6
        static let goAway: UInt8 = 0x7
        static let windowUpdate: UInt8 = 0x8
        static let continuation: UInt8 = 0x9
    }

    enum Flag {
        static let endStream: UInt8 = 0x1
        static let ack: UInt8 = 0x1
        static let endHeaders: UInt8 = 0x4
        static let padded: UInt8 = 0x8
        static let priority: UInt8 = 0x20
    }

    enum Setting {
        static let headerTableSize: UInt16 = 0x1
        static let enablePush: UInt16 = 0x2
        static let maxConcurrentStreams: UInt16 = 0x3
        static let initialWindowSize: UInt16 = 0x4
        static let maxFrameSize: UInt16 = 0x5
        static let maxHeaderListSize: UInt16 = 0x6
    }
}

/// A frame's 9-byte header.
struct H2FrameHeader: Equatable {
    var length: Int
    var type: UInt8
    var flags: UInt8
    var streamID: HTTP2StreamID

    /// Reads a frame header at the buffer's reader index without moving it, `nil` when fewer
    /// than nine bytes are there.
    static func peek(_ buffer: ByteBuffer) -> H2FrameHeader? {
        guard buffer.readableBytes >= H2Wire.frameHeaderLength,
            let lengthAndType = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self),
            let flags = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt8.self),
            let stream = buffer.getInteger(at: buffer.readerIndex + 5, as: UInt32.self)
        else { return nil }
        // The stream identifier's reserved high bit is ignored on receipt (section 4.1).
        return H2FrameHeader(
            length: Int(lengthAndType >> 8), type: UInt8(truncatingIfNeeded: lengthAndType), flags: flags,
            streamID: HTTP2StreamID(Int32(bitPattern: stream & 0x7fff_ffff)))
    }

    func has(_ flag: UInt8) -> Bool { self.flags & flag != 0 }
}

/// A violation that ends the connection (section 5.4.1): GOAWAY with `code`, then the close.
struct H2ConnectionError: Error, CustomStringConvertible {
    var code: HTTP2ErrorCode
    var reason: String
    var description: String { "HTTP/2 connection error \(self.code): \(self.reason)" }

    init(_ code: HTTP2ErrorCode, _ reason: String) {
        self.code = code
        self.reason = reason
    }
}

extension ByteBuffer {
    /// Writes a frame header; the payload of `length` bytes is the caller's to write next.
    mutating func writeH2FrameHeader(length: Int, type: UInt8, flags: UInt8, stream: HTTP2StreamID) {
        self.writeInteger(UInt32(truncatingIfNeeded: length) << 8 | UInt32(type))
        self.writeInteger(flags)
        self.writeInteger(UInt32(Int32(stream)))
    }

    /// SETTINGS with the given parameters (section 6.5).
    mutating func writeH2Settings(_ settings: [(UInt16, Int)]) {
        self.writeH2FrameHeader(
            length: settings.count * 6, type: H2Wire.FrameType.settings, flags: 0, stream: .rootStream)
        for (identifier, value) in settings {
            self.writeInteger(identifier)
            self.writeInteger(UInt32(truncatingIfNeeded: value))
        }
    }

    mutating func writeH2SettingsAck() {
        self.writeH2FrameHeader(length: 0, type: H2Wire.FrameType.settings, flags: H2Wire.Flag.ack, stream: .rootStream)
    }

    mutating func writeH2PingAck(_ opaque: UInt64) {
        self.writeH2FrameHeader(length: 8, type: H2Wire.FrameType.ping, flags: H2Wire.Flag.ack, stream: .rootStream)
        self.writeInteger(opaque)
    }

    mutating func writeH2GoAway(lastStreamID: HTTP2StreamID, code: HTTP2ErrorCode) {
        self.writeH2FrameHeader(length: 8, type: H2Wire.FrameType.goAway, flags: 0, stream: .rootStream)
        self.writeInteger(UInt32(Int32(lastStreamID)))
        self.writeInteger(UInt32(code.networkCode))
    }

    mutating func writeH2RstStream(_ stream: HTTP2StreamID, code: HTTP2ErrorCode) {
        self.writeH2FrameHeader(length: 4, type: H2Wire.FrameType.rstStream, flags: 0, stream: stream)
        self.writeInteger(UInt32(code.networkCode))
    }

    mutating func writeH2WindowUpdate(_ stream: HTTP2StreamID, increment: Int) {
        self.writeH2FrameHeader(length: 4, type: H2Wire.FrameType.windowUpdate, flags: 0, stream: stream)
        self.writeInteger(UInt32(truncatingIfNeeded: increment))
    }
}
