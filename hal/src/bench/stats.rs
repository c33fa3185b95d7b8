//! Mean, spread and the refusal rule shared by the benchmarks.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Summary of a set of samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The samples.
    pub samples: Vec<f64>,
    /// Their mean.
    pub mean: f64,
    /// Sample standard deviation.
    pub stddev: f64,
    /// Coefficient of variation, percent (stddev / mean × 100).
    pub cv_pct: f64,
}

impl Spread {
    /// Summarises `samples` (empty gives zeros).
    pub fn of(samples: &[f64]) -> Self {
        let n = samples.len() as f64;
        let mean = if samples.is_empty() {
            0.0
        } else {
            samples.iter().sum::<f64>() / n
        };
        let var = if samples.len() < 2 {
            0.0
        } else {
            samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
        };
        let stddev = var.sqrt();
        let cv_pct = if mean > 0.0 {
            stddev / mean * 100.0
        } else {
            0.0
        };
        Spread {
            samples: samples.to_vec(),
            mean,
            stddev,
            cv_pct,
        }
    }

    /// Fails with [`Error::Unstable`] when the coefficient of variation exceeds `bound_pct`.
    pub fn require_cv(self, bench: &'static str, bound_pct: f64) -> Result<Self> {
        if self.cv_pct > bound_pct {
            return Err(Error::Unstable {
                bench,
                spread: self.cv_pct,
                bound: bound_pct,
                samples: self.samples,
            });
        }
        Ok(self)
    }
}

/// Relative range of `samples` in percent: (max − min) / mean × 100.
pub fn range_pct(samples: &[f64]) -> f64 {
    let s = Spread::of(samples);
    let max = samples.iter().copied().fold(f64::MIN, f64::max);
    let min = samples.iter().copied().fold(f64::MAX, f64::min);
    if s.mean > 0.0 && samples.len() > 1 {
        (max - min) / s.mean * 100.0
    } else {
        0.0
    }
}

/// The median of `samples` (0 for none).
pub fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_disagreeing_runs() {
        assert!(Spread::of(&[100.0, 101.0, 99.0])
            .require_cv("t", 5.0)
            .is_ok());
        let err = Spread::of(&[100.0, 150.0, 60.0]).require_cv("t", 5.0);
        assert!(matches!(err, Err(Error::Unstable { bench: "t", .. })));
        assert!((range_pct(&[90.0, 110.0]) - 20.0).abs() < 1e-9);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
