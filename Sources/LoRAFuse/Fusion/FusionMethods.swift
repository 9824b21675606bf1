/// Parameters of a fusion method as they come from the command line or a YAML/JSON config.
/// Plain optional fields: a method reads the ones it understands; `FusionMethods.make` checks
/// the ranges of every field that is set, and the method-specific string options.
public struct FusionParameters: Sendable, Codable, Equatable {
    /// Rank of the fused LoRA (svd, knots, lego, linear with re-ranking, dense methods). ≥ 1.
    public var rank: Int?
    /// Fraction of entries kept (TIES trim, DARE keep probability, knots merge rule). In (0, 1].
    public var density: Double?
    /// Seed of every random choice (DARE masks, k-means++); default 0.
    public var seed: UInt64
    /// Global scaling of the merged task vector (dense methods). Finite.
    public var lambda: Double?
    /// Breadcrumbs: fraction of the largest-magnitude entries dropped. In [0, 1).
    public var gamma: Double?
    /// DELLA: spread of the keep probabilities. In [0, 1) (and < density when both are set).
    public var epsilon: Double?
    /// TIES sign election: "sum" or "count" (dense methods; knots uses "sum").
    public var signElection: String?
    /// TIES divisor: "count" (disjoint mean), "weight", "none"; knots accepts "count" and "none".
    public var divisor: String?
    /// DARE/DELLA survivor rescaling: "inverse" (default), "l1", "none".
    public var rescale: String?
    /// LEGO reweighting: "both" (default), "unit", "output", "none". (Was `rescale` before that
    /// name got one meaning; `make` points lego users at this one.)
    public var reweight: String?
    /// KnOTS merge rule for the aligned V blocks: "ties" (default), "linear", "dare".
    public var mergeRule: String?
    /// KnOTS: singular values ≤ threshold · S_max are dropped. In [0, 1); default 1e-4.
    public var threshold: Double?
    /// LEGO: cap on the Lloyd iterations of k-means. ≥ 1; default 50.
    public var iterations: Int?
    /// Dense methods: whose conventions for sign election and divisor — "mergekit" (default:
    /// elect on the weighted deltas, divide by Σ w_i over agreeing entries) or "peft" (elect on
    /// the unweighted stack, divide by the count of agreeing entries). Explicit `signElection` /
    /// `divisor` override the preset.
    public var convention: String?

    public init(rank: Int? = nil, density: Double? = nil, seed: UInt64 = 0, lambda: Double? = nil,
                gamma: Double? = nil, epsilon: Double? = nil, signElection: String? = nil,
                divisor: String? = nil, rescale: String? = nil, reweight: String? = nil, mergeRule: String? = nil,
                threshold: Double? = nil, iterations: Int? = nil, convention: String? = nil) {
        self.rank = rank
        self.density = density
        self.seed = seed
        self.lambda = lambda
        self.gamma = gamma
        self.epsilon = epsilon
        self.signElection = signElection
        self.divisor = divisor
        self.rescale = rescale
        self.reweight = reweight
        self.mergeRule = mergeRule
        self.threshold = threshold
        self.iterations = iterations
        self.convention = convention
    }

    /// Field names as configs spell them (camelCase; YAML plans accept snake_case).
    public static let fieldNames: [String] = CodingKeys.allCases.map(\.stringValue)

    private enum CodingKeys: String, CodingKey, CaseIterable {
        case rank, density, seed, lambda, gamma, epsilon, signElection, divisor, rescale, reweight, mergeRule, threshold, iterations, convention
    }

    /// Every field may be absent from a config; `seed` then defaults to 0.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        rank = try c.decodeIfPresent(Int.self, forKey: .rank)
        density = try c.decodeIfPresent(Double.self, forKey: .density)
        seed = try c.decodeIfPresent(UInt64.self, forKey: .seed) ?? 0
        lambda = try c.decodeIfPresent(Double.self, forKey: .lambda)
        gamma = try c.decodeIfPresent(Double.self, forKey: .gamma)
        epsilon = try c.decodeIfPresent(Double.self, forKey: .epsilon)
        signElection = try c.decodeIfPresent(String.self, forKey: .signElection)
        divisor = try c.decodeIfPresent(String.self, forKey: .divisor)
        rescale = try c.decodeIfPresent(String.self, forKey: .rescale)
        reweight = try c.decodeIfPresent(String.self, forKey: .reweight)
        mergeRule = try c.decodeIfPresent(String.self, forKey: .mergeRule)
        threshold = try c.decodeIfPresent(Double.self, forKey: .threshold)
        iterations = try c.decodeIfPresent(Int.self, forKey: .iterations)
        convention = try c.decodeIfPresent(String.self, forKey: .convention)
    }
}

/// The registry of fusion methods by command-line name.
public enum FusionMethods {
    /// Names `make` accepts, in the order help texts list them.
    public static let names: [String] = ["linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune",
                                         "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "knots", "lego"]

    /// Builds the method `name` from `parameters`, after checking that the method takes every
    /// parameter that is set (`acceptedParameters(of:)`) and every parameter's range.
    /// Throws `FusionError.unknownMethod`, `.unexpectedParameter` or `.invalidParameter`.
    public static func make(name: String, parameters p: FusionParameters) throws -> any FusionMethod {
        guard names.contains(name) else { throw FusionError.unknownMethod(name, known: names) }
        try checkAccepted(name, p)
        try validateCommon(name, p)
        switch name {
        case "linear":
            return LinearFusion(rank: p.rank)
        case "cat":
            if let r = p.rank {
                throw FusionError.invalidParameter(method: name, parameter: "rank", value: String(r),
                                                   expected: "no rank: cat is exact with rank Σ r_i (use svd or linear with a rank)")
            }
            return CatFusion()
        case "svd":
            return SVDFusion(rank: p.rank)
        case "knots":
            let rule: KnOTSFusion.MergeRule
            switch p.mergeRule ?? "ties" {
            case "linear":
                rule = .linear
            case "ties":
                let div = p.divisor ?? "count"
                guard div == "count" || div == "none" else {
                    throw FusionError.invalidParameter(method: name, parameter: "divisor", value: div, expected: "count or none")
                }
                if let s = p.signElection, s != "sum" {
                    throw FusionError.invalidParameter(method: name, parameter: "sign_election", value: s,
                                                       expected: "sum (knots elects the sign of the weighted sum)")
                }
                rule = .ties(density: p.density ?? 0.2, disjointMean: div == "count")
            case "dare":
                rule = .dare(density: p.density ?? 0.5)
            case let other:
                throw FusionError.invalidParameter(method: name, parameter: "merge_rule", value: other, expected: "ties, linear or dare")
            }
            return KnOTSFusion(mergeRule: rule, rank: p.rank, relativeThreshold: p.threshold ?? 1e-4)
        case "lego":
            let unit: Bool, output: Bool
            switch p.reweight ?? "both" {
            case "both": (unit, output) = (true, true)
            case "unit": (unit, output) = (true, false)
            case "output": (unit, output) = (false, true)
            case "none": (unit, output) = (false, false)
            case let other:
                throw FusionError.invalidParameter(method: name, parameter: "reweight", value: other, expected: "both, unit, output or none")
            }
            return LEGOFusion(rank: p.rank, unitNormRescale: unit, outputRescale: output, maxIterations: p.iterations ?? 50)
        case "ties":
            return try scaled(TIESFusion(density: p.density ?? 0.2, rank: p.rank, consensus: consensus(name, p)), p)
        case "dare_linear", "dare_ties":
            let c = try consensus(name, p)
            return try scaled(DAREFusion(mode: name == "dare_ties" ? .ties : .linear, density: p.density ?? 0.5, rank: p.rank,
                                         rescale: dropRescale(name, p), signElection: c.election, signMethod: c.method,
                                         divisor: c.divisor), p)
        case "magnitude_prune":
            return try scaled(MagnitudePruneFusion(density: p.density ?? 0.2, rank: p.rank), p)
        case "breadcrumbs", "breadcrumbs_ties":
            let c = try consensus(name, p)
            return try scaled(BreadcrumbsFusion(mode: name == "breadcrumbs_ties" ? .ties : .linear, density: p.density ?? 0.1,
                                                gamma: p.gamma ?? 0.01, rank: p.rank, signElection: c.election,
                                                signMethod: c.method, divisor: c.divisor), p)
        case "della", "della_linear":
            let c = try consensus(name, p)
            return try scaled(DELLAFusion(mode: name == "della" ? .ties : .linear, density: p.density ?? 0.5,
                                          epsilon: p.epsilon ?? 0.15, rank: p.rank, rescale: dropRescale(name, p),
                                          signElection: c.election, signMethod: c.method, divisor: c.divisor), p)
        default:
            throw FusionError.unknownMethod(name, known: names)
        }
    }

    /// Range checks that do not depend on the method.
    static func validateCommon(_ method: String, _ p: FusionParameters) throws {
        func bad(_ param: String, _ value: CustomStringConvertible, _ expected: String) -> FusionError {
            .invalidParameter(method: method, parameter: param, value: value.description, expected: expected)
        }
        if let r = p.rank, r < 1 { throw bad("rank", r, "an integer ≥ 1") }
        if let d = p.density, !(d > 0 && d <= 1) { throw bad("density", d, "a number in (0, 1]") }
        if let l = p.lambda, !l.isFinite { throw bad("lambda", l, "a finite number") }
        if let g = p.gamma, !(g >= 0 && g < 1) { throw bad("gamma", g, "a number in [0, 1)") }
        if let e = p.epsilon, !(e >= 0 && e < 1) { throw bad("epsilon", e, "a number in [0, 1)") }
        if let e = p.epsilon, let d = p.density, e >= d, method.hasPrefix("della") {
            throw bad("epsilon", e, "less than density (\(d)) so every keep probability stays positive")
        }
        if let g = p.gamma, let d = p.density, g + d > 1, method.hasPrefix("breadcrumbs") {
            throw bad("gamma", g, "gamma + density ≤ 1 (density = \(d))")
        }
        if let t = p.threshold, !(t >= 0 && t < 1) { throw bad("threshold", t, "a number in [0, 1)") }
        if let i = p.iterations, i < 1 { throw bad("iterations", i, "an integer ≥ 1") }
        if let s = p.signElection, !["sum", "count", "total", "frequency"].contains(s) {
            throw bad("sign_election", s, "sum or count (PEFT's total / frequency)")
        }
        if let c = p.convention, !["mergekit", "peft"].contains(c) { throw bad("convention", c, "mergekit or peft") }
        if let dv = p.divisor, !["count", "weight", "none"].contains(dv) { throw bad("divisor", dv, "count, weight or none") }
    }
}

extension FusionMethods {
    /// The TIES-style consensus a dense method uses: the convention preset, then explicit overrides.
    static func consensus(_ method: String, _ p: FusionParameters) throws -> SignConsensus {
        var c = (p.convention ?? "mergekit") == "peft" ? SignConsensus.peft : SignConsensus.mergekit
        switch p.signElection {
        case "sum"?, "total"?: c.method = .sum
        case "count"?, "frequency"?: c.method = .count
        default: break
        }
        switch p.divisor {
        case "count"?: c.divisor = .agreeingCount
        case "weight"?: c.divisor = .weightSum
        case "none"?: c.divisor = .none
        default: break
        }
        return c
    }

    /// DARE/DELLA survivor rescaling: "inverse" (1/p, PEFT and the papers; default), "l1"
    /// (keep the L1 norm, mergekit) or "none".
    static func dropRescale(_ method: String, _ p: FusionParameters) throws -> DropRescale {
        switch p.rescale ?? "inverse" {
        case "inverse": return .inverseProbability
        case "l1": return .l1Norm
        case "none": return DropRescale.none
        case let other:
            throw FusionError.invalidParameter(method: method, parameter: "rescale", value: other, expected: "inverse, l1 or none")
        }
    }

    /// Applies `lambda` (mergekit's global scale of the merged task vector) when it is set.
    static func scaled(_ m: any FusionMethod, _ p: FusionParameters) throws -> any FusionMethod {
        guard let l = p.lambda, l != 1 else { return m }
        return ScaledFusion(inner: m, lambda: Float(l))
    }
}

/// λ · (another method's result): the scale goes on B, so the factors stay exact.
public struct ScaledFusion: FusionMethod {
    public var inner: any FusionMethod
    public var lambda: Float
    public var name: String { inner.name }

    public init(inner: any FusionMethod, lambda: Float) {
        self.inner = inner
        self.lambda = lambda
    }

    public func fuse(_ input: ModuleFusionInput) throws -> FusedModule {
        var out = try inner.fuse(input)
        out.B.scale(by: lambda)
        return out
    }
}
