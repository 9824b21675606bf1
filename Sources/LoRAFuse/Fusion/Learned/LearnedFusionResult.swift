import Foundation

// What a learned fusion returns (the adapter, its coefficients and loss curve) and how it is
// written: coefficients.json, loss.csv, loss.svg beside the PEFT adapter.

/// One row of a learned fusion's loss curve.
public struct LossPoint: Sendable, Codable, Equatable {
    /// Optimizer step (aTLAS, cat-learned; 0 = the start) or loss evaluation (lorahub; 1 = the start).
    public var step: Int
    /// Few-shot loss of the step's minibatch (aTLAS, cat-learned) or of all shots (lorahub),
    /// without the penalty.
    public var trainLoss: Double
    public var valLoss: Double?

    public init(step: Int, trainLoss: Double, valLoss: Double? = nil) {
        self.step = step
        self.trainLoss = trainLoss
        self.valLoss = valLoss
    }
}

/// The coefficients a learned fusion chose, as written to `coefficients.json`.
public struct LearnedCoefficients: Sendable, Codable {
    public var method: String
    public var granularity: CoefficientGranularity
    public var adapterNames: [String]
    /// values[i][module][layer]: the coefficient c applied to adapter i's ΔW on projection
    /// `module` (PEFT name: "q_proj", …, "down_proj") of layer `layer`; the fused update is
    /// Σ_i c · ΔW_i exactly (before any `foldRank` truncation). Layers where adapter i lacks that
    /// projection hold 0; projections it never adapts are absent. With lorahub's "factors"
    /// composition the value is w_i, a weight on the factors, not on ΔW_i.
    public var values: [[String: [Double]]]
    /// The raw learned parameters (θ for aTLAS and cat-learned, w for lorahub).
    public var parameters: [Double]
    public var lossCurve: [LossPoint]
    /// Mean over tasks of the token-mean loss on all shots, at the start and at the result.
    public var initialTrainLoss: Double
    public var finalTrainLoss: Double
    /// Same on the validation shots (nil without validation).
    public var initialValLoss: Double?
    public var finalValLoss: Double?
    /// Step (or evaluation) whose coefficients were kept.
    public var bestStep: Int
    public var seed: UInt64
    /// Options as text, for the record ("steps": "40", …).
    public var options: [String: String]

    /// The coefficient of adapter `adapter` on `module` ("q_proj") of `layer` (0 when absent).
    public func coefficient(adapter: Int, layer: Int, module: String) -> Double {
        guard let row = values[adapter][module], layer < row.count else { return 0 }
        return row[layer]
    }
}

public struct LearnedFusionResult: Sendable {
    public let adapter: LoRAAdapter
    public let coefficients: LearnedCoefficients

    public init(adapter: LoRAAdapter, coefficients: LearnedCoefficients) {
        self.adapter = adapter
        self.coefficients = coefficients
    }
}

extension LearnedCoefficients {
    /// Pretty, key-sorted JSON (what `coefficients.json` holds).
    public func jsonData() throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try enc.encode(self)
    }

    /// `step,train_loss,val_loss` per row of the loss curve (val empty where not computed).
    public func lossCSV() -> String {
        var s = "step,train_loss,val_loss\n"
        for p in lossCurve { s += "\(p.step),\(p.trainLoss),\(p.valLoss.map { "\($0)" } ?? "")\n" }
        return s
    }

    public func lossChartSVG() -> String {
        var series = [SVGLineChart.Series(name: "train loss", points: lossCurve.map { (Double($0.step), $0.trainLoss) })]
        let v = lossCurve.compactMap { p in p.valLoss.map { (Double(p.step), $0) } }
        if !v.isEmpty { series.append(SVGLineChart.Series(name: "val loss", points: v, markers: true)) }
        return SVGLineChart(title: "\(method) coefficient learning", xLabel: method == "lorahub" ? "loss evaluation" : "step",
                            yLabel: "few-shot loss (nats / answer token)", series: series).render()
    }
}

extension LearnedFusionResult {
    /// Writes the fused adapter as PEFT into `directory` with coefficients.json, loss.csv and
    /// loss.svg, all or nothing, through `OutputGuard` (inputs in `protecting` are never touched;
    /// an existing non-empty folder is replaced only with `force`).
    public func write(to directory: String, dtype: DType = .f32, protecting: [String] = [], force: Bool = false) throws {
        let target = try OutputGuard.check(directory, kind: .directory, inputs: protecting, force: force)
        try OutputGuard.writeDirectory(target) { dir in
            try PEFTAdapter.writeFiles(adapter, into: dir, dtype: dtype, path: directory)
            try coefficients.jsonData().write(to: dir.appendingPathComponent("coefficients.json"))
            try coefficients.lossCSV().write(to: dir.appendingPathComponent("loss.csv"), atomically: true, encoding: .utf8)
            try coefficients.lossChartSVG().write(to: dir.appendingPathComponent("loss.svg"), atomically: true, encoding: .utf8)
        }
    }
}
