import Foundation

/// What a request asks the model to continue: chat messages (rendered with the model's chat
/// template) or a plain prompt (fed as is, with the tokenizer's BOS rule).
public enum PromptInput: Sendable, Equatable {
    case chat([ChatMessage])
    case text(String)
}

/// One adapter of a per-request combination and the weight it is applied with.
public struct AdapterChoice: Sendable, Equatable, Hashable {
    public var name: String
    public var weight: Float
    public init(name: String, weight: Float = 1) {
        self.name = name
        self.weight = weight
    }
}

/// A static fusion method of `lorafuse merge` and its parameters, as a request's `merge` field
/// gives them (`{"method": "ties", "density": 0.5, "rank": 16}`, snake_case like the YAML plans).
public struct MergeSpec: Sendable, Equatable {
    public var method: String
    public var parameters: FusionParameters
    /// The parameters as given, sorted `key=value` pairs: part of the fusion's cache key.
    public var canonical: String

    public init(method: String, parameters: FusionParameters = FusionParameters(), canonical: String = "") {
        self.method = method
        self.parameters = parameters
        self.canonical = canonical
    }
}

/// Which weights a request runs on.
public enum ModelChoice: Sendable, Equatable {
    /// The base model, a registered adapter or a cached fusion, by name (the `model` field).
    case named(String)
    /// Several registered adapters with weights (the `adapters` extension field): fused once with
    /// `merge` and cached, or, without `merge`, applied side by side unmerged (Σ w_i ΔW_i).
    case combination([AdapterChoice], merge: MergeSpec?)
}

/// OpenAI's sampling fields. Defaults are OpenAI's: temperature 1, top_p 1, no penalties, no
/// seed (a random one); `top_k` (0: off) is the common extension llama.cpp and vLLM accept.
public struct SamplingParameters: Sendable, Equatable {
    /// nil: up to the server's cap, within the context.
    public var maxTokens: Int?
    public var temperature: Float = 1
    public var topP: Float = 1
    public var topK: Int = 0
    public var seed: UInt64?
    public var stop: [String] = []
    public var presencePenalty: Float = 0
    public var frequencyPenalty: Float = 0

    public init(maxTokens: Int? = nil, temperature: Float = 1, topP: Float = 1, topK: Int = 0, seed: UInt64? = nil,
                stop: [String] = [], presencePenalty: Float = 0, frequencyPenalty: Float = 0) {
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.seed = seed
        self.stop = stop
        self.presencePenalty = presencePenalty
        self.frequencyPenalty = frequencyPenalty
    }
}

/// A parsed `/v1/chat/completions` or `/v1/completions` request.
public struct GenerationRequest: Sendable, Equatable {
    public enum Kind: String, Sendable { case chat, completion }
    public var kind: Kind
    /// The `model` field as given.
    public var model: String
    public var input: PromptInput
    public var choice: ModelChoice
    public var sampling: SamplingParameters
    public var stream: Bool
    /// `stream_options.include_usage`: a last chunk with the usage and no choices.
    public var includeUsage: Bool
    /// lorafuse extension `lorafuse: {"routing": true}`: report, per generated token, the adapter
    /// the gates weighted most (a routed model), the adapter a per-request router chose, or the
    /// requested model itself.
    public var returnRouting = false

    public init(kind: Kind, model: String, input: PromptInput, choice: ModelChoice,
                sampling: SamplingParameters = SamplingParameters(), stream: Bool = false, includeUsage: Bool = false) {
        self.kind = kind
        self.model = model
        self.input = input
        self.choice = choice
        self.sampling = sampling
        self.stream = stream
        self.includeUsage = includeUsage
    }
}

/// Reads request bodies into `GenerationRequest`, every refusal a 400 naming the field
/// (`param`) the way OpenAI's API does. Fields it does not know are ignored, as OpenAI's
/// clients send some (`user`, `logit_bias` …) that change nothing here; `n` > 1,
/// `logprobs` and tool calls are refused rather than silently dropped.
public enum RequestParser {
    public static func parse(_ body: Data, kind: GenerationRequest.Kind) throws -> GenerationRequest {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: body, options: [.fragmentsAllowed])
        } catch {
            throw ServeError.invalid("the request body is not valid JSON", code: "invalid_json")
        }
        guard let d = object as? [String: Any] else {
            throw ServeError.invalid("the request body must be a JSON object", code: "invalid_json")
        }
        return try parse(d, kind: kind)
    }

    public static func parse(_ d: [String: Any], kind: GenerationRequest.Kind) throws -> GenerationRequest {
        guard let model = d["model"] as? String else {
            throw ServeError.invalid(d["model"] == nil ? "you must provide a model parameter" : "model must be a string", param: "model")
        }
        let input: PromptInput
        switch kind {
        case .chat:
            guard let raw = d["messages"] as? [Any], !raw.isEmpty else {
                throw ServeError.invalid("messages must be a non-empty array of {role, content}", param: "messages")
            }
            var messages: [ChatMessage] = []
            for (i, m) in raw.enumerated() {
                guard let m = m as? [String: Any], let role = m["role"] as? String else {
                    throw ServeError.invalid("messages[\(i)] must be an object with a role", param: "messages[\(i)]")
                }
                guard ["system", "developer", "user", "assistant"].contains(role) else {
                    throw ServeError.invalid("messages[\(i)].role '\(role)' is not supported (system, developer, user, assistant)",
                                             param: "messages[\(i)].role")
                }
                messages.append(ChatMessage(role: role == "developer" ? "system" : role,
                                            content: try content(m["content"], param: "messages[\(i)].content")))
            }
            input = .chat(messages)
        case .completion:
            switch d["prompt"] {
            case let s as String: input = .text(s)
            case let a as [Any] where a.count == 1 && a[0] is String: input = .text(a[0] as! String)
            case let a as [Any] where a.count > 1:
                throw ServeError.invalid("only one prompt per request is supported", param: "prompt")
            default:
                throw ServeError.invalid("prompt must be a string", param: "prompt")
            }
        }
        if let n = d["n"], !(n is NSNull) {
            guard let v = integer(n), v == 1 else {
                throw ServeError.invalid("n must be 1: one choice per request is supported", param: "n")
            }
        }
        if let l = d["logprobs"], !(l is NSNull), !(isJSONBool(l) && (l as? Bool) == false) {
            throw ServeError.invalid("logprobs are not supported", param: "logprobs")
        }
        if let t = d["tools"], !(t is NSNull), (t as? [Any])?.isEmpty != true {
            throw ServeError.invalid("tools are not supported", param: "tools")
        }
        var s = SamplingParameters()
        let maxKey = d["max_completion_tokens"] != nil && !(d["max_completion_tokens"] is NSNull) ? "max_completion_tokens" : "max_tokens"
        if let v = try optionalInt(d, maxKey) {
            guard v >= 1 else { throw ServeError.invalid("\(maxKey) must be at least 1, got \(v)", param: maxKey) }
            s.maxTokens = v
        }
        if let v = try optionalNumber(d, "temperature") {
            guard v >= 0, v <= 2 else { throw ServeError.invalid("temperature must be in [0, 2], got \(v)", param: "temperature") }
            s.temperature = Float(v)
        }
        if let v = try optionalNumber(d, "top_p") {
            guard v > 0, v <= 1 else { throw ServeError.invalid("top_p must be in (0, 1], got \(v)", param: "top_p") }
            s.topP = Float(v)
        }
        if let v = try optionalInt(d, "top_k") {
            guard v >= 0 else { throw ServeError.invalid("top_k must be ≥ 0 (0: off), got \(v)", param: "top_k") }
            s.topK = v
        }
        if let raw = d["seed"], !(raw is NSNull) {
            if let v = integer(raw) {
                s.seed = UInt64(bitPattern: Int64(v))
            } else if let n = raw as? NSNumber, !isJSONBool(raw), let v = UInt64(n.stringValue) ?? Int64(n.stringValue).map({ UInt64(bitPattern: $0) }) {
                s.seed = v
            } else {
                throw ServeError.invalid("seed must be an integer", param: "seed")
            }
        }
        for key in ["presence_penalty", "frequency_penalty"] {
            if let v = try optionalNumber(d, key) {
                guard v >= -2, v <= 2 else { throw ServeError.invalid("\(key) must be in [-2, 2], got \(v)", param: key) }
                if key == "presence_penalty" { s.presencePenalty = Float(v) } else { s.frequencyPenalty = Float(v) }
            }
        }
        switch d["stop"] {
        case nil, is NSNull: break
        case let v as String: s.stop = v.isEmpty ? [] : [v]
        case let a as [Any]:
            guard a.count <= 4, a.allSatisfy({ $0 is String }) else {
                throw ServeError.invalid("stop must be a string or an array of at most 4 strings", param: "stop")
            }
            s.stop = (a as! [String]).filter { !$0.isEmpty }
        default:
            throw ServeError.invalid("stop must be a string or an array of at most 4 strings", param: "stop")
        }
        var stream = false
        if let v = d["stream"], !(v is NSNull) {
            guard isJSONBool(v), let b = v as? Bool else { throw ServeError.invalid("stream must be a boolean", param: "stream") }
            stream = b
        }
        var includeUsage = false
        if let o = d["stream_options"] as? [String: Any], let b = o["include_usage"] as? Bool { includeUsage = b }
        let choice = try modelChoice(d, model: model)
        var r = GenerationRequest(kind: kind, model: model, input: input, choice: choice, sampling: s,
                                  stream: stream, includeUsage: includeUsage)
        if let raw = d["lorafuse"], !(raw is NSNull) {
            guard let o = raw as? [String: Any] else { throw ServeError.invalid("lorafuse must be an object", param: "lorafuse") }
            for key in o.keys where key != "routing" {
                throw ServeError.invalid("lorafuse.\(key) is not a lorafuse option (known: routing)", param: "lorafuse.\(key)")
            }
            if let v = o["routing"], !(v is NSNull) {
                guard isJSONBool(v), let b = v as? Bool else { throw ServeError.invalid("lorafuse.routing must be a boolean", param: "lorafuse.routing") }
                r.returnRouting = b
            }
        }
        return r
    }

    /// `adapters: [{"name", "weight"}]` with an optional `merge: {"method", …}`, else `model`.
    static func modelChoice(_ d: [String: Any], model: String) throws -> ModelChoice {
        guard let raw = d["adapters"], !(raw is NSNull) else {
            if d["merge"] != nil && !(d["merge"] is NSNull) {
                throw ServeError.invalid("merge needs adapters: [{name, weight}] to merge", param: "merge")
            }
            return .named(model)
        }
        guard let list = raw as? [Any], !list.isEmpty else {
            throw ServeError.invalid("adapters must be a non-empty array of {name, weight}", param: "adapters")
        }
        var choices: [AdapterChoice] = []
        for (i, item) in list.enumerated() {
            let p = "adapters[\(i)]"
            guard let o = item as? [String: Any], let name = o["name"] as? String, !name.isEmpty else {
                throw ServeError.invalid("\(p) must be an object with a name", param: p)
            }
            var weight: Float = 1
            if let w = o["weight"], !(w is NSNull) {
                guard let n = w as? NSNumber, !isJSONBool(w), n.doubleValue.isFinite, abs(n.doubleValue) <= 1e4 else {
                    throw ServeError.invalid("\(p).weight must be a finite number with |w| ≤ 10000", param: "\(p).weight")
                }
                weight = n.floatValue
            }
            choices.append(AdapterChoice(name: name, weight: weight))
        }
        guard let m = d["merge"], !(m is NSNull) else { return .combination(choices, merge: nil) }
        guard let md = m as? [String: Any], let method = md["method"] as? String else {
            throw ServeError.invalid("merge must be an object with a method (\(FusionMethods.names.joined(separator: ", ")))", param: "merge")
        }
        guard FusionMethods.names.contains(method) else {
            throw ServeError.invalid("unknown merge method '\(method)'; known: \(FusionMethods.names.joined(separator: ", "))",
                                     param: "merge.method", code: "unknown_method")
        }
        var rest = md
        rest["method"] = nil
        let known = Set(FusionParameters.fieldNames.map(snakeCased))
        for k in rest.keys.sorted() where !known.contains(k) {
            throw ServeError.invalid("merge.\(k) is not a fusion parameter; known: \(known.sorted().joined(separator: ", "))",
                                     param: "merge.\(k)", code: "unknown_parameter")
        }
        let params: FusionParameters
        do {
            let json = try JSONSerialization.data(withJSONObject: rest)
            let dec = JSONDecoder()
            dec.keyDecodingStrategy = .convertFromSnakeCase
            params = try dec.decode(FusionParameters.self, from: json)
        } catch {
            throw ServeError.invalid("merge parameters: \(error)", param: "merge")
        }
        do {
            _ = try FusionMethods.make(name: method, parameters: params)
        } catch let e as FusionError {
            throw ServeError.invalid("merge: \(e)", param: "merge", code: "invalid_parameter")
        }
        let canonical = rest.keys.sorted().map { k in "\(k)=\(String(describing: rest[k]!))" }.joined(separator: ",")
        return .combination(choices, merge: MergeSpec(method: method, parameters: params, canonical: canonical))
    }

    /// A message's content: a string, or OpenAI's array of parts of which only text parts are read.
    static func content(_ v: Any?, param: String) throws -> String {
        switch v {
        case let s as String: return s
        case nil, is NSNull: return ""
        case let parts as [Any]:
            var text = ""
            for part in parts {
                guard let p = part as? [String: Any], (p["type"] as? String) == "text", let t = p["text"] as? String else {
                    throw ServeError.invalid("only text content parts are supported", param: param)
                }
                text += t
            }
            return text
        default:
            throw ServeError.invalid("content must be a string or an array of text parts", param: param)
        }
    }

    static func integer(_ v: Any) -> Int? {
        guard let n = v as? NSNumber, !isJSONBool(v) else { return nil }
        let d = n.doubleValue
        guard d.rounded() == d, abs(d) < 1e15 else { return nil }
        return Int(d)
    }

    static func optionalInt(_ d: [String: Any], _ key: String) throws -> Int? {
        guard let v = d[key], !(v is NSNull) else { return nil }
        guard let i = integer(v) else { throw ServeError.invalid("\(key) must be an integer", param: key) }
        return i
    }

    static func optionalNumber(_ d: [String: Any], _ key: String) throws -> Double? {
        guard let v = d[key], !(v is NSNull) else { return nil }
        guard let n = v as? NSNumber, !isJSONBool(v), n.doubleValue.isFinite else {
            throw ServeError.invalid("\(key) must be a number", param: key)
        }
        return n.doubleValue
    }

    /// Whether a JSONSerialization value is a JSON true/false. (`is Bool` also holds for the
    /// numbers 0 and 1 on Linux, so it cannot tell `"temperature": 1` from `true`.)
    static func isJSONBool(_ v: Any) -> Bool {
        guard v is NSNumber else { return v is Bool }
        return String(describing: type(of: v)).contains("Boolean")
    }

    static func snakeCased(_ s: String) -> String {
        var out = ""
        for ch in s {
            if ch.isUppercase { out += "_" + ch.lowercased() } else { out.append(ch) }
        }
        return out
    }
}
