import Foundation

/// Checks made on every adapter as it is read, so non-finite numbers are reported at load time
/// with the adapter, module and field, instead of as empty generations or an `inf` loss later.
public enum AdapterValidation {
    /// Index of the first NaN or ±Inf in `values`, if any.
    public static func firstNonFinite(_ values: [Float]) -> Int? {
        values.withUnsafeBufferPointer { p in
            for i in 0..<p.count where !p[i].isFinite { return i }
            return nil
        }
    }

    /// Throws `AdapterValueError` for an adapter without LoRA tensors or a non-finite scale or
    /// factor entry.
    public static func check(_ adapter: LoRAAdapter) throws {
        let where_ = adapter.sourcePath ?? adapter.name
        let meta = adapter.metadata
        if adapter.modules.isEmpty {
            throw AdapterValueError(adapter: where_, module: nil, field: "tensors", value: "none",
                                    reason: "are LoRA factors: the adapter has no lora_A/lora_B pairs (wrong file, or only modules_to_save?)")
        }
        if !meta.alpha.isFinite {
            throw AdapterValueError(adapter: where_, module: nil, field: "lora_alpha", value: "\(meta.alpha)",
                                    reason: "is not a finite number")
        }
        for name in adapter.moduleNames {
            let m = adapter.modules[name]!
            if !m.scale.isFinite {
                throw AdapterValueError(adapter: where_, module: name, field: "scale", value: "\(m.scale)",
                                        reason: "is not finite (α \(meta.alpha) / r \(m.rank)\(meta.useRSLoRA ? ", rsLoRA" : "")): lora_alpha or alpha_pattern is too large for Float")
            }
            for (factor, mat) in [("lora_A", m.A), ("lora_B", m.B)] {
                if let i = firstNonFinite(mat.data) {
                    throw AdapterValueError(adapter: where_, module: name, field: factor, value: "\(mat.data[i])",
                                            reason: "has a non-finite entry at [\(i / max(mat.cols, 1)), \(i % max(mat.cols, 1))] (a diverged training run or a corrupt file)")
                }
            }
        }
        for (name, t) in adapter.extraTensors {
            if let i = firstNonFinite(t.data) {
                throw AdapterValueError(adapter: where_, module: name, field: "tensor", value: "\(t.data[i])",
                                        reason: "has a non-finite entry at flat index \(i)")
            }
        }
    }
}

extension AdapterValidation {
    /// Layer index of a module name (`…layers.12.…` / `blk.12.`), if any.
    static func layerIndex(_ module: String) -> Int? {
        let parts = module.split(separator: ".")
        for (i, p) in parts.enumerated() where (p == "layers" || p == "blk" || p == "h") && i + 1 < parts.count {
            if let n = Int(parts[i + 1]) { return n }
        }
        return nil
    }

    /// Where adapter_config.json's `target_modules` / `layers_to_transform` contradict the
    /// tensors present (one line each, naming the modules); empty when they agree. A string
    /// target (a regex, `all-linear`) is not second-guessed.
    public static func configWarnings(_ adapter: LoRAAdapter) -> [String] {
        var out: [String] = []
        let name = adapter.sourcePath ?? adapter.name
        let names = adapter.moduleNames
        let targets = adapter.metadata.targetModules
        if !targets.isEmpty, !targets.contains("all-linear"), targets.allSatisfy({ !$0.contains("*") && !$0.contains("(") }) {
            func matches(_ m: String, _ t: String) -> Bool { m == t || m.hasSuffix("." + t) }
            let outside = names.filter { m in !targets.contains { matches(m, $0) } }
            if !outside.isEmpty {
                out.append("\(name): \(outside.count) module(s) with LoRA tensors are not in target_modules \(targets) (\(outside.prefix(3).joined(separator: ", "))\(outside.count > 3 ? ", …" : ""))")
            }
            let unused = targets.filter { t in !names.contains { matches($0, t) } }
            if !unused.isEmpty {
                out.append("\(name): target_modules lists \(unused.joined(separator: ", ")) but the adapter has no tensors for them")
            }
        }
        if let layers = adapter.metadata.layersToTransform, !layers.isEmpty {
            let allowed = Set(layers)
            let outside = names.filter { layerIndex($0).map { !allowed.contains($0) } ?? false }
            if !outside.isEmpty {
                out.append("\(name): \(outside.count) module(s) are outside layers_to_transform \(layers.sorted()) (\(outside.prefix(3).joined(separator: ", "))\(outside.count > 3 ? ", …" : ""))")
            }
        }
        return out
    }

    /// Checks every module's ΔW (out, in) against a GGUF base's tensor dims (ggml order, [in, out]),
    /// throwing with the module and both shapes on the first mismatch.
    public static func checkShapes(_ adapter: LoRAAdapter, baseDims: [String: [Int]], baseName: String) throws {
        let where_ = adapter.sourcePath ?? adapter.name
        for n in adapter.moduleNames {
            let m = adapter.modules[n]!
            guard let t = TensorNames.ggufTensor(forPEFTModule: n) else { continue }
            guard let dims = baseDims[t] else {
                throw AdapterValueError(adapter: where_, module: n, field: "base tensor", value: t, reason: "is not in \(baseName)")
            }
            guard dims.count >= 2 else { continue }
            // An embedding LoRA's B·A is the transpose of the table's update.
            let expected = m.kind == .embedding ? [dims[0], dims[1]] : [dims[1], dims[0]]
            if m.deltaShape != expected {
                throw AdapterValueError(adapter: where_, module: n, field: "ΔW shape", value: "\(m.deltaShape)",
                                        reason: "does not fit the base: \(t) in \(baseName) (ggml dims \(dims)) needs ΔW \(expected)")
            }
        }
    }
}

public struct AdapterValueError: Error, CustomStringConvertible, Equatable {
    public var adapter: String
    public var module: String?
    public var field: String
    public var value: String
    public var reason: String

    public var description: String {
        "\(adapter): \(module.map { "module \($0): " } ?? "")\(field) = \(value) \(reason)"
    }
}
