//! Summaries of samples: min, p50, p99, max and mean, in milliseconds; and the median of a few
//! repeated measurements.
//!
//! Percentiles are nearest-rank: p is the smallest sample with at least p% of the samples at or
//! below it (for 200 samples, p50 is the 100th smallest and p99 the 198th). No interpolation, so
//! every figure is a time that was actually measured.

use serde::{Deserialize, Serialize};

/// A summary of samples in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// A duration in milliseconds.
pub fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `to - from` in milliseconds, negative when `to` came first.
pub fn signed_ms(from: std::time::Instant, to: std::time::Instant) -> f64 {
    if to >= from {
        millis(to - from)
    } else {
        -millis(from - to)
    }
}

/// The nearest-rank `p`-th percentile of `sorted` (ascending, not empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    // The rank is a small positive integer; the float round trip is exact for any sample count.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

impl Summary {
    /// `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        #[allow(clippy::cast_precision_loss)]
        let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
        Some(Self {
            n: sorted.len(),
            min: sorted[0],
            p50: percentile(&sorted, 50.0),
            p99: percentile(&sorted, 99.0),
            max: sorted[sorted.len() - 1],
            mean,
        })
    }
}

/// The median of a few figures (a measurement's rounds): the mean of the two middle values for
/// an even count, unlike the nearest-rank p50 of a summary. NaN for none.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let samples: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        let s = Summary::of(&samples).unwrap_or_else(|| unreachable!());
        assert_eq!((s.n, s.min, s.max), (200, 1.0, 200.0));
        assert_eq!(s.p50, 100.0);
        assert_eq!(s.p99, 198.0);
        assert!((s.mean - 100.5).abs() < 1e-9);
        let one = Summary::of(&[7.0]).unwrap_or_else(|| unreachable!());
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 99.0), 5.0);
    }

    #[test]
    fn medians() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-12);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-12);
        assert!(median(&[]).is_nan());
    }
}
