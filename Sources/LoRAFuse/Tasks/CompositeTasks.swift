import Foundation

/// Composite prompts (MeteoRA's composite-n): one prompt asks `parts` different tasks in sequence,
/// "1) … 2) …", and the answer is their answers joined by newlines. A routed model has to switch
/// adapters inside one answer; one fused adapter has to hold every skill at once.
public enum CompositeTasks {
    public static let instruction = "Answer each numbered question on its own line, in order, with the answer only."

    public enum CompositeError: Error, CustomStringConvertible, Equatable {
        case tooFewTasks(parts: Int, tasks: Int)
        case emptyTask(name: String)
        case badCount(Int)

        public var description: String {
            switch self {
            case let .tooFewTasks(p, t): return "composite prompts of \(p) parts need at least \(p) tasks with examples, got \(t)"
            case let .emptyTask(n): return "task '\(n)' has no examples to compose"
            case let .badCount(c): return "the number of composite examples must be at least 1, got \(c)"
            }
        }
    }

    /// `count` examples, each of `parts` distinct tasks drawn with `seed` (and one example of each,
    /// also drawn), named "composite<parts>". Deterministic in (tasks, parts, count, seed).
    public static func make(from tasks: [EvalTask], parts: Int, count: Int, seed: UInt64) throws -> EvalTask {
        guard count >= 1 else { throw CompositeError.badCount(count) }
        if let e = tasks.first(where: { $0.examples.isEmpty }) { throw CompositeError.emptyTask(name: e.name) }
        guard parts >= 2, tasks.count >= parts else { throw CompositeError.tooFewTasks(parts: parts, tasks: tasks.count) }
        var rng = SeededRNG(seed: seed, stream: "composite-\(parts)")
        var out: [EvalExample] = []
        for k in 0..<count {
            var pool = Array(tasks.indices)
            var chosen: [Int] = []
            for _ in 0..<parts { chosen.append(pool.remove(at: Int(rng.next() % UInt64(pool.count)))) }
            let exs = chosen.map { tasks[$0].examples[Int(rng.next() % UInt64(tasks[$0].examples.count))] }
            let prompt = instruction + "\n" + exs.enumerated().map { "\($0.offset + 1)) \($0.element.prompt)" }.joined(separator: "\n")
            out.append(EvalExample(prompt: prompt, answer: exs.map(\.answer).joined(separator: "\n"), line: k + 1))
        }
        return EvalTask(name: "composite\(parts)", examples: out)
    }

    /// The task as JSON Lines, one {"prompt", "answer"} per line.
    public static func jsonl(_ task: EvalTask) -> String {
        task.examples.map { TaskExample(prompt: $0.prompt, answer: $0.answer).jsonLine }.joined(separator: "\n") + "\n"
    }
}
