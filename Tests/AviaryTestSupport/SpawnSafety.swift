//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

#if canImport(Glibc)
import Glibc
#endif

/// A guard against a crash of Foundation's `Process.run()` on Linux in this toolchain.
///
/// `Process.run()` lists `/proc/self/fd` to close inherited descriptors and copies each entry's
/// whole 256-byte `d_name`, past the end of short records (swift-corelibs-foundation, fixed
/// upstream in PR #5472 after Swift 6.3.1). When the last record sits at the end of glibc's
/// 32 KiB directory buffer and the next page is not mapped, the copy faults: the test process,
/// which has many descriptors open and spawns hundreds of children, died with SIGSEGV in
/// `Process.run` about once in a few full runs. Allocations of 32 KiB and more served by `mmap`
/// (`M_MMAP_THRESHOLD`) round the directory buffer up to whole pages, which leaves ~4 KiB of
/// mapped slack after it, so the over-read always lands in mapped memory.
///
/// Every helper here that starts a process calls ``ensure()`` first; a test that makes a
/// `Process` itself calls it too.
///
/// ```swift
/// SpawnSafety.ensure()
/// try process.run()
/// ```
public enum SpawnSafety {
    private static let applied: Bool = {
        #if canImport(Glibc)
        // mallopt is not in the Glibc module map; M_MMAP_THRESHOLD is -3 in <malloc.h>.
        typealias MallOpt = @convention(c) (Int32, Int32) -> Int32
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "mallopt") else { return false }
        return unsafeBitCast(symbol, to: MallOpt.self)(-3, 32 * 1024) == 1
        #else
        return true
        #endif
    }()

    /// Applies the guard once per process; later calls cost one load.
    @discardableResult
    public static func ensure() -> Bool { Self.applied }
}
