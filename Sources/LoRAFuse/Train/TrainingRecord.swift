import Foundation

/// How an adapter was trained, written beside it as `training.json` by `lorafuse train`, so an
/// adapter on the shelf says what made it (the suite's `adapters/manifest.json` collects these).
public struct TrainingRecord: Codable, Sendable, Equatable {
    public static let fileName = "training.json"

    public var tool = "lorafuse train"
    public var baseModel: String
    public var data: String
    public var validation: String?
    public var examples: Int
    public var rank: Int
    public var alpha: Double
    public var rsLoRA: Bool
    public var targets: [String]
    /// The layers trained when not all of them (`--layers`, or Flexora's selection).
    public var layers: [Int]?
    public var dropout: Float
    public var steps: Int
    public var batchSize: Int
    public var gradAccum: Int
    public var learningRate: Float
    public var warmup: Int
    public var weightDecay: Float
    public var maxGradNorm: Double
    public var seed: UInt64
    public var dtype: String
    /// The adapter the run started from (`--init-from`), when not PEFT's initialisation.
    public var initFrom: String?
    /// `--variant` when not plain LoRA, the values it trained, and NOLA's basis size.
    public var variant: String?
    public var trainedValues: Int?
    public var nolaBasis: Int?
    public var trainedTokens: Int
    /// Sum of the per-step times (forward, backward, optimizer), without validation passes.
    public var stepSeconds: Double
    /// Wall time of the whole run, validation and checkpoints included.
    public var wallSeconds: Double
    public var firstTrainLoss: Double?
    public var finalTrainLoss: Double?
    public var finalValLoss: Double?
    /// ISO 8601 time the run started.
    public var started: String

    public init(options o: TrainingOptions, data: String, val: String?, model: String, examples: Int,
                log: [StepLog], wallSeconds: Double, finished started: Date, initFrom: String? = nil,
                variant: (name: String, values: Int, basis: Int)? = nil) {
        self.initFrom = initFrom
        self.variant = variant?.name
        trainedValues = variant?.values
        nolaBasis = variant?.name == "nola" ? variant?.basis : nil
        baseModel = (model as NSString).lastPathComponent
        self.data = data
        validation = val
        self.examples = examples
        rank = o.rank; alpha = o.alpha; rsLoRA = o.rsLoRA; targets = o.targets.map(\.rawValue); dropout = o.dropout
        layers = o.layers
        steps = log.last?.step ?? 0
        batchSize = o.batchSize; gradAccum = o.gradAccum; learningRate = o.learningRate; warmup = o.warmup
        weightDecay = o.weightDecay; maxGradNorm = o.maxGradNorm; seed = o.seed; dtype = o.dtype.rawValue.lowercased()
        trainedTokens = log.reduce(0) { $0 + $1.tokens }
        stepSeconds = log.reduce(0) { $0 + $1.seconds }
        self.wallSeconds = wallSeconds
        firstTrainLoss = log.first?.trainLoss
        finalTrainLoss = log.last?.trainLoss
        finalValLoss = log.last(where: { $0.valLoss != nil })?.valLoss
        self.started = ISO8601DateFormatter().string(from: started)
    }

    public func json() throws -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try enc.encode(self), as: UTF8.self) + "\n"
    }
}
