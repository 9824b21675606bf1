import Foundation
import Yams

/// A complete description of one fusion: what `lorafuse merge` builds from its flags or reads from
/// a YAML file in mergekit's spirit:
///
///     method: ties
///     adapters:
///       - path: adapters/math        # relative paths are relative to the YAML file
///         weight: 1.0
///       - path: adapters/code
///         weight: -0.5               # negative weights subtract a skill
///     parameters:                    # the method's own (FusionMethods.acceptedParameters), snake_case
///       rank: 16
///       density: 0.5
///       seed: 1
///     dtype: bf16                    # f32 | f16 | bf16 (default: the first input's)
///     output: out/fused
public struct FusionPlan: Sendable {
    public struct Input: Sendable, Equatable {
        public var path: String
        public var weight: Float
        public init(path: String, weight: Float) { self.path = path; self.weight = weight }
    }

    public var method: String
    public var adapters: [Input]
    public var parameters: FusionParameters
    public var dtype: DType?
    public var output: String?

    public init(method: String, adapters: [Input], parameters: FusionParameters = FusionParameters(),
                dtype: DType? = nil, output: String? = nil) {
        self.method = method
        self.adapters = adapters
        self.parameters = parameters
        self.dtype = dtype
        self.output = output
    }

    static let topLevelKeys: Set<String> = ["method", "adapters", "parameters", "dtype", "output"]

    /// Limits on a plan file: a fusion plan is a few lines, so anything near these is a mistake or
    /// an attack (a "billion laughs" of nested aliases expands exponentially when built).
    public static let maxFileBytes = 1 << 20
    /// YAML nodes after alias expansion.
    public static let maxNodes = 100_000
    /// Flow collections (`[[[…]]]`) nested deeper than this are refused before parsing (the
    /// parser recurses once per level).
    public static let maxNesting = 256
    public static let maxAdapters = 1024
    /// Largest |weight| of one adapter (Float ΔW entries times 1e38 overflow).
    public static let maxWeight: Float = 1e4

    /// Counts `node`'s nodes with aliases expanded, stopping as soon as `budget` is exceeded (the
    /// count of an alias bomb is never finished).
    static func countNodes(_ node: Node, budget: inout Int) -> Bool {
        budget -= 1
        if budget < 0 { return false }
        switch node {
        case .scalar, .alias: return true
        case let .sequence(s):
            for n in s where !countNodes(n, budget: &budget) { return false }
            return true
        case let .mapping(m):
            for (k, v) in m where !countNodes(k, budget: &budget) || !countNodes(v, budget: &budget) { return false }
            return true
        }
    }

    /// Deepest nesting of `[`/`{` outside quotes and comments (a cheap over-estimate is fine).
    static func flowNesting(_ text: String) -> Int {
        var depth = 0, deepest = 0
        var quote: UInt8? = nil, comment = false
        for c in text.utf8 {
            if comment { if c == 10 { comment = false }; continue }
            if let q = quote { if c == q { quote = nil }; continue }
            switch c {
            case 34, 39: quote = c
            case 35: comment = true
            case 91, 123: depth += 1; deepest = max(deepest, depth)
            case 93, 125: depth = max(depth - 1, 0)
            case 10: quote = nil
            default: break
            }
        }
        return deepest
    }

    /// Reads a plan from YAML text; `baseDirectory` resolves relative paths.
    public static func parse(yaml text: String, file: String, baseDirectory: String) throws -> FusionPlan {
        if text.utf8.count > maxFileBytes {
            throw FusionPlanError.tooLarge(file: file, what: "\(text.utf8.count) bytes", limit: "\(maxFileBytes) bytes")
        }
        if flowNesting(text) > maxNesting {
            throw FusionPlanError.tooLarge(file: file, what: "[ ] / { } nested \(flowNesting(text)) deep", limit: "\(maxNesting) levels")
        }
        let root: Any?
        do {
            if let node = try Yams.compose(yaml: text) {
                var budget = maxNodes
                guard countNodes(node, budget: &budget) else {
                    throw FusionPlanError.tooLarge(file: file, what: "more than \(maxNodes) YAML nodes (after expanding aliases)",
                                                   limit: "\(maxNodes) nodes")
                }
                root = Constructor.default.any(from: node)
            } else {
                root = nil
            }
        } catch let e as FusionPlanError {
            throw e
        } catch {
            throw FusionPlanError.syntax(file: file, message: "\(error)")
        }
        guard let dict = root as? [String: Any] else {
            throw FusionPlanError.field(file: file, key: "(top level)", message: "expected a mapping with keys \(topLevelKeys.sorted().joined(separator: ", "))")
        }
        for key in dict.keys where !topLevelKeys.contains(key) {
            throw FusionPlanError.field(file: file, key: key, message: "unknown key; known keys: \(topLevelKeys.sorted().joined(separator: ", "))")
        }
        guard let method = dict["method"] as? String else {
            throw FusionPlanError.field(file: file, key: "method", message: "missing or not a string; one of \(FusionMethods.names.joined(separator: ", "))")
        }
        guard let list = dict["adapters"] as? [Any], !list.isEmpty else {
            throw FusionPlanError.field(file: file, key: "adapters", message: "missing or empty; expected a list of {path, weight}")
        }
        if list.count > maxAdapters {
            throw FusionPlanError.field(file: file, key: "adapters", message: "\(list.count) adapters; at most \(maxAdapters) can be fused in one plan")
        }
        var inputs: [Input] = []
        for (i, item) in list.enumerated() {
            let key = "adapters[\(i)]"
            var path: String?
            var weight: Float = 1
            if let s = item as? String {
                path = s
            } else if let d = item as? [String: Any] {
                for k in d.keys where k != "path" && k != "weight" {
                    throw FusionPlanError.field(file: file, key: "\(key).\(k)", message: "unknown key; expected path and weight")
                }
                path = d["path"] as? String
                if let w = d["weight"] {
                    guard let v = (w as? Double) ?? (w as? Int).map(Double.init), v.isFinite else {
                        throw FusionPlanError.field(file: file, key: "\(key).weight", message: "expected a number, got \(w)")
                    }
                    guard abs(v) <= Double(maxWeight) else {
                        throw FusionPlanError.field(file: file, key: "\(key).weight", message: "\(v) is out of range (|w| ≤ \(Int(maxWeight))); a weight that large overflows weight × ΔW")
                    }
                    weight = Float(v)
                }
            }
            guard let p = path, !p.isEmpty else {
                throw FusionPlanError.field(file: file, key: "\(key).path", message: "missing; expected a path to an adapter")
            }
            let resolved = p.hasPrefix("/") ? p : (baseDirectory as NSString).appendingPathComponent(p)
            inputs.append(Input(path: resolved, weight: weight))
        }
        var params = FusionParameters()
        if let raw = dict["parameters"] {
            guard let pd = raw as? [String: Any] else {
                throw FusionPlanError.field(file: file, key: "parameters", message: "expected a mapping")
            }
            do {
                let json = try JSONSerialization.data(withJSONObject: pd)
                let dec = JSONDecoder()
                dec.keyDecodingStrategy = .convertFromSnakeCase
                params = try dec.decode(FusionParameters.self, from: json)
            } catch let e as DecodingError {
                throw FusionPlanError.field(file: file, key: "parameters", message: describe(e))
            }
            let known = Set(FusionParameters.fieldNames.map(snakeCase))
            for k in pd.keys where !known.contains(k) {
                throw FusionPlanError.field(file: file, key: "parameters.\(k)", message: "unknown parameter; known: \(known.sorted().joined(separator: ", "))")
            }
        }
        var dtype: DType?
        if let d = dict["dtype"] {
            guard let s = d as? String, let t = DType(name: s) else {
                throw FusionPlanError.field(file: file, key: "dtype", message: "expected f32, f16 or bf16, got \(d)")
            }
            dtype = t
        }
        var output: String?
        if let o = dict["output"] {
            guard let s = o as? String else { throw FusionPlanError.field(file: file, key: "output", message: "expected a path") }
            // An empty output would resolve to the YAML's own folder.
            guard !s.trimmingCharacters(in: .whitespaces).isEmpty else {
                throw FusionPlanError.field(file: file, key: "output", message: "is empty; give a folder or file name")
            }
            output = s.hasPrefix("/") ? s : (baseDirectory as NSString).appendingPathComponent(s)
        }
        return FusionPlan(method: method, adapters: inputs, parameters: params, dtype: dtype, output: output)
    }

    public static func load(path: String) throws -> FusionPlan {
        do {
            try InputFile.requireRegularFile(path, maxBytes: maxFileBytes, what: "a fusion config")
        } catch let e as InputFileError {
            if case .tooLarge = e { throw FusionPlanError.tooLarge(file: path, what: "\((try? InputFile.requireRegularFile(path)) ?? 0) bytes", limit: "\(maxFileBytes) bytes") }
            throw e
        }
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw FusionPlanError.unreadable(file: path)
        }
        return try parse(yaml: text, file: path, baseDirectory: (path as NSString).deletingLastPathComponent)
    }
}

private func snakeCase(_ s: String) -> String {
    var out = ""
    for ch in s {
        if ch.isUppercase { out += "_" + ch.lowercased() } else { out.append(ch) }
    }
    return out
}

private func describe(_ e: DecodingError) -> String {
    switch e {
    case let .typeMismatch(t, ctx), let .valueNotFound(t, ctx):
        return "\(ctx.codingPath.map(\.stringValue).joined(separator: ".")): expected \(t)"
    case let .dataCorrupted(ctx):
        return "\(ctx.codingPath.map(\.stringValue).joined(separator: ".")): \(ctx.debugDescription)"
    case let .keyNotFound(k, _):
        return "missing \(k.stringValue)"
    @unknown default:
        return "\(e)"
    }
}

public enum FusionPlanError: Error, CustomStringConvertible {
    case unreadable(file: String)
    case syntax(file: String, message: String)
    case field(file: String, key: String, message: String)
    case tooLarge(file: String, what: String, limit: String)

    public var description: String {
        switch self {
        case let .unreadable(f): return "\(f): cannot read the fusion config"
        case let .syntax(f, m): return "\(f): not valid YAML: \(m)"
        case let .field(f, k, m): return "\(f): \(k): \(m)"
        case let .tooLarge(f, w, l): return "\(f): fusion config too large: \(w) (limit \(l)); a plan lists a few adapters and parameters"
        }
    }
}
