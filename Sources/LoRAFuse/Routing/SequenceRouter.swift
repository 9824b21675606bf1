import Foundation

// Per-request routing (`lorafuse route --method sequence`): one choice per prompt, the way
// multi-adapter servers route today and the lower bound token routing has to beat.
//
//   f(prompt) = mean over the prompt's tokens of the base model's last hidden state (after the
//               final RMSNorm: what lm_head reads), one base forward over the prompt
//   p         = softmax((W f + b) / T)                       W (N, C), b (N)
//   choice    = the top-k adapters, merged linearly with p renormalised over them (k = 1: the
//               single most likely adapter at weight 1)
//
// W, b: multinomial logistic regression on the shots' prompts (label = the shot's adapter), on
// standardised features, full-batch Adam from zero (deterministic), a small L2 on W; the
// standardisation is folded into W and b, so the stored classifier reads raw features.
// On disk: one tensor "sequence.gate" (N, C + 1) in router.safetensors, b in the last column.

/// The classifier of a per-request router.
public struct SequenceRouter: Sendable, Equatable {
    public let experts: Int
    public let hiddenSize: Int
    /// (N, C + 1): W with b as the last column.
    public let table: [Float]
    public var topK: Int
    public var temperature: Float

    public static let tensorName = "sequence"

    public init(experts: Int, hiddenSize: Int, table: [Float], topK: Int, temperature: Float) {
        precondition(table.count == experts * (hiddenSize + 1), "sequence router: table must be N × (C + 1)")
        self.experts = experts
        self.hiddenSize = hiddenSize
        self.table = table
        self.topK = topK
        self.temperature = temperature
    }

    /// softmax((W f + b) / T) over the adapters.
    public func probabilities(_ f: [Float]) -> [Float] {
        precondition(f.count == hiddenSize)
        let C = hiddenSize, invT = 1 / max(temperature, 1e-6)
        var z = (0..<experts).map { i -> Float in
            var s = table[i * (C + 1) + C]
            for j in 0..<C { s += table[i * (C + 1) + j] * f[j] }
            return s * invT
        }
        let m = z.max() ?? 0
        var sum: Float = 0
        for i in z.indices { z[i] = expf(z[i] - m); sum += z[i] }
        return z.map { $0 / sum }
    }

    /// The top-k adapters and their weights (p renormalised over the kept ones); ties go to the
    /// lower index.
    public func choose(_ f: [Float]) -> [(index: Int, weight: Float)] {
        let p = probabilities(f)
        let order = p.indices.sorted { p[$0] > p[$1] || (p[$0] == p[$1] && $0 < $1) }.prefix(min(topK, experts))
        let z = order.reduce(Float(0)) { $0 + p[$1] }
        return order.map { ($0, z > 0 ? p[$0] / z : 1 / Float(order.count)) }
    }

    /// The routing feature of `prompt`: mean last hidden state of the base model over its tokens.
    public static func feature(model: LlamaModel, prompt: [Int]) throws -> [Float] {
        try TaskCondition.meanHiddenState(model: model, adapter: nil, sequences: [prompt])
    }

    /// Fits the classifier on `features[i]` labelled `labels[i]` (see the top of this file).
    public static func fit(features: [[Float]], labels: [Int], experts N: Int, topK: Int, temperature: Float,
                           steps: Int = 300, learningRate: Float = 0.05, l2: Float = 1e-3) -> SequenceRouter {
        precondition(!features.isEmpty && features.count == labels.count)
        let C = features[0].count, M = features.count
        var mu = [Float](repeating: 0, count: C), sd = [Float](repeating: 0, count: C)
        for f in features { for j in 0..<C { mu[j] += f[j] / Float(M) } }
        for f in features { for j in 0..<C { sd[j] += (f[j] - mu[j]) * (f[j] - mu[j]) / Float(M) } }
        sd = sd.map { max($0.squareRoot(), 1e-6) }
        let Z = features.map { f in (0..<C).map { (f[$0] - mu[$0]) / sd[$0] } }
        var W = [Float](repeating: 0, count: N * C), b = [Float](repeating: 0, count: N)
        var mW = W, vW = W, mb = b, vb = b
        let b1: Float = 0.9, b2: Float = 0.999, eps: Float = 1e-8
        for step in 1...max(steps, 1) {
            var gW = [Float](repeating: 0, count: N * C), gb = [Float](repeating: 0, count: N)
            for (z, y) in zip(Z, labels) {
                var s = (0..<N).map { i -> Float in
                    var a = b[i]
                    for j in 0..<C { a += W[i * C + j] * z[j] }
                    return a
                }
                let m = s.max()!
                var sum: Float = 0
                for i in 0..<N { s[i] = expf(s[i] - m); sum += s[i] }
                for i in 0..<N {
                    let d = (s[i] / sum - (i == y ? 1 : 0)) / Float(M)
                    gb[i] += d
                    for j in 0..<C { gW[i * C + j] += d * z[j] }
                }
            }
            for k in 0..<(N * C) { gW[k] += l2 * W[k] }
            let c1 = 1 - powf(b1, Float(step)), c2 = 1 - powf(b2, Float(step))
            for k in 0..<(N * C) {
                mW[k] = b1 * mW[k] + (1 - b1) * gW[k]; vW[k] = b2 * vW[k] + (1 - b2) * gW[k] * gW[k]
                W[k] -= learningRate * (mW[k] / c1) / ((vW[k] / c2).squareRoot() + eps)
            }
            for i in 0..<N {
                mb[i] = b1 * mb[i] + (1 - b1) * gb[i]; vb[i] = b2 * vb[i] + (1 - b2) * gb[i] * gb[i]
                b[i] -= learningRate * (mb[i] / c1) / ((vb[i] / c2).squareRoot() + eps)
            }
        }
        // Fold the standardisation: W' = W / sd, b' = b − W' · mu.
        var table = [Float](repeating: 0, count: N * (C + 1))
        for i in 0..<N {
            var bias = b[i]
            for j in 0..<C {
                let w = W[i * C + j] / sd[j]
                table[i * (C + 1) + j] = w
                bias -= w * mu[j]
            }
            table[i * (C + 1) + C] = bias
        }
        return SequenceRouter(experts: N, hiddenSize: C, table: table, topK: topK, temperature: temperature)
    }
}

/// A per-request router prepared for one model: the classifier and each adapter prepared alone,
/// so a top-1 choice costs no preparation.
public final class SequenceRouting: Sendable {
    public let router: SequenceRouter
    let adapters: [LoRAAdapter]
    let single: [AdapterSet]

    init(router: SequenceRouter, adapters: [LoRAAdapter], single: [AdapterSet]) {
        self.router = router
        self.adapters = adapters
        self.single = single
    }

    /// The adapters chosen for `prompt`, prepared, and a key naming the choice (equal keys: equal sets).
    public func resolve(model: LlamaModel, prompt: [Int]) throws -> (key: String, choice: [(index: Int, weight: Float)], set: AdapterSet) {
        let choice = router.choose(try SequenceRouter.feature(model: model, prompt: prompt))
        if choice.count == 1 { return ("\(choice[0].index)", choice, single[choice[0].index]) }
        let key = choice.map { "\($0.index):\($0.weight)" }.joined(separator: ",")
        return (key, choice, try model.prepare(choice.map { (adapters[$0.index], $0.weight) }))
    }
}
