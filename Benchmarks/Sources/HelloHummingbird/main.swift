// The peer for scripts/bench-service.sh: a bare Hummingbird 2 application with one route.
//   HelloHummingbird <port>
import Hummingbird

let port = Int(CommandLine.arguments.dropFirst().first ?? "8201") ?? 8201
let router = Router()
router.get("/hello") { _, _ in "Hello, world!" }
let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: port)))
try await app.runService()
