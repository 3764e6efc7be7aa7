//! The AdamW update of one CPU parameter as one fused, vectorized pass (the optimizer and its
//! state are `training::optimizer`; GPU parameters take its tensor ops instead).

use burn::prelude::*;

/// The whole update of one parameter on the CPU in one pass over `p`, `g`, `m` and `v` (moments
/// and parameter updated in place where their buffers are not shared). As tensor ops it was 14
/// passes, each allocating a full-size result; for full fine-tuning of MiniLM (22.6M parameters)
/// that was a tenth of the step. Same arithmetic, element by element, as the tensor ops of
/// `training::optimizer::AdamW::update` (its test checks both against torch.optim.AdamW's formula).
pub fn update_on_host(
    p: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    k: &AdamWScalars,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    use burn::backend::Flex;
    use burn_flex::FlexTensor;
    use rayon::prelude::*;
    let host = |t: Tensor<1>| super::device::host_tensor(t).to_contiguous();
    let (mut p, g, mut m, mut v) = (host(p), host(g), host(m), host(v));
    const CHUNK: usize = 1 << 14;
    let g_values: &[f32] = g.storage();
    p.storage_mut::<f32>()
        .par_chunks_mut(CHUNK)
        .zip(m.storage_mut::<f32>().par_chunks_mut(CHUNK))
        .zip(v.storage_mut::<f32>().par_chunks_mut(CHUNK))
        .zip(g_values.par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| adamw_chunk(p, m, v, g, k));
    let back = |t: FlexTensor| Tensor::<1>::from_primitive::<Flex>(t);
    (back(p), back(m), back(v))
}

/// The scalars of an update as the f32 values the tensor ops would use.
pub struct AdamWScalars {
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub keep: f32,
    pub decays: bool,
    pub sqrt_bias2: f32,
    pub epsilon: f32,
    pub step_size: f32,
}

super::simd::with_avx512!(adamw_chunk(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], k: &AdamWScalars) = adamw_chunk_body);

#[inline(always)]
fn adamw_chunk_body(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], k: &AdamWScalars) {
    for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        *m = *m * k.beta1 + g * k.one_minus_beta1;
        *v = *v * k.beta2 + g * g * k.one_minus_beta2;
        let decayed = if k.decays { *p * k.keep } else { *p };
        let denom = v.sqrt() / k.sqrt_bias2 + k.epsilon;
        *p = decayed - *m / denom * k.step_size;
    }
}
