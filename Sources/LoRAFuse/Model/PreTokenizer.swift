/// Pre-tokenizers of byte-level BPE models: how text is cut into "words" before merges run.
///
/// Each case is a hand-written scanner equivalent to the regex HF `tokenizers` (Oniguruma) runs with
/// `Split(behavior: isolated)`; every alternative is tried in order at the current position, exactly
/// like the regex engine, including the backtracking of `\s+(?!\S)` and `\s*[\r\n]+`:
///
/// - `gpt2` (ByteLevel `use_regex`):
///   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// - `llama3` (transformers' `_LLAMA3_SPLIT`, llama.cpp "llama-bpe"):
///   `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// - `qwen2`: the Llama 3 pattern with `\p{N}` (one digit) instead of `\p{N}{1,3}`.
/// - `smollm` (llama.cpp "smollm", SmolLM2's tokenizer.json `Digits(individual_digits) + ByteLevel`):
///   every `\p{N}` scalar is isolated first, then the GPT-2 pattern runs on the pieces between them.
///
/// Classes: `\p{L}` = general category L*, `\p{N}` = Nd/Nl/No, `\s` = Unicode White_Space.
public enum PreTokenizer: String, Sendable, CaseIterable {
    case gpt2, llama3, qwen2, smollm

    /// The pre-tokenizer llama.cpp's `tokenizer.ggml.pre` name stands for; nil when unknown.
    public static func fromGGUFPre(_ name: String?) -> PreTokenizer? {
        switch name {
        case nil, "default", "gpt-2", "gpt2": return .gpt2
        case "smollm": return .smollm
        case "llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe", "pixtral": return .llama3
        case "qwen2", "deepseek-r1-qwen": return .qwen2
        default: return nil
        }
    }

    /// Splits `text` into pieces (ranges into `text`), in order, covering all of it.
    func split(_ text: [Unicode.Scalar]) -> [Range<Int>] {
        var out: [Range<Int>] = []
        out.reserveCapacity(text.count / 3 + 1)
        switch self {
        case .gpt2:
            Scanner(text: text, end: text.count).gpt2(from: 0, into: &out)
        case .llama3:
            Scanner(text: text, end: text.count).llama3(from: 0, maxDigits: 3, into: &out)
        case .qwen2:
            Scanner(text: text, end: text.count).llama3(from: 0, maxDigits: 1, into: &out)
        case .smollm:
            var start = 0
            for i in 0..<text.count where CharClass.of(text[i]) == .number {
                if start < i { Scanner(text: text, end: i).gpt2(from: start, into: &out) }
                out.append(i..<(i + 1))
                start = i + 1
            }
            if start < text.count { Scanner(text: text, end: text.count).gpt2(from: start, into: &out) }
        }
        return out
    }
}

/// The three regex classes plus "other" (`[^\s\p{L}\p{N}]`).
enum CharClass: Equatable {
    case letter, number, space, other

    static func of(_ c: Unicode.Scalar) -> CharClass {
        if c.value < 0x80 {
            switch c.value {
            case 0x41...0x5A, 0x61...0x7A: return .letter
            case 0x30...0x39: return .number
            case 0x09...0x0D, 0x20: return .space
            default: return .other
            }
        }
        let p = c.properties
        if p.isWhitespace { return .space }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return .letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return .number
        default:
            return .other
        }
    }
}

/// A scanner over `text[..<end]` (the end bounds lookahead, as a sub-string would for the regex).
private struct Scanner {
    let text: [Unicode.Scalar]
    let end: Int

    @inline(__always) func cls(_ i: Int) -> CharClass? { i < end ? CharClass.of(text[i]) : nil }
    @inline(__always) func isNewline(_ i: Int) -> Bool {
        i < end && (text[i] == "\n" || text[i] == "\r")
    }

    /// End of the run of `cls` starting at `i`.
    @inline(__always) func run(_ c: CharClass, from i: Int) -> Int {
        var j = i
        while j < end, CharClass.of(text[j]) == c { j += 1 }
        return j
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d`, optionally case-insensitive; returns the end or nil.
    func contraction(at i: Int, ignoreCase: Bool) -> Int? {
        guard text[i] == "'", i + 1 < end else { return nil }
        func lower(_ c: Unicode.Scalar) -> Unicode.Scalar {
            ignoreCase && c.value >= 0x41 && c.value <= 0x5A ? Unicode.Scalar(c.value + 32)! : c
        }
        let a = lower(text[i + 1])
        if a == "s" || a == "t" || a == "m" || a == "d" { return i + 2 }
        guard i + 2 < end else { return nil }
        let b = lower(text[i + 2])
        if (a == "r" && b == "e") || (a == "v" && b == "e") || (a == "l" && b == "l") { return i + 3 }
        return nil
    }

    /// `\s+(?!\S)|\s+` at a whitespace position: the whole run if it ends the text, else the run
    /// minus its last scalar (left for the next word's optional leading space), else one scalar.
    func trailingSpace(at i: Int) -> Int {
        let j = run(.space, from: i)
        if j == end || j - i == 1 { return j }
        return j - 1
    }

    func gpt2(from start: Int, into out: inout [Range<Int>]) {
        var i = start
        while i < end {
            let c = CharClass.of(text[i])
            var j: Int
            if let k = contraction(at: i, ignoreCase: false) {
                j = k
            } else if c == .space, text[i] == " ", let n = cls(i + 1), n != .space {
                j = run(n, from: i + 1)  // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
            } else if c != .space {
                j = run(c, from: i)
            } else {
                j = trailingSpace(at: i)
            }
            out.append(i..<j)
            i = j
        }
    }

    func llama3(from start: Int, maxDigits: Int, into out: inout [Range<Int>]) {
        var i = start
        while i < end {
            let c = CharClass.of(text[i])
            var j: Int
            if let k = contraction(at: i, ignoreCase: true) {
                j = k
            } else if c == .letter {
                j = run(.letter, from: i)
            } else if c != .number, !isNewline(i), cls(i + 1) == .letter {
                j = run(.letter, from: i + 1)  // `[^\r\n\p{L}\p{N}]?\p{L}+`
            } else if c == .number {
                j = i + 1
                while j < end, j - i < maxDigits, CharClass.of(text[j]) == .number { j += 1 }
            } else if c == .other || (text[i] == " " && cls(i + 1) == .other) {
                // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
                j = run(.other, from: c == .other ? i : i + 1)
                while isNewline(j) { j += 1 }
            } else {
                // c is whitespace: `\s*[\r\n]+` ends after the last newline of the run; else `\s+(?!\S)|\s+`.
                let r = run(.space, from: i)
                var lastNL = -1
                for k in i..<r where text[k] == "\n" || text[k] == "\r" { lastNL = k }
                j = lastNL >= 0 ? lastNL + 1 : trailingSpace(at: i)
            }
            out.append(i..<j)
            i = j
        }
    }
}
