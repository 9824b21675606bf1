import XCTest
@testable import LoRAFuse

/// The one table of module names and the q/k permutation every loader and writer goes through.
final class ModelLayoutTests: XCTestCase {
    func testEveryModuleRoundTripsThroughItsThreeNames() {
        var all: [ModuleAddress] = [.embedding, .finalNorm, .lmHead]
        for l in [0, 7, 29] {
            all += [.attnNorm(layer: l), .ffnNorm(layer: l)] + Projection.allCases.map { .projection(layer: l, $0) }
        }
        for a in all {
            XCTAssertEqual(ModuleAddress(hf: a.hf), a, a.hf)
            XCTAssertEqual(ModuleAddress(peft: a.peft), a, a.peft)
            XCTAssertEqual(ModuleAddress(peft: a.hf), a, "the PEFT prefix is optional")
            XCTAssertEqual(ModuleAddress(gguf: a.gguf), a, a.gguf)
            XCTAssertEqual(TensorNames.ggufName(forHF: a.hf + ".weight"), a.gguf + ".weight")
            XCTAssertEqual(TensorNames.hfName(forGGUF: a.gguf + ".bias"), a.hf + ".bias")
        }
        XCTAssertEqual(Set(all.map(\.hf)).count, all.count)
        XCTAssertEqual(Set(all.map(\.gguf)).count, all.count)
        // Names as the peers write them.
        XCTAssertEqual(ModuleAddress.projection(layer: 3, .o).gguf, "blk.3.attn_output")
        XCTAssertEqual(ModuleAddress.projection(layer: 3, .down).hf, "model.layers.3.mlp.down_proj")
        XCTAssertEqual(ModuleAddress.projection(layer: 0, .q).peft, "base_model.model.model.layers.0.self_attn.q_proj")
        XCTAssertEqual(Projection.allCases.map(\.peftName), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        XCTAssertEqual(Projection.allCases.map(\.index), Array(0..<7))
    }

    func testMalformedNamesAreNotModules() {
        for bad in ["model.layers.01.self_attn.q_proj", "model.layers.-1.self_attn.q_proj", "model.layers.x.mlp.up_proj",
                    "model.layers.3", "model.layers.3.self_attn.qkv_proj", "model.layers.3.self_attn.q_proj.weight",
                    "layers.3.self_attn.q_proj", "base_model.model.base_model.model.lm_head", "", "lm_head.lora_A"] {
            XCTAssertNil(ModuleAddress(peft: bad), bad)
        }
        for bad in ["blk.01.attn_q", "blk.3.attn_qkv", "rope_freqs", "blk..attn_q", "token_embd.weight"] {
            XCTAssertNil(ModuleAddress(gguf: bad), bad)
        }
    }

    func testRopePermutationMatchesTheConverterFormulaAndInverts() throws {
        // reshape(heads, 2, hd/2, cols).swapaxes(1, 2): GGUF row h·hd + 2j + t = HF row h·hd + t·hd/2 + j.
        let heads = 2, hd = 6, cols = 3, rows = heads * hd
        let hf = (0..<(rows * cols)).map(Float.init)
        let gguf = try RopePermutation.apply(hf, rows: rows, cols: cols, heads: heads, toGGUF: true)
        for h in 0..<heads { for j in 0..<(hd / 2) { for t in 0..<2 { for c in 0..<cols {
            XCTAssertEqual(gguf[(h * hd + 2 * j + t) * cols + c], hf[(h * hd + t * hd / 2 + j) * cols + c])
        } } } }
        XCTAssertEqual(try RopePermutation.apply(gguf, rows: rows, cols: cols, heads: heads, toGGUF: false), hf)
        XCTAssertEqual(try Matrix(rows: rows, cols: cols, data: hf).ropePermutedForGGUF(heads: heads).data, gguf)
        XCTAssertThrowsError(try RopePermutation.apply(hf, rows: rows, cols: cols, heads: 4, toGGUF: true)) {
            XCTAssertEqual($0 as? TensorNamesError, .badHeadCount(rows: rows, heads: 4))   // head_dim 3 is odd
        }
    }

    func testRopeTableIsHFsFloatComputation() {
        let c = TrainFixtures.config(qwen: false)
        let t = RopeTable(config: c, positions: 5)
        let half = c.headDim / 2
        for p in 0..<5 {
            for i in 0..<half {
                let invFreq = 1 / Float(pow(Float(c.ropeTheta), Float(2 * i) / Float(c.headDim)))
                XCTAssertEqual(t.cos[p * half + i], cos(Float(p) / c.ropePositionScale * invFreq))
                XCTAssertEqual(t.sin[p * half + i], sin(Float(p) / c.ropePositionScale * invFreq))
            }
        }
    }
}
