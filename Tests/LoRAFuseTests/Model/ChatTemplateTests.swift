import Foundation
import XCTest
@testable import LoRAFuse

/// When a prompt starts with BOS (`BPETokenizer.encodePrompt`, what `lorafuse generate` feeds):
/// a raw prompt gets one when the model asks for it; a templated one only what the template writes.
final class ChatTemplateTests: XCTestCase {
    /// TinyChat's one-token-per-character alphabet with `<|endoftext|>` (id 0) as BOS.
    func chatML(addBos: Bool, bos: Int? = 0) throws -> BPETokenizer {
        try BPETokenizer(tokens: TinyChat.specials + TinyChat.chars, merges: [],
                         tokenTypes: TinyChat.specials.map { _ in 3 } + TinyChat.chars.map { _ in 1 },
                         preTokenizer: .gpt2, bosId: bos, eosId: 0, addBos: addBos, chatTemplate: TinyChat.template)
    }

    func testRawPromptGetsBOSOnlyWhenTheModelAsks() throws {
        let plain = try chatML(addBos: false)
        let ab = [plain.id(of: "a")!, plain.id(of: "b")!]
        XCTAssertFalse(plain.prependsBOSToRawPrompt)
        XCTAssertEqual(plain.encodeRawPrompt("ab"), ab)
        XCTAssertEqual(try plain.encodePrompt("ab", raw: true), ab)

        let bos = try chatML(addBos: true)
        XCTAssertTrue(bos.prependsBOSToRawPrompt)
        XCTAssertEqual(bos.encodeRawPrompt("ab"), [0] + ab)
        XCTAssertEqual(bos.encodeRawPrompt(""), [0])

        let noToken = try chatML(addBos: true, bos: nil)
        XCTAssertFalse(noToken.prependsBOSToRawPrompt, "add_bos_token without a BOS token adds nothing")
        XCTAssertEqual(noToken.encodeRawPrompt("ab"), ab)
    }

    func testTemplatedPromptGetsNoExtraBOS() throws {
        let t = try chatML(addBos: true)
        let ids = try t.encodePrompt("ab", raw: false)
        XCTAssertEqual(ids, try t.encodeChat([ChatMessage(role: "user", content: "ab")]))
        XCTAssertEqual(ids.first, t.id(of: "<|im_start|>"), "ChatML has no BOS, even when add_bos_token is set")
        XCTAssertFalse(ids.contains(0))

        // Llama 3 writes its BOS in the template: exactly one, though its GGUFs set add_bos_token.
        let specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        let llama = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        let l3 = try BPETokenizer(tokens: specials + TinyChat.chars, merges: [],
                                  tokenTypes: specials.map { _ in 3 } + TinyChat.chars.map { _ in 1 },
                                  preTokenizer: .gpt2, bosId: 0, eosId: 3, addBos: true, chatTemplate: llama)
        XCTAssertEqual(try l3.chatTemplate(), .llama3(bosToken: "<|begin_of_text|>"))
        let l3ids = try l3.encodePrompt("ab", raw: false)
        XCTAssertEqual(l3ids.filter { $0 == 0 }.count, 1)
        XCTAssertEqual(l3ids.first, 0)
        XCTAssertEqual(l3.encodeRawPrompt("ab"), [0, l3.id(of: "a")!, l3.id(of: "b")!])
    }
}
