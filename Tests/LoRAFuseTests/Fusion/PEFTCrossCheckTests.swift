import Foundation
import XCTest
@testable import LoRAFuse

/// lorafuse against PEFT 0.21.2's own `add_weighted_adapter` on three tiny adapters with different
/// settings (a: r=4 α=8, b: r=4 α=16, c: r=2 α=4 rsLoRA). Fixtures: scripts/make_peft_fusion_fixtures.py.
/// Where PEFT is right the results must agree; where it is wrong the difference is pinned, so a
/// change in either side shows up here.
final class PEFTCrossCheckTests: XCTestCase {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/peft_fusion").path

    var expected: SafetensorsFile!
    var inputs: [String: LoRAAdapter] = [:]
    let weights: [Float] = [1.0, -0.5, 0.7]

    override func setUpWithError() throws {
        expected = try SafetensorsFile(path: Self.dir + "/expected.safetensors")
        for n in ["a", "b", "c"] { inputs[n] = try PEFTAdapter.read(directory: Self.dir + "/inputs/" + n) }
    }

    var moduleNames: [String] { inputs["a"]!.moduleNames }

    /// PEFT's keys drop the `base_model.model.` wrapper prefix.
    func expectedDelta(_ entry: String, _ module: String) throws -> Matrix {
        try expected.matrix(entry + "/" + peftPatternKey(forModule: module))
    }

    func relError(_ a: Matrix, _ b: Matrix) -> Double { (a - b).frobeniusNorm / max(b.frobeniusNorm, 1e-30) }

    func fuse(_ method: String, _ params: FusionParameters, _ names: [String] = ["a", "b", "c"], weights w: [Float]? = nil) throws -> LoRAAdapter {
        let m = try FusionMethods.make(name: method, parameters: params)
        return try Fuser.fuse(names.map { inputs[$0]! }, weights: w ?? Array(weights.prefix(names.count)), method: m).0
    }

    func testInputsReadWithPEFTScales() {
        XCTAssertEqual(inputs["a"]!.modules.values.first!.scale, 2, accuracy: 1e-6)
        XCTAssertEqual(inputs["b"]!.modules.values.first!.scale, 4, accuracy: 1e-6)
        XCTAssertEqual(inputs["c"]!.modules.values.first!.scale, 2 * Float(2).squareRoot(), accuracy: 1e-5)  // α/√r
    }

    func testCatAndLinearEqualPEFTCatAndTheExactSum() throws {
        let cat = try fuse("cat", FusionParameters())
        let linear = try fuse("linear", FusionParameters())
        for m in moduleNames {
            let exact = try expectedDelta("exact", m)
            XCTAssertLessThan(relError(cat.modules[m]!.delta(), try expectedDelta("cat", m)), 1e-5, m)
            XCTAssertLessThan(relError(cat.modules[m]!.delta(), exact), 1e-5, m)
            XCTAssertLessThan(relError(linear.modules[m]!.delta(), exact), 1e-5, m)
            XCTAssertEqual(cat.modules[m]!.rank, 10)
        }
    }

    func testSVDMatchesPEFTSVDAtTheSameRank() throws {
        let svd = try fuse("svd", FusionParameters(rank: 4))
        for m in moduleNames {
            XCTAssertLessThan(relError(svd.modules[m]!.delta(), try expectedDelta("svd", m)), 1e-4, m)
        }
        // Full rank: svd is exact (PEFT 0.21.2 agrees: no double scaling in this version).
        let full = try fuse("svd", FusionParameters(rank: 8), ["a", "b"])
        for m in moduleNames {
            XCTAssertLessThan(relError(full.modules[m]!.delta(), try expectedDelta("exact_ab", m)), 1e-5, m)
            XCTAssertLessThan(relError(full.modules[m]!.delta(), try expectedDelta("svd_full_ab", m)), 1e-5, m)
        }
    }

    /// PEFT's `linear` mixes factors: A' = Σ sgn(w_i s_i)√|w_i s_i| A_i, B' = Σ √|w_i s_i| B_i, so
    /// B'A' carries cross terms B_j A_i (peft issue 3004). Ours is the exact sum; pin the gap.
    func testPEFTLinearHasCrossTermsOursDoesNot() throws {
        let ours = try fuse("linear", FusionParameters(), ["a", "b"])
        for m in moduleNames {
            let peft = try expectedDelta("linear", m)
            let exact = try expectedDelta("exact_ab", m)
            XCTAssertLessThan(relError(peft, try expectedDelta("linear_factor_formula", m)), 1e-5, m)
            XCTAssertGreaterThan(relError(peft, exact), 0.3, "PEFT linear should differ from the exact sum on \(m)")
            XCTAssertLessThan(relError(ours.modules[m]!.delta(), exact), 1e-5, m)
        }
    }

    /// PEFT's TIES on dense deltas (what `ties_svd` feeds its SVD) is ours with the peft convention.
    func testTIESPEFTConventionMatchesPEFTDense() throws {
        let ties = TIESFusion(density: 0.5, rank: nil, consensus: .peft)
        let ours = try fuse("ties", FusionParameters(rank: 4, density: 0.5, convention: "peft"))
        for m in moduleNames {
            let deltas = ["a", "b", "c"].map { inputs[$0]!.modules[m]!.delta() }
            let dense = ties.combineDense(deltas, weights: weights)
            XCTAssertLessThan(relError(dense, try expectedDelta("ties_dense", m)), 1e-5, m)
            // Rank 4 of the same dense matrix: same truncation as PEFT's ties_svd.
            XCTAssertLessThan(relError(ours.modules[m]!.delta(), try expectedDelta("ties_svd", m)), 1e-4, m)
        }
    }

    func testMagnitudePruneMatchesPEFT() throws {
        let mp = MagnitudePruneFusion(density: 0.5, rank: nil)
        let ours = try fuse("magnitude_prune", FusionParameters(rank: 4, density: 0.5))
        for m in moduleNames {
            let deltas = ["a", "b", "c"].map { inputs[$0]!.modules[m]!.delta() }
            XCTAssertLessThan(relError(mp.combineDense(deltas, weights: weights), try expectedDelta("magnitude_prune_dense", m)), 1e-5, m)
            XCTAssertLessThan(relError(ours.modules[m]!.delta(), try expectedDelta("magnitude_prune_svd", m)), 1e-4, m)
        }
    }

    /// PEFT copies the first adapter's `use_rslora` into the fused config while setting r = α = 10,
    /// so with an rsLoRA adapter first the fused update is scaled by α/√r = √10 instead of 1.
    /// Read back through its own config, PEFT's result is √10 × the exact sum; ours is exact.
    func testPEFTCatWithRSLoRAFirstIsScaledWrongOursIsNot() throws {
        let peftOut = try PEFTAdapter.read(directory: Self.dir + "/peft_out/cat_rslora_first")
        XCTAssertTrue(peftOut.metadata.useRSLoRA)
        let ours = try fuse("cat", FusionParameters(), ["c", "a", "b"], weights: [0.7, 1.0, -0.5])
        for m in moduleNames {
            let exact = try expectedDelta("exact", m)
            XCTAssertLessThan(relError(peftOut.modules[m]!.delta(), exact.scaled(by: Float(10).squareRoot())), 1e-5, m)
            XCTAssertLessThan(relError(ours.modules[m]!.delta(), exact), 1e-5, m)
        }
    }

    /// What PEFT wrote loads in lorafuse with the same ΔW PEFT computes (reader check on its outputs).
    func testPEFTOutputsReadBackWithPEFTsDeltas() throws {
        for entry in ["cat", "svd", "ties_svd", "magnitude_prune_svd", "linear", "ties"] {
            let a = try PEFTAdapter.read(directory: Self.dir + "/peft_out/" + entry)
            for m in a.moduleNames {
                XCTAssertLessThan(relError(a.modules[m]!.delta(), try expectedDelta(entry, m)), 1e-5, "\(entry) \(m)")
            }
        }
    }

    /// A fused adapter written by lorafuse and read back gives the same ΔW (scale folded, α = r).
    func testWrittenFusionReadsBackExactly() throws {
        let fused = try fuse("ties", FusionParameters(rank: 4, density: 0.5))
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("lf-xcheck-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        try PEFTAdapter.write(fused, to: out, dtype: .f32)
        let back = try PEFTAdapter.read(directory: out)
        for m in moduleNames {
            XCTAssertLessThan(relError(back.modules[m]!.delta(), fused.modules[m]!.delta()), 1e-6, m)
        }
    }
}
