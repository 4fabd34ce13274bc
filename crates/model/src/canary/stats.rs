//! The statistics a verdict rests on: the two-proportion z-test of error rates.

/// The complementary error function (Numerical Recipes' Chebyshev fit; relative error below
/// 1.2e-7, plenty for a p-value compared with 0.05).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// One-sided p-value that the candidate's error rate is higher than the baseline's
/// (two-proportion z-test with the pooled proportion). 1 when there is no evidence either way
/// (no requests, or no errors at all).
pub fn error_rate_p_value(base_errors: u64, base_n: u64, cand_errors: u64, cand_n: u64) -> f64 {
    if base_n == 0 || cand_n == 0 {
        return 1.0;
    }
    let (n1, n2) = (base_n as f64, cand_n as f64);
    let (p1, p2) = (base_errors as f64 / n1, cand_errors as f64 / n2);
    let pooled = (base_errors + cand_errors) as f64 / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 || !se.is_finite() {
        return 1.0;
    }
    let z = (p2 - p1) / se;
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_matches_known_values() {
        for (x, want) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_1),
            (2.0, 0.004_677_734_981_047_266),
            (-1.0, 1.842_700_792_949_715),
        ] {
            assert!((erfc(x) - want).abs() < 2e-7 * want.max(1e-3), "erfc({x})");
        }
    }

    #[test]
    fn p_values_of_the_two_proportion_test() {
        // scipy: 5% vs 1% errors on 1000 requests each: z = 5.2, p ≈ 1e-7.
        assert!(error_rate_p_value(10, 1000, 50, 1000) < 1e-6);
        // Equal rates: no evidence (z = 0, p = 0.5).
        assert!((error_rate_p_value(10, 1000, 10, 1000) - 0.5).abs() < 1e-6);
        // A better candidate: p near 1.
        assert!(error_rate_p_value(50, 1000, 10, 1000) > 0.999);
        // Small samples: 1 error in 20 vs none in 20 is not significant.
        assert!(error_rate_p_value(0, 20, 1, 20) > 0.1);
        assert_eq!(error_rate_p_value(0, 0, 5, 10), 1.0);
        assert_eq!(error_rate_p_value(0, 100, 0, 100), 1.0);
        // z = 1.6449 gives p = 0.05 (a textbook value): 2x2 table chosen for that z.
        let p = error_rate_p_value(100, 2000, 130, 2000);
        let (p1, p2, pool) = (0.05, 0.065, 230.0 / 4000.0);
        let z: f64 = (p2 - p1) / (pool * (1.0 - pool) * (2.0 / 2000.0f64)).sqrt();
        assert!((p - 0.5 * erfc(z / std::f64::consts::SQRT_2)).abs() < 1e-15);
        assert!((0.01..0.05).contains(&p), "{p}");
    }
}
