import Foundation

// Reading GGUF: the header is parsed and validated against the layout described in
// GGUFModel.swift before any tensor data is trusted.

/// A GGUF file opened read-only and memory-mapped. The header (metadata and tensor infos) is parsed
/// and fully validated on open; tensor data is only touched when asked for.
public final class GGUFFile: Sendable {
    public let path: String
    public let version: UInt32
    /// Keys in file order.
    public let metadataKeys: [String]
    public let metadata: [String: GGUFValue]
    /// Tensors in file order.
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    /// Absolute byte offset of the data section.
    public let dataOffset: Int
    public let fileSize: Int
    private let tensorIndex: [String: Int]
    private let data: Data

    public convenience init(path: String) throws {
        let data: Data
        try InputFile.refuseSpecialFile(path)
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
        } catch {
            throw GGUFError.io(path: path, message: "cannot open: \(error.localizedDescription)")
        }
        try self.init(data: data, path: path)
    }

    /// Parses an in-memory (or already mapped) file; `path` is only used in error messages.
    public init(data: Data, path: String = "<memory>") throws {
        self.path = path
        self.data = data
        self.fileSize = data.count
        let header = try data.withUnsafeBytes { raw in
            try GGUFFile.parseHeader(raw, path: path)
        }
        version = header.version
        metadataKeys = header.keys
        metadata = header.metadata
        tensors = header.tensors
        alignment = header.alignment
        dataOffset = header.dataOffset
        var index = [String: Int]()
        for (i, t) in tensors.enumerated() { index[t.name] = i }
        tensorIndex = index
    }

    public func tensorInfo(_ name: String) -> GGUFTensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    // MARK: Data access

    private func info(_ name: String, dequantizable: Bool) throws -> GGUFTensorInfo {
        guard let t = tensorInfo(name) else { throw GGUFError.tensorNotFound(path: path, name: name) }
        if dequantizable && !t.type.canDequantize {
            throw GGUFError.unsupportedTensorType(path: path, tensor: name, type: t.type)
        }
        return t
    }

    /// The tensor's stored bytes (copied out of the mapping).
    public func rawBytes(_ name: String) throws -> [UInt8] {
        let t = try info(name, dequantizable: false)
        let start = dataOffset + t.offset
        return [UInt8](data[data.startIndex + start ..< data.startIndex + start + t.byteSize])
    }

    /// The tensor's stored bytes without a copy: a slice of the file's mapping (indices are the
    /// mapping's, so use `withUnsafeBytes`). Keeps the mapping alive as long as it is held.
    public func mappedBytes(_ name: String) throws -> Data {
        let t = try info(name, dequantizable: false)
        let start = data.startIndex + dataOffset + t.offset
        return data[start ..< start + t.byteSize]
    }

    /// All values of a tensor as Float, in storage order (dims[0] fastest).
    public func floats(_ name: String) throws -> [Float] {
        let t = try info(name, dequantizable: true)
        return try floats(name, rows: 0..<t.rowCount)
    }

    /// The values of ggml rows `rows` (a row is dims[0] contiguous values), dequantized row by row
    /// so only the requested part of the mapping is read.
    public func floats(_ name: String, rows: Range<Int>) throws -> [Float] {
        let t = try info(name, dequantizable: true)
        guard rows.lowerBound >= 0, rows.upperBound <= t.rowCount else {
            throw GGUFError.invalidTensor(path: path, tensor: name, field: "row range",
                                          expected: "within 0..<\(t.rowCount)", actual: "\(rows)")
        }
        let rowLen = t.dims.first ?? 1
        let rowBytes = t.type.byteCount(elements: rowLen)
        var out = [Float](repeating: 0, count: rows.count * rowLen)
        data.withUnsafeBytes { raw in
            let base = raw.baseAddress! + dataOffset + t.offset
            out.withUnsafeMutableBufferPointer { dst in
                for (k, r) in rows.enumerated() {
                    GGUFQuant.dequantize(t.type, src: base + r * rowBytes, count: rowLen,
                                         into: dst.baseAddress! + k * rowLen)
                }
            }
        }
        return out
    }

    /// The tensor as a PyTorch-layout matrix: ggml dims [ne0, ne1] become a row-major (ne1, ne0)
    /// matrix, so a weight W[out, in] (stored as dims [in, out]) comes back as (out, in).
    /// A 1-D tensor is a (1, ne0) matrix; trailing dims of size 1 are allowed.
    public func matrix(_ name: String) throws -> Matrix {
        let t = try info(name, dequantizable: true)
        guard t.dims.count <= 2 || t.dims[2...].allSatisfy({ $0 == 1 }) else {
            throw GGUFError.notAMatrix(path: path, tensor: name, dims: t.dims)
        }
        let cols = t.dims[0]
        let rows = t.dims.count > 1 ? t.dims[1] : 1
        return Matrix(rows: rows, cols: cols, data: try floats(name))
    }

    // MARK: Header parsing

    private struct Header {
        var version: UInt32 = 0
        var keys: [String] = []
        var metadata: [String: GGUFValue] = [:]
        var tensors: [GGUFTensorInfo] = []
        var alignment = 32
        var dataOffset = 0
    }

    /// Bounds-checked little-endian cursor over the file bytes.
    private struct Cursor {
        let raw: UnsafeRawBufferPointer
        let path: String
        var pos = 0
        var remaining: Int { raw.count - pos }

        init(_ raw: UnsafeRawBufferPointer, path: String) {
            self.raw = raw
            self.path = path
        }

        mutating func need(_ n: UInt64, _ field: @autoclosure () -> String) throws {
            if n > UInt64(remaining) {
                throw GGUFError.truncated(path: path, field: field(), offset: pos, needed: n, available: remaining)
            }
        }

        mutating func read<T: FixedWidthInteger>(_: T.Type, _ field: @autoclosure () -> String) throws -> T {
            try need(UInt64(MemoryLayout<T>.size), field())
            let v = raw.loadUnaligned(fromByteOffset: pos, as: T.self)
            pos += MemoryLayout<T>.size
            return T(littleEndian: v)
        }

        mutating func string(_ field: @autoclosure () -> String) throws -> String {
            let len = try read(UInt64.self, "\(field()) length")
            try need(len, "\(field()) bytes")
            let bytes = UnsafeRawBufferPointer(rebasing: raw[pos ..< pos + Int(len)])
            pos += Int(len)
            guard let s = String(bytes: bytes, encoding: .utf8) else {
                throw GGUFError.invalidString(path: path, field: field())
            }
            return s
        }

        /// Reads a count and checks that `count` items of at least `minSize` bytes fit in the rest.
        mutating func count(_ field: @autoclosure () -> String, minSize: Int) throws -> Int {
            let n = try read(UInt64.self, field())
            let maximum = remaining / max(minSize, 1)
            if n > UInt64(maximum) {
                throw GGUFError.countTooLarge(path: path, field: field(), count: n, maximum: maximum)
            }
            return Int(n)
        }

        mutating func valueType(_ key: String) throws -> GGUFValueType {
            let id = try read(UInt32.self, "type of \"\(key)\"")
            guard let t = GGUFValueType(rawValue: id) else {
                throw GGUFError.invalidValueType(path: path, key: key, typeID: id)
            }
            return t
        }

        mutating func value(_ type: GGUFValueType, key: String, depth: Int = 0) throws -> GGUFValue {
            let f = "value of \"\(key)\""
            switch type {
            case .uint8: return .uint8(try read(UInt8.self, f))
            case .int8: return .int8(try read(Int8.self, f))
            case .uint16: return .uint16(try read(UInt16.self, f))
            case .int16: return .int16(try read(Int16.self, f))
            case .uint32: return .uint32(try read(UInt32.self, f))
            case .int32: return .int32(try read(Int32.self, f))
            case .float32: return .float32(Float(bitPattern: try read(UInt32.self, f)))
            case .uint64: return .uint64(try read(UInt64.self, f))
            case .int64: return .int64(try read(Int64.self, f))
            case .float64: return .float64(Double(bitPattern: try read(UInt64.self, f)))
            case .bool:
                let b = try read(UInt8.self, f)
                guard b <= 1 else {
                    throw GGUFError.invalidValue(path: path, key: key, expected: "bool 0 or 1", actual: "\(b)")
                }
                return .bool(b == 1)
            case .string: return .string(try string(f))
            case .array:
                // Nesting is bounded by the bytes left (each level takes ≥ 12), but keep the
                // recursion shallow so a hostile file cannot exhaust the stack.
                guard depth < 64 else {
                    throw GGUFError.countTooLarge(path: path, field: "array nesting of \"\(key)\"", count: UInt64(depth), maximum: 64)
                }
                let elem = try valueType(key)
                let n = try count("element count of \"\(key)\"", minSize: elem.minimumSize)
                var items = [GGUFValue]()
                items.reserveCapacity(n)
                for _ in 0..<n { items.append(try value(elem, key: key, depth: depth + 1)) }
                return .array(elem, items)
            }
        }
    }

    private static func parseHeader(_ raw: UnsafeRawBufferPointer, path: String) throws -> Header {
        var c = Cursor(raw, path: path)
        var h = Header()
        if raw.count < 4 || !raw.prefix(4).elementsEqual(Array("GGUF".utf8)) {
            throw GGUFError.badMagic(path: path, actual: Array(raw.prefix(4)))
        }
        c.pos = 4
        h.version = try c.read(UInt32.self, "version")
        switch h.version {
        case 2, 3: break
        case 1:
            throw GGUFError.unsupportedVersion(path: path, version: 1,
                reason: "version 1 (32-bit counts and lengths) is obsolete; re-convert with a current llama.cpp")
        default:
            let reason = h.version.byteSwapped <= 3
                ? "this looks like a big-endian GGUF, which is not supported"
                : "unknown version"
            throw GGUFError.unsupportedVersion(path: path, version: h.version, reason: reason)
        }
        // Each tensor info takes at least 8 (name length) + 4 + 8 + 4 + 8 bytes; each kv 8 + 4 + 1.
        let nTensors = try c.read(UInt64.self, "tensor_count")
        let nKV = try c.count("kv_count", minSize: 13)
        if nTensors > UInt64(c.remaining / 32) {
            throw GGUFError.countTooLarge(path: path, field: "tensor_count", count: nTensors, maximum: c.remaining / 32)
        }

        h.keys.reserveCapacity(nKV)
        for i in 0..<nKV {
            let key = try c.string("key of metadata entry \(i)")
            let type = try c.valueType(key)
            let value = try c.value(type, key: key)
            if h.metadata[key] != nil { throw GGUFError.duplicateKey(path: path, key: key) }
            h.metadata[key] = value
            h.keys.append(key)
        }

        if let a = h.metadata["general.alignment"] {
            guard case .uint32(let v) = a, v != 0, v & (v - 1) == 0 else {
                throw GGUFError.invalidAlignment(path: path, value: "\(a) (\(a.type))")
            }
            h.alignment = Int(v)
        }

        var seen = Set<String>()
        var expectedOffset: UInt64 = 0
        h.tensors.reserveCapacity(Int(nTensors))
        for i in 0..<Int(nTensors) {
            let name = try c.string("name of tensor \(i)")
            if !seen.insert(name).inserted { throw GGUFError.duplicateTensor(path: path, name: name) }
            let nDims = try c.read(UInt32.self, "n_dims of tensor \"\(name)\"")
            guard (1...4).contains(nDims) else {
                throw GGUFError.invalidTensor(path: path, tensor: name, field: "n_dims", expected: "1...4", actual: "\(nDims)")
            }
            var dims = [Int]()
            var elements: UInt64 = 1
            for d in 0..<Int(nDims) {
                let ne = try c.read(UInt64.self, "dims[\(d)] of tensor \"\(name)\"")
                guard ne > 0, ne <= UInt64(Int64.max) else {
                    throw GGUFError.invalidTensor(path: path, tensor: name, field: "dims[\(d)]",
                                                  expected: "1...\(Int64.max)", actual: "\(Int64(bitPattern: ne))")
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: ne)
                guard !overflow, product <= UInt64(Int64.max) else {
                    throw GGUFError.invalidTensor(path: path, tensor: name, field: "element count",
                                                  expected: "at most \(Int64.max)", actual: "overflow at dims[\(d)] = \(ne)")
                }
                elements = product
                dims.append(Int(ne))
            }
            let typeID = try c.read(UInt32.self, "type of tensor \"\(name)\"")
            let type = GGMLType(rawValue: typeID)
            guard type.isKnown else { throw GGUFError.unknownTensorType(path: path, tensor: name, typeID: typeID) }
            guard dims[0] % type.blockSize == 0 else {
                throw GGUFError.invalidTensor(path: path, tensor: name, field: "dims[0]",
                                              expected: "a multiple of \(type.name)'s block size \(type.blockSize)",
                                              actual: "\(dims[0])")
            }
            let (bytes, bytesOverflow) = (elements / UInt64(type.blockSize)).multipliedReportingOverflow(by: UInt64(type.typeSize))
            guard !bytesOverflow, bytes <= UInt64(Int.max / 2) else {
                throw GGUFError.invalidTensor(path: path, tensor: name, field: "byte size",
                                              expected: "at most \(Int.max / 2)", actual: "overflow")
            }
            let offset = try c.read(UInt64.self, "offset of tensor \"\(name)\"")
            guard offset == expectedOffset else {
                throw GGUFError.badTensorOffset(path: path, tensor: name, expected: expectedOffset, actual: offset)
            }
            h.tensors.append(GGUFTensorInfo(name: name, dims: dims, type: type, offset: Int(offset), byteSize: Int(bytes)))
            expectedOffset = align(offset + bytes, h.alignment)
        }

        h.dataOffset = Int(align(UInt64(c.pos), h.alignment))
        // The last tensor's trailing padding is not required: files cut right after it still read.
        for t in h.tensors {
            let end = h.dataOffset + t.offset + t.byteSize
            if end > raw.count {
                throw GGUFError.dataOutOfBounds(path: path, tensor: t.name, end: end, fileSize: raw.count)
            }
        }
        return h
    }

    static func align(_ x: UInt64, _ a: Int) -> UInt64 {
        let a = UInt64(a)
        return (x + a - 1) / a * a
    }
}
