import Foundation

// Training forward + backward of the Llama decoder for LoRA with the base frozen (llm.c style:
// each operation a forward/backward pair, shapes in comments). A batch of sequences is packed
// into one (N, C) matrix, N = Σ T_i, so every linear is a single GEMM over all tokens; RoPE
// positions restart and attention stays causal within each sequence.
//
// Loss: Σ over answer positions of −log softmax(logits_t)[target_t] (positions whose target is
// −1 carry no loss); gradients are of `gradScale · Σ nll`, so gradScale = 1/N_answer gives the
// mean. Only answer rows go through lm_head (the other rows' logits do not matter).
//
// Gradients of the frozen weights are never formed: through y = x Wᵀ only dX = dY W (one GEMM).
// LoRA y += s·(x_d Aᵀ) Bᵀ with u = x_d Aᵀ (x_d = dropout(x)):
//   dB = s·dYᵀ u          (out, r)
//   g  = dY B             (N, r)
//   dA = s·gᵀ x_d         (r, in)
//   dx += s·(g A) ⊙ mask/(1−p)

/// One training example: inputs and, per position, the token it must predict (−1: no loss).
public struct TrainingSequence: Sendable, Equatable {
    public var tokens: [Int]      // (T)
    public var targets: [Int]     // (T)
    /// LoRAMoE's example type: world knowledge (true) or a downstream task (false, the default).
    /// Only its localized balancing constraint reads it.
    public var knowledge = false

    public init(tokens: [Int], targets: [Int]) {
        precondition(tokens.count == targets.count, "tokens and targets must have the same length")
        self.tokens = tokens
        self.targets = targets
    }

    /// Prompt P then answer A (A already ends with the end-of-turn token), as `Evaluator` scores it:
    /// inputs P ++ A[0..<|A|−1]; position |P|−1+j predicts A[j].
    public init(prompt: [Int], answer: [Int]) {
        precondition(!prompt.isEmpty && !answer.isEmpty, "prompt and answer must not be empty")
        tokens = prompt + answer.dropLast()
        targets = [Int](repeating: -1, count: prompt.count - 1) + answer
    }

    /// Number of positions that carry loss.
    public var lossTokens: Int { targets.reduce(0) { $0 + ($1 >= 0 ? 1 : 0) } }
}

/// Zeroed Float scratch that does not move.
final class TrainBuffer {
    let p: UnsafeMutablePointer<Float>
    let count: Int
    init(_ n: Int) {
        count = max(n, 1)
        p = .allocate(capacity: count)
        p.initialize(repeating: 0, count: count)
    }
    deinit { p.deallocate() }
}

/// Forward and backward passes of a `LlamaModel` with trainable LoRA on its projections.
/// Uses the model's base weights; the LoRA being trained is the only adapter.
public final class LlamaTrainingEngine {
    public let model: LlamaModel
    let c: LlamaConfig
    private var ropeTable: RopeTable?
    /// Float32 copies of quantized base weights, made the first time a step needs each one and
    /// keyed by the stored matrix, so a tied head and the embedding share one copy: a quantized
    /// model trains at the speed of a Float32 one, holding Float32 weights only while this engine
    /// lives (inference sessions keep reading the stored blocks).
    private var dequantized: [ObjectIdentifier: [Float]] = [:]

    private func floats(_ q: QuantizedMatrix) -> [Float] {
        if let w = dequantized[ObjectIdentifier(q)] { return w }
        let w = q.dequantized()
        dequantized[ObjectIdentifier(q)] = w
        return w
    }

    /// W (out, in) of linear `id` as Float32.
    func floatWeight(_ id: Int) -> [Float] {
        let lw = model.base.linears[id]
        return lw.quantized.map(floats) ?? lw.weight
    }

    private func embedTable() -> [Float] {
        model.base.embedQuantized.map(floats) ?? model.base.embed
    }

    public init(model: LlamaModel) {
        self.model = model
        self.c = model.config
    }

    /// The same `RopeTable` the inference session uses, grown to `n` positions when needed.
    private func ensureRope(_ n: Int) {
        if let t = ropeTable, t.positions >= n { return }
        ropeTable = RopeTable(config: c, positions: n)
    }

    /// What the backward pass reads of one layer (rows = all packed tokens N).
    final class LayerTape {
        let xIn, hAttn, q, k, v, attnOut, xMid, hFfn, gate, up, act: TrainBuffer
        var invAttn: [Float], invFfn: [Float]
        var probs: [TrainBuffer] = []            // per sequence: (H, T, T)
        var loraX: [Int: TrainBuffer] = [:]      // module index → dropped input x_d (N, in), only with dropout
        var loraMask: [Int: TrainBuffer] = [:]   // module index → keep/(1−p) (N, in)
        var loraU: [Int: TrainBuffer] = [:]      // module index → u = x_d Aᵀ (N, r), unkept ranks zeroed (FlyLoRA)
        var loraKeep: [Int: TrainBuffer] = [:]   // module index → each rank's gate weight, 0 if unkept (N, r): FlyLoRA, SMoRA
        var loraURaw: [Int: TrainBuffer] = [:]   // module index → u before the gate (N, r), routers only
        var rankCounts: [Int: [Int]] = [:]       // module index → tokens that kept each expert (experts)
        var balanceGrad: [Int: TrainBuffer] = [:] // module index → ∂(balance loss)/∂(gate weight) (N, experts), LoRAMoE
        var mixLogits: TrainBuffer?              // MixLoRA: router logits (N, E), softmax (N, E),
        var mixProbs: TrainBuffer?               //   kept experts (N, k) and their weights (N, k)
        var mixChosen: [Int] = []
        var mixWeights: TrainBuffer?
        /// Rows the buffers hold.
        let capacity: Int
        init(N: Int, c: LlamaConfig) {
            capacity = N
            let C = c.hiddenSize, Hd = c.numAttentionHeads * c.headDim, kv = c.numKeyValueHeads * c.headDim
            let F = c.intermediateSize
            xIn = TrainBuffer(N * C); hAttn = TrainBuffer(N * C); q = TrainBuffer(N * Hd)
            k = TrainBuffer(N * kv); v = TrainBuffer(N * kv); attnOut = TrainBuffer(N * Hd)
            xMid = TrainBuffer(N * C); hFfn = TrainBuffer(N * C)
            gate = TrainBuffer(N * F); up = TrainBuffer(N * F); act = TrainBuffer(N * F)
            invAttn = [Float](repeating: 0, count: N); invFfn = invAttn
        }

        /// Readies a tape for another batch of N ≤ capacity rows. The row buffers are fully
        /// written by the forward pass before they are read; what depends on the batch or the
        /// dropout (probabilities, LoRA inputs and masks) is dropped.
        func reuse(N: Int) {
            precondition(N <= capacity)
            probs = []; loraX = [:]; loraMask = [:]; loraU = [:]; loraKeep = [:]; loraURaw = [:]; rankCounts = [:]; balanceGrad = [:]
            mixLogits = nil; mixProbs = nil; mixChosen = []; mixWeights = nil
            if invAttn.count != N { invAttn = [Float](repeating: 0, count: N); invFfn = invAttn }
        }
    }

    /// Layer tapes kept between calls: a SmolLM2 step's are ~400 MB, and allocating them afresh
    /// every step cost page faults and zeroing (~7 % of a step in profiles).
    private var tapeCache: [LayerTape] = []
    /// MixLoRA's per-expert buffers, kept between calls for the same reason.
    var mixtureScratchCache: MixtureScratch?

    private func layerTape(_ l: Int, rows N: Int) -> LayerTape {
        if l < tapeCache.count && tapeCache[l].capacity >= N {
            tapeCache[l].reuse(N: N)
            return tapeCache[l]
        }
        let t = LayerTape(N: N, c: c)
        if l < tapeCache.count { tapeCache[l] = t } else { tapeCache.append(t) }
        return t
    }

    /// State of one packed batch between forward and backward.
    final class Tape {
        var layers: [LayerTape] = []
        var xFinal: TrainBuffer
        var invFinal: [Float]
        var hSel: TrainBuffer          // (n, C) final-normed rows of the answer positions
        var rowsSel: [Int] = []        // their packed row indices
        var targetsSel: [Int] = []
        var segments: [(start: Int, length: Int)] = []
        /// MixLoRA: ∂aux/∂p_e per row (E; empty: no aux loss), the z-loss factor, and the
        /// (row, slot) choices of each expert over all its layers.
        var mixAuxDP: [Float] = []
        var mixZ: Float = 0
        var mixCounts: [Int] = []
        init(N: Int, C: Int) { xFinal = TrainBuffer(N * C); invFinal = [Float](repeating: 0, count: N); hSel = TrainBuffer(1) }
    }

    /// Dropout on the LoRA branch's input: p and the generator drawing the keep masks.
    public struct Dropout {
        public var p: Float
        public var rng: SeededRNG
        public init(p: Float, rng: SeededRNG) { self.p = p; self.rng = rng }
    }

    // MARK: Public entry points

    /// Σ nll over the answer positions of `batch` (and their count), forward only, no dropout.
    public func loss(_ batch: [TrainingSequence], lora: LoRAParameters) -> (nll: Double, tokens: Int) {
        var none: Dropout? = nil
        let tape = forward(batch, lora: lora, dropout: &none)
        let r = lossAndLogitGrads(tape, gradScale: 0, wantGrad: false)
        return (r.nll, tape.targetsSel.count)
    }

    /// Token-mean loss over `seqs`, forward only, run `chunk` sequences at a time so the
    /// activations kept stay bounded however many sequences there are.
    public func meanLoss(_ seqs: [TrainingSequence], lora: LoRAParameters, chunk: Int = 16) -> Double {
        var nll = 0.0, n = 0
        var i = 0
        while i < seqs.count {
            let r = loss(Array(seqs[i..<min(i + chunk, seqs.count)]), lora: lora)
            nll += r.nll; n += r.tokens
            i += chunk
        }
        return nll / Double(max(n, 1))
    }

    /// Adds the gradients of `gradScale · Σ nll` over the batch's answer positions to `grads`,
    /// and returns Σ nll (before scaling) and the number of answer positions.
    @discardableResult
    public func accumulateGradients(_ batch: [TrainingSequence], lora: LoRAParameters, into grads: inout LoRAGradients,
                                    gradScale: Float, dropout: Dropout? = nil) -> (nll: Double, tokens: Int) {
        var dropout = dropout
        auxiliaryWanted = true
        let tape = forward(batch, lora: lora, dropout: &dropout)
        auxiliaryWanted = false
        let r = lossAndLogitGrads(tape, gradScale: gradScale, wantGrad: true)
        backward(tape, dHSel: r.dH!, lora: lora, grads: &grads)
        return (r.nll, tape.targetsSel.count)
    }

    /// Mean cross-entropy over the batch's answer tokens and its gradients.
    public func meanLossAndGradients(_ batch: [TrainingSequence], lora: LoRAParameters,
                                     dropout: Dropout? = nil) -> (loss: Double, grads: LoRAGradients) {
        let n = batch.reduce(0) { $0 + $1.lossTokens }
        var g = LoRAGradients(zerosLike: lora)
        let r = accumulateGradients(batch, lora: lora, into: &g, gradScale: 1 / Float(max(n, 1)), dropout: dropout)
        // LoRAMoE: the balance term is part of the loss these gradients are of.
        return (r.nll / Double(max(n, 1)) + balanceLoss * Double(lora.expertBalance?.scale ?? lora.mixtureLoss?.scale ?? 1), g)
    }

    // MARK: Routed experts

    /// The routed pass the running forward/backward applies beside the LoRA (nil: none).
    private var routedPass: RoutedTrainingPass?

    // MARK: LoRAMoE's localized balancing constraint

    /// The running batch's sequences (packed rows and example type), for the balance loss.
    private var balanceSegments: [(start: Int, length: Int, knowledge: Bool)] = []
    /// Σ of the auxiliary losses (LoRAMoE's balance constraint, MixLoRA's load-balance and
    /// z-loss) of the last forward pass that fed a backward (weighted, before `scale`); 0 after a
    /// loss-only pass, which skips them: evaluation reports the LM loss alone.
    public internal(set) var balanceLoss: Double = 0
    /// Whether the running forward feeds a backward (the auxiliary losses are computed only then).
    private var auxiliaryWanted = false

    /// LoRAMoE's constraint on one module (arXiv 2312.09979 §3.2, as its released layer computes
    /// it): Q[m, i] = Σ over sequence m's tokens of expert i's weight; the first half of the
    /// experts are the world-knowledge group, the second the task group; Z = Q ⊙ I with
    /// I[m, i] = 1 + α where expert i's group is sequence m's type, 1 − α elsewhere; the loss is
    /// weight · CV²(Z) = weight · var(Z)/(mean(Z)² + 1e-10) over all M·E entries (unbiased
    /// variance, as torch's `var`). Adds it to `balanceLoss` and returns ∂(scale · loss)/∂w per
    /// token and expert (rows, experts).
    private func localizedBalance(keep: UnsafePointer<Float>, gate: RankGate, balance b: ExpertBalance) -> TrainBuffer {
        let e = gate.experts, gs = gate.ranksPerExpert, r = gate.rank
        let segs = balanceSegments, M = segs.count, n = M * e
        let rows = segs.reduce(0) { $0 + $1.length }
        let out = TrainBuffer(rows * e)
        for i in 0..<(rows * e) { out.p[i] = 0 }
        guard n > 1 else { return out }
        func coef(_ m: Int, _ i: Int) -> Double { (i < e / 2) == segs[m].knowledge ? 1 + Double(b.alpha) : 1 - Double(b.alpha) }
        var Z = [Double](repeating: 0, count: n)
        for (m, sg) in segs.enumerated() {
            for t in sg.start..<(sg.start + sg.length) { for i in 0..<e { Z[m * e + i] += Double(keep[t * r + i * gs]) } }
            for i in 0..<e { Z[m * e + i] *= coef(m, i) }
        }
        let mu = Z.reduce(0, +) / Double(n)
        let v = Z.reduce(0) { $0 + ($1 - mu) * ($1 - mu) } / Double(n - 1)
        let den = mu * mu + 1e-10
        balanceLoss += Double(b.weight) * v / den
        for (m, sg) in segs.enumerated() {
            for i in 0..<e {
                // ∂CV²/∂Z_k = 2(Z_k − μ)/((n−1)·den) − var·2μ/(n·den²)
                let dZ = 2 * (Z[m * e + i] - mu) / (Double(n - 1) * den) - v * 2 * mu / (Double(n) * den * den)
                let gw = Float(Double(b.weight) * Double(b.scale) * dZ * coef(m, i))
                for t in sg.start..<(sg.start + sg.length) { out.p[t * e + i] = gw }
            }
        }
        return out
    }

    /// One routed step's losses and gate gradients.
    public struct RoutedStep {
        /// Mean cross-entropy over the batch's answer tokens, and their count.
        public var lmLoss: Double
        public var lmTokens: Int
        /// Mean gate cross-entropy over (routed projection, labelled row) pairs.
        public var gateLoss: Double
        /// Mean entropy of the gate distributions over the same pairs.
        public var entropy: Double
        /// Gradients of `lmWeight · lmLoss + gateWeight · gateLoss` by routed linear id (N, in).
        public var grads: [Int: [Float]]
        /// X-LoRA: the gradient of the loss by the given scalings (rows, L·N); empty otherwise.
        public var dScalings: [Float] = []
    }

    /// Forward (and, with `wantGrad`, backward) of the base model with `routing`'s experts gated
    /// per token at its projections. `labels[i]` is sequence i's task (the expert its rows should
    /// choose; −1: no gate loss on it); `supervise` picks which rows carry the gate loss.
    /// X-LoRA: `scalings` (packed rows, L·N) weight the experts instead of gates (`routing` built
    /// with kind .xlora), and the step returns their gradient.
    public func routedLossAndGradients(_ batch: [TrainingSequence], labels: [Int], routing: TrainableRouting,
                                       lmWeight: Float, gateWeight: Float, balance: Float = 0, entropy: Float = 0,
                                       supervise: GateSupervision = .all, wantGrad: Bool = true,
                                       scalings: [Float]? = nil) -> RoutedStep {
        precondition(labels.count == batch.count, "one label per sequence")
        var rowLabel: [Int] = []
        for (s, y) in zip(batch, labels) {
            let first = supervise == .answer ? (s.targets.firstIndex { $0 >= 0 } ?? s.tokens.count) : 0
            for t in 0..<s.tokens.count { rowLabel.append(t >= first ? y : -1) }
        }
        let pass = RoutedTrainingPass(routing: routing, rowLabel: rowLabel, gateWeight: gateWeight,
                                      balance: wantGrad ? balance : 0, entropy: entropy, scalings: scalings)
        routedPass = pass
        defer { routedPass = nil }
        let none = LoRAParameters(modules: [], rank: 1, alpha: 1, rsLoRA: false, targets: [])
        var noDropout: Dropout? = nil
        let tape = forward(batch, lora: none, dropout: &noDropout)
        let n = tape.targetsSel.count
        let r = lossAndLogitGrads(tape, gradScale: lmWeight / Float(max(n, 1)), wantGrad: wantGrad)
        if wantGrad {
            var unused = LoRAGradients(zerosLike: none)
            backward(tape, dHSel: r.dH!, lora: none, grads: &unused)
        }
        return RoutedStep(lmLoss: r.nll / Double(max(n, 1)), lmTokens: n, gateLoss: pass.meanCrossEntropy,
                          entropy: pass.meanEntropy, grads: pass.grads, dScalings: pass.dScalings)
    }

    // MARK: Forward

    /// Linear id → module index of the modules applied one projection at a time (MixLoRA's
    /// experts are applied by their layer's mixture instead).
    private func moduleIndex(_ lora: LoRAParameters) -> [Int: Int] {
        var m: [Int: Int] = [:]
        for (i, mod) in lora.modules.enumerated() where mod.rankGate?.wholeFFN != true { m[mod.linearID] = i }
        return m
    }

    private func forward(_ batch: [TrainingSequence], lora: LoRAParameters, dropout: inout Dropout?) -> Tape {
        let C = c.hiddenSize, L = c.numHiddenLayers, H = c.numAttentionHeads, Hkv = c.numKeyValueHeads
        let d = c.headDim, F = c.intermediateSize, Hd = H * d, kv = Hkv * d
        let N = batch.reduce(0) { $0 + $1.tokens.count }
        precondition(N > 0, "empty batch")
        let tape = Tape(N: N, C: C)
        var start = 0
        balanceSegments = []
        balanceLoss = 0
        for s in batch {
            tape.segments.append((start, s.tokens.count))
            balanceSegments.append((start, s.tokens.count, s.knowledge))
            for (t, tok) in s.tokens.enumerated() {
                precondition(tok >= 0 && tok < c.vocabSize, "token \(tok) out of range 0..<\(c.vocabSize)")
                if s.targets[t] >= 0 {
                    precondition(s.targets[t] < c.vocabSize, "target \(s.targets[t]) out of range")
                    tape.rowsSel.append(start + t); tape.targetsSel.append(s.targets[t])
                }
            }
            start += s.tokens.count
        }
        ensureRope(batch.map(\.tokens.count).max()!)
        let mods = moduleIndex(lora)
        let mixes = mixtureModules(lora)
        let mixScratch = mixes.isEmpty ? nil : mixtureScratch(rows: N, rank: mixes.values.first!.rank)

        let x = TrainBuffer(N * C)                                          // residual stream (N, C)
        embedTable().withUnsafeBufferPointer { e in
            var r = 0
            for s in batch { for tok in s.tokens { (x.p + r * C).update(from: e.baseAddress! + tok * C, count: C); r += 1 } }
        }
        for l in 0..<L {
            let lt = layerTape(l, rows: N)
            lt.xIn.p.update(from: x.p, count: N * C)
            rmsNormForward(x.p, model.base.attnNorms[l], rows: N, cols: C, out: lt.hAttn.p, inv: &lt.invAttn)   // (N, C)
            linearForward(lt.hAttn.p, rows: N, layer: l, .q, into: lt.q.p, mods: mods, lora: lora, tape: lt, dropout: &dropout)  // (N, H·d)
            linearForward(lt.hAttn.p, rows: N, layer: l, .k, into: lt.k.p, mods: mods, lora: lora, tape: lt, dropout: &dropout)  // (N, Hkv·d)
            linearForward(lt.hAttn.p, rows: N, layer: l, .v, into: lt.v.p, mods: mods, lora: lora, tape: lt, dropout: &dropout)  // (N, Hkv·d)
            for seg in tape.segments {
                rope(lt.q.p + seg.start * Hd, rows: seg.length, heads: H, inverse: false)
                rope(lt.k.p + seg.start * kv, rows: seg.length, heads: Hkv, inverse: false)
                lt.probs.append(TrainBuffer(H * seg.length * seg.length))
            }
            attentionForward(lt, segments: tape.segments)                                       // attnOut (N, H·d)
            lt.xMid.p.update(from: x.p, count: N * C)
            linearForward(lt.attnOut.p, rows: N, layer: l, .o, into: lt.xMid.p, accumulate: true, mods: mods, lora: lora,
                          tape: lt, dropout: &dropout)                                          // x += (N, C)
            rmsNormForward(lt.xMid.p, model.base.ffnNorms[l], rows: N, cols: C, out: lt.hFfn.p, inv: &lt.invFfn)
            linearForward(lt.hFfn.p, rows: N, layer: l, .gate, into: lt.gate.p, mods: mods, lora: lora, tape: lt, dropout: &dropout)  // (N, F)
            linearForward(lt.hFfn.p, rows: N, layer: l, .up, into: lt.up.p, mods: mods, lora: lora, tape: lt, dropout: &dropout)      // (N, F)
            if let mix = mixes[l] {
                x.p.update(from: lt.xMid.p, count: N * C)
                mixtureForward(mix, layer: l, lt: lt, rows: N, lora: lora, into: x.p, scratch: mixScratch!)  // x += (N, C)
                tape.layers.append(lt)
                continue
            }
            Parallel.forRanges(count: N * F, workers: elementwiseWorkers(N * F), granule: 64) { r in
                VectorKernels.swiglu(gate: lt.gate.p + r.lowerBound, up: lt.up.p + r.lowerBound,
                                     out: lt.act.p + r.lowerBound, count: r.count)            // silu(g)·u
            }
            x.p.update(from: lt.xMid.p, count: N * C)
            linearForward(lt.act.p, rows: N, layer: l, .down, into: x.p, accumulate: true, mods: mods, lora: lora,
                          tape: lt, dropout: &dropout)                                          // x += (N, C)
            tape.layers.append(lt)
        }
        if auxiliaryWanted, let ml = lora.mixtureLoss, let any = mixes.values.first {
            mixtureAuxiliary(tape, layers: mixes.keys.sorted(), loss: ml, experts: any.experts, topK: any.topK, rows: N)
        }
        tape.xFinal.p.update(from: x.p, count: N * C)
        let n = tape.rowsSel.count
        tape.hSel = TrainBuffer(n * C)
        // Final norm of the answer rows only: (n, C).
        var invSel = [Float](repeating: 0, count: max(n, 1))
        let xs = TrainBuffer(n * C)
        for (i, r) in tape.rowsSel.enumerated() { (xs.p + i * C).update(from: x.p + r * C, count: C) }
        rmsNormForward(xs.p, model.base.finalNorm, rows: n, cols: C, out: tape.hSel.p, inv: &invSel)
        for (i, r) in tape.rowsSel.enumerated() { tape.invFinal[r] = invSel[i] }
        return tape
    }

    /// out (rows, out) = x Wᵀ + b (or out += … when `accumulate`), then the trainable LoRA term.
    private func linearForward(_ x: UnsafePointer<Float>, rows: Int, layer: Int, _ slot: Projection,
                               into out: UnsafeMutablePointer<Float>, accumulate: Bool = false,
                               mods: [Int: Int], lora: LoRAParameters, tape: LayerTape, dropout: inout Dropout?) {
        let id = LlamaWeights.linearID(layer: layer, slot)
        let lw = model.base.linears[id]
        let nOut = lw.outFeatures, nIn = lw.inFeatures
        var beta: Float = accumulate ? 1 : 0
        if let bias = lw.bias {
            for t in 0..<rows {
                let o = out + t * nOut
                for j in 0..<nOut { o[j] = (accumulate ? o[j] : 0) + bias[j] }
            }
            beta = 1
        }
        floatWeight(id).withUnsafeBufferPointer { w in
            BLAS.gemm(transA: false, transB: true, m: rows, n: nOut, k: nIn, alpha: 1, a: x, lda: nIn,
                      b: w.baseAddress!, ldb: nIn, beta: beta, c: out, ldc: nOut)              // (rows, out)
        }
        routedPass?.forward(id: id, x, rows: rows, into: out)                                  // out += routed experts
        guard let mi = mods[id] else { return }
        let m = lora.modules[mi]
        var xd = x
        if var dr = dropout, dr.p > 0 {
            let keep = 1 / (1 - dr.p)
            let mask = TrainBuffer(rows * nIn), xb = TrainBuffer(rows * nIn)
            for i in 0..<(rows * nIn) {
                let k: Float = dr.rng.nextUniform() >= dr.p ? keep : 0
                mask.p[i] = k
                xb.p[i] = x[i] * k
            }
            dropout = dr
            tape.loraMask[mi] = mask
            tape.loraX[mi] = xb
            xd = UnsafePointer(xb.p)
        }
        let u = TrainBuffer(rows * m.rank)
        m.A.withUnsafeBufferPointer { a in
            BLAS.gemm(transA: false, transB: true, m: rows, n: m.rank, k: nIn, alpha: 1, a: xd, lda: nIn,
                      b: a.baseAddress!, ldb: nIn, beta: 0, c: u.p, ldc: m.rank)                 // u (rows, r)
        }
        if let gate = m.rankGate {
            let keep = TrainBuffer(rows * m.rank)
            var counts = [Int](repeating: 0, count: gate.experts)
            if gate.router != nil {
                let raw = TrainBuffer(rows * m.rank)
                raw.p.update(from: u.p, count: rows * m.rank)
                tape.loraURaw[mi] = raw
            }
            // SMoRA's router reads the undropped x, as at inference.
            counts.withUnsafeMutableBufferPointer { gate.select(u.p, x: x, rows: rows, weights: keep.p, counts: $0.baseAddress!) }
            tape.loraKeep[mi] = keep                                                          // u ⊙= gate weights (rows, r)
            tape.rankCounts[mi] = counts
            if auxiliaryWanted, let b = lora.expertBalance, b.weight > 0, gate.router != nil,
               rows == balanceSegments.reduce(0, { $0 + $1.length }) {
                tape.balanceGrad[mi] = localizedBalance(keep: keep.p, gate: gate, balance: b)
            }
        }
        m.B.withUnsafeBufferPointer { b in
            BLAS.gemm(transA: false, transB: true, m: rows, n: nOut, k: m.rank, alpha: m.scale, a: u.p, lda: m.rank,
                      b: b.baseAddress!, ldb: m.rank, beta: 1, c: out, ldc: nOut)               // out += s·u Bᵀ
        }
        tape.loraU[mi] = u
    }

    /// HF LlamaRMSNorm y = g ⊙ x·r, r = 1/√(mean(x²)+ε); keeps r per row for the backward pass.
    private func rmsNormForward(_ x: UnsafePointer<Float>, _ g: [Float], rows: Int, cols: Int,
                                out: UnsafeMutablePointer<Float>, inv: inout [Float]) {
        g.withUnsafeBufferPointer { gb in
            inv.withUnsafeMutableBufferPointer { ib in
                VectorKernels.rmsNorm(x, g: gb.baseAddress!, eps: c.rmsNormEps, rows: rows, cols: cols,
                                      out: out, inv: ib.baseAddress!)
            }
        }
    }

    /// Compute threads for an elementwise pass over `count` values (one below ~64k values: the
    /// hand-off would cost more than the work).
    private func elementwiseWorkers(_ count: Int) -> Int {
        count >= 1 << 16 ? Parallel.computeThreads : 1
    }

    /// rotate_half RoPE, positions 0..<rows; `inverse` applies the transpose rotation (its backward).
    private func rope(_ v: UnsafeMutablePointer<Float>, rows: Int, heads: Int, inverse: Bool) {
        let t = ropeTable!
        VectorKernels.rope(v, rows: rows, heads: heads, headDim: c.headDim, start: 0,
                           cos: t.cos, sin: t.sin, inverse: inverse)
    }

    /// Causal GQA within each sequence: per head P_h = softmax(q_h K_hᵀ/√d + mask) (T, T),
    /// out_h = P_h V_h. The (sequence, head) items write disjoint memory (their own P_h and
    /// columns of attnOut), so they spread over the compute threads.
    private func attentionForward(_ lt: LayerTape, segments: [(start: Int, length: Int)]) {
        let H = c.numAttentionHeads, Hkv = c.numKeyValueHeads, d = c.headDim
        let Hd = H * d, kvw = Hkv * d, group = H / Hkv
        let scale = 1 / Float(d).squareRoot()
        let work = segments.reduce(0) { $0 + $1.length * $1.length } * H
        Parallel.forEach(count: segments.count * H, workers: work >= 1 << 14 ? Parallel.computeThreads : 1) { item, _ in
            let si = item / H, hh = item % H, kvh = hh / group
            let seg = segments[si], T = seg.length
            let q = lt.q.p + seg.start * Hd, k = lt.k.p + seg.start * kvw, v = lt.v.p + seg.start * kvw
            let out = lt.attnOut.p + seg.start * Hd
            let P = lt.probs[si].p + hh * T * T
            BLAS.gemm(transA: false, transB: true, m: T, n: T, k: d, alpha: scale, a: q + hh * d, lda: Hd,
                      b: k + kvh * d, ldb: kvw, beta: 0, c: P, ldc: T)                          // scores (T, T)
            for t in 0..<T { VectorKernels.softmaxRow(P + t * T, valid: t + 1, count: T) }
            BLAS.gemm(transA: false, transB: false, m: T, n: d, k: T, alpha: 1, a: P, lda: T,
                      b: v + kvh * d, ldb: kvw, beta: 0, c: out + hh * d, ldc: Hd)             // out_h (T, d)
        }
    }

    // MARK: Loss

    /// logits (n, V) = hSel W_lmᵀ; nll per row in Double; dlogits = gradScale·(softmax − onehot);
    /// returns dHSel (n, C) = dlogits W_lm.
    private func lossAndLogitGrads(_ tape: Tape, gradScale: Float, wantGrad: Bool) -> (nll: Double, dH: TrainBuffer?) {
        let C = c.hiddenSize, V = c.vocabSize, n = tape.rowsSel.count
        guard n > 0 else { return (0, wantGrad ? TrainBuffer(0) : nil) }
        let lm = model.base.linears[LlamaWeights.lmHeadID(layers: c.numHiddenLayers)]
        let chunk = 64
        var nll = 0.0
        let dH = wantGrad ? TrainBuffer(n * C) : nil
        let logits = TrainBuffer(min(chunk, n) * V)
        floatWeight(LlamaWeights.lmHeadID(layers: c.numHiddenLayers)).withUnsafeBufferPointer { w in
            var r0 = 0
            while r0 < n {
                let rn = min(chunk, n - r0)
                BLAS.gemm(transA: false, transB: true, m: rn, n: V, k: C, alpha: 1, a: tape.hSel.p + r0 * C, lda: C,
                          b: w.baseAddress!, ldb: C, beta: 0, c: logits.p, ldc: V)              // (rn, V)
                if let bias = lm.bias { for i in 0..<rn { for j in 0..<V { logits.p[i * V + j] += bias[j] } } }
                for i in 0..<rn {
                    let z = logits.p + i * V, tgt = tape.targetsSel[r0 + i]
                    var m: Float = -.infinity
                    for j in 0..<V where z[j] > m { m = z[j] }
                    var s = 0.0
                    for j in 0..<V { s += Foundation.exp(Double(z[j] - m)) }
                    nll += Double(m) + Foundation.log(s) - Double(z[tgt])
                    if wantGrad {
                        let invS = 1 / s
                        for j in 0..<V { z[j] = gradScale * Float(Foundation.exp(Double(z[j] - m)) * invS) }
                        z[tgt] -= gradScale
                    }
                }
                if let dH {
                    BLAS.gemm(transA: false, transB: false, m: rn, n: C, k: V, alpha: 1, a: logits.p, lda: V,
                              b: w.baseAddress!, ldb: C, beta: 0, c: dH.p + r0 * C, ldc: C)     // (rn, C)
                }
                r0 += rn
            }
        }
        return (nll, dH)
    }

    // MARK: Backward

    private func backward(_ tape: Tape, dHSel: TrainBuffer, lora: LoRAParameters, grads: inout LoRAGradients) {
        let C = c.hiddenSize, L = c.numHiddenLayers, H = c.numAttentionHeads, Hkv = c.numKeyValueHeads
        let d = c.headDim, F = c.intermediateSize, Hd = H * d, kv = Hkv * d
        let N = tape.segments.reduce(0) { $0 + $1.length }
        let mods = moduleIndex(lora)
        let mixes = mixtureModules(lora)
        let mixScratch = mixes.isEmpty ? nil : mixtureScratch(rows: N, rank: mixes.values.first!.rank)

        // Final norm backward, answer rows only: dx (N, C).
        let dx = TrainBuffer(N * C)
        model.base.finalNorm.withUnsafeBufferPointer { g in
            for (i, r) in tape.rowsSel.enumerated() {
                rmsNormBackwardRow(x: tape.xFinal.p + r * C, g: g.baseAddress!, inv: tape.invFinal[r],
                                   dy: dHSel.p + i * C, dx: dx.p + r * C, cols: C)
            }
        }
        let dh = TrainBuffer(N * C)
        let dAct = TrainBuffer(N * F), dGate = TrainBuffer(N * F), dUp = TrainBuffer(N * F)
        let dAttn = TrainBuffer(N * Hd), dq = TrainBuffer(N * Hd), dk = TrainBuffer(N * kv), dv = TrainBuffer(N * kv)
        for l in stride(from: L - 1, through: 0, by: -1) {
            let lt = tape.layers[l]
            if let mix = mixes[l] {
                mixtureBackward(mix, layer: l, tape: tape, lt: lt, dy: dx.p, rows: N, dh: dh.p, lora: lora, grads: &grads,
                                scratch: mixScratch!)                                           // dh (N, C)
            } else {
                // MLP: x_out = x_mid + down(act); act = silu(g)·u.
                linearBackward(dY: dx.p, rows: N, layer: l, .down, x: lt.act.p, dX: dAct.p, overwrite: true,
                               mods: mods, lora: lora, tape: lt, grads: &grads)                    // dAct (N, F)
                Parallel.forRanges(count: N * F, workers: elementwiseWorkers(N * F), granule: 64) { r in
                    let o = r.lowerBound
                    VectorKernels.swigluBackward(gate: lt.gate.p + o, up: lt.up.p + o, dAct: dAct.p + o,
                                                 dGate: dGate.p + o, dUp: dUp.p + o, count: r.count)
                }
                linearBackward(dY: dGate.p, rows: N, layer: l, .gate, x: lt.hFfn.p, dX: dh.p, overwrite: true,
                               mods: mods, lora: lora, tape: lt, grads: &grads)                    // dh (N, C)
                linearBackward(dY: dUp.p, rows: N, layer: l, .up, x: lt.hFfn.p, dX: dh.p, overwrite: false,
                               mods: mods, lora: lora, tape: lt, grads: &grads)
            }
            rmsNormBackward(x: lt.xMid.p, g: model.base.ffnNorms[l], inv: lt.invFfn, dy: dh.p, dx: dx.p, rows: N, cols: C)  // dx += (N, C)

            // Attention: x_mid = x_in + o(attn).
            linearBackward(dY: dx.p, rows: N, layer: l, .o, x: lt.attnOut.p, dX: dAttn.p, overwrite: true,
                           mods: mods, lora: lora, tape: lt, grads: &grads)                    // dAttn (N, H·d)
            attentionBackward(lt, segments: tape.segments, dOut: dAttn.p, dq: dq.p, dk: dk.p, dv: dv.p)
            for seg in tape.segments {
                rope(dq.p + seg.start * Hd, rows: seg.length, heads: H, inverse: true)
                rope(dk.p + seg.start * kv, rows: seg.length, heads: Hkv, inverse: true)
            }
            linearBackward(dY: dq.p, rows: N, layer: l, .q, x: lt.hAttn.p, dX: dh.p, overwrite: true,
                           mods: mods, lora: lora, tape: lt, grads: &grads)                    // dh (N, C)
            linearBackward(dY: dk.p, rows: N, layer: l, .k, x: lt.hAttn.p, dX: dh.p, overwrite: false,
                           mods: mods, lora: lora, tape: lt, grads: &grads)
            linearBackward(dY: dv.p, rows: N, layer: l, .v, x: lt.hAttn.p, dX: dh.p, overwrite: false,
                           mods: mods, lora: lora, tape: lt, grads: &grads)
            rmsNormBackward(x: lt.xIn.p, g: model.base.attnNorms[l], inv: lt.invAttn, dy: dh.p, dx: dx.p, rows: N, cols: C)  // dx += (N, C)
        }
        // dx now holds dL/d(embeddings); the table is frozen, so it is dropped.
    }

    /// dX = dY W (frozen W, (out, in)), written or added; LoRA: dB += s·dYᵀu, g = dY B,
    /// dA += s·gᵀ x_d, dX += s·(g A) ⊙ mask.
    func linearBackward(dY: UnsafePointer<Float>, rows: Int, layer: Int, _ slot: Projection,
                                x: UnsafePointer<Float>, dX: UnsafeMutablePointer<Float>, overwrite: Bool,
                                mods: [Int: Int], lora: LoRAParameters, tape: LayerTape, grads: inout LoRAGradients) {
        let id = LlamaWeights.linearID(layer: layer, slot)
        let lw = model.base.linears[id]
        let nOut = lw.outFeatures, nIn = lw.inFeatures
        floatWeight(id).withUnsafeBufferPointer { w in
            BLAS.gemm(transA: false, transB: false, m: rows, n: nIn, k: nOut, alpha: 1, a: dY, lda: nOut,
                      b: w.baseAddress!, ldb: nIn, beta: overwrite ? 0 : 1, c: dX, ldc: nIn)     // (rows, in)
        }
        routedPass?.backward(id: id, dY: dY, x: x, rows: rows, dX: dX)                        // gates' grads, dX +=
        guard let mi = mods[id] else { return }
        let m = lora.modules[mi], r = m.rank, s = m.scale
        let u = tape.loraU[mi]!
        let xd = tape.loraX[mi].map { UnsafePointer($0.p) } ?? x
        grads.dB[mi].withUnsafeMutableBufferPointer { dB in
            BLAS.gemm(transA: true, transB: false, m: nOut, n: r, k: rows, alpha: s, a: dY, lda: nOut,
                      b: u.p, ldb: r, beta: 1, c: dB.baseAddress!, ldc: r)                     // dB (out, r)
        }
        let g = TrainBuffer(rows * r)
        m.B.withUnsafeBufferPointer { b in
            BLAS.gemm(transA: false, transB: false, m: rows, n: r, k: nOut, alpha: 1, a: dY, lda: nOut,
                      b: b.baseAddress!, ldb: r, beta: 0, c: g.p, ldc: r)                      // g (rows, r)
        }
        if let keep = tape.loraKeep[mi] {
            if let raw = tape.loraURaw[mi], let gate = m.rankGate, let W = gate.router {
                // An expert's weight w_i = softmax over the kept logits multiplies its ranks, so
                // d w_i = Σ_{j ∈ i} s·g_j·raw_j (+ the balance loss's ∂/∂w_i), then
                // dl_i = w_i (d w_i − Σ_k w_k d w_k) for kept i; dW_g += dlᵀ x, dX += dl W_g.
                let e = gate.experts, gs = gate.ranksPerExpert
                let dl = TrainBuffer(rows * e)
                let aux = tape.balanceGrad[mi]
                for t in 0..<rows {
                    let w = keep.p + t * r, gr = g.p + t * r, ur = raw.p + t * r, d = dl.p + t * e
                    var sum: Float = 0
                    for i in 0..<e {
                        var dw: Float = 0
                        for j in (i * gs)..<((i + 1) * gs) { dw += s * gr[j] * ur[j] }
                        if let aux { dw += aux.p[t * e + i] }
                        d[i] = dw
                        sum += w[i * gs] * dw
                    }
                    for i in 0..<e { let wi = w[i * gs]; d[i] = wi > 0 ? wi * (d[i] - sum) : 0 }
                }
                grads.addRouterGradient(dl.p, x: x, rows: rows, module: mi, inFeatures: nIn)
                W.withUnsafeBufferPointer { wp in
                    BLAS.gemm(transA: false, transB: false, m: rows, n: nIn, k: e, alpha: 1, a: dl.p, lda: e,
                              b: wp.baseAddress!, ldb: nIn, beta: 1, c: dX, ldc: nIn)           // dX += dl W_g
                }
            }
            for i in 0..<(rows * r) { g.p[i] *= keep.p[i] }                                  // unkept ranks pass nothing back
            if let c = tape.rankCounts[mi] { grads.addRankCounts(c, module: mi) }
        }
        if m.trainsA { grads.dA[mi].withUnsafeMutableBufferPointer { dA in
            BLAS.gemm(transA: true, transB: false, m: r, n: nIn, k: rows, alpha: s, a: g.p, lda: r,
                      b: xd, ldb: nIn, beta: 1, c: dA.baseAddress!, ldc: nIn)                  // dA (r, in)
        } }
        m.A.withUnsafeBufferPointer { a in
            if let mask = tape.loraMask[mi] {
                let tmp = TrainBuffer(rows * nIn)
                BLAS.gemm(transA: false, transB: false, m: rows, n: nIn, k: r, alpha: s, a: g.p, lda: r,
                          b: a.baseAddress!, ldb: nIn, beta: 0, c: tmp.p, ldc: nIn)
                for i in 0..<(rows * nIn) { dX[i] += tmp.p[i] * mask.p[i] }
            } else {
                BLAS.gemm(transA: false, transB: false, m: rows, n: nIn, k: r, alpha: s, a: g.p, lda: r,
                          b: a.baseAddress!, ldb: nIn, beta: 1, c: dX, ldc: nIn)              // dX += s·g A
            }
        }
    }

    /// One row of RMSNorm backward, added to dx: with y = g ⊙ x·r,
    /// dx_j += r·g_j·dy_j − r³/C · x_j · Σ_k g_k dy_k x_k.
    private func rmsNormBackwardRow(x: UnsafePointer<Float>, g: UnsafePointer<Float>, inv r: Float,
                                    dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, cols: Int) {
        VectorKernels.rmsNormBackwardRow(x: x, g: g, inv: r, dy: dy, dx: dx, cols: cols)
    }

    private func rmsNormBackward(x: UnsafePointer<Float>, g: [Float], inv: [Float], dy: UnsafePointer<Float>,
                                 dx: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        g.withUnsafeBufferPointer { gb in
            for t in 0..<rows {
                rmsNormBackwardRow(x: x + t * cols, g: gb.baseAddress!, inv: inv[t], dy: dy + t * cols, dx: dx + t * cols, cols: cols)
            }
        }
    }

    /// Per head: dP = dO_h V_hᵀ, dV_h += P_hᵀ dO_h, dS = P ⊙ (dP − rowsum(dP ⊙ P)),
    /// dq_h = dS K_h/√d, dK_h += dSᵀ q_h/√d (q, k after RoPE; the caller un-rotates dq, dk).
    /// Work items are (sequence, kv head): the query heads of a group add into the same dK, dV
    /// columns, so one item runs them in turn; items write disjoint memory and spread over the
    /// compute threads, each worker with its own dP scratch.
    private func attentionBackward(_ lt: LayerTape, segments: [(start: Int, length: Int)],
                                   dOut: UnsafePointer<Float>, dq: UnsafeMutablePointer<Float>,
                                   dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>) {
        let H = c.numAttentionHeads, Hkv = c.numKeyValueHeads, d = c.headDim
        let Hd = H * d, kvw = Hkv * d, group = H / Hkv
        let scale = 1 / Float(d).squareRoot()
        let maxT = segments.map(\.length).max() ?? 0
        let work = segments.reduce(0) { $0 + $1.length * $1.length } * H
        let workers = min(work >= 1 << 14 ? Parallel.computeThreads : 1, segments.count * Hkv)
        let dPAll = TrainBuffer(max(workers, 1) * maxT * maxT)
        Parallel.forEach(count: segments.count * Hkv, workers: workers) { item, worker in
            let si = item / Hkv, kvh = item % Hkv
            let seg = segments[si], T = seg.length
            let q = lt.q.p + seg.start * Hd, k = lt.k.p + seg.start * kvw, v = lt.v.p + seg.start * kvw
            let dO = dOut + seg.start * Hd
            let dqs = dq + seg.start * Hd, dks = dk + seg.start * kvw, dvs = dv + seg.start * kvw
            for t in 0..<T {
                (dks + t * kvw + kvh * d).update(repeating: 0, count: d)
                (dvs + t * kvw + kvh * d).update(repeating: 0, count: d)
            }
            let dP = dPAll.p + worker * maxT * maxT
            for hh in (kvh * group)..<((kvh + 1) * group) {
                let P = lt.probs[si].p + hh * T * T
                BLAS.gemm(transA: false, transB: true, m: T, n: T, k: d, alpha: 1, a: dO + hh * d, lda: Hd,
                          b: v + kvh * d, ldb: kvw, beta: 0, c: dP, ldc: T)                     // dP (T, T)
                BLAS.gemm(transA: true, transB: false, m: T, n: d, k: T, alpha: 1, a: P, lda: T,
                          b: dO + hh * d, ldb: Hd, beta: 1, c: dvs + kvh * d, ldc: kvw)         // dV_h += (T, d)
                for t in 0..<T {
                    VectorKernels.softmaxBackwardRow(p: P + t * T, dp: dP + t * T, valid: t + 1, count: T)
                }
                BLAS.gemm(transA: false, transB: false, m: T, n: d, k: T, alpha: scale, a: dP, lda: T,
                          b: k + kvh * d, ldb: kvw, beta: 0, c: dqs + hh * d, ldc: Hd)         // dq_h (T, d)
                BLAS.gemm(transA: true, transB: false, m: T, n: d, k: T, alpha: scale, a: dP, lda: T,
                          b: q + hh * d, ldb: Hd, beta: 1, c: dks + kvh * d, ldc: kvw)         // dK_h += (T, d)
            }
        }
    }
}
