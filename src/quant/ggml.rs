//! A frozen weight kept in llama.cpp's block format (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, ...) exactly
//! as a GGUF file stores it: LoRA trains over the quantized base without ever holding it in
//! float (the QLoRA idea with llama.cpp's quantization instead of NF4).

use crate::io::gguf::{GgmlType, dequantize};

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

    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.shape[0] * self.shape[1]];
        dequantize(self.ggml_type, &self.data, &mut out);
        out
    }

    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}
