import Foundation

/// Errors building or using a tokenizer.
public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    /// A metadata field / tokenizer.json field is missing or has the wrong type.
    case missingField(source: String, field: String, expected: String)
    /// `tokenizer.ggml.model` / tokenizer.json `model.type` is not byte-level BPE.
    case unsupportedModel(source: String, model: String)
    /// The pre-tokenizer name or tokenizer.json pre_tokenizer is not one we implement.
    case unsupportedPreTokenizer(source: String, detail: String)
    /// A merge rule is malformed or names tokens missing from the vocabulary.
    case badMerge(source: String, index: Int, merge: String)
    /// A token id outside `0..<vocabSize`.
    case tokenIdOutOfRange(field: String, id: Int, vocabSize: Int)
    /// A chat template we cannot render; `firstLine` quotes its first line.
    case unsupportedChatTemplate(firstLine: String)
    /// The tokenizer has no chat template at all.
    case missingChatTemplate
    /// Invalid JSON.
    case invalidJSON(source: String, detail: String)

    public var description: String {
        switch self {
        case let .missingField(source, field, expected):
            return "\(source): field '\(field)' missing or not \(expected)"
        case let .unsupportedModel(source, model):
            return "\(source): tokenizer model '\(model)' is not supported (expected byte-level BPE: 'gpt2' / 'BPE')"
        case let .unsupportedPreTokenizer(source, detail):
            return "\(source): unsupported pre-tokenizer \(detail) (supported: \(PreTokenizer.allCases.map(\.rawValue).joined(separator: ", ")))"
        case let .badMerge(source, index, merge):
            return "\(source): merge #\(index) '\(merge)' is malformed or uses tokens missing from the vocabulary"
        case let .tokenIdOutOfRange(field, id, vocabSize):
            return "tokenizer: \(field) = \(id) is outside the vocabulary (size \(vocabSize))"
        case let .unsupportedChatTemplate(firstLine):
            return "chat template not supported (only ChatML and Llama 3 are): \"\(firstLine)\""
        case .missingChatTemplate:
            return "tokenizer has no chat template (tokenizer.chat_template / tokenizer_config.json)"
        case let .invalidJSON(source, detail):
            return "\(source): invalid JSON: \(detail)"
        }
    }
}

/// GGUF / llama.cpp token types (`tokenizer.ggml.token_type`).
public enum TokenType: Int32, Sendable {
    case undefined = 0, normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
}

/// One chat turn for `applyChatTemplate`.
public struct ChatMessage: Sendable, Equatable, Codable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// GPT-2 style byte-level BPE tokenizer (SmolLM2, Llama 3, Qwen 2, GPT-2 vocabularies).
///
/// Encoding, as HF `tokenizers` does it:
/// 1. added/special tokens are cut out of the text first (leftmost, then longest match, exact strings);
/// 2. each remaining stretch is split by the `PreTokenizer` regex;
/// 3. each piece's UTF-8 bytes become the byte tokens (GPT-2 byte→unicode alphabet: printable
///    Latin-1 bytes map to themselves, the other 68 bytes to U+0100...);
/// 4. adjacent symbols are merged by lowest merge rank (leftmost first on ties) until no merge applies.
/// Pieces are cached, so repeated words cost one dictionary lookup.
///
/// Decoding maps every token back to bytes through the same alphabet (a token with characters outside
/// it, e.g. a special token, contributes its own UTF-8) and decodes UTF-8 with U+FFFD replacement.
public final class BPETokenizer: @unchecked Sendable {
    /// Token strings by id, in the byte-level alphabet.
    public let tokens: [String]
    public let tokenTypes: [TokenType]
    public let preTokenizer: PreTokenizer
    public let bosId: Int?
    public let eosId: Int?
    /// End-of-turn token (`<|im_end|>`, `<|eot_id|>`...), from metadata or found by name.
    public let eotId: Int?
    public let padId: Int?
    public let unkId: Int?
    /// Whether a BOS should be prepended when encoding a plain prompt (`tokenizer.ggml.add_bos_token`).
    public let addBos: Bool
    /// HF BPE `ignore_merges` (Llama 3): a piece that is itself a vocabulary token is emitted whole,
    /// without running the merges (which might not reach it).
    public let ignoreMerges: Bool
    /// The Jinja chat template text, when the model ships one.
    public let chatTemplateText: String?
    /// Ids that end generation: EOS and EOT.
    public let stopIds: Set<Int>

    public var vocabSize: Int { tokens.count }
    /// UTF-8 bytes of the longest token's text, so text of `b` bytes is at least `b / longestTokenBytes`
    /// tokens; nil when some byte has no token and no `unkId` (it is dropped, so no bound holds).
    public let longestTokenBytes: Int?

    let vocab: [String: Int]
    /// (left id, right id) packed → (rank, merged id).
    private let merges: [UInt64: (rank: Int32, id: Int32)]
    private let byteToId: [Int32]  // 256 entries, -1 when the byte's character is not in the vocabulary
    private let tokenBytes: [[UInt8]]
    /// Special/added tokens matched before pre-tokenization, grouped by first scalar, longest first.
    private let addedByFirst: [Unicode.Scalar: [(scalars: [Unicode.Scalar], id: Int)]]
    private let specialIds: Set<Int>
    private var cache: [[UInt8]: [Int32]] = [:]
    private let lock = NSLock()

    /// Builds the tokenizer from plain data.
    /// - Parameters:
    ///   - tokens: token strings by id, in the byte-level alphabet (`Ġ` for space...).
    ///   - merges: merge rules by rank, each `"left right"` (one space separates the two parts).
    ///   - tokenTypes: GGUF token types; `control` (3) and `userDefined` (4) tokens are matched whole in
    ///     the text, control ones are "special" (skipped by `decode(skipSpecial:)`).
    ///   - addedTokens: extra token ids matched whole (tokenizer.json `added_tokens`), with whether special.
    ///   - ignoreMerges: see `ignoreMerges`.
    public convenience init(tokens: [String], merges: [String], tokenTypes: [Int32]? = nil,
                preTokenizer: PreTokenizer, addedTokens: [(id: Int, special: Bool)] = [],
                bosId: Int? = nil, eosId: Int? = nil, eotId: Int? = nil, padId: Int? = nil, unkId: Int? = nil,
                addBos: Bool = false, ignoreMerges: Bool = false, chatTemplate: String? = nil,
                source: String = "tokenizer") throws {
        var pairs: [(String, String)] = []
        pairs.reserveCapacity(merges.count)
        for (i, m) in merges.enumerated() {
            // A merge is split at its first space after the first character (parts never hold a
            // literal space in the byte alphabet; llama.cpp and HF split the same way).
            guard let sp = m.dropFirst().firstIndex(of: " ") else {
                throw TokenizerError.badMerge(source: source, index: i, merge: m)
            }
            pairs.append((String(m[..<sp]), String(m[m.index(after: sp)...])))
        }
        try self.init(tokens: tokens, mergePairs: pairs, tokenTypes: tokenTypes, preTokenizer: preTokenizer,
                      addedTokens: addedTokens, bosId: bosId, eosId: eosId, eotId: eotId, padId: padId,
                      unkId: unkId, addBos: addBos, ignoreMerges: ignoreMerges, chatTemplate: chatTemplate,
                      source: source)
    }

    /// As above with merges already split into (left, right) pairs (tokenizer.json's `[a, b]` form).
    public init(tokens: [String], mergePairs: [(String, String)], tokenTypes: [Int32]? = nil,
                preTokenizer: PreTokenizer, addedTokens: [(id: Int, special: Bool)] = [],
                bosId: Int? = nil, eosId: Int? = nil, eotId: Int? = nil, padId: Int? = nil, unkId: Int? = nil,
                addBos: Bool = false, ignoreMerges: Bool = false, chatTemplate: String? = nil,
                source: String = "tokenizer") throws {
        let n = tokens.count
        self.ignoreMerges = ignoreMerges
        self.tokens = tokens
        self.preTokenizer = preTokenizer
        self.addBos = addBos
        self.chatTemplateText = chatTemplate

        var types = [TokenType](repeating: .normal, count: n)
        if let tt = tokenTypes {
            guard tt.count == n else {
                throw TokenizerError.missingField(source: source, field: "token_type",
                                                  expected: "an array of \(n) entries (got \(tt.count))")
            }
            for i in 0..<n { types[i] = TokenType(rawValue: tt[i]) ?? .normal }
        }
        for a in addedTokens where a.id >= 0 && a.id < n {
            types[a.id] = a.special ? .control : .userDefined
        }
        self.tokenTypes = types

        var vocab = [String: Int](minimumCapacity: n)
        for (i, t) in tokens.enumerated() where vocab[t] == nil { vocab[t] = i }
        self.vocab = vocab

        for (field, id) in [("bos", bosId), ("eos", eosId), ("eot", eotId), ("pad", padId), ("unk", unkId)] {
            if let id, id < 0 || id >= n { throw TokenizerError.tokenIdOutOfRange(field: field, id: id, vocabSize: n) }
        }
        self.bosId = bosId
        self.eosId = eosId
        self.padId = padId
        self.unkId = unkId
        var eot = eotId
        if eot == nil {
            for name in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"] {
                if let id = vocab[name], types[id] == .control { eot = id; break }
            }
        }
        self.eotId = eot
        self.stopIds = Set([eosId, eot].compactMap { $0 })

        var mm = [UInt64: (rank: Int32, id: Int32)](minimumCapacity: mergePairs.count)
        for (rank, (a, b)) in mergePairs.enumerated() {
            guard let ia = vocab[a], let ib = vocab[b], let ic = vocab[a + b] else {
                throw TokenizerError.badMerge(source: source, index: rank, merge: "\(a) \(b)")
            }
            let key = BPETokenizer.pairKey(Int32(ia), Int32(ib))
            if mm[key] == nil { mm[key] = (Int32(rank), Int32(ic)) }
        }
        self.merges = mm

        var b2id = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            if let id = vocab[String(Character(ByteLevel.byteToScalar[b]))] { b2id[b] = Int32(id) }
        }
        self.byteToId = b2id
        self.tokenBytes = tokens.map(ByteLevel.decode)
        let longest = zip(tokens, tokenBytes).map { max($0.utf8.count, $1.count) }.max() ?? 1
        self.longestTokenBytes = b2id.contains(-1) && unkId == nil ? nil : max(longest, 1)

        var added: [Unicode.Scalar: [(scalars: [Unicode.Scalar], id: Int)]] = [:]
        var special = Set<Int>()
        for (i, t) in types.enumerated() where t == .control || t == .userDefined {
            let s = Array(tokens[i].unicodeScalars)
            guard let first = s.first else { continue }
            added[first, default: []].append((s, i))
            if t == .control { special.insert(i) }
        }
        for k in added.keys { added[k]!.sort { $0.scalars.count > $1.scalars.count } }
        self.addedByFirst = added
        self.specialIds = special
    }

    @inline(__always) static func pairKey(_ a: Int32, _ b: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b))
    }

    /// Id of an exact token string.
    public func id(of token: String) -> Int? { vocab[token] }

    /// Whether `id` is a special (control) token.
    public func isSpecial(_ id: Int) -> Bool { specialIds.contains(id) }

    // MARK: Encoding

    /// Token ids of `text`. With `parseSpecial`, special/added token strings in the text
    /// (e.g. `<|im_start|>`) become their ids; otherwise they are tokenized as ordinary text.
    /// No BOS is added here (see `addBos`).
    public func encode(_ text: String, parseSpecial: Bool = true) -> [Int] {
        let scalars = Array(text.unicodeScalars)
        var out: [Int] = []
        out.reserveCapacity(scalars.count / 3 + 4)
        var start = 0
        if parseSpecial && !addedByFirst.isEmpty {
            var i = 0
            while i < scalars.count {
                if let cands = addedByFirst[scalars[i]],
                   let hit = cands.first(where: { matches($0.scalars, scalars, at: i) }) {
                    if start < i { encodeOrdinary(scalars, start..<i, into: &out) }
                    out.append(hit.id)
                    i += hit.scalars.count
                    start = i
                } else {
                    i += 1
                }
            }
        }
        if start < scalars.count { encodeOrdinary(scalars, start..<scalars.count, into: &out) }
        return out
    }

    private func matches(_ needle: [Unicode.Scalar], _ hay: [Unicode.Scalar], at i: Int) -> Bool {
        guard i + needle.count <= hay.count else { return false }
        for k in 0..<needle.count where hay[i + k] != needle[k] { return false }
        return true
    }

    private func encodeOrdinary(_ scalars: [Unicode.Scalar], _ range: Range<Int>, into out: inout [Int]) {
        let sub = Array(scalars[range])
        for piece in preTokenizer.split(sub) {
            var bytes: [UInt8] = []
            bytes.reserveCapacity(piece.count * 2)
            for k in piece { bytes.append(contentsOf: UTF8.encode(sub[k])!) }
            for id in bpe(bytes) { out.append(Int(id)) }
        }
    }

    /// BPE over one pre-tokenized piece (its UTF-8 bytes), cached.
    func bpe(_ bytes: [UInt8]) -> [Int32] {
        lock.lock()
        if let hit = cache[bytes] { lock.unlock(); return hit }
        lock.unlock()

        if ignoreMerges, let whole = vocab[ByteLevel.encode(bytes)] {
            return [Int32(whole)]
        }
        let syms = mergeHeap(initialSymbols(bytes))

        // Long pieces (a pasted blob, a run of one character) are not cached: they rarely repeat,
        // and 200k of them could hold gigabytes.
        guard bytes.count <= 256 else { return syms }
        lock.lock()
        if cache.count > 200_000 { cache.removeAll(keepingCapacity: true) }
        cache[bytes] = syms
        lock.unlock()
        return syms
    }

    /// The byte tokens BPE starts from (a byte missing from the vocabulary becomes `unkId`, or is dropped).
    func initialSymbols(_ bytes: [UInt8]) -> [Int32] {
        var syms: [Int32] = []
        syms.reserveCapacity(bytes.count)
        for b in bytes {
            let id = byteToId[Int(b)]
            if id >= 0 { syms.append(id) } else if let u = unkId { syms.append(Int32(u)) }
        }
        return syms
    }

    /// Reference BPE: repeatedly merge the lowest-ranked adjacent pair, leftmost on ties, rescanning
    /// the whole sequence each time. O(n²) on one long piece; kept to check `mergeHeap` against.
    func naiveMerge(_ start: [Int32]) -> [Int32] {
        var syms = start
        while syms.count > 1 {
            var bestRank = Int32.max, bestPos = -1, bestId: Int32 = 0
            for p in 0..<(syms.count - 1) {
                if let m = merges[BPETokenizer.pairKey(syms[p], syms[p + 1])], m.rank < bestRank {
                    bestRank = m.rank; bestPos = p; bestId = m.id
                }
            }
            if bestPos < 0 { break }
            syms[bestPos] = bestId
            syms.remove(at: bestPos + 1)
        }
        return syms
    }

    /// The same merges as `naiveMerge` in O(n log n): the symbols form a linked list over their start
    /// index, and every adjacent pair that has a merge sits in a binary min-heap keyed by
    /// (rank, index of its left symbol). A merge keeps its left symbol's index, so index order is text
    /// order and the smallest key is exactly the naive loop's choice (lowest rank, leftmost).
    /// A merge only changes the pairs next to it; those are pushed anew and stale entries are skipped
    /// when popped (lazy invalidation): an entry is live iff its left symbol is alive and both it and
    /// its right neighbour still hold the ids it was pushed with (a position's id only ever grows into
    /// a longer token, so an old id never comes back).
    func mergeHeap(_ start: [Int32]) -> [Int32] {
        let n = start.count
        guard n > 1 else { return start }
        var ids = start
        var prev = [Int32](repeating: -1, count: n)
        var next = [Int32](repeating: -1, count: n)
        for i in 0..<n {
            prev[i] = Int32(i - 1)
            if i + 1 < n { next[i] = Int32(i + 1) }
        }
        var alive = [Bool](repeating: true, count: n)
        var heap = PairHeap()
        heap.reserve(n)
        func push(_ i: Int32, _ j: Int32) {
            let l = ids[Int(i)], r = ids[Int(j)]
            if let m = merges[BPETokenizer.pairKey(l, r)] {
                heap.push(PairHeap.Entry(key: UInt64(UInt32(m.rank)) << 32 | UInt64(UInt32(i)),
                                         left: l, right: r, merged: m.id))
            }
        }
        for i in 0..<(n - 1) { push(Int32(i), Int32(i + 1)) }
        while let e = heap.pop() {
            let i = Int(UInt32(truncatingIfNeeded: e.key))
            guard alive[i], ids[i] == e.left else { continue }
            let j = Int(next[i])
            guard j >= 0, ids[j] == e.right else { continue }
            ids[i] = e.merged
            alive[j] = false
            let k = next[j]
            next[i] = k
            if k >= 0 { prev[Int(k)] = Int32(i) }
            if prev[i] >= 0 { push(prev[i], Int32(i)) }
            if k >= 0 { push(Int32(i), k) }
        }
        var out: [Int32] = []
        var i: Int32 = 0  // index 0 is never merged away (a merge keeps its left symbol)
        while i >= 0 {
            out.append(ids[Int(i)])
            i = next[Int(i)]
        }
        return out
    }

    // MARK: Decoding

    /// The raw bytes of `ids` (special tokens included unless `skipSpecial`).
    public func decodeBytes(_ ids: [Int], skipSpecial: Bool = false) -> [UInt8] {
        var out: [UInt8] = []
        for id in ids where id >= 0 && id < tokens.count {
            if skipSpecial && specialIds.contains(id) { continue }
            out.append(contentsOf: tokenBytes[id])
        }
        return out
    }

    /// Text of `ids`; invalid or incomplete UTF-8 becomes U+FFFD (Python's `errors="replace"`).
    public func decode(_ ids: [Int], skipSpecial: Bool = false) -> String {
        String(decoding: decodeBytes(ids, skipSpecial: skipSpecial), as: UTF8.self)
    }

    /// The bytes of one token (empty for an out-of-range id).
    public func bytes(of id: Int) -> [UInt8] { id >= 0 && id < tokens.count ? tokenBytes[id] : [] }

    /// A decoder for generated tokens that emits only complete UTF-8 characters.
    public func makeStreamingDecoder(skipSpecial: Bool = false) -> StreamingDecoder {
        StreamingDecoder(tokenizer: self, skipSpecial: skipSpecial)
    }
}

/// Binary min-heap of candidate merges for `BPETokenizer.mergeHeap`, ordered by
/// `key` = rank << 32 | index of the pair's left symbol.
struct PairHeap {
    struct Entry {
        var key: UInt64
        var left: Int32
        var right: Int32
        var merged: Int32
    }
    private var items: [Entry] = []

    mutating func reserve(_ n: Int) { items.reserveCapacity(n) }

    mutating func push(_ e: Entry) {
        items.append(e)
        var c = items.count - 1
        while c > 0 {
            let p = (c - 1) / 2
            if items[p].key <= e.key { break }
            items[c] = items[p]
            c = p
        }
        items[c] = e
    }

    mutating func pop() -> Entry? {
        guard let last = items.popLast() else { return nil }
        guard !items.isEmpty else { return last }
        let top = items[0]
        let n = items.count
        var p = 0
        while true {
            var c = 2 * p + 1
            if c >= n { break }
            if c + 1 < n && items[c + 1].key < items[c].key { c += 1 }
            if last.key <= items[c].key { break }
            items[p] = items[c]
            p = c
        }
        items[p] = last
        return top
    }
}

/// Incremental detokenizer: a character whose UTF-8 bytes are spread over several tokens
/// (emoji, CJK) is emitted once all of its bytes have arrived.
public struct StreamingDecoder {
    let tokenizer: BPETokenizer
    let skipSpecial: Bool
    private var pending: [UInt8] = []

    init(tokenizer: BPETokenizer, skipSpecial: Bool) {
        self.tokenizer = tokenizer
        self.skipSpecial = skipSpecial
    }

    /// Adds one token; returns the text that is now complete (possibly empty).
    public mutating func push(_ id: Int) -> String {
        if skipSpecial && tokenizer.isSpecial(id) { return "" }
        pending.append(contentsOf: tokenizer.bytes(of: id))
        let cut = StreamingDecoder.completePrefix(pending)
        guard cut > 0 else { return "" }
        let text = String(decoding: pending[..<cut], as: UTF8.self)
        pending.removeFirst(cut)
        return text
    }

    /// Emits whatever is left (an incomplete tail becomes U+FFFD).
    public mutating func flush() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    /// Length of the longest prefix that does not end inside a UTF-8 sequence which could still be
    /// completed by more bytes. Invalid bytes are not held back (they decode to U+FFFD now).
    static func completePrefix(_ b: [UInt8]) -> Int {
        let n = b.count
        // Look back at most 3 bytes for the lead byte of the last sequence.
        var i = n - 1
        while i >= 0 && i >= n - 4 {
            let c = b[i]
            if c & 0xC0 == 0x80 { i -= 1; continue }  // continuation byte
            let need: Int
            switch c {
            case 0xC2...0xDF: need = 2
            case 0xE0...0xEF: need = 3
            case 0xF0...0xF4: need = 4
            default: return n  // ASCII or invalid lead: nothing to wait for
            }
            return n - i < need ? i : n
        }
        return n
    }
}

/// The GPT-2 byte↔unicode alphabet: bytes `!`...`~`, `¡`...`¬`, `®`...`ÿ` stand for themselves; the
/// remaining 68 bytes, in order, are U+0100, U+0101, ... so every byte is a printable character.
enum ByteLevel {
    static let byteToScalar: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable {
                table[b] = Unicode.Scalar(UInt32(b))!
            } else {
                table[b] = Unicode.Scalar(next)!
                next += 1
            }
        }
        return table
    }()

    static let scalarToByte: [UInt32: UInt8] = {
        var m: [UInt32: UInt8] = [:]
        for (b, s) in byteToScalar.enumerated() { m[s.value] = UInt8(b) }
        return m
    }()

    /// Bytes of a token string: through the alphabet, or its own UTF-8 when any character is outside
    /// it (as `tokenizers`' ByteLevel decoder does).
    static func decode(_ token: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(token.unicodeScalars.count)
        for s in token.unicodeScalars {
            guard let b = scalarToByte[s.value] else { return Array(token.utf8) }
            out.append(b)
        }
        return out
    }

    /// Token string (byte alphabet) of raw bytes.
    static func encode(_ bytes: [UInt8]) -> String {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(byteToScalar[Int(b)]) }
        return String(s)
    }
}
