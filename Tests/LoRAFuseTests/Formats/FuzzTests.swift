import Foundation
import XCTest
@testable import LoRAFuse

/// Seeded mutation fuzzing of every reader: valid small files are mutated (bit flips,
/// truncations, insertions, deletions, length-field edits, JSON edits) and read; each read must
/// return a value or throw one of lorafuse's typed errors, never trap, and finish quickly.
/// A crash here aborts the test process, which is the failure signal.
final class FuzzTests: TempDirTestCase {
    var rng = SeededRNG(seed: 0xF022)
    var slowest: Double = 0
    var outcomes: [String: Int] = [:]
    var timeBy: [String: Double] = [:]

    func int(_ n: Int) -> Int { n <= 0 ? 0 : Int(rng.next() % UInt64(n)) }

    static let interesting: [UInt64] = [0, 1, 2, 7, 8, 31, 32, 33, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF,
                                        0x1_0000_0000, UInt64(Int64.max), UInt64.max, UInt64.max - 7]

    /// One random binary mutation. `lengthFields` are offsets of u64 length/count fields.
    func mutate(_ input: [UInt8], lengthFields: [Int] = []) -> [UInt8] {
        var b = input
        switch int(8) {
        case 0, 1:  // flip 1–4 bits
            for _ in 0...int(4) where !b.isEmpty { b[int(b.count)] ^= UInt8(1 << int(8)) }
        case 2:  // truncate
            b = Array(b.prefix(int(b.count)))
        case 3:  // insert random bytes
            let at = int(b.count + 1)
            b.insert(contentsOf: (0..<(1 + int(16))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: at)
        case 4:  // delete a span
            if !b.isEmpty { let at = int(b.count); b.removeSubrange(at..<min(b.count, at + 1 + int(8))) }
        case 5:  // overwrite 1, 2, 4 or 8 bytes with an interesting value
            let width = [1, 2, 4, 8][int(4)]
            if b.count >= width {
                let at = int(b.count - width + 1), v = Self.interesting[int(Self.interesting.count)]
                for k in 0..<width { b[at + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
            }
        default:  // edit a length/count field (or the first 8 bytes) by a small delta or an interesting value
            let at = lengthFields.isEmpty ? 0 : lengthFields[int(lengthFields.count)]
            guard at + 8 <= b.count else { break }
            var v: UInt64 = 0
            for k in 0..<8 { v |= UInt64(b[at + k]) << (8 * UInt64(k)) }
            v = int(2) == 0 ? v &+ UInt64(bitPattern: Int64(int(17) - 8)) : Self.interesting[int(Self.interesting.count)]
            for k in 0..<8 { b[at + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
        }
        return b
    }

    /// One random edit of JSON text.
    func mutateJSON(_ text: String) -> String {
        var s = Array(text.unicodeScalars)
        let tokens = ["-1", "0", "1e309", "-0.0", "0.5", "null", "true", "\"x\"", "[]", "{}", "\"\\u0000\"", "[[[[[[[[", "\"", ",", ":",
                      "99999999999999999999", "\"lora\"", "\"dora\"", "{\"a\":1,\"a\":2}", "NaN"]
        switch int(6) {
        case 0:  // delete a span
            if !s.isEmpty { let at = int(s.count); s.removeSubrange(at..<min(s.count, at + 1 + int(6))) }
        case 1:  // insert a token
            s.insert(contentsOf: Array(tokens[int(tokens.count)].unicodeScalars), at: int(s.count + 1))
        case 2:  // replace a number or literal with a token
            let idx = s.indices.filter { "0123456789tfn".unicodeScalars.contains(s[$0]) }
            if let i = idx.isEmpty ? nil : idx[int(idx.count)] {
                var j = i
                while j < s.count, "0123456789.eE+-truefalsn".unicodeScalars.contains(s[j]) { j += 1 }
                s.replaceSubrange(i..<max(j, i + 1), with: Array(tokens[int(tokens.count)].unicodeScalars))
            }
        case 3:  // duplicate a span
            if !s.isEmpty { let at = int(s.count); let span = Array(s[at..<min(s.count, at + 1 + int(20))]); s.insert(contentsOf: span, at: int(s.count)) }
        case 4:  // truncate
            s = Array(s.prefix(int(s.count)))
        default:  // swap two characters
            if s.count > 1 { s.swapAt(int(s.count), int(s.count)) }
        }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: s)
        return String(out)
    }

    static func isTyped(_ e: Error) -> Bool {
        e is SafetensorsError || e is GGUFError || e is PEFTError || e is MLXAdapterError || e is GGUFLoRAError
            || e is JSONParseError || e is AdapterIOError
    }

    /// Runs `body`, which must return or throw a typed error, within `limit` seconds.
    func check(_ what: String, limit: Double = 1.0, _ body: () throws -> Void) {
        let t0 = Date()
        do {
            try body()
            outcomes[what + " ok", default: 0] += 1
        } catch {
            XCTAssertTrue(Self.isTyped(error), "\(what): untyped error \(type(of: error)): \(error)")
            XCTAssertFalse("\(error)".isEmpty)
            outcomes[what + " error", default: 0] += 1
        }
        let dt = Date().timeIntervalSince(t0)
        timeBy[what, default: 0] += dt
        slowest = max(slowest, dt)
        XCTAssertLessThan(dt, limit, "\(what) took \(dt) s")
    }

    /// Offsets of the u64 length/count fields of a GGUF header (counts, key/name lengths, dims,
    /// offsets), found by walking the valid file.
    func ggufLengthFields(_ b: [UInt8]) -> [Int] {
        func u64(_ at: Int) -> Int { var v = 0; for k in 0..<8 { v |= Int(b[at + k]) << (8 * k) }; return v }
        func u32(_ at: Int) -> Int { var v = 0; for k in 0..<4 { v |= Int(b[at + k]) << (8 * k) }; return v }
        var fields = [8, 16]
        let nt = u64(8), nkv = u64(16)
        var p = 24
        func skipValue(_ type: Int) {
            switch type {
            case 0, 1, 7: p += 1
            case 2, 3: p += 2
            case 4, 5, 6: p += 4
            case 10, 11, 12: p += 8
            case 8: fields.append(p); p += 8 + u64(p)
            default:  // array
                let et = u32(p); fields.append(p + 4); let n = u64(p + 4); p += 12
                for _ in 0..<n { skipValue(et) }
            }
        }
        for _ in 0..<nkv {
            fields.append(p); p += 8 + u64(p)
            let t = u32(p); p += 4
            skipValue(t)
        }
        for _ in 0..<nt {
            fields.append(p); p += 8 + u64(p)
            let nd = u32(p); p += 4
            for _ in 0..<nd { fields.append(p); p += 8 }
            p += 4
            fields.append(p); p += 8
        }
        return fields
    }

    /// Mutated files go to a RAM disk when there is one: on this project's machines a small
    /// file write to /tmp costs ~5 ms, which would dominate the test.
    var scratch: URL!

    override func setUpWithError() throws {
        try super.setUpWithError()
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: "/dev/shm", isDirectory: &isDir), isDir.boolValue,
           FileManager.default.isWritableFile(atPath: "/dev/shm") {
            scratch = URL(fileURLWithPath: "/dev/shm/lorafuse-fuzz-\(UUID().uuidString)")
        } else {
            scratch = tmp.appendingPathComponent("scratch")
        }
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
        try super.tearDownWithError()
    }

    func testMutatedInputsNeverCrashOrHang() throws {
        let start = Date()
        let adapter = TinyLlama.adapter()

        // Valid seeds.
        let peftDir = tmp.appendingPathComponent("peft").path
        try PEFTAdapter.write(adapter, to: peftDir, dtype: .f16)
        let mlxDir = tmp.appendingPathComponent("mlx").path
        try MLXAdapter.write(adapter, to: mlxDir, dtype: .f32)
        let ggufLoRA = try GGUFLoRA.serialize(adapter, dtype: .f16, hints: TinyLlama.hints)
        var mw = try GGUFWriter()
        try mw.set("general.architecture", .string("llama"))
        try mw.set("general.name", .string("m"))
        try mw.set("tokenizer.ggml.tokens", .array(.string, ["a", "b", "c"].map { .string($0) }))
        try mw.set("llama.attention.head_count", .uint32(2))
        try mw.addTensor("blk.0.attn_q.weight", matrix: Matrix(rows: 2, cols: 32, repeating: 0.5), type: .q8_0)
        try mw.addTensor("output_norm.weight", dims: [4], values: [1, 2, 3, 4], type: .bf16)
        let ggufModel = mw.serialized()
        let peftST = try Array(Data(contentsOf: URL(fileURLWithPath: peftDir + "/adapter_model.safetensors")))
        let peftCfg = try String(contentsOfFile: peftDir + "/adapter_config.json", encoding: .utf8)
        let mlxST = try Array(Data(contentsOf: URL(fileURLWithPath: mlxDir + "/adapters.safetensors")))
        let mlxCfg = try String(contentsOfFile: mlxDir + "/adapter_config.json", encoding: .utf8)
        let inputs = [peftDir, mlxDir]
        let hashes = try inputs.map(contentHash)

        // 1. safetensors files (the PEFT weights), read whole.
        let stPath = scratch.appendingPathComponent("f.safetensors").path
        for _ in 0..<700 {
            try Data(mutate(peftST, lengthFields: [0])).write(to: URL(fileURLWithPath: stPath))
            check("safetensors") {
                let f = try SafetensorsFile(path: stPath)
                for n in f.names { _ = try? f.matrix(n) }
            }
        }
        // 2. GGUF model file (metadata arrays, Q8_0 and BF16 tensors), parsed and dequantized.
        let modelFields = ggufLengthFields(ggufModel)
        for _ in 0..<700 {
            let b = mutate(ggufModel, lengthFields: modelFields)
            check("gguf") {
                let f = try GGUFFile(data: Data(b))
                for t in f.tensors { _ = try f.floats(t.name) }
            }
        }
        // 3. GGUF LoRA files, through the adapter reader (with and without head hints).
        let loraFields = ggufLengthFields(ggufLoRA)
        for i in 0..<700 {
            let b = mutate(ggufLoRA, lengthFields: loraFields)
            check("gguf-lora") {
                _ = try GGUFLoRA.read(file: try GGUFFile(data: Data(b)), hints: i % 2 == 0 ? TinyLlama.hints : ModelHints())
            }
        }
        // 4. PEFT directories: mutated config JSON (most) or mutated weights.
        let pDir = scratch.appendingPathComponent("pf")
        try FileManager.default.createDirectory(at: pDir, withIntermediateDirectories: true)
        for i in 0..<600 {
            var cfg = peftCfg
            for _ in 0...int(2) { cfg = mutateJSON(cfg) }
            try Data(cfg.utf8).write(to: pDir.appendingPathComponent("adapter_config.json"))
            try Data(i % 4 == 0 ? mutate(peftST, lengthFields: [0]) : peftST).write(to: pDir.appendingPathComponent("adapter_model.safetensors"))
            check("peft") { _ = try PEFTAdapter.read(directory: pDir.path) }
        }
        // 5. MLX directories: mutated config JSON or weights.
        let mDir = scratch.appendingPathComponent("mf")
        try FileManager.default.createDirectory(at: mDir, withIntermediateDirectories: true)
        for i in 0..<600 {
            var cfg = mlxCfg
            for _ in 0...int(2) { cfg = mutateJSON(cfg) }
            try Data(cfg.utf8).write(to: mDir.appendingPathComponent("adapter_config.json"))
            try Data(i % 4 == 0 ? mutate(mlxST, lengthFields: [0]) : mlxST).write(to: mDir.appendingPathComponent("adapters.safetensors"))
            check("mlx") { _ = try AdapterIO.read(path: mDir.path) }
        }

        XCTAssertEqual(try inputs.map(contentHash), hashes, "the seed inputs were modified")
        let total = outcomes.values.reduce(0, +)
        XCTAssertEqual(total, 3300)
        // The mutations must exercise both outcomes of every reader, or they test nothing.
        for r in ["safetensors", "gguf", "gguf-lora", "peft", "mlx"] {
            XCTAssertGreaterThan(outcomes[r + " error", default: 0], 50, "\(r): \(outcomes)")
            XCTAssertGreaterThan(outcomes[r + " ok", default: 0], 5, "\(r): \(outcomes)")
        }
        let elapsed = Date().timeIntervalSince(start)
        print("fuzz: \(total) mutated inputs in \(String(format: "%.2f", elapsed)) s, slowest \(String(format: "%.3f", slowest)) s; \(timeBy); \(outcomes.sorted { $0.key < $1.key })")
        XCTAssertLessThan(elapsed, 15, "fuzzing should take a few seconds")
    }
}
