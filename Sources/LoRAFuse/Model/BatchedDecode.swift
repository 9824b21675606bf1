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
// own, and X-LoRA sequences a first pass of their own; they are stepped one by one after the batch.

public enum BatchedDecodeError: Error, CustomStringConvertible, Equatable {
    case mismatchedCounts(sessions: Int, tokens: Int)
    case duplicateSession(index: Int)
    case otherModel(index: Int)
    case emptyInput(index: Int)

    public var description: String {
        switch self {
        case let .mismatchedCounts(s, t): return "decode step: \(s) sessions but \(t) tokens"
        case let .duplicateSession(i): return "decode step: session \(i) appears twice in one step"
        case let .otherModel(i): return "decode step: session \(i) belongs to another model"
        case let .emptyInput(i): return "decode step: input \(i) has no tokens"
        }
    }
}

/// One sequence's part of a batched step: the tokens to feed its session (one when decoding, a
/// prompt chunk when prefilling) and whether the logits of the last one are wanted.
public struct StepInput {
    public var session: LlamaSession
    public var tokens: [Int]
    public var wantsLogits: Bool

    public init(session: LlamaSession, tokens: [Int], wantsLogits: Bool = true) {
        self.session = session
        self.tokens = tokens
        self.wantsLogits = wantsLogits
    }
}

extension LlamaModel {
    /// Feeds `tokens[b]` to `sessions[b]` for every b in one batched forward and returns the next-
    /// token logits, (B, V), row b for session b. Equal (up to float summation order) to calling
    /// `sessions[b].feed([tokens[b]])` one by one. Nothing changes if any check fails.
    public func decodeStep(_ sessions: [LlamaSession], tokens: [Int]) throws -> Matrix {
        guard tokens.count == sessions.count else {
            throw BatchedDecodeError.mismatchedCounts(sessions: sessions.count, tokens: tokens.count)
        }
        return try step(zip(sessions, tokens).map { StepInput(session: $0, tokens: [$1]) })
    }

    /// Feeds every input's tokens to its session in one batched forward (continuous batching with
    /// chunked prefill: decoding sequences' next tokens and prompt chunks of others share each
    /// base product) and returns the logits of the last token of each input that wants them,
    /// (count wanting, V), in input order. Each input's values equal (up to float summation order,
    /// and on quantized weights the 8-bit kernels' rounding below 33 rows against dequantized
    /// sgemm above) its own `feed`. Nothing changes if any check fails.
    public func step(_ inputs: [StepInput]) throws -> Matrix {
        let V = vocabSize
        var seen = Set<ObjectIdentifier>()
        for (i, input) in inputs.enumerated() {
            let s = input.session
            guard s.model === self else { throw BatchedDecodeError.otherModel(index: i) }
            guard seen.insert(ObjectIdentifier(s)).inserted else { throw BatchedDecodeError.duplicateSession(index: i) }
            guard !input.tokens.isEmpty else { throw BatchedDecodeError.emptyInput(index: i) }
            guard s.position + input.tokens.count <= s.maxTokens else {
                throw ModelError.contextFull(maxTokens: s.maxTokens, requested: s.position + input.tokens.count)
            }
            for t in input.tokens where t < 0 || t >= V { throw ModelError.tokenOutOfRange(token: t, vocabSize: V) }
        }
        // Blocks for every input before anything runs (blocks taken before a refusal stay with
        // their sessions, which will need them).
        for input in inputs { try input.session.reserveCapacity(input.session.position + input.tokens.count) }
        let wanting = inputs.indices.filter { inputs[$0].wantsLogits }
        var out = Matrix(rows: wanting.count, cols: V)
        if inputs.isEmpty { return out }
        let outRow = Dictionary(uniqueKeysWithValues: wanting.enumerated().map { ($1, $0) })
        // Batchable inputs grouped by adapter set; merged sets (and a lone batchable input) alone.
        var batch = inputs.indices.filter {
            let s = inputs[$0].session
            // X-LoRA sessions run their own first pass (a shadow base session) before each feed.
            return !s.adapters.changesBaseWeights && s.activations == nil && s.routingTrace == nil && s.linearInputObserver == nil
                && s.adapters.routed?.xlora == nil
        }
        if batch.count == 1 { batch = [] }
        let inBatch = Set(batch)
        var order: [Int] = []
        var groups: [(members: Range<Int>, set: AdapterSet)] = []
        var byIdentity: [ObjectIdentifier: [Int]] = [:], firstSeen: [ObjectIdentifier] = []
        for i in batch {
            let key = ObjectIdentifier(inputs[i].session.adapters.identity)
            if byIdentity[key] == nil { firstSeen.append(key) }
            byIdentity[key, default: []].append(i)
        }
        for key in firstSeen {
            let members = byIdentity[key]!
            groups.append((order.count..<(order.count + members.count), inputs[members[0]].session.adapters))
            order += members
        }
        if !order.isEmpty {
            let members = order.map { inputs[$0] }
            let logits = members[0].session.batchedForward(members, groups: groups)
            var k = 0
            for i in order where inputs[i].wantsLogits {
                let r = outRow[i]!
                out.data.replaceSubrange((r * V)..<((r + 1) * V), with: logits[(k * V)..<((k + 1) * V)])
                k += 1
            }
            for i in order { inputs[i].session.position += inputs[i].tokens.count }
        }
        for i in inputs.indices where !inBatch.contains(i) {
            let l = try inputs[i].session.feed(inputs[i].tokens, lastOnly: true)
            if let r = outRow[i] { out.data.replaceSubrange((r * V)..<((r + 1) * V), with: l.data) }
        }
        return out
    }
}

extension LlamaSession {
    /// The batched forward of `step` on this session's scratch buffers: member m owns the rows
    /// of its tokens (its cache, positions and RoPE table), members in order; `groups` cover the
    /// members contiguously. Returns the logits (K, V) of the last row of each member that wants
    /// them, in member order.
    func batchedForward(_ members: [StepInput], groups memberGroups: [(members: Range<Int>, set: AdapterSet)]) -> [Float] {
        let c = model.config
        let C = c.hiddenSize, L = c.numHiddenLayers, V = c.vocabSize
        let H = c.numAttentionHeads, Hkv = c.numKeyValueHeads, d = c.headDim, F = c.intermediateSize
        let kv = Hkv * d
        // Row offsets: member m's tokens are rows offsets[m] ..< offsets[m + 1].
        var offsets = [0]
        for m in members { offsets.append(offsets.last! + m.tokens.count) }
        let R = offsets.last!
        let tokens = members.flatMap(\.tokens)
        let groups = memberGroups.map { (rows: offsets[$0.members.lowerBound]..<offsets[$0.members.upperBound], set: $0.set) }
        let x = self.x.reserve(R * C), h = self.h.reserve(R * C)
        let q = self.q.reserve(R * H * d), attnOut = self.attnOut.reserve(R * H * d)
        let gate = self.gate.reserve(R * F), up = self.up.reserve(R * F)
        let kvBuf = kvRows.reserve(2 * R * kv)         // new k and v rows before they go to each cache
        let kNew = kvBuf, vNew = kvBuf + R * kv
        let sessions = members.map(\.session)
        let positions = sessions.map(\.position)
        let single = members.indices.filter { members[$0].tokens.count == 1 }
        let tracing = sessions.contains { $0.tokenRouting != nil }
        let multi = members.indices.filter { members[$0].tokens.count > 1 }

        // x (R, C): each row's embedding, plus embedding LoRA per group.
        for (r, tok) in tokens.enumerated() { model.base.embedRow(tok, into: x + r * C, width: C) }
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
        /// out = x Wᵀ for `rows` rows, then each group's LoRA on its rows.
        func lin(_ x: UnsafePointer<Float>, _ id: Int, into out: UnsafeMutablePointer<Float>, ld: Int, nIn: Int,
                 accumulate: Bool = false, rows: Int = R, over: [(rows: Range<Int>, set: AdapterSet)]? = nil) {
            baseLinear(x, rows: rows, id: id, merged: nil, into: out, ld: ld, accumulate: accumulate)
            groupTerms(x, id, into: out, ld: ld, nIn: nIn, groups: over ?? groups)
        }
        /// `lin` (no accumulate) for several linears of the same input, base products grouped.
        func linGroup(_ x: UnsafePointer<Float>, _ targets: [LinearTarget], nIn: Int) {
            guard groupedBaseProducts(x, rows: R, targets, merged: [:]) else {
                for t in targets { lin(x, t.id, into: t.out, ld: t.ld, nIn: nIn) }
                return
            }
            for t in targets { groupTerms(x, t.id, into: t.out, ld: t.ld, nIn: nIn, groups: groups) }
        }
        /// Each adapter group's LoRA and routed terms on its rows.
        func groupTerms(_ x: UnsafePointer<Float>, _ id: Int, into out: UnsafeMutablePointer<Float>, ld: Int, nIn: Int,
                        groups: [(rows: Range<Int>, set: AdapterSet)]) {
            for g in groups where !g.rows.isEmpty {
                if let factors = g.set.linearFactors[id] {
                    applyLoRA(factors, x + g.rows.lowerBound * nIn, rows: g.rows.count, id: id,
                              into: out + g.rows.lowerBound * ld, ld: ld)
                }
                if let routed = g.set.routed, let r = routed.linears[id] {
                    let w = applyRouted(r, id: id, policy: routed.policy, x + g.rows.lowerBound * nIn, rows: g.rows.count,
                                        into: out + g.rows.lowerBound * ld, ld: ld, firstPosition: 0)
                    // Each member's last row, to its own per-token routing record.
                    if tracing {
                        for m in members.indices where offsets[m] >= g.rows.lowerBound && offsets[m + 1] <= g.rows.upperBound {
                            if let rec = sessions[m].tokenRouting { rec.add(w + (offsets[m + 1] - 1 - g.rows.lowerBound) * r.experts) }
                        }
                    }
                }
            }
        }
        for l in 0..<L {
            rmsNorm(x, weight: model.base.attnNorms[l], eps: c.rmsNormEps, rows: R, cols: C, into: h)      // (R, C)
            linGroup(h, [LinearTarget(id: LlamaWeights.linearID(layer: l, .q), out: q, ld: H * d),         // (R, H·d)
                         LinearTarget(id: LlamaWeights.linearID(layer: l, .k), out: kNew, ld: kv),         // (R, Hkv·d)
                         LinearTarget(id: LlamaWeights.linearID(layer: l, .v), out: vNew, ld: kv)], nIn: C) // (R, Hkv·d)
            for (m, s) in sessions.enumerated() {
                let p = positions[m], r0 = offsets[m], n = offsets[m + 1] - r0
                VectorKernels.rope(q + r0 * H * d, rows: n, heads: H, headDim: d, start: p, cos: s.rope.cos, sin: s.rope.sin)
                VectorKernels.rope(kNew + r0 * kv, rows: n, heads: Hkv, headDim: d, start: p, cos: s.rope.cos, sin: s.rope.sin)
                s.cache.write(l, from: p, rows: n, k: kNew + r0 * kv, v: vNew + r0 * kv)
            }
            // One query per decoding member, spread over the pool; a prompt chunk with its own causal attention.
            if !single.isEmpty {
                batchedAttention(single.map { sessions[$0] }, positions: single.map { positions[$0] },
                                 rows: single.map { offsets[$0] }, layer: l, q: q, into: attnOut)                // (1, H·d) each
            }
            for m in multi {
                sessions[m].attention(q: q + offsets[m] * H * d, layer: l, rows: members[m].tokens.count, start: positions[m],
                                      into: attnOut + offsets[m] * H * d)                                        // (n, H·d)
            }
            lin(attnOut, LlamaWeights.linearID(layer: l, .o), into: x, ld: C, nIn: H * d, accumulate: true)   // x += (R, C)
            rmsNorm(x, weight: model.base.ffnNorms[l], eps: c.rmsNormEps, rows: R, cols: C, into: h)
            linGroup(h, [LinearTarget(id: LlamaWeights.linearID(layer: l, .gate), out: gate, ld: F),      // (R, F)
                         LinearTarget(id: LlamaWeights.linearID(layer: l, .up), out: up, ld: F)], nIn: C)  // (R, F)
            // MixLoRA groups: their experts' FFN added here; their gate rows zeroed so the shared
            // down product below adds nothing for them (silu(0) = 0) but W_down's bias.
            for g in groups where !g.rows.isEmpty {
                guard let mix = g.set.mixtures[l] else { continue }
                let r0 = g.rows.lowerBound, n = g.rows.count
                mixtureFFN(mix, layer: l, h: h + r0 * C, gateBase: gate + r0 * F, upBase: up + r0 * F, rows: n,
                           into: x + r0 * C, downBias: false)
                (gate + r0 * F).update(repeating: 0, count: n * F)
            }
            swiglu(gate, up, count: R * F)
            lin(gate, LlamaWeights.linearID(layer: l, .down), into: x, ld: C, nIn: F, accumulate: true)   // x += (R, C)
        }
        // The head only on the last row of each member that wants logits: (K, C) → (K, V).
        let wanting = members.indices.filter { members[$0].wantsLogits }
        let K = wanting.count
        if K == 0 { return [] }
        for (k, m) in wanting.enumerated() {
            rmsNorm(x + (offsets[m + 1] - 1) * C, weight: model.base.finalNorm, eps: c.rmsNormEps, rows: 1, cols: C, into: h + k * C)
        }
        // Head rows keep member order, so each group's wanting members are contiguous there too.
        var headGroups: [(rows: Range<Int>, set: AdapterSet)] = []
        var k0 = 0
        for g in memberGroups {
            let n = g.members.filter { members[$0].wantsLogits }.count
            headGroups.append((k0..<(k0 + n), g.set))
            k0 += n
        }
        var logits = [Float](repeating: 0, count: K * V)
        logits.withUnsafeMutableBufferPointer { o in
            lin(h, LlamaWeights.lmHeadID(layers: L), into: o.baseAddress!, ld: V, nIn: C, rows: K, over: headGroups)   // (K, V)
        }
        return logits
    }

    /// Every member's one-row attention at its own position, the (member, head) pairs spread over
    /// the compute threads; each pair's values are what the member's own
    /// `attention` gives them (the same GEMVs and softmax).
    func batchedAttention(_ members: [LlamaSession], positions: [Int], rows: [Int], layer l: Int,
                          q: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        let c = model.config
        let B = members.count, H = c.numAttentionHeads, d = c.headDim
        let group = H / c.numKeyValueHeads, kvw = c.numKeyValueHeads * d
        let scale = 1 / Float(d).squareRoot()
        let maxS = positions.max()! + 1
        let work = positions.reduce(0) { $0 + $1 + 1 } * H * d
        let workers = work >= 1 << 16 ? Parallel.computeThreads : 1
        let scratch = UnsafeSendableBuffer(base: att.reserve(min(workers, B * H) * maxS))
        // Every member's blocks of this layer (one for a private cache), in position order, in one table.
        var kTable: [UnsafeMutablePointer<Float>] = [], vTable: [UnsafeMutablePointer<Float>] = []
        var first = [Int](), blockTokens = [Int]()
        for (b, m) in members.enumerated() {
            first.append(kTable.count)
            blockTokens.append(m.cache.blockTokens)
            m.cache.appendBlocks(l, count: positions[b] + 1, keys: &kTable, values: &vTable)
        }
        kTable.withUnsafeBufferPointer { kt in
            vTable.withUnsafeBufferPointer { vt in
                let keys = UnsafeSendableBuffer(base: UnsafeMutablePointer(mutating: kt.baseAddress!))
                let values = UnsafeSendableBuffer(base: UnsafeMutablePointer(mutating: vt.baseAddress!))
                Parallel.forEach(count: B * H, workers: workers) { item, worker in
                    let b = item / H, hh = item % H, kvh = hh / group, S = positions[b] + 1
                    let probs = scratch.base + worker * maxS
                    let r = rows[b], bt = blockTokens[b]
                    Self.oneQueryProbabilities(q + r * H * d + hh * d, blocks: keys.base + first[b], blockTokens: bt, offset: kvh * d,
                                               ld: kvw, S: S, d: d, scale: scale, into: probs)
                    Self.oneQueryOutput(probs, blocks: values.base + first[b], blockTokens: bt, offset: kvh * d, ld: kvw, S: S, d: d,
                                        into: out + r * H * d + hh * d)
                }
            }
        }
    }
}
