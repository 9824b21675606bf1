/// Chat prompt formats, rendered exactly as transformers' `apply_chat_template` renders the model's
/// Jinja template, for the two families we recognise from the template text (no Jinja engine):
///
/// - ChatML (SmolLM2, Qwen 2/2.5): per message `<|im_start|>{role}\n{content}<|im_end|>\n`; when the
///   template carries a default system prompt (`'<|im_start|>system\n…<|im_end|>\n'` as a literal) it is
///   inserted first if the first message is not a system message; the generation prompt is
///   `<|im_start|>assistant\n`.
/// - Llama 3: `{bos}` then per message
///   `<|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|>`; the generation prompt is
///   `<|start_header_id|>assistant<|end_header_id|>\n\n`.
///
/// Anything else (Llama 3.1+ date headers, reasoning `<think>` templates, other formats) throws
/// `TokenizerError.unsupportedChatTemplate` rather than rendering a prompt the model was not trained on.
public enum ChatTemplate: Sendable, Equatable {
    case chatML(defaultSystem: String?)
    case llama3(bosToken: String)

    /// Recognises the family of a Jinja chat template. `bosToken` is the BOS token string (Llama 3).
    public static func detect(_ template: String, bosToken: String? = nil) throws -> ChatTemplate {
        let firstLine = String(template.split(separator: "\n", omittingEmptySubsequences: false).first ?? "")
        let unsupported = TokenizerError.unsupportedChatTemplate(firstLine: String(firstLine.prefix(160)))
        if template.contains("<think>") || template.contains("reasoning_content") {
            throw unsupported
        }
        if template.contains("<|im_start|>") && template.contains("<|im_end|>") {
            return .chatML(defaultSystem: defaultSystem(in: template))
        }
        if template.contains("<|start_header_id|>") && template.contains("<|eot_id|>") {
            if template.contains("Cutting Knowledge Date") || template.contains("date_string") { throw unsupported }
            return .llama3(bosToken: bosToken ?? "<|begin_of_text|>")
        }
        throw unsupported
    }

    /// Renders the conversation; with `addGenerationPrompt` the assistant header is appended.
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool) -> String {
        var out = ""
        switch self {
        case .chatML(let defaultSystem):
            for (i, m) in messages.enumerated() {
                if i == 0, m.role != "system", let s = defaultSystem {
                    out += "<|im_start|>system\n\(s)<|im_end|>\n"
                }
                out += "<|im_start|>\(m.role)\n\(m.content)<|im_end|>\n"
            }
            if addGenerationPrompt { out += "<|im_start|>assistant\n" }
        case .llama3(let bos):
            for (i, m) in messages.enumerated() {
                if i == 0 { out += bos }
                out += "<|start_header_id|>\(m.role)<|end_header_id|>\n\n\(ChatTemplate.jinjaTrim(m.content))<|eot_id|>"
            }
            if addGenerationPrompt { out += "<|start_header_id|>assistant<|end_header_id|>\n\n" }
        }
        return out
    }

    /// The literal default system prompt of a ChatML template: the first
    /// `<|im_start|>system` + newline + text + `<|im_end|>` whose text is plain (no Jinja expression).
    /// The newline may be a real one or the escape `\n` inside a Jinja string literal.
    static func defaultSystem(in template: String) -> String? {
        let marker = "<|im_start|>system"
        var rest = Substring(template)
        while let r = rest.range(of: marker) {
            var after = rest[r.upperBound...]
            rest = after
            if after.hasPrefix("\\n") {
                after = after.dropFirst(2)
            } else if after.hasPrefix("\n") {
                after = after.dropFirst()
            } else {
                continue
            }
            guard let end = after.range(of: "<|im_end|>") else { continue }
            let body = after[..<end.lowerBound]
            if body.isEmpty || body.contains("'") || body.contains("\"") || body.contains("{") || body.contains("}") {
                continue
            }
            return unescapeJinja(String(body))
        }
        return nil
    }

    /// Python/Jinja string-literal escapes that can appear in a template's literal.
    static func unescapeJinja(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out = ""
        var it = s.makeIterator()
        while let c = it.next() {
            guard c == "\\", let n = it.next() else { out.append(c); continue }
            switch n {
            case "n": out.append("\n")
            case "t": out.append("\t")
            case "r": out.append("\r")
            case "\\": out.append("\\")
            case "'": out.append("'")
            case "\"": out.append("\"")
            default: out.append("\\"); out.append(n)
            }
        }
        return out
    }

    /// Jinja's `trim` filter: Python `str.strip()`, which drops leading/trailing whitespace as
    /// `str.isspace` defines it (Unicode White_Space plus U+001C...U+001F).
    static func jinjaTrim(_ s: String) -> String {
        func isSpace(_ c: Unicode.Scalar) -> Bool {
            c.properties.isWhitespace || (0x1C...0x1F).contains(c.value)
        }
        let u = Array(s.unicodeScalars)
        var lo = 0, hi = u.count
        while lo < hi && isSpace(u[lo]) { lo += 1 }
        while hi > lo && isSpace(u[hi - 1]) { hi -= 1 }
        var v = String.UnicodeScalarView()
        v.append(contentsOf: u[lo..<hi])
        return String(v)
    }
}

extension BPETokenizer {
    /// The detected chat format of this tokenizer's template.
    public func chatTemplate() throws -> ChatTemplate {
        guard let t = chatTemplateText else { throw TokenizerError.missingChatTemplate }
        return try ChatTemplate.detect(t, bosToken: bosId.map { tokens[$0] })
    }

    /// The prompt text `apply_chat_template(messages, add_generation_prompt:)` produces.
    public func applyChatTemplate(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) throws -> String {
        try chatTemplate().render(messages, addGenerationPrompt: addGenerationPrompt)
    }

    /// Token ids of the rendered prompt (special tokens in it parsed as such). The template
    /// writes any BOS itself (Llama 3's `{bos}`; ChatML has none), so none is added here.
    public func encodeChat(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) throws -> [Int] {
        encode(try applyChatTemplate(messages, addGenerationPrompt: addGenerationPrompt), parseSpecial: true)
    }

    /// Whether a prompt fed as is (no chat template) starts with BOS: when the model asks for it
    /// (`addBos`, GGUF's `tokenizer.ggml.add_bos_token`) and has one, as llama.cpp tokenizes a
    /// plain prompt. A templated prompt never gets one added (see `encodeChat`).
    public var prependsBOSToRawPrompt: Bool { addBos && bosId != nil }

    /// Token ids of `text` fed as is, without the chat template: BOS first when
    /// `prependsBOSToRawPrompt`, special token strings in the text parsed as such.
    public func encodeRawPrompt(_ text: String) -> [Int] {
        let ids = encode(text)
        guard prependsBOSToRawPrompt, let b = bosId else { return ids }
        return [b] + ids
    }

    /// Token ids of one user prompt: rendered as a user turn with the chat template, or with
    /// `raw` as is (`encodeRawPrompt`). What `lorafuse generate --prompt [--raw]` feeds the model.
    public func encodePrompt(_ text: String, raw: Bool) throws -> [Int] {
        raw ? encodeRawPrompt(text) : try encodeChat([ChatMessage(role: "user", content: text)])
    }
}
