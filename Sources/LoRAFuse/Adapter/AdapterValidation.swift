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

    /// Throws `AdapterValueError` for a non-finite scale or factor entry.
    public static func check(_ adapter: LoRAAdapter) throws {
        let where_ = adapter.sourcePath ?? adapter.name
        let meta = adapter.metadata
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
