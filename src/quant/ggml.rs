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

#[cfg(test)]
mod tests {
    use super::*;

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
