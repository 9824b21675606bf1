import Foundation
import XCTest
@testable import LoRAFuse

final class CompositeTasksTests: XCTestCase {
    let tasks = (0..<4).map { t in
        EvalTask(name: "t\(t)", examples: (0..<5).map { EvalExample(prompt: "p\(t).\($0)", answer: "a\(t).\($0)") })
    }

    func testPartsAreDistinctTasksAndAnswersAreJoinedInOrder() throws {
        let c = try CompositeTasks.make(from: tasks, parts: 3, count: 20, seed: 7)
        XCTAssertEqual(c.name, "composite3")
        XCTAssertEqual(c.examples.count, 20)
        for e in c.examples {
            let lines = e.prompt.split(separator: "\n").map(String.init)
            XCTAssertEqual(lines[0], CompositeTasks.instruction)
            let prompts = lines.dropFirst().enumerated().map { i, l -> String in
                XCTAssertTrue(l.hasPrefix("\(i + 1)) "), l)
                return String(l.dropFirst("\(i + 1)) ".count))
            }
            let answers = e.answer.split(separator: "\n").map(String.init)
            XCTAssertEqual(prompts.count, 3)
            XCTAssertEqual(answers, prompts.map { $0.replacingOccurrences(of: "p", with: "a") }, "each answer belongs to its part")
            XCTAssertEqual(Set(prompts.map { $0.prefix(2) }).count, 3, "three different tasks")
        }
        XCTAssertEqual(try CompositeTasks.make(from: tasks, parts: 3, count: 20, seed: 7), c, "seeded")
        XCTAssertNotEqual(try CompositeTasks.make(from: tasks, parts: 3, count: 20, seed: 8), c)
        // The JSON Lines read back as the same task.
        let back = try TaskData.parse(Array(CompositeTasks.jsonl(c).utf8), file: "c.jsonl")
        XCTAssertEqual(back.examples.map(\.prompt), c.examples.map(\.prompt))
        XCTAssertEqual(back.examples.map(\.answer), c.examples.map(\.answer))
    }

    func testBadRequestsAreNamed() {
        XCTAssertThrowsError(try CompositeTasks.make(from: Array(tasks.prefix(2)), parts: 3, count: 1, seed: 1)) {
            XCTAssertEqual($0 as? CompositeTasks.CompositeError, .tooFewTasks(parts: 3, tasks: 2))
        }
        XCTAssertThrowsError(try CompositeTasks.make(from: tasks + [EvalTask(name: "empty", examples: [])], parts: 2, count: 1, seed: 1)) {
            XCTAssertEqual($0 as? CompositeTasks.CompositeError, .emptyTask(name: "empty"))
        }
    }
}
