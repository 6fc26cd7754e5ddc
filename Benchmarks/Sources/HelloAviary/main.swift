// The subject of scripts/bench-service.sh: the same route as HelloHummingbird in an
// AviaryApplication with its default middleware (RED metrics, access log, problem details) and
// JSON logs through AviaryTelemetry (the script sends them to /dev/null), and tracing on but
// sampled out when the OTEL_* variables say so (the script sets OTEL_TRACES_SAMPLER=always_off).
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
    metrics: telemetry.metrics,
    tracing: try TracingConfiguration(service: "hello").map { try TracingBackend($0) }
)
app.router.get("/hello") { _, _ in "Hello, world!" }
try await app.run()
