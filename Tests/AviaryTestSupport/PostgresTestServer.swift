//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryStorage
import Foundation
import Logging
import PostgresNIO
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A real, throwaway PostgreSQL server for tests, from Debian's packages (`.ci/run` installs them).
///
/// ``shared()`` starts one server per test process, the first time a test asks, and every suite
/// shares it; each test takes a fresh database from ``makeDatabase()``. The server runs from a
/// temporary folder (`initdb` as the `postgres` user when the tests run as root, since PostgreSQL
/// refuses root), listens on a free port of 127.0.0.1 with its unix socket in that folder, keeps
/// fsync on (tests see real durability), and stops with a fast shutdown when the test process
/// exits (a watchdog process also stops it and removes the folder if the test process is killed).
///
/// With `AVIARY_TEST_POSTGRES_URL=postgres://user:password@host:port/database` set, tests use that
/// server instead (its user must be allowed to create databases; the databases they create stay).
/// Without PostgreSQL installed, ``shared()`` throws a message that says so: tests fail, never skip.
///
/// ```swift
/// let url = try await PostgresTestServer.shared().makeDatabase()
/// let count = try await PostgresStore.withStore(url: url) { store in try await store.ping() }
/// ```
public final class PostgresTestServer: Sendable {
    /// Why a server could not be started or used.
    public struct Failure: Error, CustomStringConvertible {
        /// What went wrong and what to do about it.
        public var description: String
    }

    /// The server's address, with the administrator's credentials and its default database.
    public let address: PostgresAddress
    /// The temporary folder holding the data directory, log and socket (nil for an external server).
    public let directory: URL?
    /// The server's log file (nil for an external server).
    public var logFile: URL? { self.directory?.appendingPathComponent("server.log") }
    private let binDirectory: URL?
    private let postmasterPID: Int32?
    private let stopped = Atomic<Bool>(false)

    private init(address: PostgresAddress, directory: URL?, binDirectory: URL?, postmasterPID: Int32?) {
        self.address = address
        self.directory = directory
        self.binDirectory = binDirectory
        self.postmasterPID = postmasterPID
    }

    // MARK: Getting a server

    private static let sharedServer = Mutex<Task<PostgresTestServer, any Error>?>(nil)

    /// The test process's server: `AVIARY_TEST_POSTGRES_URL`'s when set, otherwise one started
    /// now (the first call starts it; later and concurrent calls get the same one).
    ///
    /// - Throws: ``Failure`` saying why there is no server (PostgreSQL not installed, initdb or
    ///   the server failed, with its log).
    public static func shared() async throws -> PostgresTestServer {
        let task = Self.sharedServer.withLock { task in
            if let task { return task }
            let started = Task {
                if let url = ProcessInfo.processInfo.environment["AVIARY_TEST_POSTGRES_URL"], !url.isEmpty {
                    return try Self.external(url)
                }
                return try await Self.start()
            }
            task = started
            return started
        }
        return try await task.value
    }

    /// A server at `url`, run by someone else.
    private static func external(_ url: String) throws -> PostgresTestServer {
        do {
            return PostgresTestServer(
                address: try PostgresAddress(parsing: url), directory: nil, binDirectory: nil, postmasterPID: nil)
        } catch {
            throw Failure(description: "AVIARY_TEST_POSTGRES_URL: \(error.message)")
        }
    }

    /// Starts a private server (for tests that stop it); most tests use ``shared()``.
    ///
    /// ```swift
    /// let server = try await PostgresTestServer.start()
    /// defer { server.shutdown() }
    /// ```
    ///
    /// - Throws: ``Failure`` saying why (PostgreSQL not installed, initdb or the server failed, with its log).
    public static func start() async throws -> PostgresTestServer {
        let binDirectory = try Self.findBinaries()
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("aviary-postgres-\(UUID().uuidString.prefix(8).lowercased())")
        let data = directory.appendingPathComponent("data")
        let password = UUID().uuidString
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            try Data(password.utf8).write(to: directory.appendingPathComponent("password"))
            try Self.handToPostgresUser(directory, files: ["password"])
        } catch let error as Failure {
            throw error
        } catch {
            throw Failure(description: "cannot prepare \(directory.path) for PostgreSQL: \(error)")
        }

        let initdb = try await Self.run(
            binDirectory.appendingPathComponent("initdb").path,
            [
                "-D", data.path, "-U", "postgres", "--pwfile=\(directory.appendingPathComponent("password").path)",
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
                // Only initdb's own files skip fsync; the server below runs with fsync on.
                "--no-sync", "--no-instructions",
            ])
        guard initdb.status == 0 else {
            throw Failure(description: "initdb failed (exit \(initdb.status)) in \(data.path):\n\(initdb.output)")
        }

        var lastFailure = ""
        let logURL = directory.appendingPathComponent("server.log")
        for _ in 0..<3 {
            let port = try FreePort.next()
            // The server runs as a child of this process (pg_ctl would daemonize it, and its exit
            // could not be watched), its log in the folder.
            try Data().write(to: logURL)
            if Self.isRoot, let user = getpwnam("postgres") {
                chown(logURL.path, user.pointee.pw_uid, user.pointee.pw_gid)
            }
            let postgres = binDirectory.appendingPathComponent("postgres").path
            let arguments = [
                "-D", data.path, "-p", "\(port)", "-c", "listen_addresses=127.0.0.1",
                "-c", "unix_socket_directories=\(directory.path)", "-c", "fsync=on", "-c", "synchronous_commit=on",
                "-c", "max_connections=300", "-c", "shared_buffers=64MB",
            ]
            let server: Spawn.Child
            do {
                server = try Self.spawn(postgres, arguments, output: logURL.path)
            } catch {
                throw Failure(description: "cannot run \(postgres): \(error)")
            }
            let address = PostgresAddress(
                host: "127.0.0.1", port: port, username: "postgres", password: password, database: "postgres",
                tls: .disable)
            // Ready when a real login over TCP succeeds; polled with a deadline, and given up at
            // once when the server exits.
            let deadline = ContinuousClock.now + .seconds(120)
            var lastError = ""
            while ContinuousClock.now < deadline, server.isRunning {
                do {
                    try await Self.probe(address)
                    guard
                        let pidText = try? String(
                            contentsOf: data.appendingPathComponent("postmaster.pid"), encoding: .utf8),
                        let pid = Int32(pidText.split(separator: "\n").first ?? "")
                    else {
                        throw Failure(description: "PostgreSQL started but left no postmaster.pid in \(data.path)")
                    }
                    let started = PostgresTestServer(
                        address: address, directory: directory, binDirectory: binDirectory, postmasterPID: pid)
                    started.stopWhenProcessEnds()
                    return started
                } catch let error as Failure {
                    throw error
                } catch {
                    lastError = PostgresStore.describe(error)
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
            let text = (try? String(contentsOf: logURL, encoding: .utf8)) ?? ""
            if server.isRunning {
                server.kill(SIGINT)
                throw Failure(
                    description:
                        "PostgreSQL in \(data.path) did not accept a login within 120 s (\(lastError)); log:\n\(text.suffix(4000))"
                )
            }
            lastFailure = "the server exited; log:\n\(text.suffix(4000))"
            // Another process took the port between our probe and the server's bind: try another one.
            guard text.contains("could not bind") || text.contains("already in use") else { break }
        }
        throw Failure(description: "PostgreSQL did not start from \(data.path): \(lastFailure)")
    }

    /// Logs in once and out again.
    private static func probe(_ address: PostgresAddress) async throws {
        var configuration = PostgresConnection.Configuration(
            host: address.host, port: address.port, username: address.username, password: address.password,
            database: address.database, tls: .disable)
        configuration.options.connectTimeout = .seconds(10)
        let connection = try await PostgresConnection.connect(
            configuration: configuration, id: 0, logger: Logger(label: "aviary.test.postgres"))
        try? await connection.close()
    }

    /// Debian's PostgreSQL binaries: the newest `/usr/lib/postgresql/<version>/bin` with a server.
    private static func findBinaries() throws -> URL {
        let root = URL(fileURLWithPath: "/usr/lib/postgresql")
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? [])
            .compactMap { name in Int(name).map { (version: $0, name: name) } }
            .sorted { $0.version > $1.version }
        for version in versions {
            let bin = root.appendingPathComponent(version.name).appendingPathComponent("bin")
            if ["postgres", "initdb"].allSatisfy({
                FileManager.default.isExecutableFile(atPath: bin.appendingPathComponent($0).path)
            }) {
                return bin
            }
        }
        throw Failure(
            description: """
                PostgreSQL is not installed: no /usr/lib/postgresql/<version>/bin with postgres and initdb. \
                Run .ci/run (it installs Debian's postgresql package) or `apt-get install postgresql`, \
                or set AVIARY_TEST_POSTGRES_URL=postgres://user:password@host:port/database to use a running server.
                """)
    }

    // MARK: Databases

    /// Creates an empty database `t_<random>` on the server and returns its URL.
    ///
    /// ```swift
    /// let url = try await PostgresTestServer.shared().makeDatabase()   // postgres://postgres:…@127.0.0.1:…/t_…
    /// ```
    ///
    /// - Throws: ``Failure`` when the server refuses.
    public func makeDatabase() async throws -> StoreURL {
        let name = "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(16).lowercased()
        try await self.withAdminConnection { connection, logger in
            _ = try await connection.complete(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: logger)
        }
        var address = self.address
        address.database = name
        return StoreURL(.postgres(url: Self.url(address)))
    }

    /// Runs `body` with a connection to the server's administrative database.
    ///
    /// - Throws: ``Failure`` when the connection or `body` fails, with postgres-nio's details.
    @discardableResult
    public func withAdminConnection<T: Sendable>(
        _ body: (PostgresConnection, Logger) async throws -> T
    ) async throws -> T {
        let logger = Logger(label: "aviary.test.postgres")
        var configuration = PostgresConnection.Configuration(
            host: self.address.host, port: self.address.port, username: self.address.username,
            password: self.address.password, database: self.address.database, tls: .disable)
        configuration.options.connectTimeout = .seconds(30)
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
        } catch {
            throw Failure(
                description: "cannot connect to the test server \(self.address): \(PostgresStore.describe(error))")
        }
        do {
            let value = try await body(connection, logger)
            try? await connection.close()
            return value
        } catch {
            try? await connection.close()
            throw Failure(description: "on the test server \(self.address): \(PostgresStore.describe(error))")
        }
    }

    /// `address` as a URL with its password (``PostgresAddress``'s description masks it).
    private static func url(_ address: PostgresAddress) -> String {
        var components = URLComponents()
        components.scheme = "postgres"
        components.user = address.username
        components.password = address.password
        components.host = address.host
        components.port = address.port
        components.path = "/" + address.database
        if address.tls != .prefer {
            components.queryItems = [URLQueryItem(name: "sslmode", value: address.tls.rawValue)]
        }
        return components.string ?? "postgres://\(address.username)@\(address.host):\(address.port)/\(address.database)"
    }

    // MARK: Stopping

    /// Stops the server now (fast shutdown: open transactions roll back) and removes its folder.
    /// An external server is left alone. Safe to call more than once.
    ///
    /// ```swift
    /// await server.shutdown()
    /// ```
    public func shutdown() async {
        guard let directory = self.directory, !self.stopped.exchange(true, ordering: .acquiringAndReleasing)
        else { return }
        if let pid = self.postmasterPID {
            // SIGINT is PostgreSQL's fast shutdown; the postmaster is gone when kill(pid, 0) fails.
            kill(pid, SIGINT)
            let deadline = ContinuousClock.now + .seconds(60)
            while kill(pid, 0) == 0, ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        if let pid = self.postmasterPID { Self.pidsToStop.withLock { _ = $0.remove(pid) } }
        try? FileManager.default.removeItem(at: directory)
    }

    private static let pidsToStop = Mutex<Set<Int32>>([])
    private static let exitHandlerInstalled = Atomic<Bool>(false)

    /// Stops the server when this process ends: an exit handler asks for a fast shutdown right
    /// away, and a watchdog (its own session, so a Ctrl-C of the test run does not kill it)
    /// stops it and removes the folder even when this process dies without running exit handlers.
    private func stopWhenProcessEnds() {
        guard let pid = self.postmasterPID, let directory = self.directory else { return }
        Self.pidsToStop.withLock { _ = $0.insert(pid) }
        if !Self.exitHandlerInstalled.exchange(true, ordering: .acquiringAndReleasing) {
            atexit {
                for pid in PostgresTestServer.pidsToStop.withLock({ $0 }) { kill(pid, SIGINT) }
            }
        }
        // `tail --pid` returns when that process is gone: no polling loop of ours.
        let script = """
            tail --pid=\(getpid()) -f /dev/null
            kill -INT \(pid) 2>/dev/null
            tail --pid=\(pid) -f /dev/null
            rm -rf '\(directory.path)'
            """
        // `setsid` gives the watchdog a session of its own. Started by ``Spawn`` it is no
        // process-group leader, so it calls setsid() and becomes `sh` itself; `--wait` matters only
        // when it has to fork first (as a group leader, which Foundation's `Process` made it).
        // ``Spawn``'s waiter thread reaps it when it ends: an unreaped zombie made swift-testing's
        // exit monitor spin on `waitid` for the rest of the run.
        _ = try? Spawn.start("/usr/bin/setsid", ["--wait", "sh", "-c", script])
    }

    // MARK: Processes and ports

    private static var isRoot: Bool { geteuid() == 0 }

    /// Makes `directory` (and `files` in it) the `postgres` user's when running as root.
    private static func handToPostgresUser(_ directory: URL, files: [String]) throws {
        guard Self.isRoot else { return }
        guard let user = getpwnam("postgres") else {
            throw Failure(
                description:
                    "running as root, but there is no postgres user to run PostgreSQL as (apt-get install postgresql creates it)"
            )
        }
        for path in [directory.path] + files.map({ directory.appendingPathComponent($0).path }) {
            guard chown(path, user.pointee.pw_uid, user.pointee.pw_gid) == 0 else {
                throw Failure(
                    description: "cannot give \(path) to the postgres user: \(String(cString: strerror(errno)))")
            }
        }
        chmod(directory.path, 0o700)
    }

    /// Runs a PostgreSQL program (as the `postgres` user when root) and returns its exit status
    /// and output; the exit is awaited without blocking a thread.
    private static func run(_ program: String, _ arguments: [String]) async throws -> (status: Int32, output: String) {
        let output = FileManager.default.temporaryDirectory
            .appendingPathComponent("aviary-postgres-output-\(UUID().uuidString)")
        try Data().write(to: output)
        defer { try? FileManager.default.removeItem(at: output) }
        let status: Int32
        do {
            status = try await Self.spawn(program, arguments, output: output.path).exit.status
        } catch let error as Spawn.Failure {
            throw Failure(description: "cannot run \(program): \(error)")
        }
        return (status, (try? String(contentsOf: output, encoding: .utf8)) ?? "")
    }

    /// Starts a PostgreSQL program (through `runuser` as the `postgres` user when root) from `/`,
    /// a folder the postgres user may read, so that its programs do not complain about the cwd;
    /// standard input empty, both outputs appended to `output`.
    private static func spawn(_ program: String, _ arguments: [String], output: String) throws -> Spawn.Child {
        let (executable, arguments) =
            Self.isRoot ? ("/usr/sbin/runuser", ["-u", "postgres", "--", program] + arguments) : (program, arguments)
        return try Spawn.start(
            executable, arguments, workingDirectory: "/", stdout: .appending(to: output), stderr: .standardOutput)
    }
}
