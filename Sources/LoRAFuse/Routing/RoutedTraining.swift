import Foundation

// Training gates over frozen experts by backpropagating through the routed forward (MeteoRA's
// LM-loss term). At a routed projection, with u_i = x A_iᵀ (rows, r_i), e_i = s_i u_i B_iᵀ and
// g = softmax(kept scores / T), scores l = x Gᵀ (rows, N):
//
//   y     = W x + Σ_{i kept} g_i e_i
//   dg_i  = ⟨dy, e_i⟩ = s_i ⟨dy B_i, u_i⟩                                   (per row)
//   dl_i  = g_i (dg_i − Σ_k g_k dg_k) / T   for kept i, 0 for the others
//   dG   += dlᵀ x        dx += dl G + Σ_{i kept} g_i s_i (dy B_i) A_i
//
// The top-k choice itself has no gradient (as in MeteoRA and every top-k router). The supervised
// gate loss is the mean, over routed projections and supervised rows, of the cross-entropy of
// softmax(l) over the experts present at that projection against the row's task; its gradient
// adds weight/count · (p − onehot) to dl. The weight is MeteoRA's λ (50 in its code). The
// optional Switch load-balance term, per projection α · N · Σ_i f_i P_i over the labelled rows
// (f_i: share whose top-1 of p is i, held fixed; P_i: mean p_i), averaged over projections, adds
// α N / (R · projections) · p_i (f_i − Σ_k f_k p_k) to each row's dl. The optional entropy
// term (LoRA-Mixer's entropy shaping, with the balance term its "specialization loss"), β times
// the mean over the same (projection, row) pairs of H(p) = −Σ p_i log p_i, adds
// β/count · (−p_j (log p_j + H)) to dl_j: it sharpens each token's routing without task labels.

/// Gates being trained over frozen experts: the experts stacked per projection as the routed
/// forward reads them, and one (N, in) linear gate per routed projection.
public final class TrainableRouting {
    let linears: [Int: RoutedLinear]
    /// Routed linear id → gate (N, in), row-major.
    public var gates: [Int: [Float]]
    public let policy: RoutingPolicy
    /// Routed linear ids, ascending.
    public let ids: [Int]
    public let experts: Int

    /// Every adapter checked against the model; projections in `ids` that no adapter touches are
    /// left out. Gates start at zero (every score ties: the first top-k experts, equal weights)
    /// unless `initial` gives them.
    /// With `kind` .xlora there are no gates: the weights come per row from the pass's scalings.
    public init(model: LlamaModel, adapters: [LoRAAdapter], ids: [Int], policy: RoutingPolicy,
                initial: [Int: [Float]] = [:], kind: GateKind = .linear) throws {
        let perExpert = try model.expertFactors(adapters)
        experts = adapters.count
        self.policy = policy
        var linears: [Int: RoutedLinear] = [:], gates: [Int: [Float]] = [:]
        for id in ids {
            let lw = model.base.linears[id]
            let g = kind == .xlora ? [] : initial[id] ?? [Float](repeating: 0, count: adapters.count * lw.inFeatures)
            precondition(kind == .xlora || g.count == adapters.count * lw.inFeatures, "gate \(id): \(g.count) values, expected N × in")
            guard let r = RoutedLinear.stacking(perExpert, id: id, linear: lw, gate: [], kind: kind) else { continue }
            linears[id] = r
            gates[id] = g
        }
        self.linears = linears
        self.gates = gates
        self.ids = linears.keys.sorted()
    }
}

/// One packed batch's routed state between the training engine's forward and backward.
final class RoutedTrainingPass {
    let routing: TrainableRouting
    /// Per packed row: the task (expert index) its gate loss names, −1 for rows without one.
    let rowLabel: [Int]
    let gateWeight: Float
    let balance: Float
    let entropy: Float
    private var scratch: [Int: TrainBuffer] = [:]   // id → za (rows, ΣR), w (rows, N), …
    private var probs: [Int: TrainBuffer] = [:]     // id → softmax of x Gᵀ over present experts (rows, N)
    /// Gradients of the gates, by id.
    var grads: [Int: [Float]] = [:]
    /// Σ cross-entropy over (projection, labelled row) pairs, and their count.
    private(set) var ceSum = 0.0
    private(set) var ceCount = 0
    /// Σ H(p) over the same pairs.
    private(set) var entropySum = 0.0

    private var projections = 0                     // routed projections with labelled rows
    /// X-LoRA: the weights of every packed row per layer (rows, L·N), given; and ∂L/∂ of them,
    /// accumulated by the backward.
    let scalings: [Float]?
    private(set) var dScalings: [Float] = []

    init(routing: TrainableRouting, rowLabel: [Int], gateWeight: Float, balance: Float = 0, entropy: Float = 0,
         scalings: [Float]? = nil) {
        self.routing = routing
        self.rowLabel = rowLabel
        self.gateWeight = gateWeight
        self.balance = balance
        self.entropy = entropy
        self.scalings = scalings
        if let scalings { dScalings = [Float](repeating: 0, count: scalings.count) }
    }

    /// Scalings per row: L·N.
    private var scalingWidth: Int { scalings.map { $0.count / max(rowLabel.count, 1) } ?? 0 }

    /// Mean routing entropy of the forward pass.
    var meanEntropy: Double { entropySum / Double(max(ceCount, 1)) }

    /// Mean gate cross-entropy of the forward pass.
    var meanCrossEntropy: Double { ceSum / Double(max(ceCount, 1)) }

    /// out (rows, out) += the routed term of linear `id`, keeping what the backward reads.
    func forward(id: Int, _ x: UnsafePointer<Float>, rows: Int, into out: UnsafeMutablePointer<Float>) {
        guard let r = routing.linears[id], let gate = routing.gates[id] else { return }
        let N = r.experts, nIn = r.inFeatures
        let buf = TrainBuffer(r.scratchCount(rows: rows))
        if let scalings {
            let layer = id / Projection.allCases.count, W = scalingWidth
            precondition(rows * W == scalings.count, "X-LoRA scalings: \(scalings.count) values for \(rows) rows")
            scalings.withUnsafeBufferPointer { s in
                r.forward(x, rows: rows, gate: nil, policy: routing.policy, given: s.baseAddress! + layer * N, givenStride: W,
                          scratch: buf.p, into: out, ld: r.outFeatures)
            }
            scratch[id] = buf
            return
        }
        gate.withUnsafeBufferPointer { g in
            r.forward(x, rows: rows, gate: g.baseAddress!, policy: routing.policy, scratch: buf.p, into: out, ld: r.outFeatures)
        }
        scratch[id] = buf
        guard gateWeight > 0 || balance > 0 || entropy > 0 else { return }
        let p = TrainBuffer(rows * N)
        gate.withUnsafeBufferPointer { g in
            BLAS.gemm(transA: false, transB: true, m: rows, n: N, k: nIn, alpha: 1, a: x, lda: nIn,
                      b: g.baseAddress!, ldb: nIn, beta: 0, c: p.p, ldc: N)                    // l (rows, N)
        }
        for t in 0..<rows {
            let row = p.p + t * N
            let y = rowLabel[t]
            guard y >= 0, r.present(y) else { for i in 0..<N { row[i] = 0 }; continue }
            var m = -Float.infinity
            for i in 0..<N where r.present(i) { m = max(m, row[i]) }
            var z: Float = 0
            for i in 0..<N { row[i] = r.present(i) ? expf(row[i] - m) : 0; z += row[i] }
            for i in 0..<N { row[i] /= z }
            ceSum -= Foundation.log(Double(max(row[y], .leastNormalMagnitude)))
            for i in 0..<N where row[i] > 0 { entropySum -= Double(row[i]) * Foundation.log(Double(row[i])) }
            ceCount += 1
        }
        if rowLabel.prefix(rows).contains(where: { $0 >= 0 }) { projections += 1 }
        probs[id] = p
    }

    /// dX (rows, in) += the routed term's input gradient; the gate's gradient is added to `grads`.
    /// `dY` (rows, out) is the output gradient, `x` the input the forward saw.
    func backward(id: Int, dY: UnsafePointer<Float>, x: UnsafePointer<Float>, rows: Int, dX: UnsafeMutablePointer<Float>) {
        guard let r = routing.linears[id], let buf = scratch[id] else { return }
        let N = r.experts, S = r.totalRank, nIn = r.inFeatures, nOut = r.outFeatures
        let za = buf.p, w = buf.p + rows * S
        let invT = 1 / max(routing.policy.temperature, 1e-6)
        let dg = TrainBuffer(rows * N), dl = TrainBuffer(rows * N)
        let maxR = (0..<N).map(r.rank).max() ?? 1
        let gB = TrainBuffer(rows * maxR), Z = TrainBuffer(rows * maxR)
        let dYc = TrainBuffer(rows * nOut), dXc = TrainBuffer(rows * nIn)
        var chosen = [Int]()
        chosen.reserveCapacity(rows)
        for i in 0..<N where r.present(i) {
            chosen.removeAll(keepingCapacity: true)
            for t in 0..<rows where w[t * N + i] > 0 { chosen.append(t) }
            if chosen.isEmpty { continue }
            let ri = r.rank(i), off = r.offsets[i], n = chosen.count, all = n == rows
            var dYi = dY
            if !all {
                for (j, t) in chosen.enumerated() { (dYc.p + j * nOut).update(from: dY + t * nOut, count: nOut) }
                dYi = UnsafePointer(dYc.p)
            }
            r.B[i].withUnsafeBufferPointer { b in
                BLAS.gemm(transA: false, transB: false, m: n, n: ri, k: nOut, alpha: 1, a: dYi, lda: nOut,
                          b: b.baseAddress!, ldb: ri, beta: 0, c: gB.p, ldc: ri)               // dy B_i (n, r_i)
            }
            let s = r.coef[i]
            for (j, t) in chosen.enumerated() {
                var acc: Float = 0
                for q in 0..<ri { acc += gB.p[j * ri + q] * za[t * S + off + q] }
                dg.p[t * N + i] = s * acc
                let c = s * w[t * N + i]
                for q in 0..<ri { Z.p[j * ri + q] = c * gB.p[j * ri + q] }
            }
            r.stackedA.withUnsafeBufferPointer { a in
                let Ai = a.baseAddress! + off * nIn                                            // (r_i, in)
                if all {
                    BLAS.gemm(transA: false, transB: false, m: n, n: nIn, k: ri, alpha: 1, a: Z.p, lda: ri,
                              b: Ai, ldb: nIn, beta: 1, c: dX, ldc: nIn)                       // dx += Z A_i
                } else {
                    BLAS.gemm(transA: false, transB: false, m: n, n: nIn, k: ri, alpha: 1, a: Z.p, lda: ri,
                              b: Ai, ldb: nIn, beta: 0, c: dXc.p, ldc: nIn)
                    for (j, t) in chosen.enumerated() {
                        let d = dX + t * nIn, e = dXc.p + j * nIn
                        for c in 0..<nIn { d[c] += e[c] }
                    }
                }
            }
        }
        if scalings != nil {
            // X-LoRA: the weights do not depend on x; hand ∂L/∂g to the classifier.
            let layer = id / Projection.allCases.count, W = scalingWidth
            for t in 0..<rows { for i in 0..<N where w[t * N + i] > 0 { dScalings[t * W + layer * N + i] += dg.p[t * N + i] } }
            return
        }
        // Softmax over the kept scores, backward.
        for t in 0..<rows {
            let wr = w + t * N, g = dg.p + t * N, d = dl.p + t * N
            var sum: Float = 0
            for i in 0..<N where wr[i] > 0 { sum += wr[i] * g[i] }
            for i in 0..<N where wr[i] > 0 { d[i] = wr[i] * (g[i] - sum) * invT }
        }
        if let p = probs[id], ceCount > 0 {
            let scale = gateWeight / Float(ceCount)
            // Switch balance: f_i from the labelled rows' top-1, held fixed.
            var f = [Float](repeating: 0, count: N)
            var R = 0
            if balance > 0 {
                for t in 0..<rows where rowLabel[t] >= 0 && r.present(rowLabel[t]) {
                    let pr = p.p + t * N
                    var best = 0
                    for i in 0..<N where pr[i] > pr[best] { best = i }
                    f[best] += 1
                    R += 1
                }
                for i in 0..<N { f[i] /= Float(max(R, 1)) }
            }
            let bScale = balance * Float(N) / Float(max(R, 1) * max(projections, 1))
            let eScale = entropy / Float(ceCount)
            for t in 0..<rows {
                let y = rowLabel[t]
                guard y >= 0, r.present(y) else { continue }
                let pr = p.p + t * N, d = dl.p + t * N
                var fp: Float = 0, H: Float = 0
                for k in 0..<N { fp += f[k] * pr[k] }
                if entropy > 0 { for k in 0..<N where pr[k] > 0 { H -= pr[k] * logf(pr[k]) } }
                for i in 0..<N where r.present(i) {
                    d[i] += scale * (pr[i] - (i == y ? 1 : 0)) + bScale * pr[i] * (f[i] - fp)
                    if entropy > 0 && pr[i] > 0 { d[i] -= eScale * pr[i] * (logf(pr[i]) + H) }
                }
            }
        }
        var dG = grads[id] ?? [Float](repeating: 0, count: N * nIn)
        dG.withUnsafeMutableBufferPointer { gp in
            BLAS.gemm(transA: true, transB: false, m: N, n: nIn, k: rows, alpha: 1, a: dl.p, lda: N,
                      b: x, ldb: nIn, beta: 1, c: gp.baseAddress!, ldc: nIn)                  // dG += dlᵀ x (N, in)
        }
        grads[id] = dG
        routing.gates[id]!.withUnsafeBufferPointer { g in
            BLAS.gemm(transA: false, transB: false, m: rows, n: nIn, k: N, alpha: 1, a: dl.p, lda: N,
                      b: g.baseAddress!, ldb: nIn, beta: 1, c: dX, ldc: nIn)                   // dx += dl G
        }
    }
}
