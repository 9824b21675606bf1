import Foundation

// The gradient optimiser of aTLAS and cat-learned: Adam on the coefficient parameters θ, mapped
// to coefficients by a `CoefficientMap` (Atlas.swift, CatLearned.swift).

/// Adam on a flat Double vector (the coefficient parameters are few; no weight decay, the
/// penalties are explicit).
struct VectorAdam {
    var m: [Double], v: [Double]
    var t = 0
    init(count: Int) { m = [Double](repeating: 0, count: count); v = m }
    mutating func step(_ x: inout [Double], grad g: [Double], lr: Double) {
        t += 1
        AdamRule.step(&x, g, &m, &v, t: t, lr: lr)
    }
}

/// How parameters θ map to coefficients c[adapter][block], and the chain rule back.
protocol CoefficientMap {
    var parameterCount: Int { get }
    var granularity: CoefficientGranularity { get }
    func initialParameters(_ options: LearnedFusionOptions) -> [Double]
    func coefficients(_ theta: [Double]) -> [[Double]]
    /// dL/dθ from dL/dc.
    func pullback(_ theta: [Double], _ dc: [[Double]]) -> [Double]
}

/// Shared gradient loop of aTLAS and cat-learned: Adam on θ over seeded minibatches, penalty
/// on θ, validation every `evalEvery` steps with patience, the best-validation θ kept.
enum GradientCoefficientSearch {
    static func run(method: LearnedFusionMethod, problem: LearnedProblem, map: some CoefficientMap,
                    options o: LearnedFusionOptions,
                    progress: (@Sendable (Int, Int, Double) -> Void)?) throws -> LearnedFusionResult {
        var theta = map.initialParameters(o)
        var adam = VectorAdam(count: theta.count)
        let hasVal = !problem.val.isEmpty
        let evalEvery = o.evalEvery ?? max(1, o.steps / 10)
        let initialTrain = problem.loss(problem.train, lora: problem.parameters(map.coefficients(theta)))
        let initialVal = hasVal ? problem.loss(problem.val, lora: problem.parameters(map.coefficients(theta))) : nil
        var curve = [LossPoint(step: 0, trainLoss: initialTrain, valLoss: initialVal)]
        var best = (step: 0, theta: theta, val: initialVal ?? .infinity)
        var sinceBest = 0
        for step in 1...o.steps {
            let batch = problem.batch(step: step, size: o.batchSize, seed: o.seed)
            let (loss, dc) = problem.lossAndGradient(batch, coefficients: map.coefficients(theta))
            var g = map.pullback(theta, dc)
            for i in g.indices {
                let x = theta[i]
                g[i] += Double(o.l1) * (x > 0 ? 1 : (x < 0 ? -1 : 0)) + 2 * Double(o.l2) * x
            }
            guard g.allSatisfy(\.isFinite), loss.isFinite else {
                throw FusionError.invalidParameter(method: method.rawValue, parameter: "learning rate",
                                                   value: "\(o.learningRate)",
                                                   expected: "a smaller value (loss or gradient became non-finite at step \(step))")
            }
            adam.step(&theta, grad: g, lr: Double(o.learningRate))
            var point = LossPoint(step: step, trainLoss: loss)
            var stop = false
            if hasVal && (step % evalEvery == 0 || step == o.steps) {
                let v = problem.loss(problem.val, lora: problem.parameters(map.coefficients(theta)))
                point.valLoss = v
                if v < best.val {
                    best = (step, theta, v); sinceBest = 0
                } else {
                    sinceBest += 1
                    if let p = o.patience, sinceBest >= p { stop = true }
                }
            }
            curve.append(point)
            progress?(step, o.steps, loss)
            if stop { break }
        }
        if !hasVal { best = (curve.last!.step, theta, .infinity) }
        let c = map.coefficients(best.theta)
        let finalTrain = problem.loss(problem.train, lora: problem.parameters(c))
        let adapter = try problem.fold(c, rank: o.foldRank, seed: o.seed, name: "fused")
        let coeffs = LearnedCoefficients(
            method: method.rawValue, granularity: map.granularity, adapterNames: problem.adapters.map(\.name),
            values: problem.tabulate(c), parameters: best.theta, lossCurve: curve,
            initialTrainLoss: initialTrain, finalTrainLoss: finalTrain, initialValLoss: initialVal,
            finalValLoss: hasVal ? best.val : nil, bestStep: best.step, seed: o.seed, options: o.record(method))
        return LearnedFusionResult(adapter: adapter, coefficients: coeffs)
    }
}
