import ArgumentParser
import Foundation
import LoRAFuse

/// Exit codes: 0 success, 1 usage error (bad flags, failed validation), 2 bad input (a file that
/// cannot be read, adapters that do not fit together, a method that cannot run on them).
@main
struct LoRAFuseCLI {
    static func main() {
        let command: ParsableCommand
        do {
            command = try LoRAFuseCommand.parseAsRoot(joiningNegativeValues(Array(CommandLine.arguments.dropFirst())))
        } catch {
            let code = LoRAFuseCommand.exitCode(for: error)
            if code == .success { LoRAFuseCommand.exit(withError: error) }  // --help, --version
            printError(LoRAFuseCommand.fullMessage(for: error))
            exit(1)
        }
        do {
            var c = command
            try c.run()
        } catch let e as ValidationError {
            printError("error: \(e.message)")
            exit(1)
        } catch let e as ExitCode {
            exit(e.rawValue)
        } catch where LoRAFuseCommand.exitCode(for: error) == .success {
            // `lorafuse SUBCOMMAND --help` parses to ArgumentParser's help command, whose run()
            // throws the help request: print the help and exit 0 like the root does.
            LoRAFuseCommand.exit(withError: error)
        } catch {
            printError("error: \(error)")
            exit(2)
        }
    }
}

/// `--rank -1` would reach ArgumentParser as an option `--rank` followed by a flag `-1`
/// ("Missing value for '--rank'"); joined into `--rank=-1` the value parses, so a negative
/// number gets the option's own range check (or is accepted where it is allowed, like
/// `--lambda -0.5`). Nothing after a `--` terminator is touched.
func joiningNegativeValues(_ args: [String]) -> [String] {
    var out: [String] = []
    var i = 0
    while i < args.count {
        let a = args[i]
        if a == "--" { out += args[i...]; break }
        if a.hasPrefix("--"), a.count > 2, !a.contains("="), i + 1 < args.count,
           args[i + 1].hasPrefix("-"), args[i + 1].count > 1, Double(args[i + 1]) != nil {
            out.append(a + "=" + args[i + 1])
            i += 2
            continue
        }
        out.append(a)
        i += 1
    }
    return out
}

struct LoRAFuseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lorafuse",
        abstract: "Inspect, fuse and evaluate LoRA adapters.",
        discussion: """
        Adapters are PEFT directories, GGUF LoRA files or mlx-lm directories (the format is detected).
        Exit codes: 0 success, 1 usage error, 2 bad input.
        """,
        version: "0.1.0",
        subcommands: [Inspect.self, Merge.self, Convert.self, Generate.self, Eval.self, Tasks.self, Train.self, Route.self,
                      Vector.self, ExtractLoRA.self, MergeIntoBaseCommand.self, Fuse.self, Report.self,
                      GenerateAdapter.self, Serve.self, Continual.self]
    )
}

/// Options shared by commands that do numeric work.
struct ComputeOptions: ParsableArguments {
    @Option(name: .long, help: "BLAS threads (default: all cores; serve: 1).")
    var threads: Int?

    @Flag(name: .long, help: "Print no progress bar.")
    var quiet = false

    func apply() {
        if let t = threads { BLAS.setThreadCount(t) }
    }

    func validate() throws {
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1, got \(t)") }
    }
}

/// `PATH[:WEIGHT]`: the weight is what follows the last colon when it parses as a number, so
/// paths with colons still work and `math:-0.5` subtracts. A suffix that is not a number is an
/// error unless the whole argument names an existing file (`weird:name`); weights must be finite
/// and at most `maxWeight` in magnitude (weight × ΔW would overflow Float long before 1e38).
struct AdapterSpec: ExpressibleByArgument, CustomStringConvertible {
    var path: String
    var weight: Float

    static let maxWeight: Float = 1e4

    struct Problem: Error, CustomStringConvertible { var description: String }

    /// Parses `PATH[:WEIGHT]`, throwing a message that says what is wrong with it.
    static func parse(_ argument: String) throws -> AdapterSpec {
        var path = argument
        var weight: Float = 1
        if let i = argument.lastIndex(of: ":"), !FileManager.default.fileExists(atPath: argument) {
            let prefix = String(argument[..<i]), suffix = String(argument[argument.index(after: i)...])
            guard let w = Float(suffix.trimmingCharacters(in: .whitespaces)) else {
                let exists = FileManager.default.fileExists(atPath: prefix)
                throw Problem(description: "the weight '\(suffix)' after the last ':' is not a number"
                              + (exists ? " (\(prefix) exists; give PATH:WEIGHT, e.g. \(prefix):0.5)"
                                        : " and no file or directory is named \(argument)"))
            }
            path = prefix
            weight = w
        }
        if path.isEmpty { throw Problem(description: "the adapter path is empty (expected PATH[:WEIGHT])") }
        guard weight.isFinite else { throw Problem(description: "the weight of \(path) is not a finite number") }
        guard abs(weight) <= maxWeight else {
            throw Problem(description: "the weight \(weight) of \(path) is out of range (|w| ≤ \(Int(maxWeight))); a weight that large overflows weight × ΔW")
        }
        return AdapterSpec(path: path, weight: weight)
    }

    init?(argument: String) {
        guard let s = try? Self.parse(argument) else { return nil }
        self = s
    }

    init(path: String, weight: Float) {
        self.path = path
        self.weight = weight
    }

    var description: String { "\(path):\(weight)" }
}

func printJSON<T: Encodable>(_ value: T) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    // A norm or cosine can still overflow Float/Double on finite but huge inputs; print it as a
    // string instead of failing the whole output with an encoder error.
    enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    let data = try enc.encode(value)
    FileHandle.standardOutput.write(data)
    FileHandle.standardOutput.write(Data("\n".utf8))
}

extension WeightCompute: ExpressibleByArgument {}

/// How the model's weights are held and computed with (commands that load a model).
struct WeightComputeOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "How a GGUF model's weights are computed with: stored (each weight in its GGUF type, on the quantized kernels) or f32 (all dequantized to Float32 at load, 4 bytes per weight: the reference path transformers also takes).",
        valueName: "stored|f32"))
    var compute: WeightCompute = .stored
}

/// The one flag that lets a command replace an existing output. Inputs are never replaced,
/// with or without it (`OutputGuard`).
struct OverwriteOptions: ParsableArguments {
    @Flag(name: .long, help: "Replace an existing output (a file, or a folder with files in it) as a whole. Inputs are never replaced.")
    var force = false
}
