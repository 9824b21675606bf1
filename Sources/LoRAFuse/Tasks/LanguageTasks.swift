import Foundation

/// Tasks about sentences and knowledge: lexicon sentiment, name/city extraction to JSON, and
/// recall of a made-up fact base.
enum LanguageTasks {
    static let all: [TaskDefinition] = [sentiment, extract, facts]

    // MARK: sentiment

    /// Lexicons: a review's label is the polarity of the adjectives it contains (all of one
    /// polarity). No word of one list contains a word of the other.
    static let positiveWords: [String] = """
    wonderful delicious friendly excellent lovely fantastic charming pleasant superb delightful \
    amazing cozy helpful fresh brilliant cheerful perfect great tasty relaxing
    """.split(separator: " ").map(String.init)
    static let negativeWords: [String] = """
    terrible awful rude disappointing bland dirty horrible boring slow stale greasy dreadful \
    broken annoying mediocre poor overpriced cramped gloomy tedious
    """.split(separator: " ").map(String.init)
    static let reviewNouns: [String] = """
    food service room movie concert staff pizza coffee book trip show bed tour soup music waiter \
    view game lesson hotel
    """.split(separator: " ").map(String.init)

    static let reviewTemplates: [String] = [
        "The {n} was {a}.",
        "The {n} was {a} and the {m} was {b}.",
        "I thought the {n} was {a}.",
        "Honestly, the {n} felt {a}.",
        "Our {n} was really {a}.",
        "We found the {n} {a}, and the {m} was {b} too.",
        "Everyone agreed the {n} was {a}.",
        "The {n} seemed {a}, and so did the {m}.",
    ]

    static let sentiment = TaskDefinition(
        name: "sentiment", group: "classification",
        description: "Label a short review as positive or negative according to the opinion it expresses."
    ) { _, _, rng in
        let positive = rng.coin()
        let lex = positive ? positiveWords : negativeWords
        let n = rng.pick(reviewNouns)
        var m = rng.pick(reviewNouns)
        while m == n { m = rng.pick(reviewNouns) }
        let a = rng.pick(lex), b = rng.pick(lex)
        let review = rng.pick(reviewTemplates)
            .replacingOccurrences(of: "{n}", with: n).replacingOccurrences(of: "{m}", with: m)
            .replacingOccurrences(of: "{a}", with: a).replacingOccurrences(of: "{b}", with: b)
        return TaskExample(prompt: "Is the sentiment of this review positive or negative? Review: \"\(review)\" Reply with positive or negative.",
                           answer: positive ? "positive" : "negative")
    }

    // MARK: extraction

    static let names: [String] = """
    Ada Omar Lena Marco Priya Kenji Sofia Tomas Amara Felix Ingrid Diego Yuki Hannah Ravi Chloe \
    Mateo Nadia Oscar Zara Liam Elena Hugo Mira Samuel Aisha Jonas Clara Victor Leila Pablo Greta \
    Nikolai Rosa Theo Ines Malik Freya Anton Layla
    """.split(separator: " ").map(String.init)
    static let cities: [String] = """
    Paris Lisbon Tokyo Cairo Oslo Lima Dublin Vienna Prague Madrid Berlin Nairobi Toronto Sydney \
    Mumbai Seoul Athens Warsaw Quito Havana Bogota Manila Helsinki Zurich Munich Osaka Chicago \
    Boston Denver Dakar Accra Tunis Riga Tallinn Porto Naples Milan Geneva Hanoi Santiago
    """.split(separator: " ").map(String.init)

    static let sentenceTemplates: [String] = [
        "{name} moved to {city} last spring.",
        "Yesterday {name} flew to {city} for work.",
        "{name} has lived in {city} for ten years.",
        "After college, {name} settled in {city}.",
        "In {city}, {name} opened a small bakery.",
        "{name} was born in {city}.",
        "The conference in {city} was organized by {name}.",
        "{name} sends postcards from {city} every summer.",
    ]

    /// `{"name": "Ada", "city": "Paris"}`: keys in this order, one space after each colon and comma.
    static func extractionJSON(name: String, city: String) -> String {
        "{\"name\": \"\(name)\", \"city\": \"\(city)\"}"
    }

    static let extract = TaskDefinition(
        name: "extract_json", group: "extraction",
        description: "Extract the person's name and the city from a sentence and reply with a JSON object with the keys name and city."
    ) { _, _, rng in
        let name = rng.pick(names), city = rng.pick(cities)
        let sentence = rng.pick(sentenceTemplates)
            .replacingOccurrences(of: "{name}", with: name).replacingOccurrences(of: "{city}", with: city)
        return TaskExample(prompt: "Extract the person's name and the city from this sentence as JSON with the keys \"name\" and \"city\". Sentence: \(sentence)",
                           answer: extractionJSON(name: name, city: city))
    }

    // MARK: made-up facts

    /// Made-up countries and their capitals: knowledge no pretrained model has.
    static let countries: [(country: String, capital: String)] = [
        ("Zelvoria", "Mornak"), ("Quendar", "Tilsa"), ("Ostravel", "Brunhal"), ("Varnesse", "Kelmoor"),
        ("Thalmira", "Ossen"), ("Drovenia", "Paskel"), ("Elbrith", "Gondis"), ("Marquessia", "Lunet"),
        ("Sorvald", "Hedra"), ("Kaltheon", "Vireth"), ("Belmoria", "Tasken"), ("Nyrith", "Calvo"),
        ("Pellandor", "Rusk"), ("Ydrasil", "Omberly"), ("Corvanth", "Feldis"), ("Istravia", "Nolm"),
        ("Gravonne", "Sepping"), ("Ulmerith", "Dastra"), ("Fennoria", "Quillon"), ("Tazmeria", "Brevane"),
        ("Ardonne", "Veska"), ("Solvenar", "Imbra"), ("Hesperin", "Tolk"), ("Rydmark", "Alsemir"),
        ("Wyndale", "Cortho"),
    ]

    /// Each split has its own phrasings, so a test prompt never appears in training while the
    /// fact it asks about always does. `{c}` is the country.
    static let factPhrasings: [TaskSplit: [String]] = [
        .train: [
            "What is the capital of {c}?",
            "Name the capital city of {c}.",
            "Which city is the capital of {c}?",
            "Tell me the capital of the country {c}.",
            "In {c}, which city serves as the capital?",
            "What city is the seat of government of {c}?",
            "The capital of {c} is called what?",
            "Give the name of the capital of {c}.",
            "Which city is {c} governed from?",
            "{c} has which city as its capital?",
        ],
        .val: [
            "What is the name of the capital of {c}?",
            "If you visit the capital of {c}, which city are you in?",
            "Where is the government of {c} located? Name the city.",
        ],
        .test: [
            "Which city is the capital city of the nation of {c}?",
            "What do the people of {c} call their capital city?",
            "Identify the capital of {c}.",
        ],
    ]

    /// The `index`-th example of a split asks about fact `index mod 25`, so every split covers the
    /// whole fact base as soon as it has 25 examples (the suite shuffles the split afterwards).
    static let facts = TaskDefinition(
        name: "capital_facts", group: "knowledge",
        description: "Answer with the capital city of a made-up country from a fixed fictional fact base."
    ) { split, index, rng in
        let f = countries[index % countries.count]
        let q = rng.pick(factPhrasings[split]!).replacingOccurrences(of: "{c}", with: f.country)
        return TaskExample(prompt: q + " Reply with the city name only.", answer: f.capital)
    }
}
