//! Learning-rate schedules with linear warmup (the Hugging Face `get_*_schedule_with_warmup`).

use super::config::Schedule;

#[derive(Debug, Clone, Copy)]
pub struct LrSchedule {
    pub kind: Schedule,
    pub peak: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LrSchedule {
    /// Learning rate for optimizer step `step` (0-based: the first update uses `at(0)`).
    pub fn at(&self, step: usize) -> f64 {
        let warmup = self.warmup_steps;
        if step < warmup {
            return self.peak * step as f64 / warmup.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(warmup).max(1) as f64;
        let progress = ((step - warmup) as f64 / decay_steps).min(1.0);
        match self.kind {
            Schedule::Constant => self.peak,
            Schedule::Linear => self.peak * (1.0 - progress).max(0.0),
            Schedule::Cosine => self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = LrSchedule { kind: Schedule::Linear, peak: 1.0, warmup_steps: 10, total_steps: 110 };
        assert_eq!(s.at(0), 0.0);
        assert!((s.at(5) - 0.5).abs() < 1e-12);
        assert!((s.at(10) - 1.0).abs() < 1e-12);
        assert!((s.at(60) - 0.5).abs() < 1e-12);
        assert_eq!(s.at(110), 0.0);
        let c = LrSchedule { kind: Schedule::Cosine, ..s };
        assert!((c.at(60) - 0.5).abs() < 1e-12);
        assert!(c.at(35) > 0.8 && c.at(85) < 0.2);
        let k = LrSchedule { kind: Schedule::Constant, ..s };
        assert_eq!(k.at(100), 1.0);
    }
}
