/// Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023):
///
///     ΔW = Σ_i w_i · s_i · B_i · A_i
///
/// Exact: the factors are stacked (B' = [w_1 s_1 B_1 | … | w_n s_n B_n], A' = [A_1; …; A_n]), so
/// the result has rank Σ r_i and no cross terms — unlike PEFT's `linear`, which mixes the A's and
/// the B's separately (Σ √w_i A_i)(Σ √w_i B_i) and so adds B_j·A_i for i ≠ j.
/// With `rank` set, the exact sum is re-ranked through the factored SVD (see `SVDFusion`).
public struct LinearFusion: FusionMethod {
    public var name: String { "linear" }
    public var rank: Int?

    public init(rank: Int? = nil) { self.rank = rank }

    public func fuse(_ input: ModuleFusionInput) throws -> FusedModule {
        if let r = rank { return try SVDFusion(rank: r).fuse(input) }
        return try CatFusion().fuse(input)
    }
}
