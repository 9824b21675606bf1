import ArgumentParser
import Foundation
import LoRAFuse

/// Speed work lives here, never in timed tests. Each benchmark runs the peer in the same run,
/// prints both side by side as ratios and writes its numbers under Benchmarks/results/.
@main
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lorafuse-bench",
        abstract: "lorafuse benchmarks against their peers.",
        subcommands: [FusionBench.self, FusionOne.self, VectorBench.self, ModelBench.self, TrainBench.self, VariantBench.self, RouteBench.self, ServeBench.self]
    )
}

/// Resident-set peak of this process, in MB (Linux reports ru_maxrss in KB, macOS in bytes).
func peakRSSMB() -> Double {
    var u = rusage()
    #if os(Linux)
    getrusage(RUSAGE_SELF.rawValue, &u)
    #else
    getrusage(RUSAGE_SELF, &u)
    #endif
    #if os(Linux)
    return Double(u.ru_maxrss) / 1024
    #else
    return Double(u.ru_maxrss) / 1_048_576
    #endif
}

/// Current resident set in MB (from /proc on Linux; the peak elsewhere).
func currentRSSMB() -> Double {
    #if os(Linux)
    if let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) {
        let parts = s.split(separator: " ")
        if parts.count > 1, let pages = Double(parts[1]) { return pages * Double(sysconf(Int32(_SC_PAGESIZE))) / 1_048_576 }
    }
    #endif
    return peakRSSMB()
}

/// The 1/5/15-minute load averages: benchmarks record them because this machine is sometimes shared.
func loadAverage() -> String {
    (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))
        .map { $0.split(separator: " ").prefix(3).joined(separator: " ") } ?? "unknown"
}

func machineDescription() -> String {
    var cpu = "unknown CPU"
    if let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
       let line = info.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
       let name = line.split(separator: ":", maxSplits: 1).last {
        cpu = name.trimmingCharacters(in: .whitespaces)
    }
    let mem = ProcessInfo.processInfo.physicalMemory / (1 << 30)
    return "\(cpu), \(ProcessInfo.processInfo.activeProcessorCount) cores, \(mem) GiB"
}

/// The peers' venv python (torch, transformers, peft).
let defaultPeersPython = ProcessInfo.processInfo.environment["LORAFUSE_PEERS_PYTHON"] ?? "/root/peers/bin/python"

/// What the SmolLM2 benchmarks against a PyTorch peer share: their options, loading the model,
/// and running the peer script on an inputs file in its own process.
extension WeightCompute: ExpressibleByArgument {}

struct PeerBenchOptions: ParsableArguments {
    @Option(help: "The GGUF model (default: the one scripts/setup.sh fetches).")
    var model: String = ModelLocator.defaultModelPath()
    @Option(help: "Threads for BLAS and torch.")
    var threads: Int = 2
    @Option(help: "Python with torch, transformers and peft (the peers' venv).")
    var python: String = defaultPeersPython
    @Flag(help: "Run lorafuse only (no results written).")
    var skipPeer = false
    @Option(help: "lorafuse's weights: stored (the GGUF's quantized blocks, the default) or f32 (dequantized at load).")
    var compute: WeightCompute = .stored

    func validate() throws {
        if threads < 1 { throw ValidationError("--threads must be at least 1, got \(threads)") }
    }

    /// Sets the BLAS threads and loads the model: (model, seconds it took, load average before).
    func loadModel() throws -> (model: LlamaModel, seconds: Double, loadAverageBefore: String) {
        BLAS.setThreadCount(threads)
        let before = loadAverage()
        FileHandle.standardError.write(Data("lorafuse: loading \(model)…\n".utf8))
        let t0 = Date()
        let lm = try LlamaModel.load(path: model, compute: compute)
        return (lm, Date().timeIntervalSince(t0), before)
    }

    /// Writes `inputs` (plus the model path and threads) to `<work>/inputs.json`, runs
    /// `python script inputs.json` unless --skip-peer, and decodes its JSON stdout; the raw object
    /// comes along for the version fields.
    func runPeer<T: Decodable>(_ script: String, inputs: [String: Any], work: String, note: String,
                               as: T.Type) throws -> (result: T, raw: [String: Any])? {
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        var all = inputs
        all["model"] = (model as NSString).standardizingPath
        all["threads"] = threads
        let path = work + "/inputs.json"
        try JSONSerialization.data(withJSONObject: all).write(to: URL(fileURLWithPath: path))
        if skipPeer { return nil }
        FileHandle.standardError.write(Data("\(note)\n".utf8))
        let out = try runProcess(python, [script, path])
        return (try JSONDecoder().decode(T.self, from: out), try JSONSerialization.jsonObject(with: out) as? [String: Any] ?? [:])
    }
}

/// A benchmark's results: written as JSON with a Markdown twin beside it.
protocol BenchReport: Encodable {
    var markdown: String { get }
}

extension BenchReport {
    func write(to results: String) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try FileManager.default.createDirectory(atPath: (results as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        try enc.encode(self).write(to: URL(fileURLWithPath: results))
        try markdown.write(toFile: (results as NSString).deletingPathExtension + ".md", atomically: true, encoding: .utf8)
        FileHandle.standardError.write(Data("wrote \(results)\n".utf8))
    }
}

/// Markdown rows "| measure | lorafuse | peer | ratio |", the ratio oriented so that > 1 means
/// lorafuse is better.
struct RatioTable {
    private(set) var text: String
    init(peer: String) {
        text = "| measure | lorafuse | \(peer) | ratio (higher = lorafuse better) |\n|---|---:|---:|---:|\n"
    }
    static func format(_ x: Double?, _ fmt: String) -> String { x.map { String(format: fmt, $0) } ?? "—" }
    mutating func row(_ name: String, _ ours: Double, _ peer: Double?, _ fmt: String, higherBetter: Bool = true) {
        let r = peer.map { higherBetter ? ours / $0 : $0 / ours }
        text += "| \(name) | \(Self.format(ours, fmt)) | \(Self.format(peer, fmt)) | \(Self.format(r, "%.2f×")) |\n"
    }
}

struct BenchModule: Codable { var name: String; var out: Int; var `in`: Int }

struct FusionManifest: Codable {
    var format = "lorafuse-fusion-bench-v1"
    var dtype = "float32"
    var byte_order = "little"
    var adapters: Int
    var rank: Int
    var alpha: Double
    var use_rslora = false
    var weights: [Float]
    var modules: [BenchModule]
    var files = ["A": "A_{i}_{m}.bin", "A_shape": "(rank, in) row-major", "B": "B_{i}_{m}.bin", "B_shape": "(out, rank) row-major"]
    var methods: [String]
    var svd_rank: Int
    var density: Double
    var majority_sign_method = "total"
    var threads: Int
    var seed: UInt64
}

struct MethodResult: Codable {
    var seconds: Double
    var peak_rss_mb: Double
    var rss_after_load_mb: Double
    var rel_error: [String: Double]
}

let fullShapes = [BenchModule(name: "q", out: 4096, in: 4096), BenchModule(name: "up", out: 11008, in: 4096),
                  BenchModule(name: "down", out: 4096, in: 11008)]
let quickShapes = [BenchModule(name: "q", out: 1024, in: 1024), BenchModule(name: "up", out: 2752, in: 1024),
                   BenchModule(name: "down", out: 1024, in: 2752)]

func writeFloats(_ a: [Float], to path: String) throws {
    let data = a.withUnsafeBufferPointer { Data(buffer: $0) }
    try data.write(to: URL(fileURLWithPath: path))
}

func readFloats(_ path: String, count: Int) throws -> [Float] {
    let data = try Data(contentsOf: URL(fileURLWithPath: path))
    guard data.count == count * 4 else {
        throw ValidationError("\(path): expected \(count * 4) bytes, found \(data.count)")
    }
    return data.withUnsafeBytes { raw in (0..<count).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) } }
}

/// One method on the inputs in `dir`, in its own process so that its peak RSS is its own.
struct FusionOne: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fusion-one", abstract: "Internal: time one method.")
    @Option var dir: String
    @Option var method: String
    @Option var threads: Int = 2

    func run() throws {
        BLAS.setThreadCount(threads)
        let man = try JSONDecoder().decode(FusionManifest.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/manifest.json")))
        let scale = Float(man.alpha / Double(man.rank))
        var adapters: [LoRAAdapter] = []
        for i in 0..<man.adapters {
            var mods: [String: LoRAModule] = [:]
            for m in man.modules {
                let a = try readFloats("\(dir)/A_\(i)_\(m.name).bin", count: man.rank * m.in)
                let b = try readFloats("\(dir)/B_\(i)_\(m.name).bin", count: m.out * man.rank)
                mods[m.name] = LoRAModule(A: Matrix(rows: man.rank, cols: m.in, data: a),
                                          B: Matrix(rows: m.out, cols: man.rank, data: b), scale: scale)
            }
            adapters.append(LoRAAdapter(name: "a\(i)", modules: mods))
        }
        let afterLoad = currentRSSMB()
        var params = FusionParameters(seed: man.seed)
        if method != "cat" { params.rank = man.svd_rank }
        if ["ties", "dare_ties", "dare_linear", "magnitude_prune"].contains(method) {
            params.density = man.density
        }
        if ["ties", "dare_ties"].contains(method) {
            // PEFT's sign election and divisor, so both sides truncate the same dense matrix and the
            // errors compare the SVDs alone (DARE's masks still differ: the RNGs are not the same).
            // Only the sign-electing methods take it (dare_linear and magnitude_prune never read it).
            params.convention = "peft"
        }
        let fusion = try FusionMethods.make(name: method, parameters: params)
        let t0 = Date()
        let (fused, report) = try Fuser.fuse(adapters, weights: man.weights, method: fusion, seed: man.seed)
        let seconds = Date().timeIntervalSince(t0)
        let peak = peakRSSMB()
        // Errors are measured after the clock and the peak: the dense target is for checking only.
        var errors: [String: Double] = [:]
        for m in man.modules {
            let out = fused.modules[m.name]!
            if method == "svd" || method == "cat" {
                var target = Matrix(rows: m.out, cols: m.in)
                for (i, a) in adapters.enumerated() {
                    target.add(a.modules[m.name]!.delta(), scaledBy: man.weights[i])
                }
                errors[m.name] = (target - out.delta()).frobeniusNorm / target.frobeniusNorm
            } else {
                // The dense methods truncate their own dense combination by an orthogonal projection,
                // so ‖T − T_r‖² / ‖T‖² = 1 − retained energy exactly.
                let e = report.modules.first { $0.module == m.name }?.retainedEnergy ?? 1
                errors[m.name] = max(0, 1 - e).squareRoot()
            }
        }
        let r = MethodResult(seconds: seconds, peak_rss_mb: peak, rss_after_load_mb: afterLoad, rel_error: errors)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        FileHandle.standardOutput.write(try enc.encode(r))
    }
}

struct FusionBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fusion",
        abstract: "Fuse 4 rank-16 adapters on Llama-7B-shaped modules; lorafuse against PEFT's add_weighted_adapter.")

    @Flag(help: "Small shapes (1024 / 2752) for a smoke run.")
    var quick = false
    @Option(help: "Threads for BLAS and torch.")
    var threads: Int = 2
    @Option(help: "Methods to run.")
    var methods: String = "svd,cat,ties,dare_ties"
    @Option(help: "Python with torch and peft (the peers' venv).")
    var python: String = defaultPeersPython
    @Option(help: "Directory for the generated inputs.")
    var work: String = NSTemporaryDirectory() + "lorafuse-fusion-bench"
    @Option(help: "Where to write the results (JSON; a Markdown twin beside it).")
    var results: String = "Benchmarks/results/fusion.json"
    @Flag(help: "Run lorafuse only.")
    var skipPeer = false
    @Option(help: "Seed of the generated adapters.")
    var seed: UInt64 = 0

    func run() throws {
        let loadStart = loadAverage()
        let shapes = quick ? quickShapes : fullShapes
        let methodList = methods.split(separator: ",").map(String.init)
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        let man = FusionManifest(adapters: 4, rank: 16, alpha: 32, weights: [0.4, 0.3, 0.2, 0.1], modules: shapes,
                                 methods: methodList, svd_rank: 16, density: 0.5, threads: threads, seed: seed)
        var rng = SeededRNG(seed: seed)
        for i in 0..<man.adapters {
            for m in shapes {
                // LoRA-like magnitudes: A ~ N(0, 1/in), B small.
                let a = Matrix.randomNormal(man.rank, m.in, std: 1 / Float(m.in).squareRoot(), rng: &rng)
                let b = Matrix.randomNormal(m.out, man.rank, std: 0.01, rng: &rng)
                try writeFloats(a.data, to: "\(work)/A_\(i)_\(m.name).bin")
                try writeFloats(b.data, to: "\(work)/B_\(i)_\(m.name).bin")
            }
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(man).write(to: URL(fileURLWithPath: work + "/manifest.json"))

        var ours: [String: MethodResult] = [:]
        for m in methodList {
            FileHandle.standardError.write(Data("lorafuse \(m)…\n".utf8))
            let out = try runProcess(CommandLine.arguments[0], ["fusion-one", "--dir", work, "--method", m, "--threads", String(threads)])
            ours[m] = try JSONDecoder().decode(MethodResult.self, from: out)
        }
        var peer: [String: MethodResult] = [:]
        var peerVersions = ""
        if !skipPeer {
            FileHandle.standardError.write(Data("PEFT \(methodList.joined(separator: ","))… (minutes: its SVD is dense)\n".utf8))
            var args = ["scripts/bench_peft_fusion.py", work, "--threads", String(threads), "--methods", methods]
            if quick { args.append("--quick") }
            let out = try runProcess(python, args)
            let obj = try JSONSerialization.jsonObject(with: out) as? [String: [String: Any]] ?? [:]
            for (k, v) in obj {
                let sub = try JSONSerialization.data(withJSONObject: v)
                peer[k] = try JSONDecoder().decode(MethodResult.self, from: sub)
                if let pv = v["peft_version"], let tv = v["torch_version"] { peerVersions = "peft \(pv), torch \(tv)" }
            }
        }
        let report = FusionBenchReport(date: ISO8601DateFormatter().string(from: Date()), machine: machineDescription(),
                                       threads: threads, shapes: shapes, quick: quick, peer: peerVersions,
                                       lorafuse: ours, peft: peer, loadAverageStart: loadStart, loadAverageEnd: loadAverage())
        print(report.markdown)
        if !quick {
            try FileManager.default.createDirectory(atPath: (results as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try enc.encode(report).write(to: URL(fileURLWithPath: results))
            try report.markdown.write(toFile: (results as NSString).deletingPathExtension + ".md", atomically: true, encoding: .utf8)
            FileHandle.standardError.write(Data("wrote \(results)\n".utf8))
        }
    }
}

struct FusionBenchReport: Codable {
    var date: String
    var machine: String
    var threads: Int
    var shapes: [BenchModule]
    var quick: Bool
    var peer: String
    var lorafuse: [String: MethodResult]
    var peft: [String: MethodResult]
    var loadAverageStart: String
    var loadAverageEnd: String

    var markdown: String {
        var s = "Fusion of 4 rank-16 adapters on modules " + shapes.map { "\($0.out)×\($0.in)" }.joined(separator: ", ")
        s += "\n\(date) · \(machine) · \(threads) threads · \(peer.isEmpty ? "no peer run" : peer)"
        s += " · load average \(loadAverageStart) at start, \(loadAverageEnd) at end\n\n"
        s += "| method | lorafuse s | PEFT s | speed-up | lorafuse peak MB | PEFT peak MB | lorafuse max rel. error | PEFT max rel. error |\n"
        s += "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        for m in lorafuse.keys.sorted() {
            let o = lorafuse[m]!
            let p = peft[m]
            func f(_ x: Double?, _ fmt: String) -> String { x.map { String(format: fmt, $0) } ?? "—" }
            let speed = p.map { $0.seconds / max(o.seconds, 1e-9) }
            s += "| \(m) | \(f(o.seconds, "%.3f")) | \(f(p?.seconds, "%.2f")) | \(f(speed, "%.0f×")) | \(f(o.peak_rss_mb, "%.0f")) | \(f(p?.peak_rss_mb, "%.0f")) | \(f(o.rel_error.values.max(), "%.2e")) | \(f(p?.rel_error.values.max(), "%.2e")) |\n"
        }
        return s
    }
}

func runProcess(_ exe: String, _ args: [String]) throws -> Data {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    let pipe = Pipe()
    p.standardOutput = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else {
        throw ValidationError("\(exe) \(args.joined(separator: " ")) exited with \(p.terminationStatus)")
    }
    return data
}
