import Foundation
import XCTest
@testable import LoRAFuse

final class FusionMethodsTests: XCTestCase {
    private func assertInvalid(_ name: String, _ p: FusionParameters, parameter: String,
                               file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try FusionMethods.make(name: name, parameters: p), file: file, line: line) { e in
            guard case let FusionError.invalidParameter(method, param, _, _) = e else {
                return XCTFail("expected invalidParameter, got \(e)", file: file, line: line)
            }
            XCTAssertEqual(method, name, file: file, line: line)
            XCTAssertEqual(param, parameter, file: file, line: line)
        }
    }

    func testBuildsWiredMethods() throws {
        XCTAssertEqual(FusionMethods.names, ["linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune",
                                             "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "knots", "lego"])
        for n in FusionMethods.names {
            XCTAssertEqual(try FusionMethods.make(name: n, parameters: FusionParameters()).name, n)
        }
        let svd = try XCTUnwrap(FusionMethods.make(name: "svd", parameters: FusionParameters(rank: 4)) as? SVDFusion)
        XCTAssertEqual(svd.rank, 4)
        let knots = try XCTUnwrap(FusionMethods.make(name: "knots", parameters: FusionParameters(rank: 8, density: 0.3, threshold: 1e-3))
            as? KnOTSFusion)
        XCTAssertEqual(knots.mergeRule, .ties(density: 0.3, disjointMean: true))
        XCTAssertEqual(knots.relativeThreshold, 1e-3)
        let lin = try XCTUnwrap(FusionMethods.make(name: "knots", parameters: FusionParameters(mergeRule: "linear")) as? KnOTSFusion)
        XCTAssertEqual(lin.mergeRule, .linear)
        let lego = try XCTUnwrap(FusionMethods.make(name: "lego", parameters: FusionParameters(rank: 6, reweight: "output", iterations: 7))
            as? LEGOFusion)
        XCTAssertEqual(lego.rank, 6)
        XCTAssertFalse(lego.unitNormRescale)
        XCTAssertTrue(lego.outputRescale)
        XCTAssertEqual(lego.maxIterations, 7)
    }

    func testDenseMethodsTakeConventionsAndOverrides() throws {
        let peft = try XCTUnwrap(FusionMethods.make(name: "ties", parameters: FusionParameters(density: 0.3, convention: "peft")) as? TIESFusion)
        XCTAssertEqual(peft.consensus, .peft)
        XCTAssertEqual(peft.density, 0.3)
        let mk = try XCTUnwrap(FusionMethods.make(name: "ties", parameters: FusionParameters()) as? TIESFusion)
        XCTAssertEqual(mk.consensus, .mergekit)
        let freq = try XCTUnwrap(FusionMethods.make(name: "ties", parameters: FusionParameters(signElection: "frequency", divisor: "count"))
            as? TIESFusion)
        XCTAssertEqual(freq.consensus.method, .count)
        XCTAssertEqual(freq.consensus.divisor, .agreeingCount)
        let dare = try XCTUnwrap(FusionMethods.make(name: "dare_ties", parameters: FusionParameters(density: 0.4, rescale: "l1")) as? DAREFusion)
        XCTAssertEqual(dare.mode, .ties)
        XCTAssertEqual(dare.rescale, .l1Norm)
        let della = try XCTUnwrap(FusionMethods.make(name: "della_linear", parameters: FusionParameters(density: 0.6, epsilon: 0.1)) as? DELLAFusion)
        XCTAssertEqual(della.mode, .linear)
        XCTAssertEqual(della.epsilon, 0.1)
        assertInvalid("dare_linear", FusionParameters(rescale: "both"), parameter: "rescale")
        assertInvalid("ties", FusionParameters(convention: "torch"), parameter: "convention")
        // lambda scales the merged update exactly.
        var rng = SeededRNG(seed: 3)
        let m = LoRAModule(A: .randomNormal(2, 5, rng: &rng), B: .randomNormal(4, 2, rng: &rng), scale: 1.5)
        let input = ModuleFusionInput(name: "m", kind: .linear, outFeatures: 4, inFeatures: 5,
                                      terms: [FusionTerm(module: m, weight: 1, adapterIndex: 0)], adapterCount: 1, rng: rng)
        let plain = try FusionMethods.make(name: "magnitude_prune", parameters: FusionParameters(density: 1)).fuse(input)
        let scaled = try FusionMethods.make(name: "magnitude_prune", parameters: FusionParameters(density: 1, lambda: 0.5)).fuse(input)
        XCTAssertLessThan(plain.B.matmul(plain.A).scaled(by: 0.5).maxAbsDifference(scaled.B.matmul(scaled.A)), 1e-5)
    }

    func testUnknownMethodListsKnownOnes() {
        XCTAssertThrowsError(try FusionMethods.make(name: "frobnicate", parameters: FusionParameters(density: 7))) { e in
            guard case let FusionError.unknownMethod(n, known) = e else { return XCTFail("got \(e)") }
            XCTAssertEqual(n, "frobnicate")
            XCTAssertEqual(known, FusionMethods.names)
            XCTAssertTrue(String(describing: e).contains("svd"))
        }
    }

    func testRangeValidation() {
        assertInvalid("svd", FusionParameters(rank: 0), parameter: "rank")
        assertInvalid("knots", FusionParameters(density: 0), parameter: "density")
        assertInvalid("knots", FusionParameters(density: 1.5), parameter: "density")
        assertInvalid("knots", FusionParameters(density: .nan), parameter: "density")
        assertInvalid("ties", FusionParameters(lambda: .infinity), parameter: "lambda")
        assertInvalid("breadcrumbs", FusionParameters(gamma: 1), parameter: "gamma")
        assertInvalid("della", FusionParameters(epsilon: -0.1), parameter: "epsilon")
        assertInvalid("knots", FusionParameters(threshold: 1), parameter: "threshold")
        assertInvalid("lego", FusionParameters(iterations: 0), parameter: "iterations")
        assertInvalid("lego", FusionParameters(reweight: "sometimes"), parameter: "reweight")
        assertInvalid("knots", FusionParameters(mergeRule: "median"), parameter: "merge_rule")
        assertInvalid("knots", FusionParameters(divisor: "weight"), parameter: "divisor")
        assertInvalid("ties", FusionParameters(signElection: "vote"), parameter: "sign_election")
        assertInvalid("cat", FusionParameters(rank: 4), parameter: "rank")
        XCTAssertNoThrow(try FusionMethods.make(name: "knots", parameters: FusionParameters(density: 1)))
    }

    private func assertUnexpected(_ name: String, _ p: FusionParameters, parameter: String, message: String,
                                  file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try FusionMethods.make(name: name, parameters: p), file: file, line: line) { e in
            guard case let FusionError.unexpectedParameter(method, param, accepted) = e else {
                return XCTFail("expected unexpectedParameter, got \(e)", file: file, line: line)
            }
            XCTAssertEqual(method, name, file: file, line: line)
            XCTAssertEqual(param, parameter, file: file, line: line)
            XCTAssertEqual(accepted, FusionMethods.acceptedParameters(of: name), file: file, line: line)
            XCTAssertEqual(String(describing: e), message, file: file, line: line)
        }
    }

    /// A parameter the method would ignore is an error, not a silent no-op (was: `--gamma` on ties).
    func testParametersTheMethodDoesNotTakeAreRejected() {
        assertUnexpected("ties", FusionParameters(gamma: 0.1), parameter: "gamma",
                         message: "method ties does not take parameter gamma (it takes: rank, density, lambda, sign_election, divisor, convention)")
        assertUnexpected("linear", FusionParameters(density: 0.5), parameter: "density",
                         message: "method linear does not take parameter density (it takes: rank)")
        assertUnexpected("dare_linear", FusionParameters(signElection: "sum"), parameter: "sign_election",
                         message: "method dare_linear does not take parameter sign_election (it takes: rank, density, lambda, rescale)")
        assertUnexpected("cat", FusionParameters(lambda: 2), parameter: "lambda",
                         message: "method cat does not take parameter lambda (it takes: no parameters but seed)")
        assertUnexpected("svd", FusionParameters(iterations: 3), parameter: "iterations",
                         message: "method svd does not take parameter iterations (it takes: rank)")
        // `rescale` means survivor rescaling only; LEGO's old spelling says where it went.
        assertUnexpected("lego", FusionParameters(rescale: "unit"), parameter: "rescale",
                         message: "method lego does not take parameter rescale (it takes: rank, reweight, iterations); LEGO's reweighting (both, unit, output, none) is now called reweight")
        assertUnexpected("ties", FusionParameters(reweight: "both"), parameter: "reweight",
                         message: "method ties does not take parameter reweight (it takes: rank, density, lambda, sign_election, divisor, convention)")
        // Every method accepts every parameter it declares (together, with in-range values).
        let full = FusionParameters(rank: 2, density: 0.5, lambda: 1, gamma: 0.1, epsilon: 0.1, signElection: "sum",
                                    divisor: "count", rescale: "inverse", reweight: "both", mergeRule: "ties",
                                    threshold: 1e-3, iterations: 5, convention: "mergekit")
        for name in FusionMethods.names {
            let accepted = FusionMethods.acceptedParameters(of: name) ?? []
            XCTAssertEqual(Set(full.setParameterNames).intersection(accepted), Set(accepted), name)
            var p = FusionParameters(seed: 3)
            for field in accepted {
                switch field {
                case "rank": p.rank = full.rank
                case "density": p.density = full.density
                case "lambda": p.lambda = full.lambda
                case "gamma": p.gamma = full.gamma
                case "epsilon": p.epsilon = full.epsilon
                case "sign_election": p.signElection = full.signElection
                case "divisor": p.divisor = full.divisor
                case "rescale": p.rescale = full.rescale
                case "reweight": p.reweight = full.reweight
                case "merge_rule": p.mergeRule = full.mergeRule
                case "threshold": p.threshold = full.threshold
                case "iterations": p.iterations = full.iterations
                case "convention": p.convention = full.convention
                default: XCTFail("\(name) declares unknown parameter \(field)")
                }
            }
            XCTAssertNoThrow(try FusionMethods.make(name: name, parameters: p), name)
        }
    }

    func testParametersDecodeWithDefaults() throws {
        let p = try JSONDecoder().decode(FusionParameters.self, from: Data(#"{"rank": 8, "mergeRule": "linear"}"#.utf8))
        XCTAssertEqual(p, FusionParameters(rank: 8, mergeRule: "linear"))
        XCTAssertEqual(p.seed, 0)
        let round = try JSONDecoder().decode(FusionParameters.self, from: JSONEncoder().encode(FusionParameters(density: 0.4, seed: 9)))
        XCTAssertEqual(round, FusionParameters(density: 0.4, seed: 9))
    }

    func testRegistryMethodsRunThroughFuser() throws {
        var rng = SeededRNG(seed: 5)
        let a = LoRAAdapter(name: "a", modules: ["m": FusionFixture.module(out: 6, in: 5, rank: 2, alpha: 4, rng: &rng)])
        let b = LoRAAdapter(name: "b", modules: ["m": FusionFixture.module(out: 6, in: 5, rank: 2, alpha: 4, rng: &rng)])
        let reference = FusionFixture.denseSum([a.modules["m"]!, b.modules["m"]!], [0.5, 0.5])
        for (name, p) in [("linear", FusionParameters()), ("knots", FusionParameters(mergeRule: "linear")),
                          ("lego", FusionParameters(rank: 4, reweight: "none"))] {
            let method = try FusionMethods.make(name: name, parameters: p)
            let (fused, _) = try Fuser.fuse([a, b], weights: [0.5, 0.5], method: method)
            XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseDelta(fused.modules["m"]!), reference), 1e-4, name)
        }
    }
}
