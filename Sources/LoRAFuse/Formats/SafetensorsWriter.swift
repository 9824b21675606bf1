import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One tensor to write: float values converted to the writer's dtype (or this tensor's own),
/// or raw bytes of any safetensors dtype copied as they are.
public struct SafetensorsTensor: Sendable {
    public enum Payload: Sendable {
        case floats([Float], DType?)
        case raw(dtype: String, bytes: [UInt8])
    }
    public var name: String
    public var shape: [Int]
    public var payload: Payload

    public init(name: String, shape: [Int], values: [Float], dtype: DType? = nil) {
        self.name = name
        self.shape = shape
        self.payload = .floats(values, dtype)
    }

    /// A 2-D tensor [rows, cols].
    public init(name: String, matrix: Matrix, dtype: DType? = nil) {
        self.init(name: name, shape: matrix.shape, values: matrix.data, dtype: dtype)
    }

    public init(name: String, shape: [Int], dtype: String, rawBytes: [UInt8]) {
        self.name = name
        self.shape = shape
        self.payload = .raw(dtype: dtype, bytes: rawBytes)
    }

    func dtypeString(default d: DType) -> String {
        switch payload {
        case let .floats(_, own): return (own ?? d).rawValue
        case let .raw(dt, _): return dt
        }
    }

    func byteCount(default d: DType) -> Int {
        switch payload {
        case let .floats(v, own): return v.count * (own ?? d).byteSize
        case let .raw(_, b): return b.count
        }
    }

    func encoded(default d: DType) -> [UInt8] {
        switch payload {
        case let .raw(_, b): return b
        case let .floats(v, own):
            let dt = own ?? d
            var out = [UInt8](repeating: 0, count: v.count * dt.byteSize)
            out.withUnsafeMutableBytes { raw in
                switch dt {
                case .f32: for (k, x) in v.enumerated() { raw.storeBytes(of: x.bitPattern.littleEndian, toByteOffset: 4 * k, as: UInt32.self) }
                case .f16: for (k, x) in v.enumerated() { raw.storeBytes(of: HalfConversion.halfFromFloat(x).littleEndian, toByteOffset: 2 * k, as: UInt16.self) }
                case .bf16: for (k, x) in v.enumerated() { raw.storeBytes(of: HalfConversion.bfloatFromFloat(x).littleEndian, toByteOffset: 2 * k, as: UInt16.self) }
                }
            }
            return out
        }
    }
}

public enum SafetensorsWriter {
    /// Writes a safetensors file. The header has `__metadata__` first (omitted when empty),
    /// then the tensors sorted by name (UTF-8 byte order), and is padded with spaces so that
    /// 8 + N is a multiple of 8; tensor data follows in the same order. The file is written to
    /// a temporary file in the destination's directory and renamed over the destination, so a
    /// reader never sees a half-written file and a mapped input is never modified in place.
    ///
    /// - Returns: the total size of the tensor data in bytes.
    @discardableResult
    public static func write(tensors: [SafetensorsTensor], metadata: [String: String] = [:],
                             dtype: DType, to url: URL) throws -> Int {
        let path = url.path
        var names = Set<String>()
        for t in tensors {
            guard t.name != "__metadata__" else { throw SafetensorsError.invalidTensor(path: path, tensor: t.name, reason: "reserved name") }
            guard names.insert(t.name).inserted else { throw SafetensorsError.duplicateName(path: path, name: t.name) }
            guard t.shape.allSatisfy({ $0 >= 0 }) else {
                throw SafetensorsError.invalidTensor(path: path, tensor: t.name, reason: "negative dimension in shape \(t.shape)")
            }
            let numel = t.shape.reduce(1, *)
            switch t.payload {
            case let .floats(v, _):
                guard v.count == numel else {
                    throw SafetensorsError.invalidTensor(path: path, tensor: t.name, reason: "shape \(t.shape) needs \(numel) values, got \(v.count)")
                }
            case let .raw(dt, b):
                guard let bits = SafetensorsDTypes.bits[dt] else { throw SafetensorsError.unknownDType(path: path, tensor: t.name, dtype: dt) }
                guard numel * bits == b.count * 8 else {
                    throw SafetensorsError.byteSizeMismatch(path: path, tensor: t.name, expected: (numel * bits + 7) / 8, actual: b.count)
                }
            }
        }
        let ordered = tensors.sorted { Array($0.name.utf8).lexicographicallyPrecedes(Array($1.name.utf8)) }

        var members: [(String, JSONValue)] = []
        if !metadata.isEmpty {
            let m = metadata.sorted { Array($0.key.utf8).lexicographicallyPrecedes(Array($1.key.utf8)) }
            members.append(("__metadata__", .object(m.map { ($0.key, JSONValue.string($0.value)) })))
        }
        var offset = 0
        for t in ordered {
            let n = t.byteCount(default: dtype)
            members.append((t.name, .object([
                ("dtype", .string(t.dtypeString(default: dtype))),
                ("shape", .array(t.shape.map { JSONValue.int($0) })),
                ("data_offsets", .array([.int(offset), .int(offset + n)])),
            ])))
            offset += n
        }
        var header = Array(JSONValue.object(members).serialized().utf8)
        while (8 + header.count) % 8 != 0 { header.append(0x20) }

        try atomicWrite(to: url) { handle in
            var len = UInt64(header.count).littleEndian
            try handle.write(contentsOf: Data(bytes: &len, count: 8))
            try handle.write(contentsOf: Data(header))
            for t in ordered {
                let bytes = t.encoded(default: dtype)
                if !bytes.isEmpty { try handle.write(contentsOf: Data(bytes)) }
            }
        }
        return offset
    }

    /// Runs `body` on a temporary file next to `url` (named by `OutputGuard`'s one rule), then
    /// renames it onto `url`. `url`'s folder must exist.
    static func atomicWrite(to url: URL, _ body: (FileHandle) throws -> Void) throws {
        let tmp: URL
        do {
            tmp = URL(fileURLWithPath: try OutputGuard.makeSibling(beside: url.path, given: url.path, suffix: "tmp", directory: false))
        } catch let OutputGuardError.writeFailed(_, reason) {
            throw SafetensorsError.writeFailed(path: url.path, reason: reason)
        }
        do {
            let handle = try FileHandle(forWritingTo: tmp)
            do {
                try body(handle)
                try handle.synchronize()
                try handle.close()
            } catch {
                try? handle.close()
                throw error
            }
            guard rename(tmp.path, url.path) == 0 else {
                throw SafetensorsError.writeFailed(path: url.path, reason: "rename failed: \(String(cString: strerror(errno)))")
            }
        } catch let e as SafetensorsError {
            try? FileManager.default.removeItem(at: tmp)
            throw e
        } catch {
            try? FileManager.default.removeItem(at: tmp)
            throw SafetensorsError.writeFailed(path: url.path, reason: "\(error)")
        }
    }
}
