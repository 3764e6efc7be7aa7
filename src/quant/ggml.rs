//! A frozen weight kept in llama.cpp's block format (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, ...) exactly
//! as a GGUF file stores it: LoRA trains over the quantized base without ever holding it in
//! float (the QLoRA idea with llama.cpp's quantization instead of NF4).

use crate::io::gguf::{GgmlType, dequantize};
use rayon::prelude::*;

#[derive(Debug, Clone)]
pub struct GgmlWeight {
    pub ggml_type: GgmlType,
    /// PyTorch layout `[out, in]`; blocks run along rows.
    pub shape: [usize; 2],
    pub data: Vec<u8>,
}

impl GgmlWeight {
    /// Take a tensor's stored blocks, reordering whole rows when `row_order[i]` (the stored row
    /// that becomes row `i`) is given — rows hold whole blocks, so a row permutation (llama.cpp's
    /// Q/K interleaving) can be undone without dequantizing.
    pub fn new(ggml_type: GgmlType, shape: [usize; 2], raw: &[u8], row_order: Option<&[usize]>) -> Self {
        let row_bytes = raw.len() / shape[0];
        let data = match row_order {
            None => raw.to_vec(),
            Some(order) => order.iter().flat_map(|&r| &raw[r * row_bytes..(r + 1) * row_bytes]).copied().collect(),
        };
        Self { ggml_type, shape, data }
    }

    /// Runs on every forward and backward pass, so rows are decoded across the thread pool.
    pub fn dequantize(&self) -> Vec<f32> {
        const ROWS_PER_TASK: usize = 16;
        let [rows, cols] = self.shape;
        let mut out = vec![0f32; rows * cols];
        if out.is_empty() {
            return out;
        }
        let row_bytes = self.data.len() / rows;
        out.par_chunks_mut(cols * ROWS_PER_TASK)
            .zip(self.data.par_chunks(row_bytes * ROWS_PER_TASK))
            .for_each(|(dst, src)| dequantize(self.ggml_type, src, dst));
        out
    }

    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// Encode `data` (rows of `row` values) as ggml type `ty`, as llama.cpp's reference quantizers
/// do (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`: one f16 scale per block of 32, values
/// rounded half away from zero). F32, F16, Q8_0 and Q4_0; rows must hold whole blocks.
pub fn encode(ty: GgmlType, data: &[f32], row: usize) -> anyhow::Result<Vec<u8>> {
    let (per_block, _) = ty.block();
    anyhow::ensure!(
        row > 0 && row.is_multiple_of(per_block),
        "rows of {row} values do not hold whole {} blocks",
        ty.name()
    );
    Ok(match ty {
        GgmlType::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlType::F16 => data.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
        GgmlType::Q8_0 => data
            .chunks(32)
            .flat_map(|b| {
                let amax = b.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let mut out = half::f16::from_f32(d).to_le_bytes().to_vec();
                out.extend(b.iter().map(|x| (x * id).round() as i8 as u8));
                out
            })
            .collect(),
        GgmlType::Q4_0 => data
            .chunks(32)
            .flat_map(|b| {
                // The value of largest magnitude, with its sign, maps to -8.
                let max = b.iter().fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q = |x: f32| ((x * id + 8.5) as i8).min(15) as u8;
                let mut out = half::f16::from_f32(d).to_le_bytes().to_vec();
                out.extend((0..16).map(|j| q(b[j]) | (q(b[16 + j]) << 4)));
                out
            })
            .collect(),
        other => anyhow::bail!("writing {} is not supported (F32, F16, Q8_0, Q4_0)", other.name()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encoding then decoding stays within half a quantization step of every value (Q8_0: amax /
    /// 254; Q4_0: |max| / 8, as +8 is clamped to 7), F16 within its rounding, F32 exactly.
    #[test]
    fn encode_then_decode_is_within_half_a_step() {
        let data: Vec<f32> = (0..128).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        for (ty, tol) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 4e-3),
            (GgmlType::Q8_0, 50.0 / 7.0 / 254.0 + 1e-4),
            (GgmlType::Q4_0, 50.0 / 7.0 / 8.0 + 1e-4),
        ] {
            let bytes = encode(ty, &data, 64).unwrap();
            let mut back = vec![0f32; data.len()];
            dequantize(ty, &bytes, &mut back);
            let err = data.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err <= tol, "{}: error {err} > {tol}", ty.name());
        }
        assert!(encode(GgmlType::Q8_0, &data, 48).is_err(), "rows must hold whole blocks");
    }

    /// Decoding rows in parallel tasks gives what one pass over all the blocks gives (37 rows:
    /// two full tasks and a partial one).
    #[test]
    fn parallel_dequantize_equals_one_pass() {
        let (rows, cols) = (37, 64);
        let (per_block, block_bytes) = GgmlType::Q8_0.block();
        let mut raw = vec![0u8; rows * cols / per_block * block_bytes];
        for (i, block) in raw.chunks_mut(block_bytes).enumerate() {
            block[..2].copy_from_slice(&half::f16::from_f32(0.01 * (i + 1) as f32).to_le_bytes());
            for (j, q) in block[2..].iter_mut().enumerate() {
                *q = (i * 31 + j * 7) as u8;
            }
        }
        let mut expected = vec![0f32; rows * cols];
        dequantize(GgmlType::Q8_0, &raw, &mut expected);
        let w = GgmlWeight::new(GgmlType::Q8_0, [rows, cols], &raw, None);
        assert_eq!(w.dequantize(), expected);
    }
}
