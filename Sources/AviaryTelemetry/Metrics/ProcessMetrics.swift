//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The standard `process_*` metrics of this process, read from `/proc` at scrape time (Linux).
///
/// The families and their sources:
///
/// | metric | type | source |
/// | --- | --- | --- |
/// | `process_cpu_seconds_total` | counter | utime + stime of `/proc/self/stat` / `_SC_CLK_TCK` |
/// | `process_resident_memory_bytes` | gauge | rss of `/proc/self/stat` × page size |
/// | `process_virtual_memory_bytes` | gauge | vsize of `/proc/self/stat` |
/// | `process_open_fds` | gauge | entries of `/proc/self/fd` |
/// | `process_max_fds` | gauge | `getrlimit(RLIMIT_NOFILE)` soft limit |
/// | `process_start_time_seconds` | gauge | `btime` of `/proc/stat` + starttime / `_SC_CLK_TCK` |
///
/// ```swift
/// if let process = ProcessMetrics.collect() {
///     print(process.residentMemoryBytes)
/// }
/// ```
public struct ProcessMetrics: Sendable, Hashable {
    /// User plus system CPU time, in seconds.
    public var cpuSeconds: Double
    /// Resident set size, in bytes.
    public var residentMemoryBytes: Int
    /// Virtual memory size, in bytes.
    public var virtualMemoryBytes: Int
    /// Open file descriptors.
    public var openFileDescriptors: Int
    /// The soft limit on open file descriptors; `nil` when unlimited or unknown.
    public var maxFileDescriptors: Int?
    /// Process start time, in seconds since the Unix epoch.
    public var startTimeSeconds: Double

    /// Creates a snapshot from its values (tests, other platforms).
    ///
    /// ```swift
    /// let snapshot = ProcessMetrics(cpuSeconds: 1.5, residentMemoryBytes: 50 << 20, virtualMemoryBytes: 1 << 30,
    ///                               openFileDescriptors: 12, maxFileDescriptors: 1024, startTimeSeconds: 1.7e9)
    /// ```
    public init(
        cpuSeconds: Double,
        residentMemoryBytes: Int,
        virtualMemoryBytes: Int,
        openFileDescriptors: Int,
        maxFileDescriptors: Int?,
        startTimeSeconds: Double
    ) {
        self.cpuSeconds = cpuSeconds
        self.residentMemoryBytes = residentMemoryBytes
        self.virtualMemoryBytes = virtualMemoryBytes
        self.openFileDescriptors = openFileDescriptors
        self.maxFileDescriptors = maxFileDescriptors
        self.startTimeSeconds = startTimeSeconds
    }

    /// Reads the current values; `nil` where `/proc` is not available (macOS) or unreadable.
    ///
    /// ```swift
    /// let cpu = ProcessMetrics.collect()?.cpuSeconds ?? 0
    /// ```
    public static func collect() -> ProcessMetrics? {
        #if os(Linux)
        guard let stat = ProcFiles.read("/proc/self/stat"),
            let systemStat = ProcFiles.read("/proc/stat"),
            let openFileDescriptors = ProcFiles.countOpenFileDescriptors()
        else {
            return nil
        }
        let ticks = Int(sysconf(Int32(_SC_CLK_TCK)))
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard
            var metrics = ProcessMetrics(
                parsingStat: stat,
                systemStat: systemStat,
                clockTicksPerSecond: ticks,
                pageSize: pageSize
            )
        else {
            return nil
        }
        metrics.openFileDescriptors = openFileDescriptors
        metrics.maxFileDescriptors = ProcFiles.maxFileDescriptors()
        return metrics
        #else
        return nil
        #endif
    }

    /// Parses `/proc/self/stat` and `/proc/stat`; descriptor counts are left at 0 and `nil`.
    ///
    /// The command name (field 2) is in parentheses and may itself contain spaces and `)`, so
    /// fields are counted from the **last** `)`.
    init?(parsingStat stat: String, systemStat: String, clockTicksPerSecond: Int, pageSize: Int) {
        guard clockTicksPerSecond > 0, let close = stat.lastIndex(of: ")") else { return nil }
        // Fields 3... (state, ppid, ...), so field N is at index N - 3.
        let fields = stat[stat.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        func field(_ number: Int) -> Int? {
            let index = number - 3
            guard index < fields.count else { return nil }
            return Int(fields[index])
        }
        guard let utime = field(14), let stime = field(15), let startTicks = field(22),
            let vsize = field(23), let rssPages = field(24)
        else {
            return nil
        }
        guard
            let bootLine = systemStat.split(separator: "\n").first(where: { $0.hasPrefix("btime ") }),
            let bootTime = Int(bootLine.dropFirst("btime ".count).trimmingSpaces())
        else {
            return nil
        }
        let ticks = Double(clockTicksPerSecond)
        self.init(
            cpuSeconds: Double(utime + stime) / ticks,
            residentMemoryBytes: rssPages * pageSize,
            virtualMemoryBytes: vsize,
            openFileDescriptors: 0,
            maxFileDescriptors: nil,
            startTimeSeconds: Double(bootTime) + Double(startTicks) / ticks
        )
    }

    /// Appends the families in the Prometheus text format, each with `# HELP` and `# TYPE`.
    ///
    /// ```swift
    /// var text: [UInt8] = []
    /// ProcessMetrics.collect()?.render(into: &text)
    /// ```
    public func render(into buffer: inout [UInt8]) {
        func family(_ name: String, _ type: String, _ help: String, _ value: String) {
            buffer.append(contentsOf: "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n".utf8)
        }
        family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            "\(self.cpuSeconds)"
        )
        family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            "\(self.residentMemoryBytes)"
        )
        family(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            "\(self.virtualMemoryBytes)"
        )
        family("process_open_fds", "gauge", "Number of open file descriptors.", "\(self.openFileDescriptors)")
        if let maxFileDescriptors = self.maxFileDescriptors {
            family("process_max_fds", "gauge", "Maximum number of open file descriptors.", "\(maxFileDescriptors)")
        }
        family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            "\(self.startTimeSeconds)"
        )
    }
}

extension Substring {
    fileprivate func trimmingSpaces() -> Substring {
        var text = self
        while text.first == " " || text.first == "\t" { text = text.dropFirst() }
        while text.last == " " || text.last == "\t" || text.last == "\r" { text = text.dropLast() }
        return text
    }
}

/// Small readers for `/proc`, with plain `open`/`read` (no Foundation): `/proc` files report a
/// size of 0, so they are read to end of file.
enum ProcFiles {
    static func read(_ path: String) -> String? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { buffer in
                systemRead(descriptor, buffer.baseAddress, buffer.count)
            }
            if count > 0 {
                bytes.append(contentsOf: chunk[..<count])
            } else if count < 0 && errno == EINTR {
                continue
            } else if count < 0 {
                return nil
            } else {
                return String(decoding: bytes, as: UTF8.self)
            }
        }
    }

    /// Entries of `/proc/self/fd`, not counting the descriptor used to list it.
    static func countOpenFileDescriptors() -> Int? {
        guard let directory = opendir("/proc/self/fd") else { return nil }
        defer { closedir(directory) }
        let own = dirfd(directory)
        var count = 0
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name != ".", name != "..", Int32(name) != own else { continue }
            count += 1
        }
        return count
    }

    /// The soft `RLIMIT_NOFILE`, or `nil` when unlimited.
    static func maxFileDescriptors() -> Int? {
        var limit = rlimit()
        #if canImport(Glibc)
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        #else
        let resource = RLIMIT_NOFILE
        #endif
        // RLIM_INFINITY is all ones; Swift imports the macro as an overflowing `-1`.
        guard getrlimit(resource, &limit) == 0, limit.rlim_cur != rlim_t.max else { return nil }
        return Int(clamping: limit.rlim_cur)
    }

    private static func systemRead(_ descriptor: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int {
        #if canImport(Darwin)
        Darwin.read(descriptor, buffer, count)
        #elseif canImport(Glibc)
        Glibc.read(descriptor, buffer, count)
        #else
        Musl.read(descriptor, buffer, count)
        #endif
    }
}
