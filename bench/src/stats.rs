//! HDR histograms of microseconds, and moving them between processes.

use hdrhistogram::Histogram;

/// Highest latency a histogram tracks: 10 minutes. Larger values are clamped.
const MAX_US: u64 = 600_000_000;

/// A histogram of microseconds from 1 µs to 10 min, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts (low ≥ 1, high ≥ 2·low, sigfig ≤ 5).
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid constant histogram bounds")
}

/// Records `value` µs, clamped into the tracked range.
pub fn record(hist: &mut Histogram<u64>, value: u64) {
    let _ = hist.record(value.clamp(1, MAX_US));
}

/// The histogram as (value, count) pairs, for sending as JSON.
pub fn to_pairs(hist: &Histogram<u64>) -> Vec<(u64, u64)> {
    hist.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds pairs made by [`to_pairs`] into `hist`.
pub fn add_pairs(hist: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        let _ = hist.record_n(value.clamp(1, MAX_US), count);
    }
}

/// The share (0–1) of recorded values of at least `us` (to the histogram's
/// resolution); 0 for an empty histogram.
pub fn share_at_least(hist: &Histogram<u64>, us: u64) -> f64 {
    if hist.is_empty() {
        return 0.0;
    }
    hist.count_between(us, MAX_US) as f64 / hist.len() as f64
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

pub fn summarize(hist: &Histogram<u64>) -> Summary {
    if hist.is_empty() {
        return Summary::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Summary {
        count: hist.len(),
        p50_ms: ms(hist.value_at_quantile(0.50)),
        p90_ms: ms(hist.value_at_quantile(0.90)),
        p99_ms: ms(hist.value_at_quantile(0.99)),
        p999_ms: ms(hist.value_at_quantile(0.999)),
        max_ms: ms(hist.max()),
        mean_ms: hist.mean() / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let mut a = new_histogram();
        for v in 1..=10_000u64 {
            record(&mut a, v);
        }
        let mut b = new_histogram();
        add_pairs(&mut b, &to_pairs(&a));
        assert_eq!(a.len(), b.len());
        let (pa, pb) = (a.value_at_quantile(0.99), b.value_at_quantile(0.99));
        assert!(pa.abs_diff(pb) <= pa / 100, "{pa} vs {pb}");
        assert_eq!(summarize(&new_histogram()).count, 0);
    }

    #[test]
    fn share_at_least_counts_the_tail() {
        let mut h = new_histogram();
        assert_eq!(share_at_least(&h, 40_000), 0.0);
        for v in [1_000, 2_000, 39_000, 40_000, 45_000, 900_000_000] {
            record(&mut h, v);
        }
        assert!((share_at_least(&h, 40_000) - 0.5).abs() < 1e-9);
    }
}
