import XCTest
@testable import LoRAFuse

/// linear / cat / svd against dense references, and the Fuser driver.
final class FactorFusionTests: XCTestCase {
    func testLinearAndCatEqualNaiveWeightedSum() throws {
        let (ms, ws) = FusionFixture.mixed()
        let reference = FusionFixture.denseSum(ms, ws)
        for method in [LinearFusion() as any FusionMethod, CatFusion()] {
            let f = try method.fuse(FusionFixture.input(ms, ws))
            XCTAssertEqual(f.rank, 10, method.name)
            XCTAssertNil(f.retainedEnergy)
            XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseFused(f), reference), 1e-5, method.name)
        }
    }

    func testSVDAtFullRankEqualsNaiveSum() throws {
        let (ms, ws) = FusionFixture.mixed()
        let f = try SVDFusion(rank: 9).fuse(FusionFixture.input(ms, ws))  // min(out, in, Σr) = 9
        XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseFused(f), FusionFixture.denseSum(ms, ws)), 1e-4)
        XCTAssertEqual(f.retainedEnergy ?? 0, 1, accuracy: 1e-5)
        // Default rank is the largest input rank (PEFT's default).
        XCTAssertEqual(try SVDFusion().fuse(FusionFixture.input(ms, ws)).rank, 5)
    }

    func testSVDTruncationIsBestRankRApproximation() throws {
        let (ms, ws) = FusionFixture.mixed(out: 14, in: 12, seed: 21)
        let dense = FusionFixture.denseSum(ms, ws)
        let exact = try Linalg.svd(dense)
        let total = exact.S.reduce(0.0) { $0 + Double($1) * Double($1) }
        for r in [1, 3, 6] {
            let f = try SVDFusion(rank: r).fuse(FusionFixture.input(ms, ws))
            XCTAssertEqual(f.rank, r)
            let best = exact.truncated(to: r).reconstruct()
            XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseFused(f), best), 1e-3, "rank \(r)")
            let kept = exact.S.prefix(r).reduce(0.0) { $0 + Double($1) * Double($1) }
            XCTAssertEqual(f.retainedEnergy ?? -1, kept / total, accuracy: 1e-4, "rank \(r)")
            // Eckart–Young: the error is the energy of the dropped singular values.
            let err = (FusionFixture.denseFused(f) - dense).frobeniusNorm
            XCTAssertEqual(err * err, total - kept, accuracy: 1e-3 * total)
        }
        // Linear with a rank re-ranks through the same factored SVD.
        let lin = try LinearFusion(rank: 3).fuse(FusionFixture.input(ms, ws))
        XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseFused(lin), exact.truncated(to: 3).reconstruct()), 1e-3)
    }

    private func adapter(_ name: String, _ modules: [String: LoRAModule]) -> LoRAAdapter {
        var meta = AdapterMetadata()
        meta.baseModel = "tiny"
        meta.targetModules = ["q_proj", "v_proj"]
        return LoRAAdapter(name: name, modules: modules, metadata: meta)
    }

    func testFuserTreatsMissingModulesAsZeroWithWarningAndWritesRankPattern() throws {
        var rng = SeededRNG(seed: 3)
        let p = "base_model.model.model.layers."
        let a1 = adapter("one", ["\(p)0.self_attn.q_proj": FusionFixture.module(out: 6, in: 5, rank: 2, alpha: 4, rng: &rng),
                                 "\(p)0.self_attn.v_proj": FusionFixture.module(out: 6, in: 5, rank: 2, alpha: 4, rng: &rng),
                                 "\(p)1.self_attn.q_proj": FusionFixture.module(out: 6, in: 5, rank: 2, alpha: 4, rng: &rng)])
        let a2 = adapter("two", ["\(p)0.self_attn.q_proj": FusionFixture.module(out: 6, in: 5, rank: 3, alpha: 3, rng: &rng),
                                 "\(p)0.self_attn.v_proj": FusionFixture.module(out: 6, in: 5, rank: 3, alpha: 3, rng: &rng)])
        let (fused, report) = try Fuser.fuse([a1, a2], weights: [1, -0.5], method: CatFusion())
        XCTAssertEqual(fused.modules.count, 3)
        // The module only `one` adapts is w_1 ΔW_1 (the missing ΔW_2 counts as zero).
        let lone = "\(p)1.self_attn.q_proj"
        XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseDelta(fused.modules[lone]!),
                                                 FusionFixture.denseDelta(a1.modules[lone]!)), 1e-5)
        let shared = "\(p)0.self_attn.v_proj"
        XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseDelta(fused.modules[shared]!),
                                                 FusionFixture.denseSum([a1.modules[shared]!, a2.modules[shared]!], [1, -0.5])), 1e-5)
        XCTAssertEqual(report.warnings.count, 1)
        XCTAssertTrue(report.warnings[0].contains("'two'") && report.warnings[0].contains("1.self_attn.q_proj"), report.warnings[0])
        // Metadata: the most common rank (5) is the default with alpha = rank; the rank-2 module is a pattern.
        XCTAssertEqual(fused.metadata.rank, 5)
        XCTAssertEqual(fused.metadata.alpha, 5)
        XCTAssertEqual(fused.metadata.rankPattern, ["model.layers.1.self_attn.q_proj": 2])
        XCTAssertEqual(fused.metadata.alphaPattern, ["model.layers.1.self_attn.q_proj": 2])
        XCTAssertTrue(fused.modules.values.allSatisfy { $0.scale == 1 })
        XCTAssertEqual(fused.metadata.baseModel, "tiny")
        XCTAssertEqual(report.modules.map(\.adapters), [2, 2, 1])
    }

    func testFuserShapeMismatchNamesModuleAndBothShapes() {
        var rng = SeededRNG(seed: 4)
        let a1 = adapter("one", ["m": FusionFixture.module(out: 6, in: 5, rank: 2, alpha: 4, rng: &rng)])
        let a2 = adapter("two", ["m": FusionFixture.module(out: 7, in: 5, rank: 2, alpha: 4, rng: &rng)])
        XCTAssertThrowsError(try Fuser.fuse([a1, a2], weights: [1, 1], method: LinearFusion())) { e in
            let text = String(describing: e)
            XCTAssertTrue(text.contains("module m"), text)
            XCTAssertTrue(text.contains("6x5") && text.contains("7x5"), text)
            XCTAssertTrue(text.contains("'one'") && text.contains("'two'"), text)
        }
    }
}
