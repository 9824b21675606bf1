import ArgumentParser
import Foundation
import LoRAFuse

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate text with the model (and adapters), streaming tokens as they come.",
        discussion: """
        --prompt TEXT renders TEXT as one user turn with the model's chat template (add --raw to \
        feed it as is). --chat reads user turns from stdin, keeps the conversation, and answers \
        each turn; it ends on EOF or a line "/exit".

        Sampling: --temperature 0 (default) is greedy; otherwise softmax(logits/T) with nucleus \
        filtering (--top-p) and a seeded generator (--seed), so runs are reproducible.

        Example: lorafuse generate --adapter math:1 --prompt "What is 2+3?" --max-tokens 32
        """
    )

    @Option(name: .long, help: "Model GGUF file (default: the SmolLM2-135M-Instruct model in $LORAFUSE_HOME/models).")
    var model: String?
    @OptionGroup var weights: WeightComputeOptions

    @Option(name: .long, help: "Adapter as DIR[:WEIGHT], applied unmerged (repeatable).", transform: AdapterSpec.parse)
    var adapter: [AdapterSpec] = []

    @Option(name: .long, help: "The prompt.")
    var prompt: String?

    @Flag(name: .long, help: "Interactive multi-turn chat on stdin.")
    var chat = false

    @Flag(name: .long, help: "Feed --prompt as is, without the chat template.")
    var raw = false

    @Option(name: .customLong("max-tokens"), help: "Maximum new tokens per answer.")
    var maxTokens: Int = 256

    @Option(name: .long, help: "Sampling temperature; 0 is greedy.")
    var temperature: Float = 0

    @Option(name: .customLong("top-p"), help: "Nucleus sampling: keep the smallest set of tokens with mass ≥ P.")
    var topP: Float = 1

    @Option(name: .long, help: "Seed of the sampler.")
    var seed: UInt64 = 0

    @Option(name: .long, help: "Context size in tokens (prompt + answers; --chat keeps the whole conversation); at most the model's context length (default: 2048 or the model's, if smaller).")
    var context: Int?

    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        if (prompt == nil) == !chat { throw ValidationError("give exactly one of --prompt TEXT or --chat") }
        if raw && chat { throw ValidationError("--raw applies to --prompt only") }
        if maxTokens < 1 { throw ValidationError("--max-tokens must be at least 1, got \(maxTokens)") }
        if !(temperature >= 0) || !temperature.isFinite { throw ValidationError("--temperature must be ≥ 0, got \(temperature)") }
        if !(topP > 0 && topP <= 1) { throw ValidationError("--top-p must be in (0, 1], got \(topP)") }
        if let context, context < 2 { throw ValidationError("--context must be at least 2, got \(context)") }
    }

    func run() throws {
        compute.apply()
        let lm = try loadModel(modelPath: model, compute: weights.compute, adapters: adapter)
        let sampler = try Sampler(temperature: temperature, topP: topP, seed: seed)
        var generator = Generator(model: lm, sampler: sampler, maxTokens: maxTokens)
        if let requested = self.context { try lm.checkContext(requested, option: "--context") }
        let context = self.context ?? min(2048, lm.contextLength)
        if let prompt {
            let tok = lm.tokenizer
            // Text that cannot fit whatever it tokenizes to is refused before tokenizing it.
            if tok.surelyExceeds(bytes: prompt.utf8.count, limit: context) {
                throw ValidationError("the prompt is \(prompt.utf8.count) bytes, more than --context \(context) tokens can hold")
            }
            let ids = try tok.encodePrompt(prompt, raw: raw)
            guard ids.count < context else {
                throw ValidationError("the prompt has \(ids.count) tokens; --context \(context) leaves no room to generate")
            }
            generator.maxTokens = min(maxTokens, context - ids.count)
            // A per-request (sequence) router picks the adapters from the prompt.
            let chosen = try lm.routedForPrompt(ids)?.model ?? lm
            let session = try chosen.makeSession(maxTokens: ids.count + generator.maxTokens)
            _ = try generator.generate(session: session, prompt: ids, onText: writeOut)
            writeOut("\n")
            return
        }
        if lm.adapters.perRequestRouter != nil {
            throw ValidationError("\(adapter.first?.path ?? "the routed model") routes per request from the prompt; give the prompt with --prompt (the chat loop keeps one conversation on one set of adapters)")
        }
        try runChat(lm, generator, context: context)
    }

    /// The chat loop: one `ChatConversation`, a turn per stdin line, until EOF or "/exit".
    private func runChat(_ lm: any CausalLM, _ generator: Generator, context: Int) throws {
        let chat = try ChatConversation(model: lm, generator: generator, contextSize: context)
        let interactive = isatty(0) != 0
        while true {
            if interactive { FileHandle.standardError.write(Data("> ".utf8)) }
            guard let line = readLine(strippingNewline: true) else { break }
            let text = line.trimmingCharacters(in: .whitespaces)
            if text == "/exit" { break }
            if text.isEmpty { continue }
            _ = try chat.respond(to: line, onText: writeOut)
            writeOut("\n")
        }
    }
}

/// Writes to stdout at once (no buffering), so tokens appear as they are generated.
func writeOut(_ s: String) {
    FileHandle.standardOutput.write(Data(s.utf8))
}
