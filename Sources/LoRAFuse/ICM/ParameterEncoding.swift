import Foundation

// Parameter encoding for the ICM generators (ICM-LoRA, SG-LoRA, ICM-Fusion).
//
// Each LoRA tensor (every module's A (r, in) and B (out, r)) is z-scored on its own (ICM-LoRA
// normalises per key and keeps mean/std/shape to undo it), flattened row-major and cut into
// chunks of `chunkSize` values; the last chunk of a tensor is zero-padded. A chunk is tagged by
// where it came from (layer, projection, A or B, chunk index within the tensor) so one small
// VAE over chunks serves any model size: the network never sees more than `chunkSize` values.

/// Errors of the ICM generators.
public enum ICMError: Error, CustomStringConvertible {
    case layoutMismatch(source: String, expected: String, actual: String)
    case badState(path: String, field: String, reason: String)
    case badInput(what: String, reason: String)

    public var description: String {
        switch self {
        case let .layoutMismatch(source, expected, actual):
            return "icm: \(source): adapter layout differs from the generator's: expected \(expected), found \(actual)"
        case let .badState(path, field, reason):
            return "icm: generator state \(path): \(field): \(reason)"
        case let .badInput(what, reason):
            return "icm: \(what): \(reason)"
        }
    }
}

/// Where a chunk sits in an adapter.
public struct ChunkTag: Sendable, Equatable, Hashable {
    public var layer: Int
    public var module: Int      // index into Projection.allCases
    public var isB: Bool
    public var index: Int       // chunk index within its tensor
}

/// One tensor of the layout: module m's A or B, its length and its first chunk.
public struct ChunkedTensor: Sendable, Equatable {
    public var layer: Int
    public var target: Projection
    public var isB: Bool
    public var count: Int        // values in the tensor
    public var firstChunk: Int   // global index of its first chunk
    public var chunks: Int
}

/// The chunk layout of one adapter shape (rank, targets, model config): the same for every
/// adapter the generator is trained on, checked on input.
public struct ChunkLayout: Sendable, Equatable {
    public let chunkSize: Int
    public let rank: Int
    public let alpha: Double
    public let rsLoRA: Bool
    public let targets: [Projection]
    /// Per module of `LoRAParameters.modules` (layer, target order): (layer, target, in, out).
    public let modules: [(layer: Int, target: Projection, inFeatures: Int, outFeatures: Int)]
    /// 2 per module: A then B.
    public let tensors: [ChunkedTensor]
    public let tags: [ChunkTag]
    public var chunkCount: Int { tags.count }
    public var numLayers: Int { (modules.map(\.layer).max() ?? -1) + 1 }
    /// Largest chunk index within a tensor + 1 (size of the chunk-index embedding).
    public var maxChunksPerTensor: Int { tensors.map(\.chunks).max() ?? 0 }
    public var parameterCount: Int { tensors.reduce(0) { $0 + $1.count } }

    public static func == (a: ChunkLayout, b: ChunkLayout) -> Bool {
        a.chunkSize == b.chunkSize && a.rank == b.rank && a.alpha == b.alpha && a.rsLoRA == b.rsLoRA && a.targets == b.targets
            && a.tensors == b.tensors
    }

    public init(like p: LoRAParameters, chunkSize: Int) {
        precondition(chunkSize > 0)
        self.chunkSize = chunkSize
        rank = p.rank; alpha = p.alpha; rsLoRA = p.rsLoRA; targets = p.targets
        modules = p.modules.map { ($0.layer, $0.target, $0.inFeatures, $0.outFeatures) }
        var ts: [ChunkedTensor] = [], tags: [ChunkTag] = []
        for m in p.modules {
            for (isB, n) in [(false, m.A.count), (true, m.B.count)] {
                let k = (n + chunkSize - 1) / chunkSize
                ts.append(ChunkedTensor(layer: m.layer, target: m.target, isB: isB, count: n, firstChunk: tags.count, chunks: k))
                let mi = Projection.allCases.firstIndex(of: m.target)!
                for j in 0..<k { tags.append(ChunkTag(layer: m.layer, module: mi, isB: isB, index: j)) }
            }
        }
        tensors = ts
        self.tags = tags
    }

    /// A one-line description for error messages.
    public var summary: String {
        "rank \(rank), \(modules.count) modules, \(parameterCount) parameters, chunk \(chunkSize)"
    }

    /// Throws unless `p` has exactly this layout's modules and shapes.
    public func check(_ p: LoRAParameters, source: String) throws {
        let other = ChunkLayout(like: p, chunkSize: chunkSize)
        guard other.tensors == tensors && other.rank == rank else {
            throw ICMError.layoutMismatch(source: source, expected: summary, actual: other.summary)
        }
    }

    /// An all-zero LoRAParameters of this layout (scale from rank/alpha as PEFT does).
    public func emptyParameters() -> LoRAParameters {
        let s = LoRAParameters.scale(rank: rank, alpha: alpha, rsLoRA: rsLoRA)
        let mods = modules.map {
            TrainableLoRAModule(layer: $0.layer, target: $0.target, rank: rank, inFeatures: $0.inFeatures, outFeatures: $0.outFeatures,
                                scale: s, A: [Float](repeating: 0, count: rank * $0.inFeatures),
                                B: [Float](repeating: 0, count: $0.outFeatures * rank))
        }
        return LoRAParameters(modules: mods, rank: rank, alpha: alpha, rsLoRA: rsLoRA, targets: targets)
    }
}

/// Per-tensor normalisation statistics (population mean and standard deviation).
public struct TensorStats: Sendable, Equatable {
    public var mean: [Float]    // per tensor of the layout
    public var std: [Float]
    public init(mean: [Float], std: [Float]) { self.mean = mean; self.std = std }

    /// Σ wᵢ statsᵢ for means and standard deviations alike (weights are used as given).
    public static func weighted(_ s: [TensorStats], _ w: [Double]) -> TensorStats {
        let n = s[0].mean.count
        var m = [Double](repeating: 0, count: n), d = m
        for (k, st) in s.enumerated() {
            for i in 0..<n { m[i] += w[k] * Double(st.mean[i]); d[i] += w[k] * Double(st.std[i]) }
        }
        return TensorStats(mean: m.map(Float.init), std: d.map(Float.init))
    }
}

/// An adapter as z-scored chunks: (chunkCount, chunkSize) row-major, plus the statistics.
public struct EncodedAdapter: Sendable {
    public var chunks: [Float]
    public var stats: TensorStats
}

public enum ParameterEncoding {
    /// A tensor whose standard deviation is below this is treated as constant (std stored as 1),
    /// so a zero-initialised B encodes to zeros and decodes back exactly.
    static let minStd: Float = 1e-12

    public static func encode(_ p: LoRAParameters, layout: ChunkLayout) -> EncodedAdapter {
        let D = layout.chunkSize
        var out = [Float](repeating: 0, count: layout.chunkCount * D)
        var means: [Float] = [], stds: [Float] = []
        for (ti, t) in layout.tensors.enumerated() {
            let m = p.modules[ti / 2]
            let v = t.isB ? m.B : m.A
            var s = 0.0, s2 = 0.0
            for x in v { s += Double(x) }
            let mean = s / Double(max(v.count, 1))
            for x in v { let d = Double(x) - mean; s2 += d * d }
            var std = Float((s2 / Double(max(v.count, 1))).squareRoot())
            if !(std > minStd) { std = 1 }
            let meanF = Float(mean)
            means.append(meanF); stds.append(std)
            let base = t.firstChunk * D
            for i in 0..<v.count { out[base + i] = (v[i] - meanF) / std }
        }
        return EncodedAdapter(chunks: out, stats: TensorStats(mean: means, std: stds))
    }

    /// Inverse of `encode`: padding values are dropped.
    public static func decode(chunks: [Float], stats: TensorStats, layout: ChunkLayout) -> LoRAParameters {
        precondition(chunks.count == layout.chunkCount * layout.chunkSize)
        var p = layout.emptyParameters()
        let D = layout.chunkSize
        for (ti, t) in layout.tensors.enumerated() {
            let base = t.firstChunk * D, mean = stats.mean[ti], std = stats.std[ti]
            let v = (0..<t.count).map { chunks[base + $0] * std + mean }
            if t.isB { p.modules[ti / 2].B = v } else { p.modules[ti / 2].A = v }
        }
        return p
    }

    /// dL/d(normalised chunk) from dL/d(parameters): x = (θ − μ)/σ, so dL/dx = σ·dL/dθ (padding 0).
    public static func chunkGradient(_ g: LoRAGradients, stats: TensorStats, layout: ChunkLayout) -> [Float] {
        let D = layout.chunkSize
        var out = [Float](repeating: 0, count: layout.chunkCount * D)
        for (ti, t) in layout.tensors.enumerated() {
            let v = t.isB ? g.dB[ti / 2] : g.dA[ti / 2]
            let base = t.firstChunk * D, s = stats.std[ti]
            for i in 0..<t.count { out[base + i] = v[i] * s }
        }
        return out
    }
}
