import Foundation

// The Llama-family decoder (Llama, SmolLM, Mistral without sliding window, Qwen 2), Float32 on
// the CPU. Layout and math follow HF transformers' modeling_llama.py so that logits match it and
// PEFT adapters trained on HF checkpoints apply unchanged:
//
//   x = embed[tokens]                                   // (T, C)
//   per layer:  h = RMSNorm(x) · g_attn                  // (T, C)
//               q, k, v = h Wqᵀ (+bq), h Wkᵀ (+bk), h Wvᵀ (+bv)
//               q, k = RoPE(q, k)  (rotate_half: pairs (i, i + d/2))
//               x += softmax(q kᵀ / √d + causal) v · Woᵀ   (grouped-query: head h reads kv head h / (H/Hkv))
//               h = RMSNorm(x) · g_ffn
//               x += (silu(h Wgᵀ) ⊙ h Wuᵀ) Wdᵀ
//   logits = RMSNorm(x) · g_final · W_lmᵀ              // (T, V); W_lm = embed when tied
//
// Every matmul goes through BLAS.gemm; attention scores of a head are one GEMM of its queries
// against all cached keys. Weights stay in PyTorch (out, in) layout, row-major.

/// A linear layer y = x Wᵀ + b, W (out, in) row-major as in PyTorch: Float32 values in `weight`,
/// or (loaded from a quantized GGUF) the stored blocks in `quantized` with `weight` empty.
public struct LinearWeights: Sendable {
    public var weight: [Float]      // (out, in); empty when quantized
    public var quantized: QuantizedMatrix?
    public var bias: [Float]?       // (out)
    public let outFeatures: Int
    public let inFeatures: Int

    public init(weight: [Float], bias: [Float]? = nil, outFeatures: Int, inFeatures: Int) {
        precondition(weight.count == outFeatures * inFeatures, "linear weight needs \(outFeatures)x\(inFeatures) values")
        precondition(bias == nil || bias!.count == outFeatures, "linear bias needs \(outFeatures) values")
        self.weight = weight
        self.bias = bias
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
    }

    public init(quantized q: QuantizedMatrix, bias: [Float]? = nil) {
        precondition(bias == nil || bias!.count == q.rows, "linear bias needs \(q.rows) values")
        self.weight = []
        self.quantized = q
        self.bias = bias
        self.outFeatures = q.rows
        self.inFeatures = q.cols
    }

    /// W as Float32 (out, in): the stored values, or the quantized blocks dequantized (a copy).
    public func floatWeight() -> [Float] { quantized?.dequantized() ?? weight }
}

/// The weights of a model, in HF layout and naming. `linears` is indexed by `LlamaWeights.linearID`:
/// layer l's slot s at l·7 + s, then lm_head at L·7 (sharing `embed`'s storage when tied).
public struct LlamaWeights: Sendable {
    public var embed: [Float]                 // (V, C); empty when `embedQuantized` holds it
    public var embedQuantized: QuantizedMatrix?
    public var attnNorms: [[Float]]           // L × (C)
    public var ffnNorms: [[Float]]            // L × (C)
    public var linears: [LinearWeights]       // L·7 + 1
    public var finalNorm: [Float]             // (C)

    /// Whether any weight is kept in a quantized (or 16-bit) type (`WeightCompute.stored`).
    public var holdsQuantizedWeights: Bool { embedQuantized != nil || linears.contains { $0.quantized != nil } }

    /// The embedding as Float32 (V, C): the stored values or the quantized rows dequantized.
    public func embedFloats() -> [Float] { embedQuantized?.dequantized() ?? embed }

    /// Row `token` of the embedding into `dst` (C values).
    func embedRow(_ token: Int, into dst: UnsafeMutablePointer<Float>, width C: Int) {
        if let q = embedQuantized {
            q.dequantizeRows(token..<(token + 1), into: dst)
        } else {
            embed.withUnsafeBufferPointer { dst.update(from: $0.baseAddress! + token * C, count: C) }
        }
    }

    /// Bytes the forward pass reads per token: every linear's stored weights (the embedding only
    /// by the rows it looks up, except as a tied head).
    public var weightBytes: Int {
        linears.reduce(0) { $0 + ($1.quantized?.byteCount ?? $1.weight.count * 4) }
    }

    static func linearID(layer: Int, _ p: Projection) -> Int { layer * Projection.allCases.count + p.index }
    static func lmHeadID(layers: Int) -> Int { layers * Projection.allCases.count }

    /// Expected (out, in) of every linear for `config`, in `linears` order.
    static func linearShapes(_ c: LlamaConfig) -> [(out: Int, in: Int)] {
        var s: [(Int, Int)] = []
        for _ in 0..<c.numHiddenLayers {
            s += [(c.numAttentionHeads * c.headDim, c.hiddenSize), (c.numKeyValueHeads * c.headDim, c.hiddenSize),
                  (c.numKeyValueHeads * c.headDim, c.hiddenSize), (c.hiddenSize, c.numAttentionHeads * c.headDim),
                  (c.intermediateSize, c.hiddenSize), (c.intermediateSize, c.hiddenSize), (c.hiddenSize, c.intermediateSize)]
        }
        s.append((c.vocabSize, c.hiddenSize))
        return s
    }

    /// Random weights for tests and benchmarks (normal, std `std`; norms near 1).
    public static func random(_ c: LlamaConfig, seed: UInt64, std: Float = 0.1) -> LlamaWeights {
        var rng = SeededRNG(seed: seed)
        func normal(_ n: Int, _ s: Float) -> [Float] { (0..<n).map { _ in rng.nextNormal() * s } }
        let embed = normal(c.vocabSize * c.hiddenSize, std)
        var linears: [LinearWeights] = []
        let shapes = linearShapes(c)
        for (i, sh) in shapes.enumerated() {
            let isLM = i == shapes.count - 1
            let slot = Projection.allCases[i % Projection.allCases.count]
            let hasBias = !isLM && c.attentionBias && (slot == .q || slot == .k || slot == .v || (c.modelType != "qwen2" && slot == .o))
            let w = isLM && c.tieWordEmbeddings ? embed : normal(sh.out * sh.in, std)
            linears.append(LinearWeights(weight: w, bias: hasBias ? normal(sh.out, std) : nil, outFeatures: sh.out, inFeatures: sh.in))
        }
        return LlamaWeights(embed: embed,
                            attnNorms: (0..<c.numHiddenLayers).map { _ in normal(c.hiddenSize, 0.1).map { 1 + $0 } },
                            ffnNorms: (0..<c.numHiddenLayers).map { _ in normal(c.hiddenSize, 0.1).map { 1 + $0 } },
                            linears: linears, finalNorm: normal(c.hiddenSize, 0.1).map { 1 + $0 })
    }
}

/// Optional record of a forward pass's intermediate values, for a later backward pass (LoRA
/// training) and for debugging. Keys are "<layer>.<name>"; values are copies, row-major.
public final class ForwardActivations {
    public private(set) var values: [String: [Float]] = [:]
    /// Keep only "<layers>.h_final" (the last hidden state, what lm_head reads): the forward then
    /// keeps its fast paths (threaded, blocked attention) and copies nothing per layer.
    public let finalOnly: Bool
    public init(finalOnly: Bool = false) { self.finalOnly = finalOnly }
    func save(_ layer: Int, _ name: String, _ p: UnsafePointer<Float>, _ count: Int) {
        values["\(layer).\(name)"] = Array(UnsafeBufferPointer(start: p, count: count))
    }
}

/// A Llama-family causal LM with Float32 weights in memory. The weights never change after
/// loading and are shared by every session; adapters are not state of the model but a value
/// (`AdapterSet`, AdapterSet.swift) each session is given, so sessions with different adapters
/// may run on different threads at once.
///
/// Backward pass: `LlamaSession.activations` records each layer's inputs to every linear
/// (`x`, `h_attn`, `attn_out`, `h_ffn`, `gate`/`up` before SwiGLU), q after RoPE and the attention
/// probabilities, which is what LoRA gradients dL/dA, dL/dB need; nothing is kept when it is nil.
public final class LlamaModel: CausalLM, @unchecked Sendable {
    public let config: LlamaConfig
    public let tokenizer: BPETokenizer
    /// Where the model was loaded from (for messages).
    public let sourcePath: String
    /// Base weights: never modified after loading.
    public let base: LlamaWeights

    public var vocabSize: Int { config.vocabSize }
    public var contextLength: Int { config.maxPositionEmbeddings }
    /// How quantized (and F16/BF16) weights multiply more than `QuantizedLinear.kernelRowLimit`
    /// rows; set before the model is shared between threads.
    public var promptPath: QuantizedPromptPath = .automatic

    public init(config: LlamaConfig, weights: LlamaWeights, tokenizer: BPETokenizer, sourcePath: String = "<memory>") {
        self.config = config
        self.tokenizer = tokenizer
        self.sourcePath = sourcePath
        self.base = weights
    }

    /// A base-model session (no adapters); `with(_:)` gives sessions with adapters.
    public func makeSession(maxTokens: Int) throws -> any InferenceSession {
        try LlamaSession(model: self, maxTokens: maxTokens, adapters: .none)
    }

    /// The concrete session, for `feed(_:lastOnly:)` and `activations`, with `adapters` applied.
    public func makeLlamaSession(maxTokens: Int, adapters: AdapterSet = .none) throws -> LlamaSession {
        try LlamaSession(model: self, maxTokens: maxTokens, adapters: adapters)
    }

    /// A session whose keys and values live in blocks taken from `pool` as it grows (a server's
    /// sequences), instead of one private cache for `maxTokens` positions.
    public func makeLlamaSession(maxTokens: Int, adapters: AdapterSet, pool: KVBlockPool) throws -> LlamaSession {
        try LlamaSession(model: self, maxTokens: maxTokens, adapters: adapters, pool: pool)
    }

    /// Logits (T, V) of `tokens` from a fresh base-model session.
    public func logits(tokens: [Int]) throws -> Matrix {
        try logits(tokens: tokens, adapters: .none)
    }

    /// Logits (T, V) of `tokens` from a fresh session with `adapters`.
    public func logits(tokens: [Int], adapters: AdapterSet) throws -> Matrix {
        try LlamaSession(model: self, maxTokens: max(tokens.count, 1), adapters: adapters).feed(tokens)
    }

    var layerCount: Int { config.numHiddenLayers }
}

/// Scratch memory that does not move or get reference-counted in the hot loops.
final class FloatBuffer {
    private(set) var pointer: UnsafeMutablePointer<Float>
    private(set) var capacity: Int
    init(_ count: Int) {
        capacity = max(count, 1)
        pointer = .allocate(capacity: capacity)
        pointer.initialize(repeating: 0, count: capacity)
    }
    /// Grows (contents not kept) so that at least `count` values fit.
    func reserve(_ count: Int) -> UnsafeMutablePointer<Float> {
        if count > capacity {
            pointer.deallocate()
            capacity = count
            pointer = .allocate(capacity: count)
            pointer.initialize(repeating: 0, count: count)
        }
        return pointer
    }
    deinit { pointer.deallocate() }
}

/// One sequence: a KV cache for up to `maxTokens` positions (one private block, or blocks from a
/// pool as it grows: KVCache.swift) plus scratch buffers sized for the largest batch seen, so
/// decoding a token allocates nothing but the returned logits (and, paged, a block every
/// `blockTokens` positions).
public final class LlamaSession: InferenceSession {
    public let model: LlamaModel
    public let maxTokens: Int
    public internal(set) var position = 0
    /// When set, the next `feed` fills it with intermediate values (for a backward pass).
    public var activations: ForwardActivations?
    /// When set with routed adapters, gate weights are added to it (Routing/RoutedLayers.swift).
    public var routingTrace: RoutingTrace?
    /// Per-token routing of the last row fed (see `TokenRouting`), when set.
    public var tokenRouting: TokenRouting?
    /// When set, called with (linear id, input (rows, in), rows) before every linear: how the
    /// training-free and supervised gates see each projection's inputs.
    public var linearInputObserver: ((Int, UnsafePointer<Float>, Int) -> Void)?

    /// The adapters this sequence runs with (`AdapterSet.none`: the base model).
    public private(set) var adapters: AdapterSet

    let cache: KVCache          // per layer (positions, Hkv·d) keys and values
    let rope: RopeTable         // (maxTokens, d/2)
    let x = FloatBuffer(1), h = FloatBuffer(1), q = FloatBuffer(1), att = FloatBuffer(1)
    let attnOut = FloatBuffer(1), gate = FloatBuffer(1), up = FloatBuffer(1), loraTmp = FloatBuffer(1)
    let mixTmp = FloatBuffer(1)        // MixLoRA's routing and per-expert rows (MixtureFFN.swift)
    let mixIndex = ByteBuffer(), mixWeights = FloatBuffer(1)   // MixLoRA's top-k choices and rows by expert
    // Quantized weights: a dequantized tile (prompts), the quantized activations and a partial
    // result (decoding).
    let qTile = FloatBuffer(1), qPartial = FloatBuffer(1)
    // Batched decoding (BatchedDecode.swift): the step's new k and v rows.
    let kvRows = FloatBuffer(1)
    // A paged cache's keys and values of one layer, contiguous, for a prompt chunk's attention GEMMs.
    let gathered = FloatBuffer(1)
    let qScratch = ByteBuffer()
    // Routed adapters: stacked down-projections, gate weights and per-expert products.
    let routeTmp = FloatBuffer(1)
    // X-LoRA (Routing/XLoRA.swift): the base session its first pass runs in, and the scalings
    // (T, L·N) of the rows being fed.
    var xloraShadow: LlamaSession?
    let xloraScalings = FloatBuffer(1)

    init(model: LlamaModel, maxTokens: Int, adapters: AdapterSet, pool: KVBlockPool? = nil) throws {
        let c = model.config
        guard maxTokens > 0 else { throw ModelError.contextFull(maxTokens: maxTokens, requested: 0) }
        guard adapters.sequence == nil else { throw LoRARuntimeError.unresolvedSequenceRouter }
        precondition(adapters.modelID == nil || adapters.modelID == ObjectIdentifier(model),
                     "an AdapterSet is prepared for one model; prepare it again for this one")
        self.model = model
        self.maxTokens = maxTokens
        self.adapters = adapters
        if let pool {
            precondition(pool.layers == c.numHiddenLayers && pool.kvWidth == c.numKeyValueHeads * c.headDim,
                         "a key/value pool is made for one model's shape")
            cache = KVCache(pool: pool)
        } else {
            cache = KVCache(config: c, maxTokens: maxTokens)
        }
        rope = RopeTable(config: c, positions: maxTokens)
    }

    /// Starts a new sequence with other adapters, keeping the allocated cache (the cached keys
    /// and values of the old adapters would be wrong for the new ones).
    public func reset(adapters: AdapterSet) {
        precondition(adapters.modelID == nil || adapters.modelID == ObjectIdentifier(model),
                     "an AdapterSet is prepared for one model; prepare it again for this one")
        precondition(adapters.sequence == nil, LoRARuntimeError.unresolvedSequenceRouter.description)
        self.adapters = adapters
        position = 0
    }

    public func reset() { position = 0 }

    /// Whether the keys and values live in blocks of a pool (a server's session).
    public var isPaged: Bool { cache.isPaged }
    /// Blocks this session holds (1 for a private cache).
    public var kvBlocks: Int { cache.blocks.count }

    /// Makes sure the cache can hold `positions` positions (and an X-LoRA session's first-pass
    /// cache with it), taking blocks from the pool; throws `KVCacheError.outOfMemory`, keeping the
    /// blocks it got, when the pool's memory refuses one. A feed does this itself; a scheduler
    /// calls it first to know who fits before a batched step.
    public func reserveCapacity(_ positions: Int) throws {
        let n = min(positions, maxTokens)
        try cache.reserve(n)
        if cache.isPaged, adapters.routed?.xlora != nil { try xloraShadowSession().cache.reserve(n) }
    }

    /// Gives back the blocks past `position` (after a `truncate`).
    public func releaseUnusedBlocks() { cache.shrink(to: position) }

    /// Starts this fresh session at position `count` with the keys and values of `other`'s first
    /// `count` positions: a prompt prefix both sessions share, with the same adapters, read once.
    /// The caller vouches for the tokens; X-LoRA sessions (a second cache) are refused.
    public func adoptPrefix(of other: LlamaSession, count: Int) throws {
        precondition(position == 0 && other !== self && other.model === model, "adoptPrefix needs a fresh session of the same model")
        precondition(adapters.identity === other.adapters.identity, "adoptPrefix needs the same adapter set")
        precondition(adapters.routed?.xlora == nil, "an X-LoRA session has a second cache")
        precondition(count > 0 && count <= other.position && count <= maxTokens)
        try cache.reserve(count)
        cache.copyPrefix(from: other.cache, count: count, scratch: gathered.reserve(2 * count * cache.kvWidth))
        position = count
    }

    /// Moves the position back; the cache rows past it are simply overwritten by later feeds
    /// (attention only ever reads rows below the current position).
    public func truncate(to newPosition: Int) {
        precondition(newPosition >= 0 && newPosition <= position,
                     "truncate(to: \(newPosition)) outside 0...\(position)")
        position = newPosition
    }

    public func feed(_ tokens: [Int]) throws -> Matrix {
        try feed(tokens, lastOnly: false)
    }

    /// As `feed`, returning only the last position's logits (1, V) when `lastOnly`: a prompt then
    /// skips the (T, C)·(C, V) head GEMM for all but one row.
    public func feed(_ tokens: [Int], lastOnly: Bool) throws -> Matrix {
        try feed(tokens, logitsFrom: lastOnly ? max(tokens.count - 1, 0) : 0)
    }

    /// As `feed`, computing the head only for rows `first..<T`: logits (T − first, V).
    public func feed(_ tokens: [Int], logitsFrom first: Int) throws -> Matrix {
        let T = tokens.count
        precondition(first >= 0 && (first < T || T == 0 && first == 0), "logitsFrom \(first) outside 0..<\(T)")
        if T == 0 { return Matrix(rows: 0, cols: model.vocabSize) }
        guard position + T <= maxTokens else {
            throw ModelError.contextFull(maxTokens: maxTokens, requested: position + T)
        }
        for t in tokens where t < 0 || t >= model.vocabSize {
            throw ModelError.tokenOutOfRange(token: t, vocabSize: model.vocabSize)
        }
        try reserveCapacity(position + T)
        if let xl = adapters.routed?.xlora { try prepareXLoRA(xl, tokens: tokens) }
        var out = Matrix(rows: T - first, cols: model.vocabSize)
        out.data.withUnsafeMutableBufferPointer { o in
            forward(tokens, logits: o.baseAddress!, first: first)
        }
        position += T
        return out
    }

    /// Runs `tokens` (checked by the caller) and returns the last hidden states after the final
    /// norm, (T, C), valid until the next feed; no logits are computed.
    func finalHiddenStates(_ tokens: [Int]) -> UnsafePointer<Float> {
        precondition(adapters.routed?.xlora == nil, "the hidden states of an X-LoRA session need its own first pass")
        forward(tokens, logits: nil, first: 0)
        position += tokens.count
        return UnsafePointer(h.pointer)
    }

    // MARK: Forward

    private func forward(_ tokens: [Int], logits: UnsafeMutablePointer<Float>?, first: Int) {
        let c = model.config
        let T = tokens.count, C = c.hiddenSize, L = c.numHiddenLayers
        let H = c.numAttentionHeads, Hkv = c.numKeyValueHeads, d = c.headDim, F = c.intermediateSize
        let p0 = position
        let x = self.x.reserve(T * C), h = self.h.reserve(T * C)
        let q = self.q.reserve(T * H * d), attnOut = self.attnOut.reserve(T * H * d)
        let gate = self.gate.reserve(T * F), up = self.up.reserve(T * F)
        _ = loraTmp.reserve(T * max(adapters.maxRank, 1))
        let rec = activations?.finalOnly == true ? nil : activations

        embed(tokens, into: x)                                          // (T, C)
        for l in 0..<L {
            if let rec { rec.save(l, "x", x, T * C) }
            rmsNorm(x, weight: model.base.attnNorms[l], eps: c.rmsNormEps, rows: T, cols: C, into: h)  // (T, C)
            let kv = Hkv * d
            // Straight into the cache when the rows lie in one block; else via scratch, written after RoPE.
            let direct = cache.rowsIfContiguous(l, from: p0, rows: T)
            let scratch = direct == nil ? kvRows.reserve(2 * T * kv) : nil
            let kRows = direct?.k ?? scratch!, vRows = direct?.v ?? scratch! + T * kv
            linearGroup(h, rows: T, [LinearTarget(id: LlamaWeights.linearID(layer: l, .q), out: q, ld: H * d),   // (T, H·d)
                                     LinearTarget(id: LlamaWeights.linearID(layer: l, .k), out: kRows, ld: kv),  // (T, Hkv·d) → cache
                                     LinearTarget(id: LlamaWeights.linearID(layer: l, .v), out: vRows, ld: kv)]) // (T, Hkv·d) → cache
            applyRope(q, rows: T, heads: H, start: p0)
            applyRope(kRows, rows: T, heads: Hkv, start: p0)
            if direct == nil { cache.write(l, from: p0, rows: T, k: kRows, v: vRows) }
            if let rec { rec.save(l, "h_attn", h, T * C); rec.save(l, "q", q, T * H * d) }
            attention(q: q, layer: l, rows: T, start: p0, into: attnOut)                        // (T, H·d)
            if let rec { rec.save(l, "attn_out", attnOut, T * H * d) }
            linear(attnOut, rows: T, id: LlamaWeights.linearID(layer: l, .o), into: x, ld: C, accumulate: true)  // x += (T, C)

            rmsNorm(x, weight: model.base.ffnNorms[l], eps: c.rmsNormEps, rows: T, cols: C, into: h)   // (T, C)
            linearGroup(h, rows: T, [LinearTarget(id: LlamaWeights.linearID(layer: l, .gate), out: gate, ld: F),  // (T, F)
                                     LinearTarget(id: LlamaWeights.linearID(layer: l, .up), out: up, ld: F)])     // (T, F)
            if let rec { rec.save(l, "h_ffn", h, T * C); rec.save(l, "gate", gate, T * F); rec.save(l, "up", up, T * F) }
            if let mix = adapters.mixtures[l] {
                mixtureFFN(mix, layer: l, h: h, gateBase: gate, upBase: up, rows: T, into: x, downBias: true)  // x += (T, C)
                continue
            }
            swiglu(gate, up, count: T * F)                                                          // gate ← silu(gate)·up
            linear(gate, rows: T, id: LlamaWeights.linearID(layer: l, .down), into: x, ld: C, accumulate: true) // x += (T, C)
        }
        let n = T - first
        rmsNorm(x + first * C, weight: model.base.finalNorm, eps: c.rmsNormEps, rows: n, cols: C, into: h)  // (n, C)
        if let all = activations { all.save(L, "h_final", h, n * C) }
        guard let logits else { return }
        linear(h, rows: n, id: LlamaWeights.lmHeadID(layers: L), into: logits, ld: c.vocabSize)   // (n, V)
    }

    /// x[t] = E[token_t] (+ Σ coef · B · A[:, token_t] for embedding LoRA).
    func embed(_ tokens: [Int], into x: UnsafeMutablePointer<Float>) {
        let C = model.config.hiddenSize, V = model.config.vocabSize
        if let merged = adapters.mergedEmbed {
            merged.withUnsafeBufferPointer { e in
                for (t, tok) in tokens.enumerated() { (x + t * C).update(from: e.baseAddress! + tok * C, count: C) }
            }
        } else {
            for (t, tok) in tokens.enumerated() { model.base.embedRow(tok, into: x + t * C, width: C) }
        }
        guard !adapters.embedFactors.isEmpty else { return }
        let col = loraTmp.reserve(max(adapters.maxRank, 1))
        for f in adapters.embedFactors {
            f.A.withUnsafeBufferPointer { a in
                f.B.withUnsafeBufferPointer { b in
                    for (t, tok) in tokens.enumerated() {
                        for j in 0..<f.rank { col[j] = a[j * V + tok] }                 // A[:, tok] (r)
                        // (1, C) += coef · (1, r) · Bᵀ (r, C)
                        BLAS.gemm(transA: false, transB: true, m: 1, n: C, k: f.rank, alpha: f.coef,
                                  a: col, lda: f.rank, b: b.baseAddress!, ldb: f.rank, beta: 1, c: x + t * C, ldc: C)
                    }
                }
            }
        }
    }

    /// out (rows, out) = x (rows, in) · Wᵀ + b, or out += … when `accumulate`; then the unmerged
    /// LoRA terms out += coef · (x Aᵀ) Bᵀ, two skinny GEMMs per adapter.
    func linear(_ x: UnsafePointer<Float>, rows: Int, id: Int, into out: UnsafeMutablePointer<Float>,
                ld: Int, accumulate: Bool = false) {
        linearInputObserver?(id, x, rows)
        baseLinear(x, rows: rows, id: id, merged: adapters.mergedLinear[id], into: out, ld: ld, accumulate: accumulate)
        adapterTerms(x, rows: rows, id: id, into: out, ld: ld)
    }

    /// The unmerged LoRA and routed terms of linear `id`, added to `out`.
    private func adapterTerms(_ x: UnsafePointer<Float>, rows: Int, id: Int, into out: UnsafeMutablePointer<Float>, ld: Int) {
        if let factors = adapters.linearFactors[id] { applyLoRA(factors, x, rows: rows, id: id, into: out, ld: ld) }
        if let routed = adapters.routed, let r = routed.linears[id] {
            let w = applyRouted(r, id: id, policy: routed.policy, x, rows: rows, into: out, ld: ld, firstPosition: position)
            if rows > 0, let rec = tokenRouting { rec.add(w + (rows - 1) * r.experts) }
        }
    }

    /// One output of `linearGroup`: linear `id` written to `out` (rows, ·) with leading dimension `ld`.
    struct LinearTarget {
        let id: Int
        let out: UnsafeMutablePointer<Float>
        let ld: Int
    }

    /// `linear` (no accumulate) of the same input for several linears (q, k, v; gate, up), with
    /// their base products grouped when `groupedBaseProducts` can; same values either way.
    func linearGroup(_ x: UnsafePointer<Float>, rows: Int, _ targets: [LinearTarget]) {
        guard groupedBaseProducts(x, rows: rows, targets, merged: adapters.mergedLinear) else {
            for t in targets { linear(x, rows: rows, id: t.id, into: t.out, ld: t.ld) }
            return
        }
        for t in targets {
            linearInputObserver?(t.id, x, rows)   // it reads x only: after the base products is as good
            adapterTerms(x, rows: rows, id: t.id, into: t.out, ld: t.ld)
        }
    }

    /// The base products (bias included, written, not added) of several linears of one input as
    /// one job on one quantization of x (`QuantizedLinear.matmulGroup`), when their weights are
    /// quantized in one type, none is replaced by a merged copy, and the rows are few (decoding):
    /// per step one quantization and one pair of thread synchronisations instead of one per
    /// linear. False (nothing written) otherwise.
    func groupedBaseProducts(_ x: UnsafePointer<Float>, rows: Int, _ targets: [LinearTarget], merged: [Int: [Float]]) -> Bool {
        let lws = targets.map { model.base.linears[$0.id] }
        guard rows <= kernelRowLimit, targets.count > 1, let first = lws[0].quantized,
              QuantizedLinear.hasKernel(first.type),
              targets.allSatisfy({ merged[$0.id] == nil }),
              lws.allSatisfy({ $0.quantized?.type == first.type && $0.inFeatures == first.cols }) else { return false }
        QuantizedLinear.matmulGroup(lws.map { $0.quantized! }, x: x, rows: rows, outs: targets.map(\.out),
                                    lds: targets.map(\.ld), activations: qScratch)
        for (t, lw) in zip(targets, lws) {
            guard let bias = lw.bias else { continue }
            bias.withUnsafeBufferPointer { b in
                for r in 0..<rows { let o = t.out + r * t.ld; for j in 0..<lw.outFeatures { o[j] += b[j] } }
            }
        }
        return true
    }

    /// out (rows, out) = x · Wᵀ + b (or += when `accumulate`) with the base weight, or `merged`
    /// (the base plus merged adapters) when given.
    func baseLinear(_ x: UnsafePointer<Float>, rows: Int, id: Int, merged: [Float]?, into out: UnsafeMutablePointer<Float>,
                    ld: Int, accumulate: Bool) {
        let lw = model.base.linears[id]
        let nOut = lw.outFeatures, nIn = lw.inFeatures
        var beta: Float = accumulate ? 1 : 0
        if let bias = lw.bias {
            bias.withUnsafeBufferPointer { b in
                for t in 0..<rows {
                    let o = out + t * ld
                    if accumulate { for j in 0..<nOut { o[j] += b[j] } } else { o.update(from: b.baseAddress!, count: nOut) }
                }
            }
            beta = 1
        }
        if merged == nil, let qw = lw.quantized {
            quantizedLinear(x, rows: rows, qw, into: out, ld: ld, beta: beta)
        } else {
            denseLinear(x, rows: rows, merged ?? lw.weight, nOut: nOut, nIn: nIn, into: out, ld: ld, beta: beta)
        }
    }

    /// out (rows, out) += Σ coef · (x Aᵀ) Bᵀ over `factors` (unmerged LoRA on linear `id`).
    func applyLoRA(_ factors: [LoRAFactors], _ x: UnsafePointer<Float>, rows: Int, id: Int,
                   into out: UnsafeMutablePointer<Float>, ld: Int) {
        let lw = model.base.linears[id]
        let nOut = lw.outFeatures, nIn = lw.inFeatures
        let tmp = loraTmp.reserve(rows * max(factors.map(\.rank).max() ?? 1, 1))
        for f in factors {
            f.A.withUnsafeBufferPointer { a in
                // (rows, r) = x · Aᵀ
                BLAS.gemm(transA: false, transB: true, m: rows, n: f.rank, k: nIn, alpha: 1,
                          a: x, lda: nIn, b: a.baseAddress!, ldb: nIn, beta: 0, c: tmp, ldc: f.rank)
            }
            f.gate?.select(tmp, x: x, rows: rows)                                         // FlyLoRA: top-k ranks per row
            f.B.withUnsafeBufferPointer { b in
                // (rows, out) += coef · tmp · Bᵀ
                BLAS.gemm(transA: false, transB: true, m: rows, n: nOut, k: f.rank, alpha: f.coef,
                          a: tmp, lda: f.rank, b: b.baseAddress!, ldb: f.rank, beta: 1, c: out, ldc: ld)
            }
        }
    }

    /// out (rows, nOut) = x · Wᵀ + beta · out for a Float32 W (nOut, nIn).
    func denseLinear(_ x: UnsafePointer<Float>, rows: Int, _ weight: [Float], nOut: Int, nIn: Int,
                             into out: UnsafeMutablePointer<Float>, ld: Int, beta: Float) {
        weight.withUnsafeBufferPointer { w in
            if rows == 1 {
                // Decoding: y (out) = W (out, in) · x (in) as a GEMV (sgemm would pack all of W).
                BLAS.gemv(transA: false, m: nOut, n: nIn, alpha: 1, a: w.baseAddress!, lda: nIn,
                          x: x, beta: beta, y: out)
            } else {
                BLAS.gemm(transA: false, transB: true, m: rows, n: nOut, k: nIn, alpha: 1,
                          a: x, lda: nIn, b: w.baseAddress!, ldb: nIn, beta: beta, c: out, ldc: ld)
            }
        }
    }

    /// Rows up to which the quantized kernels run: every row count on the `kernels` prompt path,
    /// except while every layer's activations are recorded for a backward pass (which
    /// differentiates the dequantized model that `sgemm` computes).
    var kernelRowLimit: Int {
        model.promptPath == .kernels && activations?.finalOnly != false ? .max : QuantizedLinear.kernelRowLimit
    }

    /// out (rows, nOut) = x · Wᵀ + beta · out for a W kept in its quantized type. Few rows
    /// (decoding, batched decoding): the quantized kernels read each stored block once for all
    /// rows. Many rows (prompts): tiles of W are dequantized into a reused Float32 buffer and
    /// multiplied with sgemm, which is faster once the dequantization is shared by enough rows.
    func quantizedLinear(_ x: UnsafePointer<Float>, rows: Int, _ w: QuantizedMatrix,
                                 into out: UnsafeMutablePointer<Float>, ld: Int, beta: Float) {
        let nOut = w.rows, nIn = w.cols
        if rows <= kernelRowLimit && QuantizedLinear.hasKernel(w.type) {
            QuantizedLinear.matmul(w, x: x, rows: rows, into: out, ld: ld, beta: beta,
                                   activations: qScratch, partial: qPartial)
            return
        }
        // ~4 MB tiles of whole rows: large enough for sgemm to run at speed, small enough to stay in L2/L3.
        let tileRows = max(16, min(nOut, (1 << 20) / max(nIn, 1)))
        let tile = qTile.reserve(tileRows * nIn)
        var r0 = 0
        while r0 < nOut {
            let r1 = min(nOut, r0 + tileRows)
            let dst = UnsafeSendableBuffer(base: tile)
            Parallel.forRanges(count: r1 - r0, workers: Parallel.computeThreads, granule: 8) { r in
                w.dequantizeRows((r0 + r.lowerBound)..<(r0 + r.upperBound), into: dst.base + r.lowerBound * nIn)
            }
            // out[:, r0..<r1] (rows, r1−r0) = x (rows, nIn) · tileᵀ
            BLAS.gemm(transA: false, transB: true, m: rows, n: r1 - r0, k: nIn, alpha: 1,
                      a: x, lda: nIn, b: tile, ldb: nIn, beta: beta, c: out + r0, ldc: ld)
            r0 = r1
        }
    }

    /// HF LlamaRMSNorm: x / sqrt(mean(x²) + ε) · g, accumulated in Float.
    func rmsNorm(_ x: UnsafePointer<Float>, weight: [Float], eps: Float, rows: Int, cols: Int,
                         into out: UnsafeMutablePointer<Float>) {
        weight.withUnsafeBufferPointer { g in
            VectorKernels.rmsNorm(x, g: g.baseAddress!, eps: eps, rows: rows, cols: cols, out: out)
        }
    }

    /// HF rotate_half RoPE on `heads` heads of each row: for i < d/2,
    /// (a, b) = (v[i], v[i + d/2]) → (a cos − b sin, b cos + a sin), angle = pos · θ^(−2i/d).
    func applyRope(_ v: UnsafeMutablePointer<Float>, rows: Int, heads: Int, start: Int) {
        VectorKernels.rope(v, rows: rows, heads: heads, headDim: model.config.headDim, start: start,
                           cos: rope.cos, sin: rope.sin)
    }

    /// Causal grouped-query attention of `rows` new queries (positions start..<start+rows) against
    /// the cached keys/values. Per head and per block of queries [b0, b1): scores (nb, S_b) =
    /// q_h K_hᵀ / √d as one GEMM over the keys 0..<start+b1 (blocks skip most of the masked upper
    /// triangle of a long prompt), masked softmax row by row, then out_h (nb, d) = P V_h.
    /// The (head, block) items are independent (each writes its own columns of `out` and has its
    /// own probabilities scratch), so a prompt spreads them over the compute threads.
    func attention(q: UnsafeMutablePointer<Float>, layer: Int, rows T: Int, start p0: Int,
                           into out: UnsafeMutablePointer<Float>) {
        let c = model.config
        let H = c.numAttentionHeads, Hkv = c.numKeyValueHeads, d = c.headDim
        let group = H / Hkv, kvw = Hkv * d
        let scale = 1 / Float(d).squareRoot()
        let K: UnsafeMutablePointer<Float>, Vc: UnsafeMutablePointer<Float>
        if cache.isPaged {
            // The GEMMs below want each head's keys as one strided matrix; a copy of S rows costs
            // far less than the products over them.
            let S = p0 + T, g = gathered.reserve(2 * S * kvw)
            cache.gather(layer, count: S, k: g, v: g + S * kvw)
            K = g; Vc = g + S * kvw
        } else {
            K = cache.keys(layer, block: 0); Vc = cache.values(layer, block: 0)
        }
        let rec = activations?.finalOnly == true ? nil : activations
        let block = rec == nil ? 128 : T      // one block when recording, so probs are one (T, S) matrix
        let nBlocks = (T + block - 1) / block
        // Threads pay off once a layer's attention is more than ~15 µs of work (the compute pool
        // hands out a job in about a microsecond).
        let workers = rec == nil && H * T * (p0 + T) * d >= 1 << 16 ? Parallel.computeThreads : 1
        let scratch = att.reserve(min(workers, H * nBlocks) * min(block, T) * (p0 + T))
        // Largest blocks (most keys) first, so the last items handed out are the short ones.
        Parallel.forEach(count: H * nBlocks, workers: workers) { item, worker in
                let hh = item % H, kvh = hh / group
                let b0 = (nBlocks - 1 - item / H) * block
                let b1 = min(b0 + block, T), nb = b1 - b0, S = p0 + b1
                let probs = scratch + worker * min(block, T) * (p0 + T)
                let qh = q + b0 * H * d + hh * d, oh = out + b0 * H * d + hh * d
                if nb == 1 {
                    Self.oneQueryProbabilities(qh, keys: K + kvh * d, ld: kvw, S: S, d: d, scale: scale, into: probs)
                } else {
                    BLAS.gemm(transA: false, transB: true, m: nb, n: S, k: d, alpha: scale,
                              a: qh, lda: H * d, b: K + kvh * d, ldb: kvw, beta: 0, c: probs, ldc: S)   // (nb, S)
                    for t in 0..<nb {                                  // causal: keys 0...p0+b0+t
                        VectorKernels.softmaxRow(probs + t * S, valid: p0 + b0 + t + 1, count: S)
                    }
                }
                if let rec { rec.save(layer, "probs\(hh)", probs, nb * S) }
                if nb == 1 {
                    Self.oneQueryOutput(probs, values: Vc + kvh * d, ld: kvw, S: S, d: d, into: oh)
                } else {
                    BLAS.gemm(transA: false, transB: false, m: nb, n: d, k: S, alpha: 1,
                              a: probs, lda: S, b: Vc + kvh * d, ldb: kvw, beta: 0, c: oh, ldc: H * d)  // (nb, d)
                }
        }
    }

    // One query (decoding) in plain loops, not BLAS GEMVs: OpenBLAS threads a GEMV once the cache
    // passes ~144 positions, and its threads then spin (sched_yield) against the compute pool's;
    // limiting it with openblas_set_num_threads around every layer is a process-wide setting that
    // another thread's running BLAS call would see change under it.

    /// p (S) = softmax(K_h (S, d) · q_h (d) / √d) over the S cached keys (`ld` apart; the query is
    /// the newest position, so none is masked): the block kernel below over one block.
    static func oneQueryProbabilities(_ q: UnsafePointer<Float>, keys: UnsafePointer<Float>, ld: Int, S: Int, d: Int,
                                      scale: Float, into probs: UnsafeMutablePointer<Float>) {
        var block = UnsafeMutablePointer(mutating: keys)
        withUnsafePointer(to: &block) {
            oneQueryProbabilities(q, blocks: $0, blockTokens: max(S, 1), offset: 0, ld: ld, S: S, d: d, scale: scale, into: probs)
        }
    }

    /// out_h (d) = V_hᵀ (d, S) · p (S): the block kernel below over one block.
    static func oneQueryOutput(_ probs: UnsafePointer<Float>, values: UnsafePointer<Float>, ld: Int, S: Int, d: Int,
                               into out: UnsafeMutablePointer<Float>) {
        var block = UnsafeMutablePointer(mutating: values)
        withUnsafePointer(to: &block) {
            oneQueryOutput(probs, blocks: $0, blockTokens: max(S, 1), offset: 0, ld: ld, S: S, d: d, into: out)
        }
    }

    /// `oneQueryProbabilities` over keys in blocks (a paged cache; `blocks[j] + offset` holds
    /// positions j·blockTokens ..< (j+1)·blockTokens).
    static func oneQueryProbabilities(_ q: UnsafePointer<Float>, blocks: UnsafePointer<UnsafeMutablePointer<Float>>, blockTokens: Int,
                                      offset: Int, ld: Int, S: Int, d: Int, scale: Float, into probs: UnsafeMutablePointer<Float>) {
        var s0 = 0, b = 0
        while s0 < S {
            let n = min(S - s0, blockTokens), keys = blocks[b] + offset
            for s in 0..<n { probs[s0 + s] = scale * VectorKernels.dot(keys + s * ld, q, count: d) }
            s0 += n
            b += 1
        }
        VectorKernels.softmaxRow(probs, valid: S, count: S)
    }

    /// out_h (d) = V_hᵀ · p over values in blocks, summed in position order (so a paged session's
    /// values equal a contiguous one's to the bit). 16 columns at a time in registers (head dims
    /// are multiples of 16 in practice): a plain `out[j] += …` loop is not vectorised, the compiler
    /// cannot rule out out aliasing values.
    static func oneQueryOutput(_ probs: UnsafePointer<Float>, blocks: UnsafePointer<UnsafeMutablePointer<Float>>, blockTokens: Int,
                               offset: Int, ld: Int, S: Int, d: Int, into out: UnsafeMutablePointer<Float>) {
        var j0 = 0
        while j0 + 16 <= d {
            var acc = SIMD16<Float>(repeating: 0)
            var s0 = 0, b = 0
            while s0 < S {
                let n = min(S - s0, blockTokens), values = blocks[b] + offset
                for s in 0..<n {
                    let v = UnsafeRawPointer(values + s * ld + j0).loadUnaligned(as: SIMD16<Float>.self)
                    acc += probs[s0 + s] * v
                }
                s0 += n
                b += 1
            }
            UnsafeMutableRawPointer(out + j0).storeBytes(of: acc, as: SIMD16<Float>.self)
            j0 += 16
        }
        for j in j0..<d {
            var acc: Float = 0
            for s in 0..<S { acc += probs[s] * (blocks[s / blockTokens] + offset)[(s % blockTokens) * ld + j] }
            out[j] = acc
        }
    }

    /// gate ← silu(gate) ⊙ up, silu(g) = g / (1 + e^(−g)).
    func swiglu(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, count: Int) {
        let workers = count >= 1 << 16 ? Parallel.computeThreads : 1
        Parallel.forRanges(count: count, workers: workers, granule: 64) { r in
            VectorKernels.swiglu(gate: gate + r.lowerBound, up: up + r.lowerBound, out: gate + r.lowerBound, count: r.count)
        }
    }
}
