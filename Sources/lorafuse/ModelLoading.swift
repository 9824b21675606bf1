import ArgumentParser
import Foundation
import LoRAFuse

/// Loads the model (`--model`, else the default model `scripts/setup.sh` fetched) and prepares the
/// adapters unmerged (each adapter's LoRA path added at its weight, base weights untouched).
///
/// The adapters are read first, so a bad adapter fails before the model is loaded; the model's
/// head counts are the hints a GGUF LoRA needs to undo llama.cpp's q/k row permutation.
func loadModel(modelPath: String?, compute: WeightCompute, adapters specs: [AdapterSpec]) throws -> AdaptedLlama {
    // The same adapter twice would be applied twice (at the sum of its weights) without saying so.
    var seen: [String: String] = [:]
    for s in specs {
        let key = OutputGuard.resolve(s.path)
        if let first = seen[key] {
            throw AdapterSpec.Problem(description: "\(s.path) is given twice (also as \(first)); give it once, with its weight as PATH:WEIGHT")
        }
        seen[key] = s.path
    }
    let path = try modelFile(modelPath)
    let hints = (try? ModelHints.load(path: path)) ?? ModelHints()
    if let routed = specs.first(where: { RoutedModel.isRoutedDirectory($0.path) }) {
        guard specs.count == 1 else {
            throw AdapterSpec.Problem(description: "\(routed.path) is a routed model; it already holds its adapters and cannot be combined with other --adapter options")
        }
        guard routed.weight == 1 else {
            throw AdapterSpec.Problem(description: "\(routed.path) is a routed model; its gates set the adapters' weights, so it takes no :WEIGHT")
        }
        let r = try RoutedModel.load(directory: routed.path, hints: hints)
        let model = try LlamaModel.load(path: path, compute: compute)
        return model.with(try model.prepare(routed: r))
    }
    let adapters = try specs.map { (try AdapterIO.read(path: $0.path, hints: hints), $0.weight) }
    let model = try LlamaModel.load(path: path, compute: compute)
    return try model.with(adapters, mode: .unmerged)
}

/// Loads the model alone (`--model`, else the default model).
func loadModel(modelPath: String?, compute: WeightCompute) throws -> LlamaModel {
    try LlamaModel.load(path: try modelFile(modelPath), compute: compute)
}

private func modelFile(_ modelPath: String?) throws -> String {
    let path = modelPath ?? ModelLocator.defaultModelPath()
    guard FileManager.default.fileExists(atPath: path) else {
        if modelPath == nil {
            throw ModelError.notAModel(path: path, reason: "the default model is missing; run scripts/setup.sh (or make demo) to fetch it, or pass --model")
        }
        throw AdapterIOError.notFound(path: path)
    }
    return path
}
