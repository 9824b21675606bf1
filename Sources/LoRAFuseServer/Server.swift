import Foundation
import Hummingbird
import LoRAFuse
import Logging

import ServiceLifecycle
import UnixSignals

/// How the HTTP server runs.
public struct ServerOptions: Sendable {
    public var host: String
    /// 0: any free port (`RunningServer.port` tells which).
    public var port: Int
    /// When set, `/v1/*` needs `Authorization: Bearer KEY`.
    public var apiKey: String?
    /// Largest request body accepted; a larger one gets 413.
    public var maxBodyBytes: Int
    /// The folder `POST /v1/adapters` may load from (nil: run-time loading is off).
    public var adaptersRoot: String?

    public init(host: String = "127.0.0.1", port: Int = 8080, apiKey: String? = nil, maxBodyBytes: Int = 4 << 20,
                adaptersRoot: String? = nil) {
        self.host = host
        self.port = port
        self.apiKey = apiKey
        self.maxBodyBytes = maxBodyBytes
        self.adaptersRoot = adaptersRoot
    }
}

/// The OpenAI-compatible routes over a `ServeEngine` (Serve/ in LoRAFuse does the work; this is
/// HTTP, JSON shapes and server-sent events only):
///
/// - `POST /v1/chat/completions`, `POST /v1/completions` (non-streaming, and `stream: true` as
///   `text/event-stream` chunks ended by `data: [DONE]`), with lorafuse's `adapters`/`merge` fields;
/// - `GET /v1/models`: the base, every adapter (`parent` = the base) and cached fusion;
/// - `POST /v1/adapters {name, path, pinned}` (paths inside `adaptersRoot` only),
///   `DELETE /v1/adapters/{name}`;
/// - `GET /health`, `GET /metrics` (Prometheus text).
///
/// Every refusal is OpenAI's error object with the status `ServeError` carries.
public enum ServerRoutes {
    public static func router(engine: ServeEngine, metrics: ServeMetrics, options: ServerOptions) -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        if let key = options.apiKey { router.add(middleware: APIKeyMiddleware(key: key, metrics: metrics)) }
        let created = Int(Date().timeIntervalSince1970)

        router.get("health") { _, _ -> Response in
            json(["status": "ok", "model": engine.registry.baseName, "running": engine.runningCount, "waiting": engine.queueDepth])
        }
        router.get("metrics") { _, _ -> Response in
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: metrics.render(engine: engine))))
        }
        router.get("v1/models") { _, _ -> Response in
            metrics.request(endpoint: "models", status: 200)
            var data: [[String: Any]] = [["id": engine.registry.baseName, "object": "model", "created": created,
                                          "owned_by": "lorafuse", "parent": NSNull(), "root": engine.registry.baseName]]
            for i in engine.registry.list() {
                var ext: [String: Any] = ["kind": i.kind.rawValue, "resident": i.resident, "pinned": i.pinned,
                                          "bytes": i.bytes, "in_use": i.inUse, "requests": i.requests]
                if let r = i.recipe { ext["recipe"] = r }
                data.append(["id": i.name, "object": "model", "created": created, "owned_by": "lorafuse",
                             "parent": engine.registry.baseName, "root": engine.registry.baseName, "lorafuse": ext])
            }
            return json(["object": "list", "data": data])
        }
        router.get("v1/models/:name") { _, context -> Response in
            let name = context.parameters.get("name") ?? ""
            if name == engine.registry.baseName {
                return json(["id": name, "object": "model", "created": created, "owned_by": "lorafuse", "parent": NSNull()])
            }
            guard engine.registry.info(name) != nil else {
                return error(.notFound("the model '\(name)' does not exist"), metrics, "models")
            }
            return json(["id": name, "object": "model", "created": created, "owned_by": "lorafuse", "parent": engine.registry.baseName])
        }
        router.post("v1/chat/completions") { request, _ -> Response in
            await generate(request, kind: .chat, engine: engine, metrics: metrics, options: options)
        }
        router.post("v1/completions") { request, _ -> Response in
            await generate(request, kind: .completion, engine: engine, metrics: metrics, options: options)
        }
        router.post("v1/adapters") { request, _ -> Response in
            do {
                let body = try await readBody(request, options)
                guard let d = (try? JSONSerialization.jsonObject(with: Data(body.readableBytesView))) as? [String: Any] else {
                    throw ServeError.invalid("the request body must be a JSON object {name, path}", code: "invalid_json")
                }
                guard let name = d["name"] as? String else { throw ServeError.invalid("name must be a string", param: "name") }
                guard let path = d["path"] as? String, !path.isEmpty else { throw ServeError.invalid("path must be a string", param: "path") }
                let pinned = d["pinned"] as? Bool ?? false
                guard let root = options.adaptersRoot else {
                    throw ServeError.invalid("run-time loading is off: the server was started without an --adapters folder", param: "path")
                }
                let resolved = try AdapterRegistry.resolve(path, under: root)
                try await offload { try engine.registry.register(name: name, path: resolved, pinned: pinned, validate: true) }
                metrics.request(endpoint: "adapters", status: 200)
                return json(["id": name, "object": "model", "owned_by": "lorafuse", "parent": engine.registry.baseName,
                             "created": Int(Date().timeIntervalSince1970), "lorafuse": ["pinned": pinned, "resident": true]])
            } catch {
                return ServerRoutes.error(ServeError.wrap(error), metrics, "adapters")
            }
        }
        router.delete("v1/adapters/:name") { _, context -> Response in
            do {
                let name = context.parameters.get("name") ?? ""
                try engine.registry.unregister(name: name)
                metrics.request(endpoint: "adapters", status: 200)
                return json(["id": name, "object": "model", "deleted": true])
            } catch {
                return ServerRoutes.error(ServeError.wrap(error), metrics, "adapters")
            }
        }
        return router
    }

    // MARK: Generation

    /// A completion, cancelled in the engine when the client goes away: a streamed one at the
    /// first chunk that cannot be written, a non-streamed one (which writes nothing until it is
    /// done) when its connection's inbound side closes. Watching the inbound side consumes the
    /// connection (Hummingbird's `consumeWithInboundCloseHandler`), so these responses say
    /// `Connection: close`; a completion takes far longer than opening a connection.
    static func generate(_ request: Request, kind: GenerationRequest.Kind, engine: ServeEngine, metrics: ServeMetrics,
                         options: ServerOptions) async -> Response {
        let endpoint = kind == .chat ? "chat" : "completions"
        let watch = DisconnectWatch(), declared = request.headers[.contentLength]
        do {
            var response = try await request.body.consumeWithInboundCloseHandler { body in
                await generate(body: body, declaredLength: declared, kind: kind, engine: engine, metrics: metrics,
                               options: options, watch: watch)
            } onInboundClosed: {
                watch.clientClosed()
            }
            response.headers[.connection] = "close"
            return response
        } catch {
            return ServerRoutes.error(ServeError.wrap(error), metrics, endpoint)
        }
    }

    static func generate(body requestBody: RequestBody, declaredLength: String?, kind: GenerationRequest.Kind, engine: ServeEngine,
                         metrics: ServeMetrics, options: ServerOptions, watch: DisconnectWatch) async -> Response {
        let endpoint = kind == .chat ? "chat" : "completions"
        let parsed: GenerationRequest, stream: ServeStream
        do {
            let body = try await readBody(requestBody, declaredLength: declaredLength, options)
            parsed = try RequestParser.parse(Data(body.readableBytesView), kind: kind)
            // Tokenizing, and loading or fusing an adapter, are CPU work: off the event loops,
            // and bounded by the server's timeout (a fusion that finishes later stays cached; its
            // request, which nobody waits for any more, is dropped).
            let limit = engine.limits.timeout
            stream = try await offload(within: limit, abandon: { engine.cancel($0.id) },
                                       late: ServeError.timedOut(String(format: "reading or fusing the request's adapters took longer than this server's timeout of %g s; retry later (a fusion is cached once built)", limit ?? 0))) { try engine.submit(parsed) }
        } catch {
            return ServerRoutes.error(ServeError.wrap(error), metrics, endpoint)
        }
        if !parsed.stream {
            let id = stream.id
            watch.onClientClosed { engine.cancel(id) }
        }
        metrics.request(endpoint: endpoint, status: 200)
        let id = (kind == .chat ? "chatcmpl-" : "cmpl-") + String(stream.id) + "-" + String(UInt32.random(in: 0 ... .max), radix: 36)
        let created = Int(Date().timeIntervalSince1970)
        if !parsed.stream {
            do {
                let r = try await stream.collect()
                let usage = ["prompt_tokens": r.usage.promptTokens, "completion_tokens": r.usage.completionTokens,
                             "total_tokens": r.usage.totalTokens]
                let choice: [String: Any] = kind == .chat
                    ? ["index": 0, "message": ["role": "assistant", "content": r.text], "logprobs": NSNull(), "finish_reason": r.reason.rawValue]
                    : ["index": 0, "text": r.text, "logprobs": NSNull(), "finish_reason": r.reason.rawValue]
                var o: [String: Any] = ["id": id, "object": kind == .chat ? "chat.completion" : "text_completion", "created": created,
                                        "model": stream.model, "choices": [choice], "usage": usage]
                if parsed.returnRouting { o["lorafuse"] = ["routing": routingJSON(r.routing)] }
                return json(o)
            } catch {
                return ServerRoutes.error(ServeError.wrap(error), metrics, endpoint)
            }
        }
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-cache"
        let includeUsage = parsed.includeUsage, returnRouting = parsed.returnRouting
        let body = ResponseBody { writer in
            // Routing entries wait for the chunk that carries their tokens' text.
            var routes: [(token: Int, adapter: String)] = []
            func send(_ object: [String: Any]) async throws {
                try await writer.write(ByteBuffer(string: "data: " + encode(object) + "\n\n"))
            }
            func chunk(_ delta: [String: Any]?, text: String?, finish: FinishReason?) -> [String: Any] {
                var c: [String: Any] = ["index": 0, "logprobs": NSNull(), "finish_reason": finish?.rawValue ?? NSNull()]
                if kind == .chat { c["delta"] = delta ?? [:] } else { c["text"] = text ?? "" }
                var o: [String: Any] = ["id": id, "object": kind == .chat ? "chat.completion.chunk" : "text_completion",
                                        "created": created, "model": stream.model, "choices": [c]]
                if includeUsage { o["usage"] = NSNull() }
                if returnRouting && !routes.isEmpty {
                    o["lorafuse"] = ["routing": routingJSON(routes)]
                    routes = []
                }
                return o
            }
            do {
                if kind == .chat { try await send(chunk(["role": "assistant", "content": ""], text: nil, finish: nil)) }
                for try await event in stream.events {
                    switch event {
                    case let .delta(text, _):
                        guard !text.isEmpty else { continue }
                        try await send(chunk(["content": text], text: text, finish: nil))
                    case let .routing(token, adapter):
                        routes.append((token, adapter))
                    case let .finished(reason, usage):
                        try await send(chunk([:], text: "", finish: reason))
                        if includeUsage {
                            try await send(["id": id, "object": kind == .chat ? "chat.completion.chunk" : "text_completion",
                                            "created": created, "model": stream.model, "choices": [] as [Any],
                                            "usage": ["prompt_tokens": usage.promptTokens, "completion_tokens": usage.completionTokens,
                                                      "total_tokens": usage.totalTokens]])
                        }
                    }
                }
            } catch let e as ServeError {
                try await writer.write(ByteBuffer(string: "data: " + encode(e.json) + "\n\n"))
            }
            try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: headers, body: body)
    }

    // MARK: Helpers

    /// `lorafuse.routing`: one {"token_id", "adapter"} per generated token, in order.
    static func routingJSON(_ r: [(token: Int, adapter: String)]) -> [[String: Any]] {
        r.map { ["token_id": $0.token, "adapter": $0.adapter] }
    }

    static func readBody(_ request: Request, _ options: ServerOptions) async throws -> ByteBuffer {
        try await readBody(request.body, declaredLength: request.headers[.contentLength], options)
    }

    static func readBody(_ body: RequestBody, declaredLength: String?, _ options: ServerOptions) async throws -> ByteBuffer {
        if let len = declaredLength.flatMap({ Int($0) }), len > options.maxBodyBytes {
            throw ServeError.tooLarge("the request body is \(len) bytes; the limit is \(options.maxBodyBytes)")
        }
        do {
            return try await body.collect(upTo: options.maxBodyBytes)
        } catch {
            throw ServeError.tooLarge("the request body is larger than the limit of \(options.maxBodyBytes) bytes")
        }
    }

    static func encode(_ object: Any) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    static func json(_ object: [String: Any], status: HTTPResponse.Status = .ok) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: encode(object))))
    }

    static func error(_ e: ServeError, _ metrics: ServeMetrics, _ endpoint: String) -> Response {
        metrics.request(endpoint: endpoint, status: e.status)
        return json(e.json, status: HTTPResponse.Status(code: e.status))
    }
}

/// Whether a request's client has closed its side of the connection, and what to do then: the
/// close can come before the request is in the engine (the action then runs when it is set) or
/// after (it runs at once).
final class DisconnectWatch: @unchecked Sendable {
    private let lock = NSLock()
    private var closed = false
    private var action: (@Sendable () -> Void)?

    func clientClosed() {
        lock.lock()
        closed = true
        let a = action
        action = nil
        lock.unlock()
        a?()
    }

    func onClientClosed(_ a: @escaping @Sendable () -> Void) {
        lock.lock()
        if closed {
            lock.unlock()
            a()
            return
        }
        action = a
        lock.unlock()
    }
}

/// `Authorization: Bearer KEY` on `/v1/*` (health and metrics stay open for probes and scrapers).
struct APIKeyMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let key: String
    let metrics: ServeMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.uri.path.hasPrefix("/v1/") else { return try await next(request, context) }
        let given = request.headers[.authorization] ?? ""
        guard given == "Bearer " + key else {
            return ServerRoutes.error(.unauthorized(given.isEmpty ? "missing API key: send Authorization: Bearer KEY"
                                                                  : "incorrect API key"), metrics, "auth")
        }
        return try await next(request, context)
    }
}

/// Runs CPU work (tokenizing, reading and fusing adapters) on a Dispatch thread, not on the
/// server's event loops or Swift's cooperative pool.
func offload<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { c in
        DispatchQueue.global().async { c.resume(with: Result { try work() }) }
    }
}

/// `offload`, given up after `seconds` (nil: not bounded): the caller then gets `late`, and a
/// result that still comes goes to `abandon` (work on another thread cannot be stopped midway).
func offload<T: Sendable>(within seconds: Double?, abandon: @escaping @Sendable (T) -> Void, late: any Error & Sendable,
                          _ work: @escaping @Sendable () throws -> T) async throws -> T {
    guard let seconds else { return try await offload(work) }
    let once = FirstOnly()
    return try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
        DispatchQueue.global().async {
            let r = Result { try work() }
            if once.claim() { c.resume(with: r) } else if case .success(let v) = r { abandon(v) }
        }
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds) {
            if once.claim() { c.resume(throwing: late) }
        }
    }
}

/// True for the first caller of `claim` only.
final class FirstOnly: @unchecked Sendable {
    private let lock = NSLock()
    private var taken = false
    func claim() -> Bool {
        lock.lock(); defer { lock.unlock() }
        if taken { return false }
        taken = true
        return true
    }
}

/// The scheduler as a service: starts with the group; on graceful shutdown, after the HTTP
/// server has stopped taking requests, lets the admitted ones finish.
struct EngineService: Service {
    let engine: ServeEngine

    func run() async throws {
        engine.start()
        try? await gracefulShutdown()
        await engine.drain()
    }
}

/// A server started by `RunningServer.start`: its port, and a way to stop it.
public final class RunningServer: @unchecked Sendable {
    public let port: Int
    public let engine: ServeEngine
    public let metrics: ServeMetrics
    private let group: ServiceGroup
    private let task: Task<Void, any Error>

    init(port: Int, engine: ServeEngine, metrics: ServeMetrics, group: ServiceGroup, task: Task<Void, any Error>) {
        self.port = port
        self.engine = engine
        self.metrics = metrics
        self.group = group
        self.task = task
    }

    /// Starts the engine and the HTTP server (graceful shutdown on `signals`), returns once it listens.
    public static func start(engine: ServeEngine, options: ServerOptions, signals: [UnixSignal] = [],
                             logger: Logger = Logger(label: "lorafuse.serve")) async throws -> RunningServer {
        let metrics = ServeMetrics()
        engine.setObserver(metrics)
        let router = ServerRoutes.router(engine: engine, metrics: metrics, options: options)
        let (portStream, portCont) = AsyncStream<Int>.makeStream()
        let app = Application(router: router,
                              configuration: .init(address: .hostname(options.host, port: options.port), serverName: "lorafuse"),
                              onServerRunning: { channel in
                                  portCont.yield(channel.localAddress?.port ?? options.port)
                                  portCont.finish()
                              },
                              logger: logger)
        // Services stop in reverse order: the HTTP server first (in-flight requests finish), then the engine.
        let group = ServiceGroup(services: [EngineService(engine: engine), app], gracefulShutdownSignals: signals, logger: logger)
        let task = Task {
            defer { portCont.finish() }
            try await group.run()
        }
        var port: Int?
        for await p in portStream { port = p; break }
        guard let port else {
            _ = try await task.value
            throw ServeError.server("the server stopped before it listened on \(options.host):\(options.port)")
        }
        return RunningServer(port: port, engine: engine, metrics: metrics, group: group, task: task)
    }

    /// Graceful shutdown: stop listening, finish in-flight requests, drain the engine.
    public func shutdown() async throws {
        await group.triggerGracefulShutdown()
        try await task.value
    }

    /// Waits until the server stops (a signal, or `shutdown`).
    public func wait() async throws {
        try await task.value
    }
}
