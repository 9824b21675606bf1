import Foundation

/// Where a training run writes, decided before the first step so that nothing the user owns is
/// overwritten and an interrupted run can be resumed:
/// - a new (or empty) output folder is the run folder: checkpoints land in it as they are made,
///   the adapter and its records at the end;
/// - `--resume` from the output folder (or a checkpoint in it) continues that run in place;
/// - an existing non-empty folder is refused unless `force`; then the run works in a temporary
///   folder beside it, which replaces the old one whole when the run ends.
public struct TrainingOutput: Sendable {
    public let target: OutputTarget
    /// The folder the run writes into (the output itself, or the temporary one that replaces it).
    public let runDirectory: String
    /// True when `runDirectory` is a temporary folder to install at `target` when the run ends.
    public let staged: Bool
    /// True when `prepare` made the output folder itself (it did not exist).
    public var created = false

    public static func prepare(output: String, inputs: [String], resume: String?, force: Bool) throws -> TrainingOutput {
        if let r = resume {
            let out = OutputGuard.resolve(output), res = OutputGuard.resolve(r)
            if out == res || OutputGuard.isAncestor(out, of: res) {
                // Continuing the run that lives in `output`: only the other inputs are protected.
                let t = try OutputGuard.check(output, kind: .directory, inputs: inputs, force: true)
                return TrainingOutput(target: t, runDirectory: t.path, staged: false)
            }
        }
        let all = inputs + [resume].compactMap { $0 }
        let t = try OutputGuard.check(output, kind: .directory, inputs: all, force: force)
        let fm = FileManager.default
        let nonEmpty = !((try? fm.contentsOfDirectory(atPath: t.path)) ?? []).isEmpty
        if nonEmpty {
            let tmp = try OutputGuard.makeSibling(of: t, suffix: "tmp", directory: true)
            return TrainingOutput(target: t, runDirectory: tmp, staged: true)
        }
        let existed = fm.fileExists(atPath: t.path)
        do { try fm.createDirectory(atPath: t.path, withIntermediateDirectories: true) } catch {
            throw OutputGuardError.writeFailed(output: output, reason: "cannot create it: \(error.localizedDescription)")
        }
        return TrainingOutput(target: t, runDirectory: t.path, staged: false, created: !existed)
    }

    /// Writes one finished file of the run (under a temporary name, renamed).
    public func writeFile(_ name: String, _ text: String) throws {
        let url = URL(fileURLWithPath: runDirectory).appendingPathComponent(name)
        try SafetensorsWriter.atomicWrite(to: url) { h in try h.write(contentsOf: Data(text.utf8)) }
    }

    /// Puts a staged run in place of the old output.
    public func finish() throws {
        if staged { try OutputGuard.install(runDirectory, at: target) }
    }

    /// After a failure: removes a staged run folder (the old output stays as it was), and an
    /// output folder this run created that is still empty (one holding checkpoints stays, to
    /// resume from).
    public func abandon() {
        let fm = FileManager.default
        if staged { try? fm.removeItem(atPath: runDirectory); return }
        if created, ((try? fm.contentsOfDirectory(atPath: runDirectory)) ?? ["?"]).isEmpty {
            try? fm.removeItem(atPath: runDirectory)
        }
    }
}
