import Foundation

// Per-token routing over frozen LoRA experts, at every routed projection:
//
//   y = W x + Σ_{i ∈ topk(s(x))} g_i(x) · s_i B_i (A_i x),   g = softmax(s_kept / T)
//
// computed the way MeteoRA's fused kernel is: the experts' A are stacked into one (ΣR, in) matrix,
// so a row pays one (in × ΣR) product for all experts; then each expert's B runs only over the rows
// that kept it. Scores s(x) come from a gate per projection:
//   linear (MeteoRA, mergekit-moe "hidden"):  s_i = G_i · x                   G (N, in)
//   arrow  (Arrow, arXiv 2405.11157):         s_i = |P_i · x| / ‖x‖          P (N, in), unit rows
// or, for X-LoRA (XLoRA.swift), the weights are given per row and layer by its classifier.
// Ties in top-k go to the lower expert index, so an all-zero linear gate with k = N is exactly
// the uniform mixture Σ (1/N) s_i B_i A_i x (the tests rely on that).

/// How a gate turns a projection input into expert scores.
public enum GateKind: String, Sendable, Codable, CaseIterable {
    case linear
    case arrow
    /// One choice per request from the prompt (SequenceRouter.swift); no per-token gates.
    case sequence
    /// Per-token, per-layer weights from a classifier on the base model's last hidden state
    /// (XLoRA.swift); no per-projection gates.
    case xlora
}

/// The top-k and temperature every routed projection of one model uses.
public struct RoutingPolicy: Sendable, Equatable {
    public var topK: Int
    public var temperature: Float
    public init(topK: Int, temperature: Float) {
        self.topK = topK
        self.temperature = temperature
    }
}

/// One routed projection: the experts' stacked factors and the gate.
struct RoutedLinear: Sendable {
    let experts: Int                 // N
    let inFeatures: Int
    let outFeatures: Int
    let stackedA: [Float]            // (ΣR, in): expert i's rows at offsets[i]..<offsets[i+1]
    let offsets: [Int]               // N + 1
    let B: [[Float]]                 // expert i: (out, r_i); empty when it has no LoRA here
    let coef: [Float]                // expert i: its scale s_i
    let gate: [Float]                // (N, in)
    let kind: GateKind

    var totalRank: Int { offsets[experts] }
    func rank(_ i: Int) -> Int { offsets[i + 1] - offsets[i] }
    func present(_ i: Int) -> Bool { !B[i].isEmpty }
}

/// The routed part of an `AdapterSet`: routed projections by linear id and the policy.
struct RoutedLayers: Sendable {
    let linears: [Int: RoutedLinear]
    let policy: RoutingPolicy
    let expertNames: [String]
    /// X-LoRA: the classifier whose scalings weight every routed projection (nil: per-projection gates).
    var xlora: XLoRAClassifier? = nil
}

/// Gate statistics gathered while a session runs a routed model (`LlamaSession.routingTrace`):
/// per routed projection, the summed gate weight and the top-1 count of each expert, over rows at
/// positions ≥ `fromPosition` (set it to the answer's first position to leave the prompt out).
public final class RoutingTrace {
    public let experts: Int
    public var fromPosition = 0
    /// Per linear id: Σ g_i over traced rows (N), and how often expert i had the largest weight.
    public private(set) var weightSums: [Int: [Double]] = [:]
    public private(set) var topOne: [Int: [Int]] = [:]
    public private(set) var rows: [Int: Int] = [:]

    public init(experts: Int) { self.experts = experts }

    public func clear() { weightSums = [:]; topOne = [:]; rows = [:] }

    func record(id: Int, weights: UnsafePointer<Float>, rows n: Int, firstPosition: Int) {
        var sums = weightSums[id] ?? [Double](repeating: 0, count: experts)
        var top = topOne[id] ?? [Int](repeating: 0, count: experts)
        var counted = 0
        for t in 0..<n where firstPosition + t >= fromPosition {
            let w = weights + t * experts
            var best = 0
            for i in 0..<experts {
                sums[i] += Double(w[i])
                if w[i] > w[best] { best = i }
            }
            top[best] += 1
            counted += 1
        }
        weightSums[id] = sums
        topOne[id] = top
        rows[id, default: 0] += counted
    }

    /// A per-request router's choice for one whole sequence: counted as one top-1 under the
    /// pseudo-projection −1 (no per-layer weights).
    public func recordChoice(_ expert: Int) {
        var top = topOne[-1] ?? [Int](repeating: 0, count: experts)
        top[expert] += 1
        topOne[-1] = top
    }

    /// Mean gate weight of each expert per layer (averaged over the layer's routed projections),
    /// (layers, N); layers without routed projections are zero rows.
    public func meanWeightPerLayer(layers: Int) -> [[Double]] {
        var out = [[Double]](repeating: [Double](repeating: 0, count: experts), count: layers)
        var count = [Int](repeating: 0, count: layers)
        let per = Projection.allCases.count
        for (id, sums) in weightSums {
            let l = id / per, n = rows[id] ?? 0
            guard l < layers, n > 0 else { continue }
            for i in 0..<experts { out[l][i] += sums[i] / Double(n) }
            count[l] += 1
        }
        for l in 0..<layers where count[l] > 0 { out[l] = out[l].map { $0 / Double(count[l]) } }
        return out
    }

    /// Fraction of traced (row, projection) pairs whose top-1 expert is `expert`.
    public func topOneFraction(of expert: Int) -> Double {
        let total = topOne.values.reduce(0) { $0 + $1.reduce(0, +) }
        guard total > 0 else { return 0 }
        return Double(topOne.values.reduce(0) { $0 + $1[expert] }) / Double(total)
    }
}

/// What the gates chose for the last row a session fed: the gate weights of that row summed over
/// every routed projection (serve's per-token top-1 adapter, `lorafuse: {"routing": true}`).
/// Cleared by whoever reads it, before each step.
public final class TokenRouting: @unchecked Sendable {
    public let experts: Int
    public private(set) var sums: [Double]
    public init(experts: Int) {
        self.experts = experts
        sums = [Double](repeating: 0, count: experts)
    }
    public func clear() { for i in sums.indices { sums[i] = 0 } }
    func add(_ w: UnsafePointer<Float>) { for i in 0..<experts { sums[i] += Double(w[i]) } }
    /// The expert with the largest summed weight (nil before any routed projection ran).
    public var top: Int? {
        guard sums.contains(where: { $0 > 0 }) else { return nil }
        return sums.indices.max { sums[$0] < sums[$1] || (sums[$0] == sums[$1] && $0 > $1) }
    }
}

extension RoutedLinear {
    /// weights (rows, N) ← the gate weights of each row: softmax over the kept top-k scores, 0 for
    /// the others. `scores` holds x · gateᵀ on entry (arrow: before taking |·| / ‖x‖).
    func gateWeights(_ x: UnsafePointer<Float>, rows: Int, scores: UnsafeMutablePointer<Float>, policy: RoutingPolicy) {
        let N = experts, k = min(policy.topK, N)
        let invT = 1 / max(policy.temperature, 1e-6)
        var order = [Int](repeating: 0, count: N), kept = [Float](repeating: 0, count: N)
        for t in 0..<rows {
            let s = scores + t * N
            if kind == .arrow {
                var ss: Float = 0
                let xr = x + t * inFeatures
                for j in 0..<inFeatures { ss += xr[j] * xr[j] }
                let inv = 1 / max(ss.squareRoot(), 1e-12)
                for i in 0..<N { s[i] = abs(s[i]) * inv }
            }
            // Experts with no LoRA at this projection are never chosen.
            var avail = 0
            for i in 0..<N where present(i) { order[avail] = i; avail += 1 }
            order.withUnsafeMutableBufferPointer { o in
                kept.withUnsafeMutableBufferPointer { kp in
                    Self.keepTopK(s, n: N, candidates: o.baseAddress!, count: avail, k: k, invT: invT, kept: kp.baseAddress!)
                }
            }
        }
    }

    /// s (n) ← softmax(s · invT) over the k largest of the candidates `order[0..<count]` (a partial
    /// selection sort; ties keep the lower index first), 0 everywhere else. `order` is permuted;
    /// `kept` holds at least min(k, count) values. Shared by the per-projection gates and X-LoRA's
    /// per-layer scalings.
    static func keepTopK(_ s: UnsafeMutablePointer<Float>, n: Int, candidates order: UnsafeMutablePointer<Int>, count: Int,
                         k: Int, invT: Float, kept: UnsafeMutablePointer<Float>) {
        let kk = min(k, count)
        for a in 0..<kk {
            var best = a
            for b in (a + 1)..<count where s[order[b]] > s[order[best]] || (s[order[b]] == s[order[best]] && order[b] < order[best]) {
                best = b
            }
            (order[a], order[best]) = (order[best], order[a])
        }
        var m = -Float.infinity
        for a in 0..<kk { m = max(m, s[order[a]] * invT) }
        var z: Float = 0
        for a in 0..<kk { kept[a] = expf(s[order[a]] * invT - m); z += kept[a] }
        for i in 0..<n { s[i] = 0 }
        for a in 0..<kk { s[order[a]] = kept[a] / z }
    }
}

extension RoutedLinear {
    /// The experts' factors at linear `id` stacked for the routed forward; nil when no expert has
    /// a LoRA there.
    static func stacking(_ perExpert: [[Int: LoRAFactors]], id: Int, linear lw: LinearWeights, gate: [Float],
                         kind: GateKind) -> RoutedLinear? {
        let N = perExpert.count
        var stacked: [Float] = [], offsets = [0], Bs: [[Float]] = [], coefs: [Float] = []
        for i in 0..<N {
            if let f = perExpert[i][id] {
                stacked += f.A
                Bs.append(f.B)
                coefs.append(f.coef)
                offsets.append(offsets.last! + f.rank)
            } else {
                Bs.append([])
                coefs.append(0)
                offsets.append(offsets.last!)
            }
        }
        guard offsets.last! > 0 else { return nil }
        return RoutedLinear(experts: N, inFeatures: lw.inFeatures, outFeatures: lw.outFeatures,
                            stackedA: stacked, offsets: offsets, B: Bs, coef: coefs, gate: gate, kind: kind)
    }

    /// Scratch floats `forward` needs for `rows` rows.
    func scratchCount(rows: Int) -> Int {
        let maxR = (0..<experts).map(rank).max() ?? 1
        return rows * totalRank + rows * experts + rows * maxR + rows * outFeatures
    }

    /// out (rows, out) += Σ_i g_i(x) s_i (x A_iᵀ) B_iᵀ over each row's kept experts, with the
    /// gate `gate` (N, in) — the stored one at inference, the one being trained by the training
    /// engine — or, when `given` is set, the weights g of row t at given + t · givenStride (X-LoRA's
    /// scalings of this layer; 0 = not kept). Leaves za (rows, ΣR) = x · stackedAᵀ and w (rows, N)
    /// = the weights at the front of `scratch` (the training engine's backward reads them; the
    /// trace reads w).
    func forward(_ x: UnsafePointer<Float>, rows: Int, gate: UnsafePointer<Float>?, policy: RoutingPolicy,
                 given: UnsafePointer<Float>? = nil, givenStride: Int = 0,
                 scratch: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>, ld: Int) {
        let N = experts, S = totalRank, nIn = inFeatures, nOut = outFeatures
        let maxR = (0..<N).map(rank).max() ?? 1
        let za = scratch, w = scratch + rows * S, z = w + rows * N, y = z + rows * maxR
        stackedA.withUnsafeBufferPointer { a in
            // (rows, ΣR) = x · stackedAᵀ: every expert's down-projection in one GEMM.
            BLAS.gemm(transA: false, transB: true, m: rows, n: S, k: nIn, alpha: 1,
                      a: x, lda: nIn, b: a.baseAddress!, ldb: nIn, beta: 0, c: za, ldc: S)
        }
        if let given {
            for t in 0..<rows { (w + t * N).update(from: given + t * givenStride, count: N) }
        } else {
            // (rows, N) = x · gateᵀ
            BLAS.gemm(transA: false, transB: true, m: rows, n: N, k: nIn, alpha: 1,
                      a: x, lda: nIn, b: gate!, ldb: nIn, beta: 0, c: w, ldc: N)
            gateWeights(x, rows: rows, scores: w, policy: policy)
        }
        var chosen = [Int]()
        chosen.reserveCapacity(rows)
        for i in 0..<N where present(i) {
            let ri = rank(i), off = offsets[i]
            chosen.removeAll(keepingCapacity: true)
            for t in 0..<rows where w[t * N + i] > 0 { chosen.append(t) }
            if chosen.isEmpty { continue }
            // Z (n, r_i) = g_i · s_i · (x A_iᵀ) for the rows that kept expert i.
            for (j, t) in chosen.enumerated() {
                let c = w[t * N + i] * coef[i]
                for q in 0..<ri { z[j * ri + q] = c * za[t * S + off + q] }
            }
            B[i].withUnsafeBufferPointer { b in
                if chosen.count == rows {
                    // Every row kept it: (rows, out) += Z · B_iᵀ in place.
                    BLAS.gemm(transA: false, transB: true, m: rows, n: nOut, k: ri, alpha: 1,
                              a: z, lda: ri, b: b.baseAddress!, ldb: ri, beta: 1, c: out, ldc: ld)
                } else {
                    // Y (n, out) = Z · B_iᵀ, then scattered onto the rows that kept it.
                    BLAS.gemm(transA: false, transB: true, m: chosen.count, n: nOut, k: ri, alpha: 1,
                              a: z, lda: ri, b: b.baseAddress!, ldb: ri, beta: 0, c: y, ldc: nOut)
                    for (j, t) in chosen.enumerated() {
                        let o = out + t * ld, yy = y + j * nOut
                        for c in 0..<nOut { o[c] += yy[c] }
                    }
                }
            }
        }
    }
}

extension LlamaSession {
    /// out (rows, out) += Σ_i g_i(x) s_i (x A_iᵀ) B_iᵀ over each row's kept experts.
    /// `firstPosition` is the position of row 0 (for the trace).
    /// Returns the gate weights (rows, N), valid until the next routed call on this session.
    @discardableResult
    func applyRouted(_ r: RoutedLinear, id: Int, policy: RoutingPolicy, _ x: UnsafePointer<Float>, rows: Int,
                     into out: UnsafeMutablePointer<Float>, ld: Int, firstPosition: Int) -> UnsafeMutablePointer<Float> {
        let buf = routeTmp.reserve(r.scratchCount(rows: rows))
        if r.kind == .xlora, let xl = adapters.routed?.xlora {
            // This layer's scalings, prepared by `feed` for the rows being fed.
            let layer = id / Projection.allCases.count
            r.forward(x, rows: rows, gate: nil, policy: policy, given: xloraScalings.pointer + layer * xl.experts,
                      givenStride: xl.width, scratch: buf, into: out, ld: ld)
        } else {
            r.gate.withUnsafeBufferPointer { g in
                r.forward(x, rows: rows, gate: g.baseAddress!, policy: policy, scratch: buf, into: out, ld: ld)
            }
        }
        routingTrace?.record(id: id, weights: buf + rows * r.totalRank, rows: rows, firstPosition: firstPosition)
        return buf + rows * r.totalRank
    }
}
