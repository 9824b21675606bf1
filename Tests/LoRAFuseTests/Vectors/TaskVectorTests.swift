import XCTest
@testable import LoRAFuse

final class TaskVectorTests: VectorTestCase {
    /// A and B share three float tensors of different dtypes; they also differ in ways that must
    /// be skipped: a tensor only in A, one only in B, a shape mismatch and an integer tensor.
    func makePair(shardA: Int? = nil) throws -> (String, String, [String: ([Float], [Float], DType, [Int])]) {
        let specs: [(String, [Int], DType)] = [
            ("model.layers.0.self_attn.q_proj.weight", [4, 6], .f32),
            ("model.embed_tokens.weight", [8, 4], .bf16),
            ("model.norm.weight", [4], .f16),
        ]
        var ta: [SafetensorsTensor] = [], tb: [SafetensorsTensor] = []
        var values: [String: ([Float], [Float], DType, [Int])] = [:]
        for (k, (n, shape, dt)) in specs.enumerated() {
            let count = shape.reduce(1, *)
            // Store values the dtype can hold exactly, so "expected" is plain float arithmetic.
            let a = rounded(random(count, seed: UInt64(10 + k)), dt), b = rounded(random(count, seed: UInt64(20 + k)), dt)
            ta.append(SafetensorsTensor(name: n, shape: shape, values: a, dtype: dt))
            tb.append(SafetensorsTensor(name: n, shape: shape, values: b, dtype: dt))
            values[n] = (a, b, dt, shape)
        }
        ta.append(SafetensorsTensor(name: "only_in_a", shape: [2], values: [1, 2]))
        tb.append(SafetensorsTensor(name: "only_in_b", shape: [2], values: [3, 4]))
        ta.append(SafetensorsTensor(name: "shape_diff", shape: [2, 3], values: [Float](repeating: 1, count: 6)))
        tb.append(SafetensorsTensor(name: "shape_diff", shape: [3, 2], values: [Float](repeating: 1, count: 6)))
        let ints: [UInt8] = (0..<16).map { UInt8($0) }
        ta.append(SafetensorsTensor(name: "position_ids", shape: [2], dtype: "I64", rawBytes: ints))
        tb.append(SafetensorsTensor(name: "position_ids", shape: [2], dtype: "I64", rawBytes: ints))
        let a = try writeCheckpoint("A", ta, maxShardBytes: shardA)
        let b = try writeCheckpoint("B", tb)
        return (a, b, values)
    }

    func testExtractEqualsDenseDifferenceAndReportsSkips() throws {
        let (a, b, values) = try makePair()
        let out = dir("vec")
        let report = try TaskVectors.extract(from: a, minus: b, output: out)
        XCTAssertEqual(report.combined, 3)
        let reasons = Dictionary(uniqueKeysWithValues: report.skipped.map { ($0.name, $0.reason) })
        XCTAssertEqual(reasons, ["only_in_a": "missing-in-minus", "only_in_b": "missing-in-from",
                                 "shape_diff": "shape-mismatch", "position_ids": "non-float"])
        XCTAssertTrue(report.skippedTable().contains("shape-mismatch"))
        let json = try JSONEncoder().encode(report)
        XCTAssertTrue(String(decoding: json, as: UTF8.self).contains("\"missing-in-minus\""))

        let vec = try SafetensorsFile(path: out + "/model.safetensors")
        XCTAssertEqual(Set(vec.names), Set(values.keys))
        for (n, (va, vb, dt, shape)) in values {
            let info = try vec.info(n)
            XCTAssertEqual(info.dtype, dt.rawValue, "output keeps the input dtype")
            XCTAssertEqual(info.shape, shape)
            let expected = rounded(zip(va, vb).map { $0 - $1 }, dt)
            XCTAssertEqual(try vec.floats(n), expected, n)
        }
        let cfg = try JSONValue.parse(Array(try Data(contentsOf: URL(fileURLWithPath: out + "/vector_config.json"))))
        XCTAssertEqual(cfg["from"]?.stringValue, "A")
        XCTAssertEqual(cfg["minus"]?.stringValue, "B")
        XCTAssertEqual(cfg["dtype"]?.stringValue, "mixed")
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/config.json"))
    }

    func testApplyAddsScaledVectorAndKeepsTheRest() throws {
        let (a, b, values) = try makePair()
        let vec = dir("vec")
        try TaskVectors.extract(from: a, minus: b, output: vec)
        for alpha: Float in [0.5, -1.25] {
            let out = dir("applied\(alpha)")
            let r = try TaskVectors.apply(vector: vec, to: b, scale: alpha, output: out)
            XCTAssertEqual(r.combined, 3)
            let f = try SafetensorsFile(path: out + "/model.safetensors")
            for (n, (va, vb, dt, _)) in values {
                let tau = rounded(zip(va, vb).map { $0 - $1 }, dt)
                let expected = rounded(zip(vb, tau).map { $0 + alpha * $1 }, dt)
                XCTAssertEqual(try f.floats(n), expected, "\(n) α=\(alpha)")
            }
            // B's other tensors are copied byte for byte; the vector has none of them.
            XCTAssertEqual(try f.rawBytes("only_in_b"), try SafetensorsFile(path: b + "/model.safetensors").rawBytes("only_in_b"))
            XCTAssertEqual(try f.info("position_ids").dtype, "I64")
            XCTAssertEqual(Set(r.skipped.map(\.name)), ["only_in_b", "shape_diff", "position_ids"])
            XCTAssertEqual(r.skipped.first { $0.name == "shape_diff" }?.reason, "missing-in-vector")
        }
    }

    func testNegativeScaleUndoesTheVector() throws {
        // α = −1 applied to A gives back B (up to the dtype's rounding of A − B).
        let (a, b, values) = try makePair()
        let vec = dir("vec")
        try TaskVectors.extract(from: a, minus: b, output: vec, options: .init(dtype: .f32))
        let out = dir("back")
        try TaskVectors.apply(vector: vec, to: a, scale: -1, output: out, options: .init(dtype: .f32))
        let f = try SafetensorsFile(path: out + "/model.safetensors")
        for (n, (_, vb, _, _)) in values {
            XCTAssertLessThan(maxAbsDiff(try f.floats(n), vb), 1e-6, n)
            XCTAssertEqual(try f.info(n).dtype, "F32")
        }
    }

    func testShardedInputAndShardedStreamingOutput() throws {
        let (a, b, values) = try makePair(shardA: 40)
        XCTAssertTrue(FileManager.default.fileExists(atPath: a + "/model.safetensors.index.json"))
        let out = dir("vec")
        // Chunks of 5 elements: every tensor is streamed in several pieces.
        let r = try TaskVectors.extract(from: a, minus: b, output: out, options: .init(maxShardBytes: 64, chunkElements: 5))
        XCTAssertGreaterThan(r.outputFiles.filter { $0.hasSuffix(".safetensors") }.count, 1)
        let sh = try ShardedSafetensors(indexPath: out + "/model.safetensors.index.json")
        XCTAssertEqual(Set(sh.names), Set(values.keys))
        for (n, (va, vb, dt, _)) in values {
            XCTAssertEqual(try sh.floats(n), rounded(zip(va, vb).map { $0 - $1 }, dt), n)
        }
        for (_, f) in sh.shards {
            let bytes = f.tensors.reduce(0) { $0 + $1.byteRange.count }
            XCTAssertTrue(bytes <= 64 || f.tensors.count == 1, "shard over the limit with several tensors")
        }
        XCTAssertEqual(sh.metadata["total_size"], String(r.bytesWritten))
        // The sharded vector applies like a single file.
        let applied = dir("applied")
        try TaskVectors.apply(vector: out, to: b, scale: 1, output: applied, options: .init(chunkElements: 3))
        let f = try HFCheckpoint(path: applied)
        for (n, (va, vb, dt, _)) in values {
            let tau = rounded(zip(va, vb).map { $0 - $1 }, dt)
            XCTAssertEqual(try f.floats(n), rounded(zip(vb, tau).map { $0 + $1 }, dt), n)
        }
    }

    func testNothingMatchingIsAnError() throws {
        let a = try writeCheckpoint("A", [SafetensorsTensor(name: "x", shape: [2], values: [1, 2])])
        let b = try writeCheckpoint("B", [SafetensorsTensor(name: "y", shape: [2], values: [1, 2])])
        XCTAssertThrowsError(try TaskVectors.extract(from: a, minus: b, output: dir("o"))) { e in
            guard case CheckpointError.nothingMatched = e else { return XCTFail("\(e)") }
            XCTAssertTrue("\(e)".contains("no tensor"))
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir("o")), "nothing written on error")
    }

    func testOutputDirectoryMustBeEmpty() throws {
        let (a, b, _) = try makePair()
        let out = dir("busy")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: out + "/keep"))
        XCTAssertThrowsError(try TaskVectors.extract(from: a, minus: b, output: out)) { e in
            guard case .exists? = e as? OutputGuardError else { return XCTFail("\(e)") }
        }
        XCTAssertEqual(try String(contentsOfFile: out + "/keep", encoding: .utf8), "x")
        // An output inside an input, or the input itself: refused even with force.
        XCTAssertThrowsError(try TaskVectors.extract(from: a, minus: b, output: a + "/tau", options: .init(force: true))) { e in
            guard case .insideInput? = e as? OutputGuardError else { return XCTFail("\(e)") }
        }
        // --force replaces the folder whole.
        try TaskVectors.extract(from: a, minus: b, output: out, options: .init(force: true))
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/keep"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/" + TaskVectors.vectorConfigFile))
    }

    func testStreamingWriterEnforcesPlan() throws {
        let plan = [PlannedTensor(name: "a", shape: [2], dtype: "F32"), PlannedTensor(name: "b", shape: [3], dtype: "F16")]
        let w = try StreamingShardedWriter(directory: tmp.appendingPathComponent("w"), plan: plan, maxShardBytes: 8)
        XCTAssertThrowsError(try w.write(name: "b", bytes: [UInt8](repeating: 0, count: 6))) { e in
            XCTAssertEqual(e as? CheckpointError, .writerOrder(path: w.directory.path, expected: "a", actual: "b"))
        }
        XCTAssertThrowsError(try w.write(name: "a", bytes: [UInt8](repeating: 0, count: 4))) { e in
            XCTAssertEqual(e as? CheckpointError, .writerSize(path: w.directory.path, tensor: "a", expected: 8, actual: 4))
        }
        try w.write(name: "a", bytes: [UInt8](repeating: 0, count: 8))
        // First shard is complete and renamed into place before the second tensor arrives.
        XCTAssertTrue(FileManager.default.fileExists(atPath: w.directory.appendingPathComponent("model-00001-of-00002.safetensors").path))
        XCTAssertThrowsError(try w.finish())
        try w.append(name: "b", bytes: [0, 0x3C])                 // 1 in F16
        XCTAssertThrowsError(try w.write(name: "b", bytes: [0, 0x40, 0, 0xC0]), "whole write after a partial append")
        XCTAssertThrowsError(try w.append(name: "b", bytes: [UInt8](repeating: 0, count: 6)), "more than the planned bytes")
        try w.append(name: "b", bytes: [0, 0x40, 0, 0xC0])        // 2, -2
        let files = try w.finish()
        XCTAssertEqual(files, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"])
        let sh = try ShardedSafetensors(indexPath: w.directory.appendingPathComponent("model.safetensors.index.json").path)
        XCTAssertEqual(try sh.floats("b"), [1, 2, -2])
        XCTAssertEqual(try sh.floats("a"), [0, 0])
    }

    func testByteSizeParsing() {
        XCTAssertEqual(parseByteSize("2GB"), 2_000_000_000)
        XCTAssertEqual(parseByteSize("500MB"), 500_000_000)
        XCTAssertEqual(parseByteSize("1GiB"), 1 << 30)
        XCTAssertEqual(parseByteSize("1234"), 1234)
        XCTAssertNil(parseByteSize("lots"))
        XCTAssertNil(parseByteSize("-5MB"))
    }
}

final class TensorCodecTests: XCTestCase {
    /// The vectorized BF16 paths agree bit for bit with HalfConversion, specials included.
    func testBF16CodecMatchesHalfConversion() {
        var rng = SeededRNG(seed: 9)
        var v: [Float] = (0..<1000).map { _ in rng.nextNormal() * 100 }
        v += [0, -0, .infinity, -.infinity, .nan, Float(bitPattern: 0x7FC0_0001), Float(bitPattern: 0xFF80_0001),
              .greatestFiniteMagnitude, -.greatestFiniteMagnitude, .leastNonzeroMagnitude, 1.00390625, 1.01171875,
              Float(bitPattern: 0x3F80_8000), Float(bitPattern: 0x3F81_8000)]
        var bytes: [UInt8] = []
        TensorCodec.encode(v, dtype: .bf16, into: &bytes)
        for (k, x) in v.enumerated() {
            let got = UInt16(bytes[2 * k]) | UInt16(bytes[2 * k + 1]) << 8
            XCTAssertEqual(got, HalfConversion.bfloatFromFloat(x), "value \(x) (0x\(String(x.bitPattern, radix: 16)))")
        }
        var back: [Float] = []
        TensorCodec.decode(bytes, dtype: .bf16, into: &back)
        for k in 0..<v.count {
            let h = UInt16(bytes[2 * k]) | UInt16(bytes[2 * k + 1]) << 8
            XCTAssertEqual(back[k].bitPattern, HalfConversion.floatFromBFloat(h).bitPattern)
        }
    }
}
