//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import AviaryService
import AviaryStorage
import Crypto
import Foundation
import GRDB
import Hummingbird
import Logging
import NIOCore
import Tracing

/// A Shop customer.
public struct User: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var email: String
}

/// A sign-up: a user and, to be able to log in, a password.
struct NewUser: Codable, Sendable {
    var id: String
    var name: String
    var email: String
    var password: String?
}

/// Credentials for `POST /login`.
struct LoginRequest: Codable, Sendable {
    var username: String
    var password: String
}

/// The answer to a successful login (RFC 6749 §5.1 field names).
struct LoginResponse: Codable, Sendable {
    var access_token: String
    var token_type: String
    var expires_in: Int
    var scope: String
}

/// What Shop's access tokens say: issued by `users`, for all of Shop, short-lived.
enum ShopTokens {
    /// The `iss` of every token.
    static let issuer = "shop-users"
    /// The `aud` of every token.
    static let audience = "shop"
    /// How long a token is valid.
    static let lifetime: Duration = .seconds(300)
    /// What a customer may do: place and read orders, pay, read their notifications.
    static let customerScopes = ["orders", "payments", "notifications"]
}

/// The `users` service: who the customers are, and Shop's identity provider.
///
/// - `GET /users/{id}`: the user, or a 404 problem.
/// - `POST /users` `{"id": "carol", "name": "Carol", "email": "carol@example.com", "password": "…"}`:
///   creates a user (409 if the id is taken).
/// - `POST /login` `{"username": "alice", "password": "alice-password"}`: a short-lived ES256
///   access token (``ShopTokens``, signed by AviaryService's `JWTIssuer`); wrong credentials are a
///   401 `invalid-credentials` problem.
/// - `GET /.well-known/jwks.json`: the public key that verifies the tokens.
///
/// Two demo users, `alice` and `bob` (passwords `alice-password` and `bob-password`), are created
/// on first start. Passwords are stored as salted PBKDF2-SHA256 hashes.
struct UsersService: Sendable {
    let store: SQLiteStore
    let logger: Logger
    /// The token signing key (P-256, PEM) and its `kid`, created once by a migration and kept in
    /// the database, so that tokens outlive a restart.
    let signingKey: (id: String, pem: String)

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
        migrations.add("v2: passwords and the token signing key") { db in
            try db.execute(sql: "ALTER TABLE users ADD COLUMN password_hash TEXT")
            for id in ["alice", "bob"] {
                try db.execute(
                    sql: "UPDATE users SET password_hash = ? WHERE id = ?",
                    arguments: [try PasswordHash.make("\(id)-password"), id])
            }
            try db.execute(
                sql:
                    "CREATE TABLE signing_keys (id INTEGER PRIMARY KEY, private_key_pem TEXT NOT NULL, created_at TEXT NOT NULL)"
            )
            try db.execute(
                sql: "INSERT INTO signing_keys (private_key_pem, created_at) VALUES (?, ?)",
                arguments: [P256.Signing.PrivateKey().pemRepresentation, Date().formatted(.iso8601)])
        }
        return migrations
    }

    init(url: StoreURL, logger: Logger, tracer: (any Tracer)? = nil) throws {
        self.store = try SQLiteStore(url: url, migrations: Self.migrations, tracer: tracer)
        self.logger = logger
        let key = try self.store.database.read { db in
            try Row.fetchOne(db, sql: "SELECT id, private_key_pem FROM signing_keys ORDER BY id DESC LIMIT 1")
        }
        guard let key else { throw AviaryError(.internal, "the users database has no signing key") }
        self.signingKey = (id: "shop-users-\(key["id"] as Int64)", pem: key["private_key_pem"])
    }

    /// The token issuer over the stored key.
    func makeIssuer() async throws -> JWTIssuer {
        try await JWTIssuer(
            privateKeyPEM: self.signingKey.pem, keyID: self.signingKey.id, issuer: ShopTokens.issuer,
            audience: ShopTokens.audience, lifetime: ShopTokens.lifetime)
    }

    /// The service's health checks.
    var healthChecks: [HealthCheck] { [databaseCheck(self.store)] }

    /// Adds the service's routes to `router` (which already renders problems and serves probes).
    func addRoutes(to router: some RouterMethods<AviaryRequestContext>, issuer: JWTIssuer) {
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
        router.get("/.well-known/jwks.json") { _, _ -> Response in
            Response(
                status: .ok,
                headers: [.contentType: "application/jwk-set+json", .cacheControl: "public, max-age=300"],
                body: .init(byteBuffer: ByteBuffer(string: issuer.jwks)))
        }
        router.post("/login") { request, _ -> JSONResponse<LoginResponse> in
            let login = try await request.decodeJSON(as: LoginRequest.self)
            let hash = try await store.read("find credentials") { db in
                try String.fetchOne(
                    db, sql: "SELECT password_hash FROM users WHERE id = ?", arguments: [login.username])
            }
            // The same answer for an unknown user and a wrong password: no user enumeration.
            guard let hash, try PasswordHash.verify(login.password, against: hash) else {
                throw HTTPProblem(
                    status: 401, slug: "invalid-credentials", detail: "unknown user or wrong password",
                    headers: [.wwwAuthenticate: "Bearer realm=\"shop\""])
            }
            let token = try await issuer.issue(subject: login.username, scopes: ShopTokens.customerScopes)
            return JSONResponse(
                status: .ok,
                value: LoginResponse(
                    access_token: token, token_type: "Bearer", expires_in: Int(ShopTokens.lifetime.components.seconds),
                    scope: ShopTokens.customerScopes.joined(separator: " ")),
                headers: [.cacheControl: "no-store"])
        }
        router.post("/users") { request, _ -> JSONResponse<User> in
            let newUser = try await request.decodeJSON(as: NewUser.self)
            let user = User(id: newUser.id, name: newUser.name, email: newUser.email)
            var problems: [String] = []
            if let reason = ServiceName.validate(user.id) { problems.append("id: \(reason)") }
            if user.name.isEmpty { problems.append("name: expected a non-empty string") }
            if !user.email.contains("@") {
                problems.append("email: expected an address with '@', got \"\(user.email)\"")
            }
            if let password = newUser.password, password.count < 8 {
                problems.append("password: expected at least 8 characters")
            }
            if !problems.isEmpty {
                throw HTTPProblem(status: 400, slug: "invalid-user", detail: problems.joined(separator: "; "))
            }
            do {
                let hash = try newUser.password.map(PasswordHash.make)
                try await store.write("insert user") { db in
                    try db.execute(
                        sql: "INSERT INTO users (id, name, email, password_hash) VALUES (?, ?, ?, ?)",
                        arguments: [user.id, user.name, user.email, hash])
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
