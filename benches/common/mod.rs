//! What the criterion benches share.

use std::time::Duration;

use criterion::Criterion;

/// Short measurements, so that a whole bench file runs in about a minute
/// on the project's 2-core machines: medians are what the README quotes.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}
