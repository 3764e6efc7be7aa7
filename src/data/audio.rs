//! Audio input: WAV files (integer PCM of 8/16/24/32 bits, 32/64-bit float, any number of
//! channels, plain or `WAVE_FORMAT_EXTENSIBLE`), mixed down to mono and resampled to the rate a
//! model was trained at (Whisper: 16 kHz).

use anyhow::{Context, Result, bail};
use std::path::Path;

/// Mono samples in [-1, 1] at `sample_rate` Hz.
#[derive(Debug, Clone)]
pub struct Audio {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

impl Audio {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate as f64
    }

    /// The same audio at `rate` Hz (unchanged if it already is).
    pub fn resampled(self, rate: u32) -> Self {
        if rate == self.sample_rate {
            return self;
        }
        Self { samples: resample(&self.samples, self.sample_rate, rate), sample_rate: rate }
    }
}

/// Read a WAV file; the error names the file and what is wrong with it.
pub fn read_wav(path: &Path) -> Result<Audio> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_wav(&bytes).with_context(|| format!("{}: not a readable WAV file", path.display()))
}

const PCM: u16 = 1;
const FLOAT: u16 = 3;
const EXTENSIBLE: u16 = 0xFFFE;
/// Sample rates a recording can plausibly have; outside them resampling would cost without bound
/// (a 1 Hz file upsampled to 16 kHz, or a prime rate in the gigahertz needing a filter per phase).
const MIN_RATE: u32 = 1_000;
const MAX_RATE: u32 = 768_000;
/// More than any recording format uses (22.2 surround has 24).
const MAX_CHANNELS: u16 = 256;

pub fn parse_wav(bytes: &[u8]) -> Result<Audio> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        bail!("no RIFF/WAVE header");
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let mut format = None;
    let mut data = None;
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32_at(at + 4) as usize;
        let body = at + 8;
        // A streamed file may leave the data size as 0 or too large: read to the end.
        let end = body.saturating_add(size).min(bytes.len());
        match id {
            b"fmt " => {
                if end - body < 16 {
                    bail!("'fmt ' chunk of {size} bytes is too short");
                }
                let mut tag = u16_at(body);
                if tag == EXTENSIBLE && end - body >= 26 {
                    tag = u16_at(body + 24);
                }
                format = Some((tag, u16_at(body + 2), u32_at(body + 4), u16_at(body + 14)));
            }
            b"data" => data = Some(&bytes[body..if size == 0 { bytes.len() } else { end }]),
            _ => {}
        }
        at = body + size + (size & 1);
    }
    let (tag, channels, rate, bits) = format.context("no 'fmt ' chunk")?;
    let data = data.context("no 'data' chunk")?;
    if !(1..=MAX_CHANNELS).contains(&channels) || !(MIN_RATE..=MAX_RATE).contains(&rate) {
        bail!(
            "{channels} channels at {rate} Hz: expected 1 to {MAX_CHANNELS} channels at {MIN_RATE} to {MAX_RATE} Hz \
             (a damaged header?)"
        );
    }
    let decode: fn(&[u8]) -> f32 = match (tag, bits) {
        (PCM, 8) => |b| (b[0] as f32 - 128.0) / 128.0,
        (PCM, 16) => |b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0,
        (PCM, 24) => |b| (i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8) as f32 / 8_388_608.0,
        (PCM, 32) => |b| (i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64 / 2_147_483_648.0) as f32,
        (FLOAT, 32) => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        (FLOAT, 64) => |b| f64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as f32,
        _ => bail!("format {tag} with {bits} bits per sample is not supported (PCM 8/16/24/32, float 32/64)"),
    };
    let width = bits as usize / 8;
    let frame = width * channels as usize;
    let frames = data.len() / frame;
    if frames == 0 {
        bail!("no audio: the data chunk ({} bytes) holds no complete frame of {channels} x {bits} bits", data.len());
    }
    let samples = (0..frames)
        .map(|f| {
            let row = &data[f * frame..(f + 1) * frame];
            row.chunks_exact(width).map(decode).sum::<f32>() / channels as f32
        })
        .collect();
    Ok(Audio { samples, sample_rate: rate })
}

/// Write 16-bit mono PCM (for tests and synthetic data sets).
pub fn write_wav_pcm16(path: &Path, audio: &Audio) -> Result<()> {
    let n = audio.samples.len() as u32;
    let mut out = Vec::with_capacity(44 + 2 * n as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + 2 * n).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&PCM.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&audio.sample_rate.to_le_bytes());
    out.extend_from_slice(&(audio.sample_rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(2 * n).to_le_bytes());
    for s in &audio.samples {
        out.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes());
    }
    crate::io::atomic::write_atomic(path, &out)
}

/// Band-limited resampling: each output sample is a Hann-windowed sinc interpolation of the
/// input (16 zero crossings each side), with the cutoff at the lower of the two Nyquist rates so
/// downsampling does not alias. For a rational ratio `to/from = p/q` the output positions cycle
/// through `p` fractional phases, so the filter taps are computed once per phase.
pub fn resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    const ZEROS: f64 = 16.0;
    let ratio = to as f64 / from as f64;
    let cutoff = ratio.min(1.0);
    let half_width = ZEROS / cutoff;
    let n_out = (x.len() as f64 * ratio).round() as usize;
    let g = gcd(from as u64, to as u64);
    let (p, q) = ((to as u64 / g) as usize, (from as u64 / g) as usize);
    let reach = half_width.ceil() as isize;
    // taps[phase][k]: weight of input (floor(t) + k - reach) for output j with j % p == phase.
    let tap = |d: f64| -> f64 {
        if d.abs() > half_width {
            return 0.0;
        }
        let arg = d * cutoff;
        let sinc =
            if arg.abs() < 1e-12 { 1.0 } else { (std::f64::consts::PI * arg).sin() / (std::f64::consts::PI * arg) };
        sinc * (0.5 + 0.5 * (std::f64::consts::PI * d / half_width).cos()) * cutoff
    };
    let width = (2 * reach + 1) as usize;
    let phases: Vec<Vec<f64>> = (0..p.min(n_out.max(1)))
        .map(|phase| {
            let t = (phase * q) as f64 / p as f64;
            let base = t.floor();
            (0..width).map(|k| tap(base + k as f64 - reach as f64 - t)).collect()
        })
        .collect();
    (0..n_out)
        .map(|j| {
            let (cycle, phase) = (j / p, j % p);
            let start = (cycle * q + (phase * q) / p) as isize - reach;
            let mut acc = 0.0;
            for (k, w) in phases[phase].iter().enumerate() {
                let i = start + k as isize;
                if i >= 0 && (i as usize) < x.len() {
                    acc += x[i as usize] as f64 * w;
                }
            }
            acc as f32
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, seconds: f64) -> Vec<f32> {
        (0..(rate as f64 * seconds) as usize)
            .map(|i| (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin() as f32 * 0.5)
            .collect()
    }

    #[test]
    fn wav_round_trip_and_stereo_mixdown() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audio { samples: tone(440.0, 16000, 0.1), sample_rate: 16000 };
        let p = dir.path().join("a.wav");
        write_wav_pcm16(&p, &a).unwrap();
        let b = read_wav(&p).unwrap();
        assert_eq!(b.sample_rate, 16000);
        assert!(a.samples.iter().zip(&b.samples).all(|(x, y)| (x - y).abs() < 1e-4));

        // 32-bit float stereo, channels (0.5, -0.25): mono 0.125.
        let mut bytes = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        bytes.extend_from_slice(&16u32.to_le_bytes());
        for v in [3u16, 2] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(&8000u32.to_le_bytes());
        bytes.extend_from_slice(&64000u32.to_le_bytes());
        bytes.extend_from_slice(&8u16.to_le_bytes());
        bytes.extend_from_slice(&32u16.to_le_bytes());
        bytes.extend_from_slice(b"data");
        bytes.extend_from_slice(&16u32.to_le_bytes());
        for v in [0.5f32, -0.25, 0.5, -0.25] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let s = parse_wav(&bytes).unwrap();
        assert_eq!((s.sample_rate, s.samples.clone()), (8000, vec![0.125, 0.125]));

        let bad = dir.path().join("bad.wav");
        std::fs::write(&bad, b"RIFF....WAVEjunk").unwrap();
        let e = format!("{:#}", read_wav(&bad).unwrap_err());
        assert!(e.contains("bad.wav") && e.contains("'fmt '"), "{e}");

        // A header claiming a rate no recording has (here a prime near 4 GHz) is refused before
        // resampling would build a filter per phase.
        bytes[24..28].copy_from_slice(&4_294_967_291u32.to_le_bytes());
        let e = format!("{:#}", parse_wav(&bytes).unwrap_err());
        assert!(e.contains("4294967291 Hz") && e.contains("1000 to 768000"), "{e}");
        // 65,535 channels: refused, not read as an empty clip.
        bytes[24..28].copy_from_slice(&8000u32.to_le_bytes());
        bytes[22..24].copy_from_slice(&u16::MAX.to_le_bytes());
        let e = format!("{:#}", parse_wav(&bytes).unwrap_err());
        assert!(e.contains("65535 channels"), "{e}");
        bytes[22..24].copy_from_slice(&200u16.to_le_bytes());
        let e = format!("{:#}", parse_wav(&bytes).unwrap_err());
        assert!(e.contains("no audio"), "{e}");
    }

    /// A 1 kHz tone survives 44.1 kHz → 16 kHz; a 10 kHz tone (above the new Nyquist) is removed.
    #[test]
    fn resampling_keeps_the_band_and_removes_what_would_alias() {
        let rms = |x: &[f32]| (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        let kept = resample(&tone(1000.0, 44100, 0.5), 44100, 16000);
        assert_eq!(kept.len(), 8000);
        let want = tone(1000.0, 16000, 0.5);
        let mid = 1000..7000;
        let err: f32 = kept[mid.clone()].iter().zip(&want[mid.clone()]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(err < 0.01, "1 kHz tone error {err}");
        let removed = resample(&tone(10000.0, 44100, 0.5), 44100, 16000);
        assert!(rms(&removed[mid]) < 0.01, "10 kHz tone leaked: rms {}", rms(&removed));
    }
}
