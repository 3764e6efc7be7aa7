//! The training loop and what it needs: optimizer, schedules, metrics, checkpoints, plots.

pub mod checkpoint;
pub mod config;
pub mod loss;
pub mod metrics;
pub mod optimizer;
pub mod plot;
pub mod schedule;
pub mod trainer;
