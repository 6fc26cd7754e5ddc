//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("FaultSchedule and FreePort")
struct FaultScheduleTests {
    @Test("a seed replays the same schedule; AVIARY_FAULT_SEED chooses it")
    func replay() {
        var first = FaultSchedule(seed: 42)
        var second = FaultSchedule("replay", environment: ["AVIARY_FAULT_SEED": "42"])
        #expect(second.seed == 42)
        let a = (0..<100).map { _ in first.next() }
        let b = (0..<100).map { _ in second.next() }
        #expect(a == b)
        #expect(Set(a).count == 100, "SplitMix64 does not repeat within 100 draws")
        var other = FaultSchedule(seed: 43)
        #expect(other.next() != a[0])
        // SplitMix64's first output for seed 0 (the reference implementation's value).
        var zero = FaultSchedule(seed: 0)
        #expect(zero.next() == 0xE220_A839_7B1D_CDAF)
    }

    @Test("without AVIARY_FAULT_SEED the seed is random")
    func randomSeed() {
        let seeds = Set((0..<8).map { _ in FaultSchedule("random", environment: [:]).seed })
        #expect(seeds.count == 8)
    }

    @Test("FreePort gives a port that a listener can bind on 127.0.0.1")
    func freePort() throws {
        let port = try FreePort.next()
        #expect((1...65535).contains(port))
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(fd >= 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        #expect(bound == 0)
    }
}
