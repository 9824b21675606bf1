import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A checkpoint split over several safetensors files with a `model.safetensors.index.json`
/// (`{"metadata": {"total_size": …}, "weight_map": {tensor: file}}`, the Hugging Face layout).
/// Opening validates that every shard named in the map exists and holds the tensors the map
/// puts there; tensors a shard holds but the map does not name are ignored, as transformers does.
public final class ShardedSafetensors: @unchecked Sendable {
    public let indexPath: String
    /// Tensor names in shard order, then file order within a shard.
    public let names: [String]
    public let metadata: [String: String]
    public let weightMap: [String: String]
    public let shards: [String: SafetensorsFile]

    public init(indexPath: String) throws {
        self.indexPath = indexPath
        try InputFile.refuseSpecialFile(indexPath)
        guard let data = FileManager.default.contents(atPath: indexPath) else {
            throw SafetensorsError.cannotOpen(path: indexPath, reason: "file not found or unreadable")
        }
        let json: JSONValue
        do { json = try JSONValue.parse(Array(data)) } catch {
            throw SafetensorsError.invalidIndex(path: indexPath, reason: "\(error)")
        }
        guard let wm = json["weight_map"]?.objectMembers else {
            throw SafetensorsError.invalidIndex(path: indexPath, reason: "missing 'weight_map' object")
        }
        var map: [String: String] = [:]
        for (k, v) in wm {
            guard let f = v.stringValue else { throw SafetensorsError.invalidIndex(path: indexPath, reason: "weight_map['\(k)'] is not a string") }
            guard !f.contains("/") && f != ".." else {
                throw SafetensorsError.invalidIndex(path: indexPath, reason: "weight_map['\(k)'] = '\(f)' is not a file name in the index's directory")
            }
            if let prev = map[k], prev != f { throw SafetensorsError.invalidIndex(path: indexPath, reason: "tensor '\(k)' mapped twice") }
            map[k] = f
        }
        var meta: [String: String] = [:]
        for (k, v) in json["metadata"]?.objectMembers ?? [] {
            if let s = v.stringValue { meta[k] = s } else { meta[k] = v.serialized() }
        }
        let dir = URL(fileURLWithPath: indexPath).deletingLastPathComponent()
        var shards: [String: SafetensorsFile] = [:]
        for f in Set(map.values).sorted(by: naturalLess) {
            let p = dir.appendingPathComponent(f).path
            guard FileManager.default.fileExists(atPath: p) else { throw SafetensorsError.shardMissing(index: indexPath, shard: f) }
            shards[f] = try SafetensorsFile(path: p)
        }
        for (t, f) in map where !shards[f]!.contains(t) {
            throw SafetensorsError.tensorNotInShard(index: indexPath, tensor: t, shard: f)
        }
        var names: [String] = []
        for f in shards.keys.sorted(by: naturalLess) {
            names += shards[f]!.names.filter { map[$0] == f }
        }
        self.names = names
        self.metadata = meta
        self.weightMap = map
        self.shards = shards
    }

    public func file(for name: String) throws -> SafetensorsFile {
        guard let f = weightMap[name], let s = shards[f] else { throw SafetensorsError.noSuchTensor(path: indexPath, tensor: name) }
        return s
    }

    public func info(_ name: String) throws -> TensorInfo { try file(for: name).info(name) }
    public func floats(_ name: String) throws -> [Float] { try file(for: name).floats(name) }
    public func matrix(_ name: String) throws -> Matrix { try file(for: name).matrix(name) }
}

public enum ShardedSafetensorsWriter {
    /// Splits `tensors` (in the given order) into shards of at most `maxShardBytes` of tensor
    /// data each (a tensor larger than the limit gets a shard of its own), writes them as
    /// `<baseName>-00001-of-0000K.safetensors`, then `<baseName>.safetensors.index.json` with
    /// `metadata.total_size` (bytes of tensor data) and the `weight_map`. Every file is written
    /// atomically; the index last, so an index on disk always points at complete shards.
    ///
    /// - Returns: the shard file names in order.
    @discardableResult
    public static func write(tensors: [SafetensorsTensor], metadata: [String: String] = [:], dtype: DType,
                             maxShardBytes: Int, to directory: URL, baseName: String = "model") throws -> [String] {
        guard maxShardBytes > 0 else {
            throw SafetensorsError.writeFailed(path: directory.path, reason: "maxShardBytes must be positive, got \(maxShardBytes)")
        }
        var groups: [[SafetensorsTensor]] = []
        var current: [SafetensorsTensor] = []
        var currentBytes = 0
        for t in tensors {
            let n = t.byteCount(default: dtype)
            if !current.isEmpty && currentBytes + n > maxShardBytes {
                groups.append(current)
                current = []
                currentBytes = 0
            }
            current.append(t)
            currentBytes += n
        }
        if !current.isEmpty || groups.isEmpty { groups.append(current) }

        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let k = groups.count
        func pad(_ i: Int) -> String { let s = String(i); return String(repeating: "0", count: max(0, 5 - s.count)) + s }
        var files: [String] = []
        var weightMap: [(String, JSONValue)] = []
        var total = 0
        for (i, g) in groups.enumerated() {
            let fname = "\(baseName)-\(pad(i + 1))-of-\(pad(k)).safetensors"
            total += try SafetensorsWriter.write(tensors: g, metadata: metadata, dtype: dtype,
                                                 to: directory.appendingPathComponent(fname))
            files.append(fname)
            for t in g { weightMap.append((t.name, .string(fname))) }
        }
        let index = JSONValue.object([
            ("metadata", .object([("total_size", .int(total))])),
            ("weight_map", .object(weightMap)),
        ])
        let text = Array((index.serialized(sortKeys: true, indent: 2) + "\n").utf8)
        try SafetensorsWriter.atomicWrite(to: directory.appendingPathComponent("\(baseName).safetensors.index.json")) { h in
            try h.write(contentsOf: Data(text))
        }
        return files
    }
}
