//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHPACK
import NIOHTTP1
import Testing

@testable import AviaryGateway

/// The response head blocks an HTTP/2 connection reuses for its streams (``HPACKBlockReuse``).
@Suite("HPACK block reuse")
struct HPACKBlockReuseTests {
    static func lines(second: Int = 56, longName: String = "X-A-Rather-Long-Field-Name") -> String {
        "Server: nginx/1.22.1 (Debian)\r\nDate: Mon, 30 Nov 2026 18:39:\(second) GMT\r\nContent-Type: text/plain\r\n"
            + "Connection: keep-alive\r\n\(longName): v\r\n"
    }
    static let lines = Self.lines()

    static func fields(_ block: HPACKHeaders) -> [String] {
        block.map { "\($0.name)=\($0.value)" }
    }

    /// The address of a string's UTF-8 bytes: the same for the same (non-small) string.
    static func address(_ string: String) -> UnsafeRawPointer? {
        var string = string
        return string.withUTF8 { UnsafeRawPointer($0.baseAddress) }
    }

    @Test("a block made with reuse has the same fields as one made without, stream after stream")
    func sameFields() {
        var reuse = HPACKBlockReuse()
        let expected = Self.fields(HTTP2StreamCodec.block(.ok, lines: ByteBuffer(string: Self.lines)))
        #expect(
            expected == [
                ":status=200", "server=nginx/1.22.1 (Debian)", "date=Mon, 30 Nov 2026 18:39:56 GMT",
                "content-type=text/plain", "x-a-rather-long-field-name=v",
            ])
        for status in [HTTPResponseStatus.ok, .ok, .notFound] {
            let block = HTTP2StreamCodec.block(status, lines: ByteBuffer(string: Self.lines), reusing: &reuse)
            var wanted = expected
            wanted[0] = ":status=\(status.code)"
            #expect(Self.fields(block) == wanted)
            reuse.keep(block)
        }
    }

    @Test("long names and values equal to the kept ones at their position are the kept strings; others are new")
    func keptStrings() {
        var reuse = HPACKBlockReuse()
        let first = HTTP2StreamCodec.block(.ok, lines: ByteBuffer(string: Self.lines), reusing: &reuse)
        reuse.keep(first)
        let second = HTTP2StreamCodec.block(.ok, lines: ByteBuffer(string: Self.lines), reusing: &reuse)
        let (a, b) = (Array(first), Array(second))
        // server, date and the long name: the same storage, not a copy.
        #expect(Self.address(a[1].value) == Self.address(b[1].value))
        #expect(Self.address(a[2].value) == Self.address(b[2].value))
        #expect(Self.address(a[4].name) == Self.address(b[4].name))
        // A value that changed (the next second's date) is new, and what the first block holds
        // is unchanged.
        let changed = Self.lines(second: 57)
        let third = HTTP2StreamCodec.block(.ok, lines: ByteBuffer(string: changed), reusing: &reuse)
        #expect(Array(third)[2].value == "Mon, 30 Nov 2026 18:39:57 GMT")
        #expect(Array(first)[2].value == "Mon, 30 Nov 2026 18:39:56 GMT")
        // A name in other capitals still matches the kept lower-case name.
        let recased = Self.lines(longName: "x-a-RATHER-Long-Field-Name")
        let fourth = HTTP2StreamCodec.block(.ok, lines: ByteBuffer(string: recased), reusing: &reuse)
        #expect(Array(fourth)[4].name == "x-a-rather-long-field-name")
        #expect(Self.address(Array(fourth)[4].name) == Self.address(a[4].name))
    }

    @Test("a kept block that something still holds is not written over")
    func heldBlockUnchanged() {
        var reuse = HPACKBlockReuse()
        let written = HTTP2StreamCodec.block(.ok, lines: ByteBuffer(string: Self.lines), reusing: &reuse)
        let before = Self.fields(written)
        // As if NIOHTTP2 still held the frame: `written` stays alive while the next block is made.
        reuse.keep(written)
        let next = HTTP2StreamCodec.block(.notFound, lines: ByteBuffer(string: "x-other: 1\r\n"), reusing: &reuse)
        #expect(Self.fields(written) == before)
        #expect(Self.fields(next) == [":status=404", "x-other=1"])
    }

    @Test("limits: strings beyond keptFields positions and blocks over keptCapacity fields are not kept")
    func limits() {
        var reuse = HPACKBlockReuse()
        var many = ""
        for index in 0..<(HPACKBlockReuse.keptFields + 2) {
            many += "x-field-\(index): a value longer than fifteen\r\n"
        }
        let first = HTTP2StreamCodec.block(.ok, lines: ByteBuffer(string: many), reusing: &reuse)
        let second = HTTP2StreamCodec.block(.ok, lines: ByteBuffer(string: many), reusing: &reuse)
        let (a, b) = (Array(first), Array(second))
        #expect(a.count == HPACKBlockReuse.keptFields + 3)
        #expect(Self.address(a[1].value) == Self.address(b[1].value))
        let last = HPACKBlockReuse.keptFields + 1  // field index keptFields: not kept
        #expect(a[last].value == b[last].value)
        #expect(Self.address(a[last].value) != Self.address(b[last].value))

        var large = HPACKHeaders()
        for index in 0...HPACKBlockReuse.keptCapacity { large.add(name: "x-\(index)", value: "v") }
        reuse.keep(large)
        #expect(!reuse.keepsBlock)
        reuse.keep(first)
        #expect(reuse.keepsBlock)
    }
}
