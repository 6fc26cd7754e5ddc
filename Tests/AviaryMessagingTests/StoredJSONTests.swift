//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import Testing

@testable import AviaryMessaging

/// The stored JSON of events written without `JSONEncoder` reads back as the same event as
/// `CloudEvent`'s own encoding does; data it cannot vouch for takes the `Encodable` path.
@Suite("Stored event JSON")
struct StoredJSONTests {
    static func decode(_ text: String) throws -> CloudEvent {
        try JSONDecoder().decode(CloudEvent.self, from: Data(text.utf8))
    }

    static let time = Date(timeIntervalSince1970: 1_780_000_000.123_456)

    static let dataSamples: [String] = [
        #"{"orderID":"o-1","amountCents":1234,"items":[{"sku":"a","qty":2}],"gift":false,"note":null}"#,
        #"  {"b": 1.5, "a": -0.25e2, "c": [1, 2.0, 3e2, -0, 12345678901234567890, 1E-7]}  "#,
        #"{"text":"quote \" backslash \\ slash \/ tab \t newline \n unicode \u00e9 \ud83d\ude00 ✓"}"#,
        #""just a string""#, "42", "true", "null", "[]", "{}",
        #"{"a":{"b":{"c":{"d":[[[[]]]]}}}}"#,
    ]

    @Test("JSON data, attributes and extensions read back equal to CloudEvent's own encoding", arguments: dataSamples)
    func sameEvent(data: String) throws {
        let event = CloudEvent(
            id: "id \"1\"\n", source: "/shop/orders", type: "order.placed", subject: "order-1", time: Self.time,
            dataContentType: "application/json; charset=utf-8", dataSchema: "https://example.com/s.json",
            data: Data(data.utf8), extensions: ["traceparent": "00-abc-def-01", "zeta": "\u{1}control"])
        let fast = try StoredJSON.event(event)
        let slow = try StoredJSON.slow(event)
        #expect(try Self.decode(fast) == Self.decode(slow))
        #expect(fast.contains(#""data":"#), "JSON data is embedded, not base64: \(fast)")
    }

    @Test("the stored form is one compact object, members in name order, extensions among the attributes")
    func storedForm() throws {
        let event = CloudEvent(
            id: "id \"1\"\n", source: "/s", type: "t", subject: "é", time: Date(timeIntervalSince1970: 1.25),
            data: Data(#"{"b":1, "a":2}"#.utf8),
            extensions: ["traceparent": "00-1-2-01", "aaa": "x", "zeta": "\u{1}\t\\", "datax": "d"])
        #expect(
            try StoredJSON.event(event)
                == #"{"aaa":"x","data":{"b":1, "a":2},"datax":"d","id":"id \"1\"\n","source":"/s","specversion":"1.0","#
                + #""subject":"é","time":"1970-01-01T00:00:01.250Z","traceparent":"00-1-2-01","type":"t","#
                + #""zeta":"\u0001\t\\"}"#)
        #expect(StoredJSON.headers(["b": "2", "a": "\""]) == #"{"a":"\"","b":"2"}"#)
    }

    static let unacceptable: [String] = [
        "", "{", #"{"a":}"#, #"{"a":1,}"#, "[1,]", "01", "1.", ".5", "-", "1e", "+1", "1e400", "-1e400",
        #""\ud800""#, #""\udc00x""#, #""\x""#, "\"tab\tinside\"", "nul", "true false", #"{"a" 1}"#, "[1 2]",
        String(repeating: "[", count: 300) + String(repeating: "]", count: 300),
    ]

    @Test("data that is not JSON the decoder accepts goes through CloudEvent's own encoding", arguments: unacceptable)
    func fallback(data: String) throws {
        #expect(!JSONCheck.isAcceptable(Data(data.utf8)))
        let event = CloudEvent(source: "/s", type: "t", time: Self.time, data: Data(data.utf8))
        #expect(try StoredJSON.event(event) == StoredJSON.slow(event))
        _ = try Self.decode(StoredJSON.event(event))
    }

    @Test("binary data, no data, no time and invalid UTF-8 read back equal")
    func otherShapes() throws {
        let events = [
            CloudEvent(source: "/s", type: "t", time: nil),
            CloudEvent(
                source: "/s", type: "t", time: Self.time, dataContentType: "application/octet-stream",
                data: Data([0, 1, 2, 255])),
            CloudEvent(source: "/s", type: "t", time: Self.time, data: Data([0x22, 0xff, 0x22])),
            CloudEvent(source: "/s", type: "t", time: Date(timeIntervalSince1970: 0.999_9)),
            CloudEvent(source: "/s", type: "t", time: Date(timeIntervalSince1970: 4_102_444_799.5)),
        ]
        for event in events {
            #expect(try Self.decode(StoredJSON.event(event)) == Self.decode(StoredJSON.slow(event)))
        }
    }

    @Test("times are written as CloudEvent writes them, to the millisecond")
    func times() throws {
        var generator = SystemRandomNumberGenerator()
        // Times a random run found where scaling by 1000 before splitting off the seconds rounded up.
        let found: [Double] = [3_107_981_069.64, 1_941_437_106.534, 3_879_999_750.766]
        let random = (0..<200).map { _ in Double.random(in: 0..<4_000_000_000, using: &generator) }
        for interval in found + random {
            let time = Date(timeIntervalSince1970: interval)
            let event = CloudEvent(source: "/s", type: "t", time: time)
            #expect(try Self.decode(StoredJSON.event(event)).time == Self.decode(StoredJSON.slow(event)).time)
        }
    }

    @Test(
        "one writer for a batch's events writes each as a writer of its own: times of the same and of other seconds, escapes, data that makes it grow"
    )
    func sharedWriter() throws {
        // Times in seconds already written and in new ones (the writer keeps the last second's
        // digits), a year it writes with five digits, escapes and data longer than its buffer.
        let intervals: [Double] = [
            1.25, 1.999, 2.0, 1.5, 86_399.5, 86_400.001, 86_400.999, 3_107_981_069.64, 253_402_300_800.5,
            253_402_300_800.75, 86_400.002,
        ]
        let long = #"{"text":""# + String(repeating: #"abc\n"#, count: 400) + #""}"#
        var events = intervals.map { interval in
            CloudEvent(
                id: "id \(interval)\n", source: "/s", type: "t", subject: "\u{1}é",
                time: Date(timeIntervalSince1970: interval), data: Data(#"{"a":1}"#.utf8))
        }
        events.insert(CloudEvent(source: "/s", type: "t", time: nil, data: Data(long.utf8)), at: 3)
        events.append(CloudEvent(source: "/s", type: "t", time: Date(timeIntervalSince1970: 1.5)))
        var writer = JSONWriter(capacity: 16)
        defer { writer.deallocate() }
        for event in events {
            let shared = try StoredJSON.event(event, into: &writer)
            #expect(shared == (try StoredJSON.event(event)))
            if let time = event.time, time.timeIntervalSince1970 < 253_402_300_800 {
                #expect(try Self.decode(shared) == Self.decode(StoredJSON.slow(event)), "\(shared)")
            }
        }
        #expect(
            try StoredJSON.event(events[0], into: &writer)
                == #"{"data":{"a":1},"id":"id 1.25\n","source":"/s","specversion":"1.0","subject":"\u0001é","#
                + #""time":"1970-01-01T00:00:01.250Z","type":"t"}"#)
    }

    @Test("headers are a JSON object of strings that decodes back")
    func headers() throws {
        let headers = ["traceparent": "00-1-2-01", "quote\"": "back\\slash\n", "é": "✓"]
        let decoded = try JSONDecoder().decode([String: String].self, from: Data(StoredJSON.headers(headers).utf8))
        #expect(decoded == headers)
        #expect(StoredJSON.headers([:]) == "{}")
    }

    @Test("the calendar date of a day number is gmtime's, leap days and days before 1970 included")
    func civilDates() {
        // Every day from 1600 to 2400 (step 1), and a coarse walk far beyond in both directions.
        let days = Array(Int64(-135_140)...Int64(157_000)) + stride(from: Int64(-3_000_000), to: 3_000_000, by: 997)
        for day in days {
            var seconds = time_t(day * 86_400)
            var parts = tm()
            gmtime_r(&seconds, &parts)
            let civil = JSONWriter.civil(days: day)
            guard civil.year == Int64(parts.tm_year) + 1900, civil.month == Int64(parts.tm_mon) + 1,
                civil.day == Int64(parts.tm_mday)
            else {
                Issue.record(
                    "day \(day): \(civil), gmtime \(parts.tm_year + 1900)-\(parts.tm_mon + 1)-\(parts.tm_mday)")
                return
            }
        }
    }

    @Test("JSON strings are accepted exactly when their bytes are well-formed UTF-8")
    func utf8InStrings() {
        // Lead bytes at the edges of each row of the Unicode standard's table 3-7, each followed by
        // continuation bytes at the edges of the allowed ranges and just outside them.
        let leads: [UInt8] = [
            0x7F, 0x80, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5,
            0xFF,
        ]
        let followers: [UInt8] = [0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0]
        var cases: [[UInt8]] = []
        for lead in leads {
            cases.append([lead])
            for a in followers {
                cases.append([lead, a])
                for b in followers {
                    cases.append([lead, a, b])
                    for c in [UInt8(0x80), 0xBF, 0xC0, 0x41] { cases.append([lead, a, b, c]) }
                }
            }
        }
        for bytes in cases {
            let json = [UInt8(ascii: "\"")] + bytes + [UInt8(ascii: "\"")]
            let wellFormed = String(validating: json, as: UTF8.self) != nil
            #expect(JSONCheck.isAcceptable(Data(json)) == wellFormed, "bytes \(bytes)")
        }
        // Outside strings, any byte above 0x7F is not JSON.
        #expect(!JSONCheck.isAcceptable(Data([0x5B, 0xC3, 0xA9, 0x5D])))
    }
}
