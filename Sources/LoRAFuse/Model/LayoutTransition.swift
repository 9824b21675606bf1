// Old spellings kept only while the learned-fusion files are being split on another branch;
// removed when that lands (use `Projection` and `ModuleAddress`).
extension Projection {
    var slot: Projection { self }
}

enum LlamaCheckpointNames {
    static func hfLayer(_ layer: Int, _ module: String) -> String { "model.layers.\(layer).\(module)" }
}
