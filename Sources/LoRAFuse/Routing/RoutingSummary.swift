import Foundation

/// What the gates of a routed model do on labelled examples.
public enum RoutingSummary {
    /// For each task i (expert i's examples), the share of (answer token, routed projection) pairs
    /// whose top-1 gate is expert i. Rows from the one that predicts the first answer token on.
    /// For a per-request router: the share of the examples whose prompt it sends to expert i.
    public static func ownTopOne(model: LlamaModel, set: AdapterSet, tasks: [EvalTask], shotsPerTask: Int) throws -> [Double] {
        let traces = try traceByTask(model: model, set: set, tasks: tasks, shotsPerTask: shotsPerTask)
        return traces.enumerated().map { $0.element.topOneFraction(of: $0.offset) }
    }

    /// One trace per task over its first `shotsPerTask` examples' answer rows.
    public static func traceByTask(model: LlamaModel, set: AdapterSet, tasks: [EvalTask], shotsPerTask: Int) throws -> [RoutingTrace] {
        let N = set.adapters.count
        var out: [RoutingTrace] = []
        for t in tasks {
            let seqs = try TrainingData.sequences(EvalTask(name: t.name, path: t.path, examples: Array(t.examples.prefix(shotsPerTask))), model: model)
            let trace = RoutingTrace(experts: N)
            if let seq = set.perRequestRouter {
                for s in seqs {
                    let last = s.targets.firstIndex { $0 >= 0 } ?? (s.tokens.count - 1)
                    trace.recordChoice(try seq.resolve(model: model, prompt: Array(s.tokens[...last])).choice[0].index)
                }
                out.append(trace)
                continue
            }
            let session = try model.makeLlamaSession(maxTokens: max(seqs.map(\.tokens.count).max() ?? 1, 1), adapters: set)
            session.routingTrace = trace
            for s in seqs {
                session.reset()
                trace.fromPosition = s.targets.firstIndex { $0 >= 0 } ?? 0
                _ = try session.feed(s.tokens, lastOnly: true)
            }
            out.append(trace)
        }
        return out
    }
}
