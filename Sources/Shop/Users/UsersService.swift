//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryService
import AviaryStorage
import Foundation
import GRDB
import Hummingbird
import Logging
import Tracing

/// A Shop customer.
public struct User: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var email: String
}

/// The `users` service: who the customers are.
///
/// - `GET /users/{id}`: the user, or a 404 problem.
/// - `POST /users` `{"id": "carol", "name": "Carol", "email": "carol@example.com"}`: creates a user
///   (409 if the id is taken).
///
/// Two demo users, `alice` and `bob`, are created on first start.
struct UsersService: Sendable {
    let store: SQLiteStore
    let logger: Logger

    static var migrations: Migrations {
        var migrations = Migrations()
        migrations.add("v1: users") { db in
            try db.execute(
                sql: """
                    CREATE TABLE users (
                        id TEXT PRIMARY KEY NOT NULL,
                        name TEXT NOT NULL,
                        email TEXT NOT NULL UNIQUE
                    )
                    """)
            try db.execute(
                sql: "INSERT INTO users (id, name, email) VALUES (?, ?, ?), (?, ?, ?)",
                arguments: ["alice", "Alice Liddell", "alice@example.com", "bob", "Bob Builder", "bob@example.com"])
        }
        return migrations
    }

    init(url: StoreURL, logger: Logger, tracer: (any Tracer)? = nil) throws {
        self.store = try SQLiteStore(url: url, migrations: Self.migrations, tracer: tracer)
        self.logger = logger
    }

    /// The service's health checks.
    var healthChecks: [HealthCheck] { [databaseCheck(self.store)] }

    /// Adds the service's routes to `router` (which already renders problems and serves probes).
    func addRoutes(to router: Router<BasicRequestContext>) {
        let store = self.store
        router.get("/users/:id") { _, context -> JSONResponse<User> in
            let id = try context.parameters.require("id")
            let user = try await store.read { db in
                try Row.fetchOne(db, sql: "SELECT id, name, email FROM users WHERE id = ?", arguments: [id])
                    .map { User(id: $0["id"], name: $0["name"], email: $0["email"]) }
            }
            guard let user else {
                throw HTTPProblem(
                    status: 404, slug: "user-not-found", detail: "no user \"\(id)\"", extensions: ["user_id": id])
            }
            return JSONResponse(status: .ok, value: user)
        }
        router.post("/users") { request, _ -> JSONResponse<User> in
            let user = try await request.decodeJSON(as: User.self)
            var problems: [String] = []
            if let reason = ServiceName.validate(user.id) { problems.append("id: \(reason)") }
            if user.name.isEmpty { problems.append("name: expected a non-empty string") }
            if !user.email.contains("@") {
                problems.append("email: expected an address with '@', got \"\(user.email)\"")
            }
            if !problems.isEmpty {
                throw HTTPProblem(status: 400, slug: "invalid-user", detail: problems.joined(separator: "; "))
            }
            do {
                try await store.write { db in
                    try db.execute(
                        sql: "INSERT INTO users (id, name, email) VALUES (?, ?, ?)",
                        arguments: [user.id, user.name, user.email])
                }
            } catch let error as DatabaseError
                where error.extendedResultCode == .SQLITE_CONSTRAINT_PRIMARYKEY
                || error.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE
            {
                throw HTTPProblem(
                    status: 409, slug: "user-exists", detail: "a user with id \"\(user.id)\" or that email exists")
            }
            return JSONResponse(status: .created, value: user)
        }
    }
}
