import Foundation

/// The files of a Hugging Face checkpoint folder, found by the one rule every reader of such a
/// folder follows (`LlamaModel.load` and the full-model tools through `HFCheckpoint` alike).
///
/// Weights, in this order:
/// 1. `model.safetensors`, if it exists and is not a folder: the whole model in one file;
/// 2. else `model.safetensors.index.json`: the shards its `weight_map` names;
/// 3. else an error naming the folder.
///
/// So when both a `model.safetensors` and an index are present, the single file wins and the
/// index (with its shards) is not read. That is transformers' order: for a local folder
/// `PreTrainedModel.from_pretrained` checks `model.safetensors` first and the index only when
/// there is no single file. Other `*.safetensors` files in the folder are never taken as the
/// model by guess; name such a file directly where a tool accepts a file.
///
/// `config.json`, `tokenizer.json` and `tokenizer_config.json` are reported when present; which
/// of them a reader needs is the reader's rule (the model loader needs config.json and
/// tokenizer.json, task vectors need neither).
public struct HFCheckpointLayout: Sendable, Equatable {
    public enum Weights: Sendable, Equatable {
        /// `model.safetensors`.
        case single(path: String)
        /// `model.safetensors.index.json`.
        case sharded(indexPath: String)

        public var path: String {
            switch self {
            case let .single(p): return p
            case let .sharded(p): return p
            }
        }
    }

    public static let singleFile = "model.safetensors"
    public static let indexFile = "model.safetensors.index.json"
    public static let configFile = "config.json"
    public static let tokenizerFile = "tokenizer.json"
    public static let tokenizerConfigFile = "tokenizer_config.json"

    /// Files that travel with a checkpoint and are copied to a derived one.
    public static let companionFiles = [
        configFile, "generation_config.json", tokenizerFile, tokenizerConfigFile,
        "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
        "chat_template.jinja", "chat_template.json",
    ]

    /// The folder, as given.
    public let directory: String
    public let weights: Weights
    /// Paths of config.json, tokenizer.json and tokenizer_config.json, nil when absent.
    public let config: String?
    public let tokenizer: String?
    public let tokenizerConfig: String?
    /// The `companionFiles` present in the folder, in that list's order.
    public let companions: [String]

    /// Finds the checkpoint's files in `directory` by the rule above. Throws
    /// `CheckpointError.notACheckpoint` naming the folder when it does not exist, is not a
    /// folder, or holds neither weights file.
    public static func discover(directory: String) throws -> HFCheckpointLayout {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: directory, isDirectory: &isDir) else {
            throw CheckpointError.notACheckpoint(path: directory, reason: "does not exist")
        }
        guard isDir.boolValue else { throw CheckpointError.notACheckpoint(path: directory, reason: "not a folder") }
        func at(_ f: String) -> String { (directory as NSString).appendingPathComponent(f) }
        /// Present and not a folder (a FIFO or device is refused with its own error when read).
        func isFile(_ f: String) -> Bool {
            var d: ObjCBool = false
            return fm.fileExists(atPath: at(f), isDirectory: &d) && !d.boolValue
        }
        let weights: Weights
        if isFile(singleFile) {
            weights = .single(path: at(singleFile))
        } else if isFile(indexFile) {
            weights = .sharded(indexPath: at(indexFile))
        } else {
            let others = ((try? fm.contentsOfDirectory(atPath: directory)) ?? [])
                .filter { $0.hasSuffix(".safetensors") }.sorted(by: naturalLess)
            let shown = others.prefix(4).joined(separator: ", ") + (others.count > 4 ? ", …" : "")
            let found = others.isEmpty ? "" : " (found \(shown); no other file name is taken as the model)"
            throw CheckpointError.notACheckpoint(path: directory, reason: "no \(singleFile) or \(indexFile)\(found)")
        }
        return HFCheckpointLayout(directory: directory, weights: weights,
                                  config: isFile(configFile) ? at(configFile) : nil,
                                  tokenizer: isFile(tokenizerFile) ? at(tokenizerFile) : nil,
                                  tokenizerConfig: isFile(tokenizerConfigFile) ? at(tokenizerConfigFile) : nil,
                                  companions: companionFiles.filter(isFile))
    }
}
