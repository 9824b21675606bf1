import Foundation

/// The adapter file formats lorafuse reads and writes.
public enum AdapterFormat: String, Sendable, CaseIterable, Codable {
    /// PEFT directory: adapter_config.json + adapter_model.safetensors.
    case peft
    /// llama.cpp GGUF LoRA file (general.type = adapter).
    case gguf
    /// mlx-lm directory: adapter_config.json + adapters.safetensors.
    case mlx
    /// NOLA directory (`train --variant nola`): nola_config.json + nola_coefficients.safetensors.
    /// Read only: A and B are materialised from the seed and the coefficients; `convert` writes
    /// them out in the other formats.
    case nola

    /// Formats an adapter can be written in.
    public static let writable: [AdapterFormat] = [.peft, .gguf, .mlx]
}

/// Opens and writes adapters in any supported format, detecting the input format from the files:
/// a directory with `adapters.safetensors` is mlx-lm's, a directory with `adapter_config.json`
/// (and no `adapters.safetensors`) is PEFT's, a file starting with the GGUF magic is a GGUF
/// LoRA (its `general.type` must be `adapter`).
public enum AdapterIO {
    public static func detect(path: String) throws -> AdapterFormat {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw AdapterIOError.notFound(path: path)
        }
        if isDir.boolValue {
            if NOLAVariant.isNOLADirectory(path) { return .nola }
            if MLXAdapter.isMLXDirectory(path) { return .mlx }
            let cfg = (path as NSString).appendingPathComponent("adapter_config.json")
            if FileManager.default.fileExists(atPath: cfg) { return .peft }
            if RoutedModel.isRoutedDirectory(path) { throw AdapterIOError.routedModel(path: path) }
            throw AdapterIOError.unknownFormat(path: path, found: (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [])
        }
        try InputFile.requireRegularFile(path)   // a FIFO would block the magic check
        if GGUFLoRA.hasGGUFMagic(path: path) { return .gguf }
        throw AdapterIOError.unknownFormat(path: path, found: [(path as NSString).lastPathComponent])
    }

    /// Reads an adapter of any format. `hints` matter only for GGUF LoRAs of the llama
    /// architecture whose q/k heads are not recorded in the file (see `GGUFLoRA`).
    /// Every scale and factor entry is checked to be finite (`AdapterValidation`).
    public static func read(path: String, hints: ModelHints = ModelHints()) throws -> LoRAAdapter {
        let a: LoRAAdapter
        switch try detect(path: path) {
        case .peft: a = try PEFTAdapter.read(directory: path)
        case .mlx: a = try MLXAdapter.read(directory: path)
        case .gguf: a = try GGUFLoRA.read(path: path, hints: hints)
        case .nola: a = try NOLAVariant.read(directory: path)
        }
        try AdapterValidation.check(a)
        for w in AdapterValidation.configWarnings(a) { FileHandle.standardError.write(Data("warning: \(w)\n".utf8)) }
        return a
    }

    /// Writes `adapter` in `format` through temporary names renamed into place; inputs
    /// (`protecting`, the adapter's own source) are never overwritten. `hints` are used by GGUF
    /// (architecture, q/k head counts, base shape checks).
    public static func write(_ adapter: LoRAAdapter, to path: String, format: AdapterFormat, dtype: DType,
                             hints: ModelHints = ModelHints(), protecting: [String] = [], force: Bool = false) throws {
        switch format {
        case .peft: try PEFTAdapter.write(adapter, to: path, dtype: dtype, protecting: protecting, force: force)
        case .mlx: try MLXAdapter.write(adapter, to: path, dtype: dtype, protecting: protecting, force: force)
        case .gguf: try GGUFLoRA.write(adapter, to: path, dtype: dtype, hints: hints, protecting: protecting, force: force)
        case .nola: throw AdapterIOError.notWritable(format: format)
        }
    }

    /// Checks an adapter output before any work (the writers check again when they write).
    @discardableResult
    public static func checkOutput(_ path: String, format: AdapterFormat, inputs: [String], force: Bool) throws -> OutputTarget {
        try OutputGuard.check(path, kind: format == .gguf ? .file : .directory, inputs: inputs, force: force)
    }

    /// What `convert` did.
    public struct ConversionSummary: Sendable, Encodable {
        public var input: String
        public var inputFormat: AdapterFormat
        public var output: String
        public var outputFormat: AdapterFormat
        public var dtype: String
        public var modules: Int
        public var parameters: Int
        public var validatedAgainstBase: String?
    }

    /// `lorafuse convert`: reads `input` (any format), writes it as `format` to `output`. When
    /// `hints` come from a base GGUF and the output is GGUF, the written file is re-opened and
    /// checked with llama.cpp's loader shape checks.
    @discardableResult
    public static func convert(input: String, output: String, format: AdapterFormat, dtype: DType? = nil,
                               hints: ModelHints = ModelHints(), force: Bool = false) throws -> ConversionSummary {
        guard AdapterFormat.writable.contains(format) else { throw AdapterIOError.notWritable(format: format) }
        let inFormat = try detect(path: input)
        try checkOutput(output, format: format, inputs: [input] + [hints.source].compactMap { $0 }, force: force)
        var h = hints
        // A GGUF input names its own architecture; keep it unless the caller gave one.
        let adapter = try read(path: input, hints: h)
        if inFormat == .gguf, h.architecture == nil, let f = try? GGUFFile(path: input) {
            h.architecture = f.metadata["general.architecture"]?.asString
            if h.heads == nil, let arch = h.architecture { h.heads = try? GGUFLoRA.heads(in: f, architecture: arch) }
        }
        let dt = dtype ?? adapter.sourceDType
        try write(adapter, to: output, format: format, dtype: dt, hints: h,
                  protecting: [input] + [h.source].compactMap { $0 }, force: force)
        var validated: String?
        if format == .gguf, let src = h.source, h.baseTensorDims != nil {
            try GGUFLoRA.validate(adapterPath: output, basePath: src)
            validated = src
        }
        return ConversionSummary(input: input, inputFormat: inFormat, output: output, outputFormat: format,
                                 dtype: dt.rawValue, modules: adapter.modules.count, parameters: adapter.parameterCount,
                                 validatedAgainstBase: validated)
    }
}

public enum AdapterIOError: Error, CustomStringConvertible {
    case notFound(path: String)
    case unknownFormat(path: String, found: [String])
    case routedModel(path: String)
    case notWritable(format: AdapterFormat)

    public var description: String {
        switch self {
        case let .notFound(p):
            return "\(p): no such file or directory"
        case let .notWritable(f):
            return "adapters cannot be written as \(f.rawValue): a NOLA folder holds coefficients that `lorafuse train --variant nola` learns, not factors any LoRA could be turned into; write peft, gguf or mlx"
        case let .routedModel(p):
            return "\(p) is a routed model (router_config.json): several adapters chosen per token, not one adapter; eval, generate and report take it as --adapter \(p), but it cannot be merged, converted or fused as one"
        case let .unknownFormat(p, found):
            let shown = found.sorted().prefix(8).joined(separator: ", ")
            return "\(p): not a recognised adapter (expected a PEFT directory with adapter_config.json, an MLX directory with adapters.safetensors, a NOLA directory with nola_config.json, or a GGUF LoRA file; found: \(shown.isEmpty ? "nothing" : shown))"
        }
    }
}
