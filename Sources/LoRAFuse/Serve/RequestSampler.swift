import Foundation

/// OpenAI's sampling on top of the engine's `Sampler`, one per sequence:
///
/// - penalties (OpenAI's definition): logit_j −= c_j · frequency_penalty + (c_j > 0) · presence_penalty,
///   c_j = how often token j was generated so far in this completion (the prompt does not count);
/// - `top_k` > 0 keeps the k largest logits (ties by lower id) and masks the rest to −∞;
/// - then `Sampler` (temperature 0: argmax; else softmax(logits / T), top_p nucleus, seeded draws).
///
/// With no penalties and no top_k the row goes to `Sampler` untouched, so a request gives the
/// same tokens as `lorafuse generate` with the same temperature, top_p and seed.
public struct RequestSampler: Sendable {
    public let parameters: SamplingParameters
    private var sampler: Sampler
    private var counts: [Int: Int] = [:]

    public init(_ p: SamplingParameters, seed: UInt64) throws {
        parameters = p
        sampler = try Sampler(temperature: p.temperature, topP: p.topP, seed: seed)
    }

    public mutating func sample(_ logits: ArraySlice<Float>) -> Int {
        let p = parameters
        let next: Int
        if p.topK == 0 && (counts.isEmpty || (p.presencePenalty == 0 && p.frequencyPenalty == 0)) {
            next = sampler.sample(logits)
        } else {
            var row = Array(logits)
            if p.presencePenalty != 0 || p.frequencyPenalty != 0 {
                for (id, c) in counts where id < row.count {
                    row[id] -= Float(c) * p.frequencyPenalty + p.presencePenalty
                }
            }
            if p.topK > 0 && p.topK < row.count {
                // The k-th largest value and how many of it are kept (lowest ids first).
                let order = row.indices.sorted { row[$0] != row[$1] ? row[$0] > row[$1] : $0 < $1 }
                let keep = Set(order.prefix(p.topK))
                for i in row.indices where !keep.contains(i) { row[i] = -.infinity }
            }
            next = sampler.sample(row)
        }
        counts[next, default: 0] += 1
        return next
    }
}
