import Foundation

// One decode step for many sequences at once, each with its own KV cache, position and adapters
// (continuous batching, S-LoRA / Punica style):
//
//   x (B, C) = embed(token_b)                               row b belongs to session b
//   per layer: the base product of every linear runs once for all B rows (each stored weight
//              block is read once per step, not once per sequence); each adapter set's LoRA
//              factors are applied to the contiguous rows of its sequences (rows are ordered by
//              adapter set, so a group is one skinny GEMM pair: Punica's SGMV on a CPU);
//              RoPE, the KV-cache write and attention are per row, at that row's position.
//   logits (B, V)
//
// Sequences whose adapters are merged into weights (LoRAMode.merged) have base products of their
// own; they are stepped one by one after the batch.

public enum BatchedDecodeError: Error, CustomStringConvertible, Equatable {
    case mismatchedCounts(sessions: Int, tokens: Int)
    case duplicateSession(index: Int)
    case otherModel(index: Int)

    public var description: String {
        switch self {
        case let .mismatchedCounts(s, t): return "decode step: \(s) sessions but \(t) tokens"
        case let .duplicateSession(i): return "decode step: session \(i) appears twice in one step"
        case let .otherModel(i): return "decode step: session \(i) belongs to another model"
        }
    }
}

extension LlamaModel {
    /// Feeds `tokens[b]` to `sessions[b]` for every b in one batched forward and returns the next-
    /// token logits, (B, V), row b for session b. Equal (up to float summation order) to calling
    /// `sessions[b].feed([tokens[b]])` one by one. Nothing changes if any check fails.
    public func decodeStep(_ sessions: [LlamaSession], tokens: [Int]) throws -> Matrix {
        let B = sessions.count, V = vocabSize
        guard tokens.count == B else { throw BatchedDecodeError.mismatchedCounts(sessions: B, tokens: tokens.count) }
        var seen = Set<ObjectIdentifier>()
        for (i, s) in sessions.enumerated() {
            guard s.model === self else { throw BatchedDecodeError.otherModel(index: i) }
            guard seen.insert(ObjectIdentifier(s)).inserted else { throw BatchedDecodeError.duplicateSession(index: i) }
            guard s.position + 1 <= s.maxTokens else { throw ModelError.contextFull(maxTokens: s.maxTokens, requested: s.position + 1) }
            guard tokens[i] >= 0 && tokens[i] < V else { throw ModelError.tokenOutOfRange(token: tokens[i], vocabSize: V) }
        }
        var out = Matrix(rows: B, cols: V)
        if B == 0 { return out }
        // Batchable rows grouped by adapter set; merged sets (and a lone batchable row) one by one.
        var batch = sessions.indices.filter { !sessions[$0].adapters.changesBaseWeights && sessions[$0].activations == nil
            && sessions[$0].routingTrace == nil && sessions[$0].linearInputObserver == nil }
        if batch.count == 1 { batch = [] }
        let inBatch = Set(batch)
        var order: [Int] = []
        var groups: [(rows: Range<Int>, set: AdapterSet)] = []
        var byIdentity: [ObjectIdentifier: [Int]] = [:], firstSeen: [ObjectIdentifier] = []
        for i in batch {
            let key = ObjectIdentifier(sessions[i].adapters.identity)
            if byIdentity[key] == nil { firstSeen.append(key) }
            byIdentity[key, default: []].append(i)
        }
        for key in firstSeen {
            let members = byIdentity[key]!
            groups.append((order.count..<(order.count + members.count), sessions[members[0]].adapters))
            order += members
        }
        if !order.isEmpty {
            let logits = sessions[order[0]].batchedForward(order.map { sessions[$0] }, tokens: order.map { tokens[$0] }, groups: groups)
            for (row, i) in order.enumerated() {
                out.data.replaceSubrange((i * V)..<((i + 1) * V), with: logits[(row * V)..<((row + 1) * V)])
            }
            for i in order { sessions[i].position += 1 }
        }
        for i in sessions.indices where !inBatch.contains(i) {
            let l = try sessions[i].feed([tokens[i]])
            out.data.replaceSubrange((i * V)..<((i + 1) * V), with: l.data)
        }
        return out
    }
}

extension LlamaSession {
    /// The batched forward of `decodeStep` on this session's scratch buffers; `members[row]` owns
    /// row `row` (its cache, position and RoPE table), `groups` cover 0..<B contiguously.
    func batchedForward(_ members: [LlamaSession], tokens: [Int], groups: [(rows: Range<Int>, set: AdapterSet)]) -> [Float] {
        let c = model.config
        let B = members.count, C = c.hiddenSize, L = c.numHiddenLayers, V = c.vocabSize
        let H = c.numAttentionHeads, Hkv = c.numKeyValueHeads, d = c.headDim, F = c.intermediateSize
        let kv = Hkv * d
        let x = self.x.reserve(B * C), h = self.h.reserve(B * C)
        let q = self.q.reserve(B * H * d), attnOut = self.attnOut.reserve(B * H * d)
        let gate = self.gate.reserve(B * F), up = self.up.reserve(B * F)
        let kvBuf = kvRows.reserve(2 * B * kv)         // new k and v rows before they go to each cache
        let kNew = kvBuf, vNew = kvBuf + B * kv
        let positions = members.map(\.position)

        // x (B, C): each row's embedding, plus embedding LoRA per group.
        for (b, tok) in tokens.enumerated() { model.base.embedRow(tok, into: x + b * C, width: C) }
        for g in groups where !g.set.embedFactors.isEmpty {
            let col = loraTmp.reserve(max(g.set.maxRank, 1))
            for f in g.set.embedFactors {
                f.A.withUnsafeBufferPointer { a in
                    f.B.withUnsafeBufferPointer { bb in
                        for row in g.rows {
                            for j in 0..<f.rank { col[j] = a[j * V + tokens[row]] }
                            BLAS.gemm(transA: false, transB: true, m: 1, n: C, k: f.rank, alpha: f.coef,
                                      a: col, lda: f.rank, b: bb.baseAddress!, ldb: f.rank, beta: 1, c: x + row * C, ldc: C)
                        }
                    }
                }
            }
        }
        /// out = x Wᵀ for all rows, then each group's LoRA on its rows.
        func lin(_ x: UnsafePointer<Float>, _ id: Int, into out: UnsafeMutablePointer<Float>, ld: Int, nIn: Int, accumulate: Bool = false) {
            baseLinear(x, rows: B, id: id, merged: nil, into: out, ld: ld, accumulate: accumulate)
            groupTerms(x, id, into: out, ld: ld, nIn: nIn)
        }
        /// `lin` (no accumulate) for several linears of the same input, base products grouped.
        func linGroup(_ x: UnsafePointer<Float>, _ targets: [LinearTarget], nIn: Int) {
            guard groupedBaseProducts(x, rows: B, targets, merged: [:]) else {
                for t in targets { lin(x, t.id, into: t.out, ld: t.ld, nIn: nIn) }
                return
            }
            for t in targets { groupTerms(x, t.id, into: t.out, ld: t.ld, nIn: nIn) }
        }
        /// Each adapter group's LoRA and routed terms on its rows.
        func groupTerms(_ x: UnsafePointer<Float>, _ id: Int, into out: UnsafeMutablePointer<Float>, ld: Int, nIn: Int) {
            for g in groups {
                if let factors = g.set.linearFactors[id] {
                    applyLoRA(factors, x + g.rows.lowerBound * nIn, rows: g.rows.count, id: id,
                              into: out + g.rows.lowerBound * ld, ld: ld)
                }
                if let routed = g.set.routed, let r = routed.linears[id] {
                    applyRouted(r, id: id, policy: routed.policy, x + g.rows.lowerBound * nIn, rows: g.rows.count,
                                into: out + g.rows.lowerBound * ld, ld: ld, firstPosition: 0)
                }
            }
        }
        for l in 0..<L {
            rmsNorm(x, weight: model.base.attnNorms[l], eps: c.rmsNormEps, rows: B, cols: C, into: h)      // (B, C)
            linGroup(h, [LinearTarget(id: LlamaWeights.linearID(layer: l, .q), out: q, ld: H * d),         // (B, H·d)
                         LinearTarget(id: LlamaWeights.linearID(layer: l, .k), out: kNew, ld: kv),         // (B, Hkv·d)
                         LinearTarget(id: LlamaWeights.linearID(layer: l, .v), out: vNew, ld: kv)], nIn: C) // (B, Hkv·d)
            for (b, s) in members.enumerated() {
                let p = positions[b]
                VectorKernels.rope(q + b * H * d, rows: 1, heads: H, headDim: d, start: p, cos: s.rope.cos, sin: s.rope.sin)
                VectorKernels.rope(kNew + b * kv, rows: 1, heads: Hkv, headDim: d, start: p, cos: s.rope.cos, sin: s.rope.sin)
                (s.kCache[l].pointer + p * kv).update(from: kNew + b * kv, count: kv)
                (s.vCache[l].pointer + p * kv).update(from: vNew + b * kv, count: kv)
            }
            batchedAttention(members, positions: positions, layer: l, q: q, into: attnOut)               // (B, H·d)
            lin(attnOut, LlamaWeights.linearID(layer: l, .o), into: x, ld: C, nIn: H * d, accumulate: true)   // x += (B, C)
            rmsNorm(x, weight: model.base.ffnNorms[l], eps: c.rmsNormEps, rows: B, cols: C, into: h)
            linGroup(h, [LinearTarget(id: LlamaWeights.linearID(layer: l, .gate), out: gate, ld: F),      // (B, F)
                         LinearTarget(id: LlamaWeights.linearID(layer: l, .up), out: up, ld: F)], nIn: C)  // (B, F)
            swiglu(gate, up, count: B * F)
            lin(gate, LlamaWeights.linearID(layer: l, .down), into: x, ld: C, nIn: F, accumulate: true)   // x += (B, C)
        }
        rmsNorm(x, weight: model.base.finalNorm, eps: c.rmsNormEps, rows: B, cols: C, into: h)
        var logits = [Float](repeating: 0, count: B * V)
        logits.withUnsafeMutableBufferPointer { o in
            lin(h, LlamaWeights.lmHeadID(layers: L), into: o.baseAddress!, ld: V, nIn: C)                  // (B, V)
        }
        return logits
    }

    /// Every member's one-row attention at its own position, the (member, head) pairs spread over
    /// the compute threads; each pair's values are what the member's own
    /// `attention` gives them (the same GEMVs and softmax).
    func batchedAttention(_ members: [LlamaSession], positions: [Int], layer l: Int,
                          q: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        let c = model.config
        let B = members.count, H = c.numAttentionHeads, d = c.headDim
        let group = H / c.numKeyValueHeads, kvw = c.numKeyValueHeads * d
        let scale = 1 / Float(d).squareRoot()
        let maxS = positions.max()! + 1
        let work = positions.reduce(0) { $0 + $1 + 1 } * H * d
        let workers = work >= 1 << 16 ? Parallel.computeThreads : 1
        let scratch = UnsafeSendableBuffer(base: att.reserve(min(workers, B * H) * maxS))
        let caches = members.map { (k: UnsafeSendableBuffer(base: $0.kCache[l].pointer), v: UnsafeSendableBuffer(base: $0.vCache[l].pointer)) }
        Parallel.forEach(count: B * H, workers: workers) { item, worker in
                let b = item / H, hh = item % H, kvh = hh / group, S = positions[b] + 1
                let probs = scratch.base + worker * maxS
                Self.oneQueryProbabilities(q + b * H * d + hh * d, keys: caches[b].k.base + kvh * d, ld: kvw, S: S, d: d,
                                           scale: scale, into: probs)
                Self.oneQueryOutput(probs, values: caches[b].v.base + kvh * d, ld: kvw, S: S, d: d, into: out + b * H * d + hh * d)
        }
    }
}
