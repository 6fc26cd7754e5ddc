//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Starts a program with `posix_spawn` and awaits its exit on a thread of its own.
///
/// Why not Foundation's `Process`: on Linux, `Process.run()` lists `/proc/self/fd` to close
/// inherited descriptors and copies each entry's whole 256-byte name, reading past short
/// records (swift-corelibs-foundation PR #5472, fixed after Swift 6.3.1). With more than ~1,350
/// descriptors open, which the parallel test process reaches (1,700 measured), the last record
/// can sit at the end of glibc's 32 KiB buffer, and a CI run died with SIGSEGV in
/// `Process.run()` under `PyJWT.mint`. The helpers that start the most children (``Python`` and
/// ``ChildProcess``) spawn here instead; descriptors beyond the three standard ones are closed
/// in the child with glibc's `posix_spawn_file_actions_addclosefrom_np`.
///
/// ```swift
/// let status = try await Spawn.run("/usr/bin/env", ["python3", "-V"], stdin: input, stdout: output, stderr: output)
/// ```
enum Spawn {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34+), which the Glibc module does not export.
    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private static let addCloseFrom: AddCloseFrom? = {
        guard let handle = dlopen(nil, RTLD_NOW),
            let symbol = dlsym(handle, "posix_spawn_file_actions_addclosefrom_np")
        else { return nil }
        return unsafeBitCast(symbol, to: AddCloseFrom.self)
    }()

    /// Runs `executable` with `arguments` and the given standard descriptors (this process's
    /// environment) and returns its exit status (128 + the signal when a signal ended it).
    static func run(
        _ executable: String, _ arguments: [String], stdin: Int32, stdout: Int32, stderr: Int32
    ) async throws -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdin, 0)
        posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        posix_spawn_file_actions_adddup2(&actions, stderr, 2)
        _ = Self.addCloseFrom?(&actions, 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }

        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard result == 0 else {
            throw Failure(description: "cannot start \(executable): \(String(cString: strerror(result)))")
        }
        let child = pid
        return await withCheckedContinuation { (continuation: CheckedContinuation<Int32, Never>) in
            let waiter = Thread {
                var status: Int32 = 0
                while waitpid(child, &status, 0) == -1 && errno == EINTR {}
                let signal = status & 0x7f
                continuation.resume(returning: signal == 0 ? (status >> 8) & 0xff : 128 + signal)
            }
            waiter.name = "aviary.test.spawn-wait"
            waiter.start()
        }
    }
}
