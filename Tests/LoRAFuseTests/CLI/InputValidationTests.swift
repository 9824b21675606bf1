import Foundation
import XCTest
@testable import LoRAFuse

/// Bad input gets a clear error (exit 1 or 2 with a message naming the problem), never a crash,
/// a hang or silent garbage. Malformed inputs are made at run time in a temporary directory.
final class InputValidationTests: XCTestCase {
    var tmp: String!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lf-bad-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: tmp)
    }

    func run(_ args: [String]) throws -> CLITests.Run { try CLITests.run(args) }

    func copyAdapter(_ name: String = "a", to dest: String) throws {
        try FileManager.default.createDirectory(atPath: (dest as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: CLITests.inputs + "/" + name, toPath: dest)
    }

    func testInspectSameFolderNamesAreDisambiguated() throws {
        try copyAdapter("a", to: tmp + "/run1/x")
        try copyAdapter("b", to: tmp + "/run2/x")
        let r = try run(["inspect", tmp + "/run1/x", tmp + "/run2/x", "--json"])
        XCTAssertEqual(r.code, 0, r.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let dtypes = try XCTUnwrap(json["dtypes"] as? [String: String])
        XCTAssertEqual(Set(dtypes.keys), ["run1/x", "run2/x"])
        // The same directory twice still works (numbered).
        let twice = try run(["inspect", tmp + "/run1/x", tmp + "/run1/x", "--json"])
        XCTAssertEqual(twice.code, 0, twice.stderr)
    }

    func testAdapterNamesDisambiguation() {
        func adapter(_ path: String) -> LoRAAdapter {
            LoRAAdapter(name: (path as NSString).lastPathComponent, modules: [:], sourcePath: path)
        }
        let names = AdapterNames.disambiguated([adapter("/a/run1/x"), adapter("/a/run2/x"), adapter("/b/y"), adapter("/b/y")]).map(\.name)
        XCTAssertEqual(names, ["run1/x", "run2/x", "b/y#1", "b/y#2"])
        XCTAssertEqual(AdapterNames.duplicates(["p", "q", "p"]), ["p"])
    }
}

extension InputValidationTests {
    func testAdapterWeightThatIsNotANumber() throws {
        let a = CLITests.inputs + "/a"
        let r = try run(["merge", a + ":abc", "--method", "linear", "-o", tmp + "/out", "--quiet"])
        XCTAssertEqual(r.code, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("'abc'") && r.stderr.contains("not a number"), r.stderr)
        XCTAssertFalse(r.stderr.contains("no such file"), r.stderr)
        let missing = try run(["merge", tmp + "/nowhere:abc", "--method", "linear", "-o", tmp + "/out", "--quiet"])
        XCTAssertEqual(missing.code, 1, missing.stderr)
        XCTAssertTrue(missing.stderr.contains("not a number"), missing.stderr)
        // A file whose name has a colon is still a path.
        try copyAdapter("a", to: tmp + "/odd:name")
        let odd = try run(["inspect", tmp + "/odd:name"])
        XCTAssertEqual(odd.code, 0, odd.stderr)
        let merged = try run(["merge", tmp + "/odd:name", "--method", "linear", "-o", tmp + "/out1", "--quiet"])
        XCTAssertEqual(merged.code, 0, merged.stderr)
        // Weights that overflow weight × ΔW are refused up front.
        for w in ["1e38", "inf", "nan"] {
            let big = try run(["merge", a + ":" + w, "--method", "linear", "-o", tmp + "/out2", "--quiet"])
            XCTAssertEqual(big.code, 1, "\(w): \(big.stderr)")
            XCTAssertTrue(big.stderr.contains("weight"), big.stderr)
        }
    }

    func testNegativeOptionValuesGetTheirRangeCheck() throws {
        let a = CLITests.inputs + "/a"
        let r = try run(["merge", a, "--method", "svd", "--rank", "-1", "-o", tmp + "/out", "--quiet"])
        XCTAssertEqual(r.code, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("--rank must be at least 1, got -1"), r.stderr)
        XCTAssertFalse(r.stderr.contains("Missing value"), r.stderr)
        let t = try run(["inspect", a, "--samples", "-5"])
        XCTAssertEqual(t.code, 1, t.stderr)
        XCTAssertTrue(t.stderr.contains("--samples"), t.stderr)
        // A negative value where one is allowed now parses instead of being taken for a flag.
        let lam = try run(["merge", a, CLITests.inputs + "/b", "--method", "dare_linear", "--lambda", "-0.5", "-o", tmp + "/neg", "--quiet"])
        XCTAssertFalse(lam.stderr.contains("Missing value"), lam.stderr)
    }
}

// MARK: YAML plans that would take all memory

extension InputValidationTests {
    func writePlan(_ text: String, _ name: String = "plan.yaml") throws -> String {
        let p = tmp + "/" + name
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    func testBillionLaughsPlanIsRefused() throws {
        var yaml = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        for i in 1...9 { yaml += "a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 10).joined(separator: ", ") + "]\n" }
        yaml += "method: linear\nadapters: *a9\n"
        let p = try writePlan(yaml)
        XCTAssertThrowsError(try FusionPlan.load(path: p)) { e in
            XCTAssertTrue("\(e)".contains(p) && "\(e)".contains("nodes"), "\(e)")
        }
        let r = try run(["merge", "--config", p, "--quiet"])
        XCTAssertEqual(r.code, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("too large"), r.stderr)
    }

    func testPlanWithTooManyAdaptersOrBytesIsRefused() throws {
        let many = "method: linear\nadapters:\n" + String(repeating: "  - x\n", count: 50_000)
        XCTAssertThrowsError(try FusionPlan.load(path: try writePlan(many))) { e in
            XCTAssertTrue("\(e)".contains("nodes") || "\(e)".contains("at most 1024"), "\(e)")
        }
        let some = "method: linear\nadapters:\n" + String(repeating: "  - x\n", count: 1025)
        XCTAssertThrowsError(try FusionPlan.load(path: try writePlan(some, "some.yaml"))) { e in
            XCTAssertTrue("\(e)".contains("at most 1024") && "\(e)".contains("some.yaml"), "\(e)")
        }
        let big = "method: linear\n# " + String(repeating: "x", count: 1 << 20) + "\nadapters: [a]\n"
        XCTAssertThrowsError(try FusionPlan.load(path: try writePlan(big, "big.yaml"))) { e in
            XCTAssertTrue("\(e)".contains("big.yaml") && "\(e)".contains("too large"), "\(e)")
        }
        let deep = "method: linear\nadapters: " + String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000) + "\n"
        XCTAssertThrowsError(try FusionPlan.load(path: try writePlan(deep, "deep.yaml"))) { e in
            XCTAssertTrue("\(e)".contains("nested"), "\(e)")
        }
        // A plan with weights that would overflow is refused with the key.
        let w = "method: linear\nadapters:\n  - path: a\n    weight: 1e38\n"
        XCTAssertThrowsError(try FusionPlan.load(path: try writePlan(w, "w.yaml"))) { e in
            XCTAssertTrue("\(e)".contains("adapters[0].weight"), "\(e)")
        }
    }
}

// MARK: FIFOs, devices and pipes

extension InputValidationTests {
    /// Runs the binary but kills it after `timeout` seconds, so a hang fails the test instead of the run.
    func runWithTimeout(_ args: [String], timeout: TimeInterval = 30) throws -> CLITests.Run {
        let p = Process()
        p.executableURL = CLITests.binary
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        if p.isRunning { p.terminate(); XCTFail("\(args) hung") }
        p.waitUntilExit()
        return CLITests.Run(code: p.terminationStatus,
                            stdout: String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self),
                            stderr: String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
    }

    func makeFIFO(_ path: String) throws {
        guard mkfifo(path, 0o644) == 0 else {
            struct FIFOError: Error, CustomStringConvertible { var description: String }
            throw FIFOError(description: "mkfifo \(path) failed: \(String(cString: strerror(errno)))")
        }
    }

    func testFIFOInputsAreRefusedNotWaitedOn() throws {
        let fifo = tmp + "/pipe"
        try makeFIFO(fifo)
        let r = try runWithTimeout(["inspect", fifo])
        XCTAssertEqual(r.code, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("is not a regular file (a FIFO)"), r.stderr)
        let plan = try runWithTimeout(["merge", "--config", fifo])
        XCTAssertEqual(plan.code, 2, plan.stderr)
        XCTAssertTrue(plan.stderr.contains("not a regular file"), plan.stderr)
        // In the library, without the binary: every reader checks first.
        XCTAssertThrowsError(try GGUFFile(path: fifo)) { XCTAssertTrue("\($0)".contains("FIFO"), "\($0)") }
        XCTAssertThrowsError(try SafetensorsFile(path: fifo)) { XCTAssertTrue("\($0)".contains("FIFO"), "\($0)") }
        XCTAssertThrowsError(try TaskData.read(path: fifo)) { XCTAssertTrue("\($0)".contains("FIFO"), "\($0)") }
        XCTAssertThrowsError(try LlamaModel.load(path: fifo)) { XCTAssertTrue("\($0)".contains("FIFO"), "\($0)") }
        // A PEFT directory whose files are FIFOs.
        let dir = tmp + "/peft"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try makeFIFO(dir + "/adapter_config.json")
        XCTAssertThrowsError(try PEFTAdapter.read(directory: dir)) { XCTAssertTrue("\($0)".contains("FIFO"), "\($0)") }
        try FileManager.default.removeItem(atPath: dir + "/adapter_config.json")
        try FileManager.default.copyItem(atPath: CLITests.inputs + "/a/adapter_config.json", toPath: dir + "/adapter_config.json")
        try makeFIFO(dir + "/adapter_model.safetensors")
        let peft = try runWithTimeout(["inspect", dir])
        XCTAssertEqual(peft.code, 2, peft.stderr)
        XCTAssertTrue(peft.stderr.contains("adapter_model.safetensors is not a regular file (a FIFO)"), peft.stderr)
    }

    func testCharacterDeviceIsNamed() throws {
        XCTAssertThrowsError(try InputFile.requireRegularFile("/dev/null")) {
            XCTAssertEqual("\($0)".contains("(a character device)"), true, "\($0)")
        }
    }
}

// MARK: Non-finite and contradictory numbers

extension InputValidationTests {
    func editJSON(_ path: String, _ change: (inout [String: Any]) -> Void) throws {
        var j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        change(&j)
        try JSONSerialization.data(withJSONObject: j).write(to: URL(fileURLWithPath: path))
    }

    /// Rewrites a safetensors file with `change` applied to the named tensor's values.
    func editTensor(_ file: String, _ name: String, _ change: (inout [Float]) -> Void) throws {
        let st = try SafetensorsFile(path: file)
        let tensors = try st.names.map { n -> SafetensorsTensor in
            var v = try st.floats(n)
            if n == name { change(&v) }
            return SafetensorsTensor(name: n, shape: try st.info(n).shape, values: v)
        }
        try FileManager.default.removeItem(atPath: file)
        _ = try SafetensorsWriter.write(tensors: tensors, dtype: .f32, to: URL(fileURLWithPath: file))
    }

    func testNonFiniteAdapterValuesAreReportedOnLoad() throws {
        let huge = tmp + "/huge"
        try copyAdapter("a", to: huge)
        try editJSON(huge + "/adapter_config.json") { $0["lora_alpha"] = 1e308 }
        XCTAssertThrowsError(try AdapterIO.read(path: huge)) { e in
            XCTAssertTrue(e is AdapterValueError && "\(e)".contains("lora_alpha") && "\(e)".contains("huge"), "\(e)")
        }
        let r = try run(["inspect", huge, "--json"])
        XCTAssertEqual(r.code, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("not finite"), r.stderr)

        let nan = tmp + "/nan"
        try copyAdapter("a", to: nan)
        let st = try SafetensorsFile(path: nan + "/adapter_model.safetensors")
        let aName = try XCTUnwrap(st.names.sorted().first { $0.contains("lora_A") })
        try editTensor(nan + "/adapter_model.safetensors", aName) { $0[3] = .nan }
        XCTAssertThrowsError(try AdapterIO.read(path: nan)) { e in
            XCTAssertTrue("\(e)".contains("lora_A") && "\(e)".contains("non-finite"), "\(e)")
        }
    }

    func testInspectJSONSurvivesOverflowingNorms() throws {
        let big = tmp + "/big"
        try copyAdapter("a", to: big)
        let st = try SafetensorsFile(path: big + "/adapter_model.safetensors")
        for n in st.names where n.contains("lora_B") { try editTensor(big + "/adapter_model.safetensors", n) { v in v = v.map { $0 == 0 ? 1e30 : $0 * 1e30 } } }
        let r = try run(["inspect", big, CLITests.inputs + "/b", "--json"])
        XCTAssertEqual(r.code, 0, r.stderr)
        XCTAssertNotNil(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)), r.stdout)
    }

    func testModelConfigOutOfRangeAndBlockCountMismatch() throws {
        let fm = FileManager.default
        let src = ModelFixtures.path("tiny-llama")
        func variant(_ name: String, config: ((inout [String: Any]) -> Void)? = nil) throws -> String {
            let d = tmp + "/" + name
            try fm.copyItem(atPath: src, toPath: d)
            if let c = config { try editJSON(d + "/config.json", c) }
            return d
        }
        for (name, key, value) in [("theta", "rope_theta", -1.0), ("eps", "rms_norm_eps", -1e-5)] as [(String, String, Double)] {
            let d = try variant(name) { $0[key] = value }
            XCTAssertThrowsError(try LlamaModel.load(path: d)) { e in XCTAssertTrue("\(e)".contains(key), "\(e)") }
        }
        for layers in [1, 3] {
            let d = try variant("layers\(layers)") { $0["num_hidden_layers"] = layers }
            XCTAssertThrowsError(try LlamaModel.load(path: d)) { e in
                XCTAssertTrue("\(e)".contains("num_hidden_layers") && "\(e)".contains("2 block(s)"), "\(e)")
            }
        }
        let nanNorm = try variant("nannorm")
        try editTensor(nanNorm + "/model.safetensors", "model.layers.0.input_layernorm.weight") { $0[0] = .nan }
        XCTAssertThrowsError(try LlamaModel.load(path: nanNorm)) { e in
            XCTAssertTrue("\(e)".contains("model.layers.0.input_layernorm.weight") && "\(e)".contains("non-finite"), "\(e)")
        }
        XCTAssertNoThrow(try LlamaModel.load(path: try variant("ok")))
    }
}

// MARK: Configs and tensors that contradict each other

extension InputValidationTests {
    func testAdapterConfigContradictingTensorsWarns() throws {
        let d = tmp + "/targets"
        try copyAdapter("a", to: d)
        try editJSON(d + "/adapter_config.json") { $0["target_modules"] = ["q_proj", "k_proj"]; $0["layers_to_transform"] = [0] }
        let r = try run(["inspect", d])
        XCTAssertEqual(r.code, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("not in target_modules") && r.stderr.contains("down_proj"), r.stderr)
        XCTAssertTrue(r.stderr.contains("k_proj but the adapter has no tensors"), r.stderr)
        XCTAssertTrue(r.stderr.contains("outside layers_to_transform") && r.stderr.contains("layers.1."), r.stderr)
        // The fixture as written agrees with itself: no warning.
        let clean = try run(["inspect", CLITests.inputs + "/a"])
        XCTAssertFalse(clean.stderr.contains("warning"), clean.stderr)
    }

    func testAdapterWithoutLoRATensorsIsAnError() throws {
        let d = tmp + "/empty"
        try copyAdapter("a", to: d)
        try FileManager.default.removeItem(atPath: d + "/adapter_model.safetensors")
        _ = try SafetensorsWriter.write(tensors: [], dtype: .f32, to: URL(fileURLWithPath: d + "/adapter_model.safetensors"))
        let r = try run(["inspect", d])
        XCTAssertEqual(r.code, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("no lora_A/lora_B"), r.stderr)
    }

    func testInspectBaseWithWrongShapesNamesModuleAndShapes() throws {
        let base = ModelFixtures.path("tiny-llama.gguf")
        let r = try run(["inspect", CLITests.inputs + "/a", "--base", base])
        XCTAssertEqual(r.code, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("module base_model.model.model.layers.0.") && r.stderr.contains("ΔW shape = [16, 32]")
                      && r.stderr.contains("needs ΔW [32, 64]"), r.stderr)
        let ok = try run(["inspect", ModelFixtures.path("tiny-llama-lora"), "--base", base])
        XCTAssertEqual(ok.code, 0, ok.stderr)
    }
}

extension InputValidationTests {
    func testTrainingOptionsRejectNonFiniteNumbers() {
        for change in [{ (o: inout TrainingOptions) in o.learningRate = .nan }, { $0.alpha = .infinity }, { $0.weightDecay = -1 },
                       { $0.maxGradNorm = .nan }, { $0.epochs = .infinity }] {
            var o = TrainingOptions()
            change(&o)
            XCTAssertThrowsError(try o.validate()) { XCTAssertTrue("\($0)".contains("finite") || "\($0)".contains("≥ 0"), "\($0)") }
        }
        XCTAssertNoThrow(try TrainingOptions().validate())
    }
}

extension InputValidationTests {
    /// Stands in for a LAPACK failure deep inside a method.
    struct FailingMethod: FusionMethod {
        var name: String { "failing" }
        func fuse(_ input: ModuleFusionInput) throws -> FusedModule {
            throw LinalgError.lapack(routine: "sgeqrf", info: -5, shape: [input.outFeatures, 16])
        }
    }

    func testLAPACKFailureNamesModuleAndAdapters() throws {
        let ins = try ["a", "b"].map { try PEFTAdapter.read(directory: CLITests.inputs + "/" + $0) }
        XCTAssertThrowsError(try Fuser.fuse(ins, weights: [1, 1], method: FailingMethod())) { e in
            let s = "\(e)"
            XCTAssertTrue(e is ModuleFusionError && s.contains("module base_model.model.model.layers.") && s.contains("a, b")
                          && s.contains("sgeqrf"), s)
        }
        // Weights that overflow Float in ΔW are caught at the fused factors, naming the module.
        XCTAssertThrowsError(try Fuser.fuse(ins, weights: [3e38, 3e38], method: LinearFusion())) { e in
            XCTAssertTrue("\(e)".contains("not finite") && "\(e)".contains("module"), "\(e)")
        }
    }
}

extension InputValidationTests {
    func testLearnedFusionRejectsNonFiniteOptions() throws {
        let a = CLITests.inputs + "/a"
        for (flag, value) in [("--lr", "nan"), ("--l2", "-1"), ("--initial", "inf"), ("--eval-every", "0")] {
            let r = try run(["fuse", "--method", "atlas", a, "--shots", tmp + "/s.jsonl", "-o", tmp + "/o", flag, value])
            XCTAssertEqual(r.code, 1, "\(flag) \(value): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(flag), r.stderr)
        }
    }
}
