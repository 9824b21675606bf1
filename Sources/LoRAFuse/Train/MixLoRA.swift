import Foundation

// MixLoRA (Li et al., "MixLoRA: Enhancing Large Language Models Fine-Tuning with LoRA-based
// Mixture of Experts", arXiv 2404.15159; `train --variant mixlora`). Every layer's frozen FFN
// becomes E experts, expert e the FFN with its own LoRA on gate, up and down, and a router
// W_r (E, C) without bias sends each token to k of them (Mixtral's routing: top-k of the softmax,
// renormalised; `MixtureFFN`). The attention projections get one plain LoRA each. Trained: every
// A, B and W_r; W_r starts N(0, 0.02²) (the authors' router_init_range).
//
// Auxiliary load-balance loss, as the authors' `_mixtral_load_balancing_loss_func`: the router
// logits of every layer are taken together (L·N rows), f_e = the share of (row, slot) choices
// that picked e, P_e = the mean probability of e, and
//
//     aux = coef · E · Σ_e f_e · P_e         (coef 0.01, --aux-loss; f has no gradient)
//
// Optional router z-loss (--z-loss, off by default): coef · mean over the rows of logsumexp(l)².
//
// Files: the authors' layout (github.com/TUDB-Labs/MixLoRA, `mixlora/model.py`): config
// `peft_type` "MIXLORA", `routing_strategy` "mixtral", `num_experts`, `top_k`, `r`, `lora_alpha`,
// `router_aux_loss_coef`, …; tensors `mixlora.layers.{l}.self_attn.{p}.lora_{A,B}.weight`,
// `mixlora.layers.{l}.gate.weight` (E, C) and `mixlora.layers.{l}.experts.{e}.{p}.lora_{A,B}.weight`
// (`Formats/MixLoRAFormat.swift`). In memory the experts of a projection are stacked into one
// module of rank E·r whose `RankGate` is marked `wholeFFN` and carries the layer's router.
//
// Differences from the authors' training: no LoRA dropout on the experts (the attention LoRA takes
// --dropout as any LoRA); no jitter noise (their default is 0 too).

public enum MixLoRADefaults {
    public static let experts = 8
    public static let topK = 2
    public static let rank = 8
    public static let alpha = 16.0
    public static let auxLoss: Float = 0.01
    public static let zLoss: Float = 0
    public static let routerInitRange: Float = 0.02
    public static let ffn: Set<Projection> = [.gate, .up, .down]
}

/// MixLoRA's auxiliary losses: `aux` (load balance) and `z` (router z-loss) coefficients. `scale`
/// multiplies the gradient only (the trainer's 1/micro-batches, as `ExpertBalance.scale`).
public struct MixtureLoss: Sendable, Equatable {
    public var aux: Float
    public var z: Float
    public var scale: Float = 1

    public init(aux: Float, z: Float) {
        self.aux = aux
        self.z = z
    }
}

public final class MixLoRAVariant: TrainingVariant {
    public let name = "mixlora"
    public var parameters = ParamSet()
    public let experts: Int
    public let topK: Int
    /// Rank of each expert (and of the attention LoRA).
    public let expertRank: Int
    public let loss: MixtureLoss
    private let template: LoRAParameters
    private let layers: [Int]

    static func routerKey(_ l: Int) -> String { "mixlora.layers.\(l).gate" }

    public init(config c: LlamaConfig, options o: TrainingOptions, experts: Int, topK: Int, loss: MixtureLoss) throws {
        guard experts >= 2 else {
            throw TrainError.badOption(option: "experts", reason: "MixLoRA routes among at least 2 experts per layer, got \(experts)")
        }
        guard topK >= 1 && topK <= experts else {
            throw TrainError.badOption(option: "top-k", reason: "MixLoRA sends each token to k of the \(experts) experts: need 1 ≤ k ≤ \(experts), got \(topK)")
        }
        for (opt, v) in [("aux-loss", loss.aux), ("z-loss", loss.z)] where !(v.isFinite && v >= 0) {
            throw TrainError.badOption(option: opt, reason: "must be finite and ≥ 0, got \(v)")
        }
        let ffn = o.targets.filter { MixLoRADefaults.ffn.contains($0) }
        guard !ffn.isEmpty else {
            throw TrainError.badOption(option: "targets", reason: "MixLoRA's experts sit on the FFN: include at least one of gate, up, down (got \(o.targets.map(\.rawValue).joined(separator: ",")))")
        }
        guard !o.rsLoRA else {
            throw TrainError.badOption(option: "rslora", reason: "MixLoRA scales each expert by α/r; rsLoRA is not part of it")
        }
        self.experts = experts
        self.topK = topK
        self.expertRank = o.rank
        self.loss = loss
        let attention = o.targets.filter { !MixLoRADefaults.ffn.contains($0) }
        let s = LoRAParameters.scale(rank: o.rank, alpha: o.alpha, rsLoRA: false)
        var mods: [TrainableLoRAModule] = []
        if !attention.isEmpty {
            mods += LoRAParameters.initialize(config: c, rank: o.rank, alpha: o.alpha, targets: attention, seed: o.seed,
                                              layers: o.layers).modules
        }
        // Experts stacked: one module of rank E·r per FFN projection, each expert's A its own rows
        // of the seeded kaiming-uniform draw; scale α/r of one expert.
        var stacked = LoRAParameters.initialize(config: c, rank: experts * o.rank, alpha: o.alpha, targets: ffn, seed: o.seed,
                                                layers: o.layers).modules
        for i in stacked.indices { stacked[i].scale = s }
        mods += stacked
        mods.sort { $0.linearID < $1.linearID }
        layers = Array(Set(stacked.map(\.layer))).sorted()
        for m in mods {
            parameters.add("\(m.name).lora_A", shape: [m.rank, m.inFeatures], values: m.A)
            parameters.add("\(m.name).lora_B", shape: [m.outFeatures, m.rank], values: m.B)
        }
        let C = c.hiddenSize
        for l in layers {
            var rng = SeededRNG(seed: o.seed, stream: "mixlora_router.\(l)")
            parameters.add(Self.routerKey(l), shape: [experts, C],
                           values: (0..<(experts * C)).map { _ in rng.nextNormal() * MixLoRADefaults.routerInitRange })
        }
        var p = LoRAParameters(modules: mods, rank: o.rank, alpha: o.alpha, rsLoRA: false, targets: o.targets)
        p.layers = o.layers
        template = p
    }

    public func factors() -> LoRAParameters {
        var p = template
        for i in p.modules.indices {
            let m = p.modules[i]
            p.modules[i].A = parameters["\(m.name).lora_A"]
            p.modules[i].B = parameters["\(m.name).lora_B"]
            if MixLoRADefaults.ffn.contains(m.target) {
                p.modules[i].rankGate = RankGate(topK: topK, bias: [Float](repeating: 0, count: experts),
                                                 router: parameters[Self.routerKey(m.layer)], ranksPerExpert: expertRank,
                                                 wholeFFN: true)
            }
        }
        p.mixtureLoss = loss
        return p
    }

    public func parameterGradients(_ g: LoRAGradients) -> ParamSet {
        var out = parameters.zeros()
        for (i, m) in template.modules.enumerated() {
            out["\(m.name).lora_A"] = g.dA[i]
            out["\(m.name).lora_B"] = g.dB[i]
            if !g.dRouter[i].isEmpty {
                let k = Self.routerKey(m.layer)
                var r = out[k]
                for j in r.indices { r[j] += g.dRouter[i][j] }
                out[k] = r
            }
        }
        return out
    }

    public var storedBytes: Int {
        4 * (template.modules.reduce(0) { $0 + $1.rank * ($1.inFeatures + $1.outFeatures) }
             + layers.count * experts * (template.modules.first?.inFeatures ?? 0))
    }

    public func adapter(name: String, baseModel: String?) -> LoRAAdapter {
        var a = factors().adapter(name: name, baseModel: baseModel)
        a.metadata.rank = expertRank
        a.metadata.experts = experts
        a.metadata.topK = topK
        a.metadata.routerAuxLoss = Double("\(loss.aux)")
        return a
    }

    public func writeFiles(into dir: URL, name: String, baseModel: String?, path: String) throws {
        try PEFTAdapter.writeFiles(adapter(name: name, baseModel: baseModel), into: dir, dtype: .f32, path: path)
    }
}

// MARK: - Training forward and backward of a MixLoRA layer

extension LlamaTrainingEngine {
    /// One layer's MixLoRA modules (indices into `LoRAParameters.modules`) and routing settings.
    struct MixtureModules {
        var gate: Int?, up: Int?, down: Int?
        let experts: Int, topK: Int, rank: Int
        /// The module whose `dRouter` receives the router's gradient (the first of gate, up, down).
        let owner: Int
        let router: [Float]
    }

    /// MixLoRA layers of `lora`, by layer.
    func mixtureModules(_ lora: LoRAParameters) -> [Int: MixtureModules] {
        var out: [Int: MixtureModules] = [:]
        for (i, m) in lora.modules.enumerated() {
            guard let g = m.rankGate, g.wholeFFN, let w = g.router else { continue }
            var mm = out[m.layer] ?? MixtureModules(experts: g.experts, topK: g.topK, rank: g.ranksPerExpert, owner: i, router: w)
            switch m.target {
            case .gate: mm.gate = i
            case .up: mm.up = i
            case .down: mm.down = i
            default: preconditionFailure("MixLoRA module on \(m.target)")
            }
            out[m.layer] = mm
        }
        return out
    }

    /// Per-expert work buffers for up to `rows` rows, reused across experts, layers and steps.
    func mixtureScratch(rows N: Int, rank r: Int) -> MixtureScratch {
        if let s = mixtureScratchCache, s.rows >= N, s.rank == r { return s }
        let s = MixtureScratch(rows: N, C: c.hiddenSize, F: c.intermediateSize, r: r)
        mixtureScratchCache = s
        return s
    }

    /// Per-expert work buffers, sized for `rows` rows; every value is written before it is read.
    final class MixtureScratch {
        let hs, g, u, act, out, dys, dact, dg, du, dhs: TrainBuffer
        let ug, uu, ud, gd, gg: TrainBuffer
        let rows: Int, rank: Int
        init(rows N: Int, C: Int, F: Int, r: Int) {
            rows = N; rank = r
            hs = TrainBuffer(N * C); out = TrainBuffer(N * C); dys = TrainBuffer(N * C); dhs = TrainBuffer(N * C)
            g = TrainBuffer(N * F); u = TrainBuffer(N * F); act = TrainBuffer(N * F)
            dact = TrainBuffer(N * F); dg = TrainBuffer(N * F); du = TrainBuffer(N * F)
            ug = TrainBuffer(N * r); uu = TrainBuffer(N * r); ud = TrainBuffer(N * r); gd = TrainBuffer(N * r); gg = TrainBuffer(N * r)
        }
    }

    /// Expert e's FFN on the n rows `rowsE` of layer `lt`: fills s.hs (n, C), s.g and s.u (gate and
    /// up pre-activations, (n, F)), s.act (n, F), s.out (n, C) and the LoRA inner products s.ug,
    /// s.uu, s.ud (n, r).
    func expertForward(_ mix: MixtureModules, _ e: Int, rows rowsE: [Int], layer l: Int, lt: LayerTape,
                       lora: LoRAParameters, s: MixtureScratch) {
        let C = c.hiddenSize, F = c.intermediateSize, n = rowsE.count, r = mix.rank, R = mix.experts * r
        for (i, t) in rowsE.enumerated() {
            (s.hs.p + i * C).update(from: lt.hFfn.p + t * C, count: C)
            (s.g.p + i * F).update(from: lt.gate.p + t * F, count: F)
            (s.u.p + i * F).update(from: lt.up.p + t * F, count: F)
        }
        func addLoRA(_ mi: Int?, x: UnsafePointer<Float>, nIn: Int, nOut: Int, inner: TrainBuffer, into out: UnsafeMutablePointer<Float>) {
            guard let mi else { return }
            let m = lora.modules[mi]
            m.A.withUnsafeBufferPointer { a in
                BLAS.gemm(transA: false, transB: true, m: n, n: r, k: nIn, alpha: 1, a: x, lda: nIn,
                          b: a.baseAddress! + e * r * nIn, ldb: nIn, beta: 0, c: inner.p, ldc: r)       // (n, r)
            }
            m.B.withUnsafeBufferPointer { b in
                BLAS.gemm(transA: false, transB: true, m: n, n: nOut, k: r, alpha: m.scale, a: inner.p, lda: r,
                          b: b.baseAddress! + e * r, ldb: R, beta: 1, c: out, ldc: nOut)               // += (n, out)
            }
        }
        addLoRA(mix.gate, x: s.hs.p, nIn: C, nOut: F, inner: s.ug, into: s.g.p)
        addLoRA(mix.up, x: s.hs.p, nIn: C, nOut: F, inner: s.uu, into: s.u.p)
        VectorKernels.swiglu(gate: s.g.p, up: s.u.p, out: s.act.p, count: n * F)                       // (n, F)
        let downID = LlamaWeights.linearID(layer: l, .down)
        let lw = model.base.linears[downID]
        if let bias = lw.bias { for i in 0..<n { (s.out.p + i * C).update(from: bias, count: C) } }
        floatWeight(downID).withUnsafeBufferPointer { w in
            BLAS.gemm(transA: false, transB: true, m: n, n: C, k: F, alpha: 1, a: s.act.p, lda: F,
                      b: w.baseAddress!, ldb: F, beta: lw.bias == nil ? 0 : 1, c: s.out.p, ldc: C)    // (n, C)
        }
        addLoRA(mix.down, x: s.act.p, nIn: F, nOut: C, inner: s.ud, into: s.out.p)
    }

    /// x (N, C) += the layer's mixture on lt.hFfn, given lt.gate and lt.up holding the base products;
    /// keeps the router logits, choices and weights on the tape.
    func mixtureForward(_ mix: MixtureModules, layer l: Int, lt: LayerTape, rows N: Int, lora: LoRAParameters,
                        into x: UnsafeMutablePointer<Float>, scratch s: MixtureScratch) {
        let C = c.hiddenSize, E = mix.experts, k = mix.topK
        let logits = TrainBuffer(N * E), probs = TrainBuffer(N * E), w = TrainBuffer(N * k)
        mix.router.withUnsafeBufferPointer { wr in
            BLAS.gemm(transA: false, transB: true, m: N, n: E, k: C, alpha: 1, a: lt.hFfn.p, lda: C,
                      b: wr.baseAddress!, ldb: C, beta: 0, c: logits.p, ldc: E)                     // (N, E)
        }
        var chosen = [Int](repeating: 0, count: N * k)
        chosen.withUnsafeMutableBufferPointer { ch in
            for t in 0..<N {
                MixtureFFN.route(logits.p + t * E, experts: E, topK: k, chosen: ch.baseAddress! + t * k,
                                 weights: w.p + t * k, probs: probs.p + t * E)
            }
        }
        lt.mixLogits = logits; lt.mixProbs = probs; lt.mixWeights = w; lt.mixChosen = chosen
        let groups = chosen.withUnsafeBufferPointer { MixtureFFN.assignments(chosen: $0.baseAddress!, weights: w.p, rows: N, experts: E, topK: k) }
        for e in 0..<E where !groups[e].rows.isEmpty {
            expertForward(mix, e, rows: groups[e].rows, layer: l, lt: lt, lora: lora, s: s)
            for (i, t) in groups[e].rows.enumerated() {
                let we = groups[e].weights[i], o = s.out.p + i * C, xr = x + t * C
                for j in 0..<C { xr[j] += we * o[j] }
            }
        }
    }

    /// The auxiliary losses over every MixLoRA layer of the finished forward (the layers' router
    /// rows taken together, as the authors concatenate them): adds their value to `balanceLoss`
    /// and keeps on the tape what the backward needs, ∂aux/∂P_e per row and the z-loss factor.
    func mixtureAuxiliary(_ tape: Tape, layers: [Int], loss ml: MixtureLoss, experts E: Int, topK k: Int, rows N: Int) {
        let M = Double(layers.count * N)
        guard M > 0, ml.aux > 0 || ml.z > 0 else { return }
        var f = [Double](repeating: 0, count: E), P = [Double](repeating: 0, count: E), z = 0.0
        for l in layers {
            let lt = tape.layers[l]
            for t in 0..<N {
                for i in 0..<k { f[lt.mixChosen[t * k + i]] += 1 }
                let lg = lt.mixLogits!.p + t * E, p = lt.mixProbs!.p + t * E
                var m = -Float.infinity
                for j in 0..<E { m = max(m, lg[j]); P[j] += Double(p[j]) }
                var se = 0.0
                for j in 0..<E { se += Foundation.exp(Double(lg[j] - m)) }
                let lse = Double(m) + Foundation.log(se)
                z += lse * lse
            }
        }
        // tokens_per_expert is a mean over rows of the (k, E) one-hot, summed with P over k and E.
        var aux = 0.0
        for j in 0..<E { aux += (f[j] / M) * (P[j] / M) }
        balanceLoss += Double(ml.aux) * Double(E) * aux + Double(ml.z) * z / M
        // ∂/∂p_{row, e} of coef·E·Σ f_e P_e = coef·E·f_e / M (P_e = Σ p / M), times the step's scale.
        tape.mixAuxDP = (0..<E).map { Float(Double(ml.aux) * Double(E) * (f[$0] / M) / M * Double(ml.scale)) }
        tape.mixZ = Float(Double(ml.z) * 2 / M * Double(ml.scale))
        tape.mixCounts = f.map { Int($0) }
    }

    /// Backward of one MixLoRA layer: dy (N, C) is ∂L/∂(its output); writes dh (N, C) = ∂L/∂h_ffn
    /// and adds the experts' and the router's gradients to `grads`.
    func mixtureBackward(_ mix: MixtureModules, layer l: Int, tape: Tape, lt: LayerTape, dy: UnsafePointer<Float>, rows N: Int,
                         dh: UnsafeMutablePointer<Float>, lora: LoRAParameters, grads: inout LoRAGradients, scratch s: MixtureScratch) {
        let C = c.hiddenSize, F = c.intermediateSize, E = mix.experts, k = mix.topK, r = mix.rank, R = E * r
        let dGB = TrainBuffer(N * F), dUB = TrainBuffer(N * F), dhL = TrainBuffer(N * C)
        let dw = TrainBuffer(N * k)                                         // ∂L/∂w per (row, slot)
        let chosen = lt.mixChosen, w = lt.mixWeights!
        let groups = chosen.withUnsafeBufferPointer { MixtureFFN.assignments(chosen: $0.baseAddress!, weights: w.p, rows: N, experts: E, topK: k) }
        for e in 0..<E where !groups[e].rows.isEmpty {
            let rowsE = groups[e].rows, n = rowsE.count
            // Recomputed, not kept (activation checkpointing per expert): keeping g, u, act and out
            // of every routed row would hold N·k·(3F + 2C) floats per layer, 1.1 GB over SmolLM2's 30
            // layers for a batch of 8 × 100-token sequences at top-2, against one more expert
            // forward per layer in the backward.
            expertForward(mix, e, rows: rowsE, layer: l, lt: lt, lora: lora, s: s)
            for (i, t) in rowsE.enumerated() {
                let slot = (0..<k).first { chosen[t * k + $0] == e }!
                var dot: Float = 0
                for j in 0..<C { dot += dy[t * C + j] * s.out.p[i * C + j] }
                dw.p[t * k + slot] = dot
                let we = groups[e].weights[i]
                for j in 0..<C { s.dys.p[i * C + j] = we * dy[t * C + j] }                       // (n, C)
            }
            // down: out = act W_dᵀ + s·(act A_dᵀ) B_dᵀ.
            floatWeight(LlamaWeights.linearID(layer: l, .down)).withUnsafeBufferPointer { wd in
                BLAS.gemm(transA: false, transB: false, m: n, n: F, k: C, alpha: 1, a: s.dys.p, lda: C,
                          b: wd.baseAddress!, ldb: F, beta: 0, c: s.dact.p, ldc: F)                // dact (n, F)
            }
            func loraBack(_ mi: Int?, dY: UnsafePointer<Float>, x: UnsafePointer<Float>, inner: TrainBuffer, nIn: Int, nOut: Int,
                          dX: UnsafeMutablePointer<Float>, beta: Float) {
                guard let mi else { if beta == 0 { dX.update(repeating: 0, count: n * nIn) }; return }
                let m = lora.modules[mi], sc = m.scale
                grads.dB[mi].withUnsafeMutableBufferPointer { dB in
                    BLAS.gemm(transA: true, transB: false, m: nOut, n: r, k: n, alpha: sc, a: dY, lda: nOut,
                              b: inner.p, ldb: r, beta: 1, c: dB.baseAddress! + e * r, ldc: R)      // dB_e (out, r)
                }
                m.B.withUnsafeBufferPointer { b in
                    BLAS.gemm(transA: false, transB: false, m: n, n: r, k: nOut, alpha: 1, a: dY, lda: nOut,
                              b: b.baseAddress! + e * r, ldb: R, beta: 0, c: s.gd.p, ldc: r)        // gd (n, r)
                }
                grads.dA[mi].withUnsafeMutableBufferPointer { dA in
                    BLAS.gemm(transA: true, transB: false, m: r, n: nIn, k: n, alpha: sc, a: s.gd.p, lda: r,
                              b: x, ldb: nIn, beta: 1, c: dA.baseAddress! + e * r * nIn, ldc: nIn)  // dA_e (r, in)
                }
                m.A.withUnsafeBufferPointer { a in
                    BLAS.gemm(transA: false, transB: false, m: n, n: nIn, k: r, alpha: sc, a: s.gd.p, lda: r,
                              b: a.baseAddress! + e * r * nIn, ldb: nIn, beta: beta, c: dX, ldc: nIn) // dX (+)= s·gd A_e
                }
            }
            loraBack(mix.down, dY: s.dys.p, x: s.act.p, inner: s.ud, nIn: F, nOut: C, dX: s.dact.p, beta: 1)
            VectorKernels.swigluBackward(gate: s.g.p, up: s.u.p, dAct: s.dact.p, dGate: s.dg.p, dUp: s.du.p, count: n * F)
            for (i, t) in rowsE.enumerated() {
                let a = dGB.p + t * F, b = dUB.p + t * F, ga = s.dg.p + i * F, ub = s.du.p + i * F
                for j in 0..<F { a[j] += ga[j]; b[j] += ub[j] }
            }
            loraBack(mix.gate, dY: s.dg.p, x: s.hs.p, inner: s.ug, nIn: C, nOut: F, dX: s.dhs.p, beta: 0)
            loraBack(mix.up, dY: s.du.p, x: s.hs.p, inner: s.uu, nIn: C, nOut: F, dX: s.dhs.p, beta: mix.gate == nil ? 0 : 1)
            for (i, t) in rowsE.enumerated() {
                let d = dhL.p + t * C, src = s.dhs.p + i * C
                for j in 0..<C { d[j] += src[j] }
            }
        }
        // Router: w = softmax of the kept logits, so dl_e = w_e (dw_e − Σ w dw) for kept e; the
        // auxiliary losses reach every logit through the full softmax p.
        let dl = TrainBuffer(N * E)
        let aux = tape.mixAuxDP, zf = tape.mixZ
        for t in 0..<N {
            let d = dl.p + t * E, wr = w.p + t * k, dwr = dw.p + t * k
            var sum: Float = 0
            for i in 0..<k { sum += wr[i] * dwr[i] }
            for i in 0..<k { d[chosen[t * k + i]] += wr[i] * (dwr[i] - sum) }
            let p = lt.mixProbs!.p + t * E
            if !aux.isEmpty {
                var pd: Float = 0
                for j in 0..<E { pd += p[j] * aux[j] }
                for j in 0..<E { d[j] += p[j] * (aux[j] - pd) }
            }
            if zf != 0 {
                // ∂ lse² / ∂l_j = 2·lse·p_j; zf carries the 2 and the mean.
                let lg = lt.mixLogits!.p + t * E
                var m = -Float.infinity
                for q in 0..<E { m = max(m, lg[q]) }
                var se: Float = 0
                for q in 0..<E { se += expf(lg[q] - m) }
                let lse = m + logf(se)
                for j in 0..<E { d[j] += zf * lse * p[j] }
            }
        }
        grads.dRouter[mix.owner].withUnsafeMutableBufferPointer { dr in
            BLAS.gemm(transA: true, transB: false, m: E, n: C, k: N, alpha: 1, a: dl.p, lda: E,
                      b: lt.hFfn.p, ldb: C, beta: 1, c: dr.baseAddress!, ldc: C)                   // dW_r (E, C)
        }
        if !grads.rankCounts[mix.owner].isEmpty {
            for t in 0..<(N * k) { grads.rankCounts[mix.owner][chosen[t]] += 1 }
        }
        // dh = dGB W_gate + dUB W_up (+ their routed experts, when any) + the experts' LoRA + dl W_r.
        // gate and up are not LoRA modules of their own here (no `mods` entry): base products only.
        linearBackward(dY: dGB.p, rows: N, layer: l, .gate, x: lt.hFfn.p, dX: dh, overwrite: true,
                       mods: [:], lora: lora, tape: lt, grads: &grads)
        linearBackward(dY: dUB.p, rows: N, layer: l, .up, x: lt.hFfn.p, dX: dh, overwrite: false,
                       mods: [:], lora: lora, tape: lt, grads: &grads)
        for i in 0..<(N * C) { dh[i] += dhL.p[i] }
        mix.router.withUnsafeBufferPointer { wr in
            BLAS.gemm(transA: false, transB: false, m: N, n: C, k: E, alpha: 1, a: dl.p, lda: E,
                      b: wr.baseAddress!, ldb: C, beta: 1, c: dh, ldc: C)                          // dh += dl W_r
        }
    }
}
