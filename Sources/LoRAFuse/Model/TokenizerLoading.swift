import Foundation

/// Building a `BPETokenizer` from GGUF metadata or an HF `tokenizer.json`.
extension BPETokenizer {
    /// From GGUF metadata, read through `get` (key → value), so any GGUF reader can be plugged in.
    ///
    /// `get` returns native Swift values: `String`, `Bool`, any integer, `[String]`, arrays of
    /// integers, or `[Any]` holding those; nil for an absent key. Keys (llama.cpp's names):
    /// `tokenizer.ggml.model` (must be "gpt2"), `tokenizer.ggml.pre` (e.g. "smollm"),
    /// `tokenizer.ggml.tokens`, `tokenizer.ggml.merges` ("a b" strings), `tokenizer.ggml.token_type`,
    /// `tokenizer.ggml.{bos,eos,eot,padding,unknown}_token_id`, `tokenizer.ggml.add_bos_token`,
    /// `tokenizer.chat_template`.
    ///
    /// Pre-tokenizer: "smollm" gives `.smollm` (digits isolated, then GPT-2's regex), as llama.cpp and
    /// SmolLM2's own tokenizer.json do. (transformers 5.x's GGUF loader instead keeps GPT-2's plain
    /// regex for "smollm"; the two differ only on whitespace runs before a digit, e.g. "a   1".)
    /// Llama 3 family pre names also turn on `ignoreMerges`, as llama.cpp does and as Llama 3's
    /// tokenizer.json (`"ignore_merges": true`) says.
    public static func fromGGUFMetadata(_ get: (String) -> Any?, source: String = "gguf") throws -> BPETokenizer {
        let model = get("tokenizer.ggml.model").flatMap(Meta.string)
        guard let model else {
            throw TokenizerError.missingField(source: source, field: "tokenizer.ggml.model", expected: "a string")
        }
        guard model == "gpt2" else { throw TokenizerError.unsupportedModel(source: source, model: model) }
        let preName = get("tokenizer.ggml.pre").flatMap(Meta.string)
        guard let pre = PreTokenizer.fromGGUFPre(preName) else {
            throw TokenizerError.unsupportedPreTokenizer(source: source, detail: "tokenizer.ggml.pre = '\(preName ?? "")'")
        }
        guard let tokens = get("tokenizer.ggml.tokens").flatMap(Meta.strings) else {
            throw TokenizerError.missingField(source: source, field: "tokenizer.ggml.tokens", expected: "an array of strings")
        }
        guard let merges = get("tokenizer.ggml.merges").flatMap(Meta.strings) else {
            throw TokenizerError.missingField(source: source, field: "tokenizer.ggml.merges", expected: "an array of strings")
        }
        var types: [Int32]? = nil
        if let raw = get("tokenizer.ggml.token_type") {
            guard let t = Meta.ints(raw) else {
                throw TokenizerError.missingField(source: source, field: "tokenizer.ggml.token_type", expected: "an array of integers")
            }
            types = t.map { Int32(truncatingIfNeeded: $0) }
        }
        func id(_ key: String) throws -> Int? {
            guard let raw = get("tokenizer.ggml.\(key)") else { return nil }
            guard let v = Meta.int(raw) else {
                throw TokenizerError.missingField(source: source, field: "tokenizer.ggml.\(key)", expected: "an integer")
            }
            return v
        }
        let addBos = get("tokenizer.ggml.add_bos_token").flatMap(Meta.bool) ?? false
        return try BPETokenizer(
            tokens: tokens, merges: merges, tokenTypes: types, preTokenizer: pre,
            bosId: try id("bos_token_id"), eosId: try id("eos_token_id"), eotId: try id("eot_token_id"),
            padId: try id("padding_token_id"), unkId: try id("unknown_token_id"), addBos: addBos,
            ignoreMerges: pre == .llama3,
            chatTemplate: get("tokenizer.chat_template").flatMap(Meta.string), source: source)
    }

    /// From an HF `tokenizer.json` (BPE model; merges as "a b" strings or `[a, b]` pairs).
    ///
    /// The pre-tokenizer is recognised from its JSON: `ByteLevel` with `use_regex` → `.gpt2`;
    /// `Sequence[Digits(individual_digits), ByteLevel]` → `.smollm`; `Sequence[Split(Llama 3 or
    /// Qwen 2 regex), ByteLevel(use_regex: false)]` → `.llama3` / `.qwen2`. Special ids and the chat
    /// template live in tokenizer_config.json, so they are parameters here (eos/bos by token string).
    public static func fromTokenizerJSON(_ data: Data, bosToken: String? = nil, eosToken: String? = nil,
                                         chatTemplate: String? = nil,
                                         source: String = "tokenizer.json") throws -> BPETokenizer {
        let root: [String: Any]
        do {
            guard let r = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw TokenizerError.invalidJSON(source: source, detail: "top level is not an object")
            }
            root = r
        } catch let e as TokenizerError {
            throw e
        } catch {
            throw TokenizerError.invalidJSON(source: source, detail: "\(error)")
        }
        guard let model = root["model"] as? [String: Any] else {
            throw TokenizerError.missingField(source: source, field: "model", expected: "an object")
        }
        if let type = model["type"] as? String, type != "BPE" {
            throw TokenizerError.unsupportedModel(source: source, model: type)
        }
        guard let vocabDict = model["vocab"] as? [String: Any] else {
            throw TokenizerError.missingField(source: source, field: "model.vocab", expected: "an object of token → id")
        }
        var pairs: [(Int, String)] = []
        pairs.reserveCapacity(vocabDict.count)
        for (t, v) in vocabDict {
            guard let i = Meta.int(v) else {
                throw TokenizerError.missingField(source: source, field: "model.vocab[\(t)]", expected: "an integer id")
            }
            pairs.append((i, t))
        }
        var added: [(id: Int, content: String, special: Bool)] = []
        for item in root["added_tokens"] as? [[String: Any]] ?? [] {
            guard let i = item["id"].flatMap(Meta.int), let c = item["content"] as? String else {
                throw TokenizerError.missingField(source: source, field: "added_tokens[].id/content", expected: "an integer and a string")
            }
            added.append((i, c, item["special"] as? Bool ?? false))
            pairs.append((i, c))
        }
        let size = (pairs.map(\.0).max() ?? -1) + 1
        var tokens = [String](repeating: "", count: size)
        for (i, t) in pairs where i >= 0 { tokens[i] = t }

        var mergePairs: [(String, String)] = []
        for (k, m) in (model["merges"] as? [Any] ?? []).enumerated() {
            if let s = m as? String {
                guard let sp = s.dropFirst().firstIndex(of: " ") else {
                    throw TokenizerError.badMerge(source: source, index: k, merge: s)
                }
                mergePairs.append((String(s[..<sp]), String(s[s.index(after: sp)...])))
            } else if let p = m as? [Any], p.count == 2, let a = p[0] as? String, let b = p[1] as? String {
                mergePairs.append((a, b))
            } else {
                throw TokenizerError.badMerge(source: source, index: k, merge: "\(m)")
            }
        }
        let pre = try detectPreTokenizer(root["pre_tokenizer"], source: source)
        var byContent: [String: Int] = [:]
        for (i, t) in pairs where byContent[t] == nil { byContent[t] = i }
        for a in added { byContent[a.content] = a.id }
        let lookup = { (t: String?) -> Int? in t.flatMap { byContent[$0] } }
        return try BPETokenizer(
            tokens: tokens, mergePairs: mergePairs, tokenTypes: nil, preTokenizer: pre,
            addedTokens: added.map { ($0.id, $0.special) },
            bosId: lookup(bosToken), eosId: lookup(eosToken),
            ignoreMerges: model["ignore_merges"] as? Bool ?? false, chatTemplate: chatTemplate, source: source)
    }

    static func detectPreTokenizer(_ json: Any?, source: String) throws -> PreTokenizer {
        func fail(_ why: String) -> TokenizerError {
            .unsupportedPreTokenizer(source: source, detail: why)
        }
        guard let obj = json as? [String: Any], let type = obj["type"] as? String else {
            throw fail("pre_tokenizer missing")
        }
        switch type {
        case "ByteLevel":
            guard obj["use_regex"] as? Bool ?? true else { throw fail("ByteLevel without use_regex") }
            guard !(obj["add_prefix_space"] as? Bool ?? false) else { throw fail("ByteLevel with add_prefix_space") }
            return .gpt2
        case "Sequence":
            let items = obj["pretokenizers"] as? [[String: Any]] ?? []
            let types = items.map { $0["type"] as? String ?? "" }
            if types == ["Digits", "ByteLevel"], items[0]["individual_digits"] as? Bool == true,
               items[1]["use_regex"] as? Bool ?? true {
                return .smollm
            }
            if types == ["Split", "ByteLevel"], items[1]["use_regex"] as? Bool == false,
               let pattern = (items[0]["pattern"] as? [String: Any])?["Regex"] as? String {
                if pattern == RegexText.llama3 { return .llama3 }
                if pattern == RegexText.qwen2 { return .qwen2 }
                throw fail("Split regex \(pattern)")
            }
            throw fail("Sequence \(types)")
        default:
            throw fail(type)
        }
    }
}

/// The split regexes as tokenizer.json spells them (for recognition only; matching is hand-written).
enum RegexText {
    static let llama3 = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen2 = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
}

/// Lenient conversion of metadata values handed over as `Any`.
enum Meta {
    static func string(_ v: Any) -> String? { v as? String }

    static func bool(_ v: Any) -> Bool? {
        if let b = v as? Bool { return b }
        return int(v).map { $0 != 0 }
    }

    static func int(_ v: Any) -> Int? {
        if let i = v as? Int { return i }
        if let i = v as? any BinaryInteger { return Int(exactly: i) }
        if let n = v as? NSNumber, !(v is Bool) { return n.intValue }
        if let d = v as? Double, d == d.rounded() { return Int(exactly: d) }
        return nil
    }

    static func strings(_ v: Any) -> [String]? {
        if let s = v as? [String] { return s }
        guard let a = v as? [Any] else { return nil }
        var out: [String] = []
        out.reserveCapacity(a.count)
        for x in a {
            guard let s = x as? String else { return nil }
            out.append(s)
        }
        return out
    }

    static func ints(_ v: Any) -> [Int]? {
        if let a = v as? [Int] { return a }
        if let a = v as? [Int32] { return a.map(Int.init) }
        guard let a = v as? [Any] else { return nil }
        var out: [Int] = []
        out.reserveCapacity(a.count)
        for x in a {
            guard let i = int(x) else { return nil }
            out.append(i)
        }
        return out
    }
}
