import Foundation

// Writing GGUF v3 in the layout described in GGUFModel.swift.

/// Builds a GGUF v3 file: metadata of any type and F32 / F16 / BF16 / Q8_0 tensors (or raw blocks
/// of any known type), each tensor's data aligned to `alignment`.
public struct GGUFWriter {
    public let alignment: Int
    public private(set) var metadataKeys: [String] = []
    public private(set) var metadata: [String: GGUFValue] = [:]
    private var tensors: [(name: String, dims: [Int], type: GGMLType, bytes: [UInt8])] = []

    /// `alignment` other than 32 is written as `general.alignment` (u32), as ggml expects.
    public init(alignment: Int = 32) throws {
        guard alignment > 0, alignment & (alignment - 1) == 0, alignment <= Int(UInt32.max) else {
            throw GGUFError.invalidWrite(message: "alignment expected a nonzero power of two, got \(alignment)")
        }
        self.alignment = alignment
        if alignment != 32 { try set("general.alignment", .uint32(UInt32(alignment))) }
    }

    /// Adds or replaces a metadata entry (replacing keeps its position).
    public mutating func set(_ key: String, _ value: GGUFValue) throws {
        if key == "general.alignment", value != .uint32(UInt32(alignment)) {
            throw GGUFError.invalidWrite(message: "general.alignment is set by init(alignment:) (\(alignment)); got \(value)")
        }
        try GGUFWriter.checkArray(value, key: key)
        if metadata[key] == nil { metadataKeys.append(key) }
        metadata[key] = value
    }

    private static func checkArray(_ value: GGUFValue, key: String) throws {
        guard case .array(let t, let items) = value else { return }
        for item in items {
            guard item.type == t else {
                throw GGUFError.invalidWrite(message: "array \"\(key)\" of \(t) holds a \(item.type)")
            }
            try checkArray(item, key: key)
        }
    }

    /// Adds a tensor from values in storage order (dims in ggml order, dims[0] contiguous),
    /// encoded as `type` (F32, F16, BF16 or Q8_0).
    public mutating func addTensor(_ name: String, dims: [Int], values: [Float], type: GGMLType = .f32) throws {
        guard dims.reduce(1, *) == values.count else {
            throw GGUFError.invalidWrite(message: "tensor \"\(name)\": dims \(dims) need \(dims.reduce(1, *)) values, got \(values.count)")
        }
        var bytes = [UInt8]()
        switch type {
        case .f32:
            bytes.reserveCapacity(values.count * 4)
            for v in values { appendLE(&bytes, v.bitPattern) }
        case .f16:
            bytes.reserveCapacity(values.count * 2)
            for v in values { appendLE(&bytes, HalfConversion.halfFromFloat(v)) }
        case .bf16:
            bytes.reserveCapacity(values.count * 2)
            for v in values { appendLE(&bytes, HalfConversion.bfloatFromFloat(v)) }
        case .q8_0:
            guard let ne0 = dims.first, ne0 % 32 == 0 else {
                throw GGUFError.invalidWrite(message: "tensor \"\(name)\": Q8_0 needs dims[0] a multiple of 32, got \(dims)")
            }
            bytes = GGUFQuant.quantizeQ8_0(values)
        default:
            throw GGUFError.invalidWrite(message: "tensor \"\(name)\": the writer encodes F32, F16, BF16 and Q8_0, not \(type.name)")
        }
        try addRawTensor(name, dims: dims, type: type, bytes: bytes)
    }

    /// Adds a PyTorch-layout matrix (rows, cols) as a ggml tensor with dims [cols, rows].
    public mutating func addTensor(_ name: String, matrix: Matrix, type: GGMLType = .f32) throws {
        try addTensor(name, dims: [matrix.cols, matrix.rows], values: matrix.data, type: type)
    }

    /// Adds already-encoded blocks of any known type.
    public mutating func addRawTensor(_ name: String, dims: [Int], type: GGMLType, bytes: [UInt8]) throws {
        guard !tensors.contains(where: { $0.name == name }) else {
            throw GGUFError.invalidWrite(message: "duplicate tensor name \"\(name)\"")
        }
        guard type.isKnown, (1...4).contains(dims.count), dims.allSatisfy({ $0 > 0 }), dims[0] % type.blockSize == 0 else {
            throw GGUFError.invalidWrite(message: "tensor \"\(name)\": dims \(dims) invalid for \(type.name)")
        }
        let expected = type.byteCount(elements: dims.reduce(1, *))
        guard bytes.count == expected else {
            throw GGUFError.invalidWrite(message: "tensor \"\(name)\": \(type.name) \(dims) takes \(expected) bytes, got \(bytes.count)")
        }
        tensors.append((name, dims, type, bytes))
    }

    /// The whole file.
    public func serialized() -> [UInt8] {
        var out = [UInt8]()
        out.append(contentsOf: Array("GGUF".utf8))
        appendLE(&out, UInt32(3))
        appendLE(&out, UInt64(tensors.count))
        appendLE(&out, UInt64(metadataKeys.count))
        for key in metadataKeys {
            let v = metadata[key]!
            writeString(&out, key)
            appendLE(&out, v.type.rawValue)
            writeValue(&out, v)
        }
        var offset = 0
        for t in tensors {
            writeString(&out, t.name)
            appendLE(&out, UInt32(t.dims.count))
            for d in t.dims { appendLE(&out, UInt64(d)) }
            appendLE(&out, t.type.rawValue)
            appendLE(&out, UInt64(offset))
            offset = Int(GGUFFile.align(UInt64(offset + t.bytes.count), alignment))
        }
        pad(&out)
        for t in tensors {
            out.append(contentsOf: t.bytes)
            pad(&out)
        }
        return out
    }

    public func write(to path: String) throws {
        do {
            try Data(serialized()).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw GGUFError.io(path: path, message: "cannot write: \(error.localizedDescription)")
        }
    }

    private func pad(_ out: inout [UInt8]) {
        let target = Int(GGUFFile.align(UInt64(out.count), alignment))
        out.append(contentsOf: [UInt8](repeating: 0, count: target - out.count))
    }

    private func writeString(_ out: inout [UInt8], _ s: String) {
        let utf8 = Array(s.utf8)
        appendLE(&out, UInt64(utf8.count))
        out.append(contentsOf: utf8)
    }

    private func writeValue(_ out: inout [UInt8], _ v: GGUFValue) {
        switch v {
        case .uint8(let x): appendLE(&out, x)
        case .int8(let x): appendLE(&out, x)
        case .uint16(let x): appendLE(&out, x)
        case .int16(let x): appendLE(&out, x)
        case .uint32(let x): appendLE(&out, x)
        case .int32(let x): appendLE(&out, x)
        case .float32(let x): appendLE(&out, x.bitPattern)
        case .bool(let x): appendLE(&out, UInt8(x ? 1 : 0))
        case .string(let x): writeString(&out, x)
        case .uint64(let x): appendLE(&out, x)
        case .int64(let x): appendLE(&out, x)
        case .float64(let x): appendLE(&out, x.bitPattern)
        case .array(let t, let items):
            appendLE(&out, t.rawValue)
            appendLE(&out, UInt64(items.count))
            for item in items { writeValue(&out, item) }
        }
    }
}

// MARK: - Little-endian bytes

/// Appends `v`'s little-endian bytes (shared by the GGUF and the streaming safetensors writers).
@inline(__always)
func appendLE<T: FixedWidthInteger>(_ out: inout [UInt8], _ v: T) {
    withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
}
