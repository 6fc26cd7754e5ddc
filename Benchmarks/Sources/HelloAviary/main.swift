// The subject of scripts/bench-service.sh: the same route as HelloHummingbird in an
// AviaryApplication with its default middleware (RED metrics, access log, problem details) and
// JSON logs through AviaryTelemetry (the script sends them to /dev/null).
//   HelloAviary <port>
import AviaryService
import AviaryTelemetry
import Hummingbird

let port = Int(CommandLine.arguments.dropFirst().first ?? "8202") ?? 8202
var configuration = TelemetryConfiguration(service: "hello", logFormat: .json)
try configuration.applyEnvironment()  // AVIARY_LOG_LEVEL=warning turns the access log off
let telemetry = Telemetry.bootstrap(configuration)
var app = AviaryApplication(
    ServiceOptions(name: "hello", port: port, drainDelay: .zero, gracePeriod: .seconds(5)),
    context: BasicRequestContext.self,
    metrics: telemetry.metrics
)
app.router.get("/hello") { _, _ in "Hello, world!" }
try await app.run()
