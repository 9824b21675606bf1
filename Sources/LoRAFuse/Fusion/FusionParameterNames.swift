/// Which `FusionParameters` fields each method reads, as configs spell them (snake_case; the
/// command line uses the same words with dashes). `FusionMethods.make` rejects any other field
/// that is set, so a flag the method would ignore (say `--gamma` for ties) is an error instead of
/// a silent no-op. `seed` is not listed: every method accepts it (the Fuser derives each module's
/// random stream from it).
public protocol DeclaresFusionParameters {
    /// The parameters this method takes in `mode` (only the dense methods have two modes).
    static func acceptedParameters(mode: DenseMergeMode) -> [String]
}

/// TIES-style consensus knobs: only methods that elect a sign read them.
private let consensusParameters = ["sign_election", "divisor", "convention"]

extension LinearFusion: DeclaresFusionParameters {
    public static func acceptedParameters(mode: DenseMergeMode) -> [String] { ["rank"] }
}

extension CatFusion: DeclaresFusionParameters {
    /// None: `cat` is exact; a rank gets its own, more helpful error in `make`.
    public static func acceptedParameters(mode: DenseMergeMode) -> [String] { [] }
}

extension SVDFusion: DeclaresFusionParameters {
    public static func acceptedParameters(mode: DenseMergeMode) -> [String] { ["rank"] }
}

extension KnOTSFusion: DeclaresFusionParameters {
    public static func acceptedParameters(mode: DenseMergeMode) -> [String] {
        ["rank", "density", "merge_rule", "threshold", "sign_election", "divisor"]
    }
}

extension LEGOFusion: DeclaresFusionParameters {
    public static func acceptedParameters(mode: DenseMergeMode) -> [String] { ["rank", "reweight", "iterations"] }
}

extension TIESFusion: DeclaresFusionParameters {
    public static func acceptedParameters(mode: DenseMergeMode) -> [String] {
        ["rank", "density", "lambda"] + consensusParameters
    }
}

extension MagnitudePruneFusion: DeclaresFusionParameters {
    public static func acceptedParameters(mode: DenseMergeMode) -> [String] { ["rank", "density", "lambda"] }
}

extension DAREFusion: DeclaresFusionParameters {
    public static func acceptedParameters(mode: DenseMergeMode) -> [String] {
        ["rank", "density", "lambda", "rescale"] + (mode == .ties ? consensusParameters : [])
    }
}

extension BreadcrumbsFusion: DeclaresFusionParameters {
    public static func acceptedParameters(mode: DenseMergeMode) -> [String] {
        ["rank", "density", "gamma", "lambda"] + (mode == .ties ? consensusParameters : [])
    }
}

extension DELLAFusion: DeclaresFusionParameters {
    public static func acceptedParameters(mode: DenseMergeMode) -> [String] {
        ["rank", "density", "epsilon", "lambda", "rescale"] + (mode == .ties ? consensusParameters : [])
    }
}

extension FusionMethods {
    /// The parameters method `name` takes (snake_case), or nil for an unknown method.
    public static func acceptedParameters(of name: String) -> [String]? {
        let type: any DeclaresFusionParameters.Type
        switch name {
        case "linear": type = LinearFusion.self
        case "cat": type = CatFusion.self
        case "svd": type = SVDFusion.self
        case "knots": type = KnOTSFusion.self
        case "lego": type = LEGOFusion.self
        case "ties": type = TIESFusion.self
        case "magnitude_prune": type = MagnitudePruneFusion.self
        case "dare_linear", "dare_ties": type = DAREFusion.self
        case "breadcrumbs", "breadcrumbs_ties": type = BreadcrumbsFusion.self
        case "della", "della_linear": type = DELLAFusion.self
        default: return nil
        }
        let ties = ["ties", "dare_ties", "breadcrumbs_ties", "della"].contains(name)
        return type.acceptedParameters(mode: ties ? .ties : .linear)
    }

    /// Throws `FusionError.unexpectedParameter` for the first parameter that is set but that
    /// method `name` does not take.
    static func checkAccepted(_ name: String, _ p: FusionParameters) throws {
        guard let accepted = acceptedParameters(of: name) else { return }
        if name == "cat", p.rank != nil { return }  // `make` explains that cat is exact
        for field in p.setParameterNames where !accepted.contains(field) {
            throw FusionError.unexpectedParameter(method: name, parameter: field, accepted: accepted)
        }
    }
}

extension FusionParameters {
    /// The fields that are set, snake_case, in declaration order (`seed` always has a value and
    /// every method takes it, so it is left out).
    public var setParameterNames: [String] {
        var out: [String] = []
        if rank != nil { out.append("rank") }
        if density != nil { out.append("density") }
        if lambda != nil { out.append("lambda") }
        if gamma != nil { out.append("gamma") }
        if epsilon != nil { out.append("epsilon") }
        if signElection != nil { out.append("sign_election") }
        if divisor != nil { out.append("divisor") }
        if rescale != nil { out.append("rescale") }
        if reweight != nil { out.append("reweight") }
        if mergeRule != nil { out.append("merge_rule") }
        if threshold != nil { out.append("threshold") }
        if iterations != nil { out.append("iterations") }
        if convention != nil { out.append("convention") }
        return out
    }
}
