import Foundation
import XCTest
@testable import LoRAFuse

/// A tiny random Llama with a full byte-level vocabulary (256 byte tokens) plus ChatML's two
/// control tokens, so chat requests render with the real template code; adapters on every
/// projection, written as PEFT folders for the registry to read lazily.
enum ServeFixtures {
    static let imStart = "<|im_start|>", imEnd = "<|im_end|>"

    /// GPT-2's byte-to-character alphabet, in byte order.
    static func byteAlphabet() -> [String] {
        var printable = Set<Int>()
        for b in 33...126 { printable.insert(b) }
        for b in 161...172 { printable.insert(b) }
        for b in 174...255 { printable.insert(b) }
        var extra = 0
        return (0..<256).map { b in
            if printable.contains(b) { return String(UnicodeScalar(UInt8(b))) }
            defer { extra += 1 }
            return String(UnicodeScalar(UInt32(256 + extra))!)
        }
    }

    static func tokenizer() -> BPETokenizer {
        let tokens = byteAlphabet() + [imStart, imEnd]
        let template = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        return try! BPETokenizer(tokens: tokens, merges: [], preTokenizer: .gpt2,
                                 addedTokens: [(256, true), (257, true)], eotId: 257, chatTemplate: template)
    }

    static func config() -> LlamaConfig {
        LlamaConfig(modelType: "llama", hiddenSize: 24, intermediateSize: 40, numHiddenLayers: 2,
                    numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 8, vocabSize: 258, rmsNormEps: 1e-5,
                    ropeTheta: 10000, tieWordEmbeddings: false, attentionBias: false)
    }

    static func model(seed: UInt64 = 5) -> LlamaModel {
        let c = config()
        return LlamaModel(config: c, weights: .random(c, seed: seed, std: 0.3), tokenizer: tokenizer())
    }

    /// A random rank-`rank` adapter on every projection of `model`.
    static func adapter(_ model: LlamaModel, name: String, seed: UInt64, rank: Int = 2) -> LoRAAdapter {
        var rng = SeededRNG(seed: seed)
        var modules: [String: LoRAModule] = [:]
        for l in 0..<model.config.numHiddenLayers {
            for p in Projection.allCases {
                let lw = model.base.linears[LlamaWeights.linearID(layer: l, p)]
                modules[ModuleAddress.projection(layer: l, p).peft] = LoRAModule(
                    A: .randomNormal(rank, lw.inFeatures, std: 0.5, rng: &rng),
                    B: .randomNormal(lw.outFeatures, rank, std: 0.5, rng: &rng), scale: 1)
            }
        }
        return LoRAAdapter(name: name, modules: modules)
    }

    static func tempDir() -> String {
        let d = NSTemporaryDirectory() + "lorafuse-serve-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    /// Writes adapters `names` (seeds 100, 101, …) as PEFT folders under a new folder; returns it.
    static func adapterDirectory(_ model: LlamaModel, names: [String]) throws -> String {
        let dir = tempDir()
        for (i, n) in names.enumerated() {
            try PEFTAdapter.write(adapter(model, name: n, seed: 100 + UInt64(i)), to: dir + "/" + n, dtype: .f32)
        }
        return dir
    }

    /// Bytes of one fixture adapter as the registry counts them (f32 factors).
    static func adapterBytes(_ model: LlamaModel) -> Int {
        adapter(model, name: "x", seed: 1).parameterCount * 4
    }

    /// Bytes of one key/value block of `blockTokens` positions of `model`.
    static func kvBlockBytes(_ model: LlamaModel, blockTokens: Int = KVBlockPool.defaultBlockTokens) -> Int {
        KVBlockPool(config: model.config, blockTokens: blockTokens).blockBytes
    }
}

/// Records what the engine reports, for tests of batching.
final class RecordingObserver: ServeObserver, @unchecked Sendable {
    private let lock = NSLock()
    private(set) var batches: [Int] = []
    private(set) var finishedCount = 0
    func admitted(model: String, promptTokens: Int) {}
    func firstToken(model: String, seconds: Double) {}
    func nextToken(seconds: Double) {}
    func finished(model: String, completionTokens: Int, reason: String) { lock.lock(); finishedCount += 1; lock.unlock() }
    func step(batch: Int, running: Int, waiting: Int) { lock.lock(); batches.append(batch); lock.unlock() }
    var maxBatch: Int { lock.lock(); defer { lock.unlock() }; return batches.max() ?? 0 }
}
