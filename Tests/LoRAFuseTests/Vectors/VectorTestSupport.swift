import XCTest
@testable import LoRAFuse

/// Temporary directory per test plus helpers to build tiny checkpoints.
class VectorTestCase: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lorafuse-vectors-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: tmp)
    }

    func dir(_ name: String) -> String { tmp.appendingPathComponent(name).path }

    /// Writes a checkpoint directory with config.json; sharded when `maxShardBytes` is given.
    @discardableResult
    func writeCheckpoint(_ name: String, _ tensors: [SafetensorsTensor], maxShardBytes: Int? = nil,
                         config: String = "{\"model_type\": \"llama\", \"_name_or_path\": \"NAME\"}") throws -> String {
        let d = tmp.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        if let m = maxShardBytes {
            try ShardedSafetensorsWriter.write(tensors: tensors, dtype: .f32, maxShardBytes: m, to: d)
        } else {
            try SafetensorsWriter.write(tensors: tensors, dtype: .f32, to: d.appendingPathComponent("model.safetensors"))
        }
        try Data(config.replacingOccurrences(of: "NAME", with: name).utf8).write(to: d.appendingPathComponent("config.json"))
        return d.path
    }

    func random(_ n: Int, seed: UInt64, std: Float = 1) -> [Float] {
        var rng = SeededRNG(seed: seed)
        return (0..<n).map { _ in rng.nextNormal() * std }
    }

    /// The value a Float32 takes after a round trip through `dtype`.
    func rounded(_ v: [Float], _ dtype: DType) -> [Float] {
        var b: [UInt8] = [], out: [Float] = []
        TensorCodec.encode(v, dtype: dtype, into: &b)
        TensorCodec.decode(b, dtype: dtype, into: &out)
        return out
    }

    func maxAbsDiff(_ a: [Float], _ b: [Float], file: StaticString = #filePath, line: UInt = #line) -> Float {
        XCTAssertEqual(a.count, b.count, "length", file: file, line: line)
        return zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
    }
}
