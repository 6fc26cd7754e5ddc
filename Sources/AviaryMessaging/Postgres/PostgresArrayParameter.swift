//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import PostgresNIO

/// A one-dimensional query parameter of `INTEGER[]` or `TEXT[]` without NULLs, for the arrays of
/// a batched publish (one element per message), written in PostgreSQL's binary array format
/// directly into the query's parameter buffer.
///
/// postgres-nio encodes an `Array` element by element through `ByteBuffer`'s checked writes,
/// reserving a length word for each element and patching it afterwards; with six arrays of 1000
/// elements per batch that was about a tenth of the publishing client's CPU in a profile. Here the
/// array's size is known beforehand (a `String`'s UTF-8 count is stored), so the buffer grows once
/// and the elements are stored with plain pointer writes.
///
/// The format is what PostgreSQL's `array_recv` reads: the number of dimensions (0 for an empty
/// array, then nothing follows but the next two words), a flags word (0: no NULLs), the element
/// type's OID, then for the one dimension its length and lower bound (1), then each element as a
/// 4-byte big-endian length and its bytes (an `int4` is 4 big-endian bytes, `text` its UTF-8).
struct PostgresArrayParameter: PostgresDynamicTypeEncodable {
    private enum Elements {
        case int32([Int32])
        case text([String])
    }

    private let elements: Elements

    /// An `INTEGER[]`.
    init(_ values: [Int32]) {
        self.elements = .int32(values)
    }

    /// A `TEXT[]`.
    init(_ values: [String]) {
        self.elements = .text(values)
    }

    var psqlType: PostgresDataType {
        switch self.elements {
        case .int32: .int4Array
        case .text: .textArray
        }
    }

    var psqlFormat: PostgresFormat { .binary }

    private var elementType: PostgresDataType {
        switch self.elements {
        case .int32: .int4
        case .text: .text
        }
    }

    private var count: Int {
        switch self.elements {
        case .int32(let values): values.count
        case .text(let values): values.count
        }
    }

    func encode<JSONEncoder: PostgresJSONEncoder>(
        into buffer: inout ByteBuffer, context: PostgresEncodingContext<JSONEncoder>
    ) {
        let count = self.count
        guard count > 0 else {
            buffer.writeInteger(0, as: Int32.self)
            buffer.writeInteger(0, as: Int32.self)
            buffer.writeInteger(self.elementType.rawValue, as: UInt32.self)
            return
        }
        var size = 20
        switch self.elements {
        case .int32: size += 8 * count
        case .text(let values):
            size += 4 * count
            for value in values { size += value.utf8.count }
        }
        let elementType = self.elementType.rawValue
        let elements = self.elements
        let written = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { raw in
            guard let base = raw.baseAddress else { return 0 }
            var at = 0
            func store(_ value: Int32) {
                base.storeBytes(of: value.bigEndian, toByteOffset: at, as: Int32.self)
                at += 4
            }
            store(1)
            store(0)
            store(Int32(bitPattern: elementType))
            store(Int32(count))
            store(1)
            switch elements {
            case .int32(let values):
                for value in values {
                    store(4)
                    store(value)
                }
            case .text(let values):
                for var value in values {
                    value.withUTF8 { utf8 in
                        store(Int32(utf8.count))
                        if let source = utf8.baseAddress {
                            (base + at).copyMemory(from: source, byteCount: utf8.count)
                        }
                        at += utf8.count
                    }
                }
            }
            return at
        }
        precondition(written == size, "an array parameter of \(size) bytes wrote \(written)")
    }
}
