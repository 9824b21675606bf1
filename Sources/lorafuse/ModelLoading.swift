import ArgumentParser
import Foundation
import LoRAFuse

/// Loads the model (`--model`, else the default model path) with the adapters applied unmerged
/// (each adapter's LoRA path added at its weight, base weights untouched).
///
/// The adapters are read here, before the model, so a bad adapter directory fails fast.
func loadModel(modelPath: String?, adapters specs: [AdapterSpec]) throws -> any CausalLM {
    let adapters = try specs.map { (try AdapterIO.read(path: $0.path), $0.weight) }
    // WIRE: LlamaModel.load
    // The model engine (branch h-model) is not on this branch yet. When merging, replace the line
    // below with:
    //     let model = try LlamaModel.load(path: modelPath ?? ModelLocator.defaultModelPath())
    //     if !adapters.isEmpty { try model.setAdapters(adapters, mode: .unmerged) }
    //     return model
    _ = adapters
    throw ValidationError("model engine not merged yet (model path: \(modelPath ?? "default"))")
}
