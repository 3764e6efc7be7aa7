//! The log-Mel spectrogram exactly as Whisper computes it (and `transformers`'
//! `WhisperFeatureExtractor`): 16 kHz audio padded or cut to 30 s, a 400-sample (25 ms) periodic
//! Hann window every 160 samples (10 ms) with the signal reflected at both ends, the power
//! spectrum through Slaney-normalised Mel filters (librosa's), `log10` floored at 1e-10, values
//! more than 8 below the maximum raised to it, and `(x + 4) / 4`. 3,000 frames per window.

use rustfft::FftPlanner;
use rustfft::num_complex::Complex;

pub const SAMPLE_RATE: u32 = 16_000;
pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
/// 30 s of audio: what one Whisper window sees.
pub const CHUNK_SAMPLES: usize = 30 * SAMPLE_RATE as usize;
pub const N_FRAMES: usize = CHUNK_SAMPLES / HOP;

/// librosa's Slaney Mel scale: linear below 1 kHz, logarithmic above.
fn hz_to_mel(f: f64) -> f64 {
    let logstep = 27.0 / 6.4f64.ln();
    if f >= 1000.0 { 15.0 + (f / 1000.0).ln() * logstep } else { 3.0 * f / 200.0 }
}

fn mel_to_hz(m: f64) -> f64 {
    let logstep = 6.4f64.ln() / 27.0;
    if m >= 15.0 { 1000.0 * (logstep * (m - 15.0)).exp() } else { 200.0 * m / 3.0 }
}

/// Triangular Slaney-normalised filters `[n_mels][n_fft / 2 + 1]` from 0 Hz to 8 kHz.
pub fn mel_filters(n_mels: usize) -> Vec<Vec<f64>> {
    let bins = N_FFT / 2 + 1;
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(8000.0));
    let centers: Vec<f64> =
        (0..n_mels + 2).map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64)).collect();
    let nyquist = (SAMPLE_RATE / 2) as f64;
    let fft_freqs: Vec<f64> = (0..bins).map(|j| nyquist * j as f64 / (bins - 1) as f64).collect();
    (0..n_mels)
        .map(|m| {
            let (left, center, right) = (centers[m], centers[m + 1], centers[m + 2]);
            let enorm = 2.0 / (right - left);
            fft_freqs
                .iter()
                .map(|&f| {
                    let down = (f - left) / (center - left);
                    let up = (right - f) / (right - center);
                    down.min(up).max(0.0) * enorm
                })
                .collect()
        })
        .collect()
}

/// `[n_mels, N_FRAMES]` row-major features of the first 30 s of 16 kHz `samples` (padded with
/// silence when shorter).
pub fn log_mel_spectrogram(samples: &[f32], n_mels: usize) -> Vec<f32> {
    log_mel_frames(samples, n_mels, N_FRAMES)
}

/// The same features for a window of `frames` × 10 ms instead of 30 s (short clips for
/// classification: the encoder then sees `frames / 2` positions). The floor at max − 8 is taken
/// over this window.
pub fn log_mel_frames(samples: &[f32], n_mels: usize, frames: usize) -> Vec<f32> {
    // Each triangular filter is non-zero over a few bins only: keep (first bin, weights).
    let filters: Vec<(usize, Vec<f64>)> = mel_filters(n_mels)
        .into_iter()
        .map(|w| {
            let first = w.iter().position(|&v| v != 0.0).unwrap_or(0);
            let last = w.iter().rposition(|&v| v != 0.0).unwrap_or(0);
            (first, w[first..=last.max(first)].to_vec())
        })
        .collect();
    let mut x = vec![0f64; frames * HOP];
    for (d, s) in x.iter_mut().zip(samples) {
        *d = *s as f64;
    }
    // Centered frames: reflect N_FFT / 2 samples at each end (numpy's "reflect", edge excluded).
    let pad = N_FFT / 2;
    let n = x.len();
    let at = |i: isize| -> f64 {
        let i = if i < 0 { -i } else { i } as usize;
        if i < n { x[i] } else { x[2 * (n - 1) - i] }
    };
    let window: Vec<f64> =
        (0..N_FFT).map(|k| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * k as f64 / N_FFT as f64).cos()).collect();
    let fft = FftPlanner::<f64>::new().plan_fft_forward(N_FFT);
    let bins = N_FFT / 2 + 1;
    let mut mel = vec![0f64; n_mels * frames];
    let mut buf = vec![Complex::new(0.0, 0.0); N_FFT];
    let mut power = vec![0f64; bins];
    // frames + 1 centered frames; Whisper drops the last.
    for f in 0..frames {
        let start = (f * HOP) as isize - pad as isize;
        for (k, c) in buf.iter_mut().enumerate() {
            *c = Complex::new(at(start + k as isize) * window[k], 0.0);
        }
        fft.process(&mut buf);
        for (p, c) in power.iter_mut().zip(&buf) {
            *p = c.norm_sqr();
        }
        for (m, (first, weights)) in filters.iter().enumerate() {
            mel[m * frames + f] = weights.iter().zip(&power[*first..]).map(|(w, p)| w * p).sum();
        }
    }
    let log: Vec<f64> = mel.iter().map(|v| v.max(1e-10).log10()).collect();
    let max = log.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    log.iter().map(|v| ((v.max(max - 8.0) + 4.0) / 4.0) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaney_scale_round_trips_and_filters_cover_the_band() {
        for f in [0.0, 440.0, 1000.0, 3000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(f)) - f).abs() < 1e-9);
        }
        let fb = mel_filters(80);
        assert_eq!((fb.len(), fb[0].len()), (80, 201));
        assert!(fb.iter().all(|row| row.iter().any(|&w| w > 0.0)), "an empty filter");
    }

    /// A 1 kHz tone peaks in the Mel bin whose centre is nearest 1 kHz.
    #[test]
    fn tone_energy_lands_in_the_right_bin() {
        let tone: Vec<f32> =
            (0..16000).map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16000.0).sin()).collect();
        let spec = log_mel_spectrogram(&tone, 80);
        let frame = 50;
        let col: Vec<f32> = (0..80).map(|m| spec[m * N_FRAMES + frame]).collect();
        let peak = (0..80).max_by(|&a, &b| col[a].total_cmp(&col[b])).unwrap();
        let centre = |m: usize| mel_to_hz(hz_to_mel(8000.0) * (m + 1) as f64 / 81.0);
        let nearest =
            (0..80).min_by(|&a, &b| (centre(a) - 1000.0).abs().total_cmp(&(centre(b) - 1000.0).abs())).unwrap();
        assert!(peak.abs_diff(nearest) <= 1, "peak {peak}, nearest {nearest}");
    }
}
