/// Concatenation (CAT; Prabhakar et al., "LoRA Soups", arXiv 2410.13025, and PEFT's `cat`):
///
///     B' = [B_1 | … | B_n],  A' = [w_1 s_1 A_1; … ; w_n s_n A_n],  so B'·A' = Σ w_i s_i B_i A_i
///
/// Exact, rank Σ r_i. The weight and scale go on A, as in PEFT, so B is copied bit for bit.
public struct CatFusion: FusionMethod {
    public var name: String { "cat" }

    public init() {}

    public func fuse(_ input: ModuleFusionInput) throws -> FusedModule {
        let terms = input.terms
        let A = Matrix.vconcat(terms.map { $0.module.A.scaled(by: $0.effectiveScale) })
        let B = Matrix.hconcat(terms.map { $0.module.B })
        if terms.isEmpty {
            return FusedModule(A: Matrix(rows: 0, cols: input.inFeatures), B: Matrix(rows: input.outFeatures, cols: 0))
        }
        return FusedModule(A: A, B: B)
    }
}
