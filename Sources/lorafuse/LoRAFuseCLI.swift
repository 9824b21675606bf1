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
            command = try LoRAFuseCommand.parseAsRoot()
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

struct LoRAFuseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lorafuse",
        abstract: "Inspect, fuse and evaluate LoRA adapters.",
        discussion: """
        Adapters are PEFT directories, GGUF LoRA files or mlx-lm directories (the format is detected).
        Exit codes: 0 success, 1 usage error, 2 bad input.
        """,
        version: "0.1.0",
        subcommands: [Inspect.self, Merge.self, Convert.self, Generate.self, Eval.self, Tasks.self, Train.self,
                      Vector.self, ExtractLoRA.self, MergeIntoBaseCommand.self, Fuse.self, Report.self,
                      GenerateAdapter.self]
    )
}

/// Options shared by commands that do numeric work.
struct ComputeOptions: ParsableArguments {
    @Option(name: .long, help: "BLAS threads (default: all cores).")
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
/// paths with colons still work and `math:-0.5` subtracts.
struct AdapterSpec: ExpressibleByArgument, CustomStringConvertible {
    var path: String
    var weight: Float

    init?(argument: String) {
        if let i = argument.lastIndex(of: ":"), let w = Float(argument[argument.index(after: i)...]) {
            path = String(argument[..<i])
            weight = w
        } else {
            path = argument
            weight = 1
        }
        if path.isEmpty || !weight.isFinite { return nil }
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
    let data = try enc.encode(value)
    FileHandle.standardOutput.write(data)
    FileHandle.standardOutput.write(Data("\n".utf8))
}

/// The one flag that lets a command replace an existing output. Inputs are never replaced,
/// with or without it (`OutputGuard`).
struct OverwriteOptions: ParsableArguments {
    @Flag(name: .long, help: "Replace an existing output (a file, or a folder with files in it) as a whole. Inputs are never replaced.")
    var force = false
}
