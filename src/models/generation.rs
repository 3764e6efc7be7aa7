//! Text generation with a KV cache: greedy decoding, or sampling with temperature and nucleus
//! (top-p) truncation, reproducible from a seed.

use super::llama::{KvCache, LlamaForCausalLM};
use crate::ops::rng::SplitMix64;
use burn::prelude::*;

#[derive(Debug, Clone)]
pub struct Sampling {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 keeps all).
    pub top_p: f64,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Generation stops after any of these (they are included in the output).
    pub stop_ids: Vec<u32>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, seed: 0, max_new_tokens: 128, stop_ids: Vec::new() }
    }
}

/// Pick the next token from one row of logits.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut SplitMix64) -> u32 {
    let argmax = || {
        logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
    };
    if s.temperature <= 0.0 {
        return argmax() as u32;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> =
        logits.iter().enumerate().map(|(i, &v)| (i, ((v as f64 - max) / s.temperature).exp())).collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (n, p) in probs.iter().enumerate() {
        kept += p.1 / total;
        if kept >= s.top_p {
            cut = n + 1;
            break;
        }
    }
    probs.truncate(cut);
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * mass;
    for (i, p) in &probs {
        if u < *p {
            return *i as u32;
        }
        u -= p;
    }
    probs.last().map_or(argmax(), |p| p.0) as u32
}

/// Continue `prompt` by up to `max_new_tokens` tokens (fewer where a learned position table
/// ends, `LlamaForCausalLM::room_after`), calling `on_token` with each new token as
/// it is chosen (for streaming). Returns the new tokens.
pub fn generate(
    model: &LlamaForCausalLM,
    prompt: &[u32],
    s: &Sampling,
    device: &Device,
    mut on_token: impl FnMut(u32),
) -> Vec<u32> {
    let mut cache = KvCache::default();
    let mut rng = SplitMix64::new(s.seed);
    let mut out = Vec::new();
    let mut input: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let budget = model.room_after(prompt.len(), s.max_new_tokens);
    while out.len() < budget {
        let ids = Tensor::<2, Int>::from_data(TensorData::new(input.clone(), [1, input.len()]), device);
        let hidden = model.hidden(ids, Some(&mut cache));
        let [_, l, h] = hidden.dims();
        let last = hidden.slice(s![.., l - 1..l, ..]).reshape([1, h]);
        let logits: Vec<f32> = model.logits(last).into_data().convert::<f32>().try_into_vec().expect("f32 logits");
        let next = sample(&logits, s, &mut rng);
        out.push(next);
        on_token(next);
        if s.stop_ids.contains(&next) {
            break;
        }
        input = vec![next as i64];
    }
    out
}

/// The logits of the token that would follow `prompt` (one pass, no sampling): what
/// `finetune generate --json --logits` prints for comparing with other runtimes.
pub fn next_token_logits(model: &LlamaForCausalLM, prompt: &[u32], device: &Device) -> Vec<f32> {
    let input: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(input, [1, prompt.len()]), device);
    let hidden = model.hidden(ids, None);
    let [_, l, h] = hidden.dims();
    model
        .logits(hidden.slice(s![.., l - 1..l, ..]).reshape([1, h]))
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("f32 logits")
}

/// Continue several prompts at once: they are left-padded with `pad_id` to one length (padding
/// masked, positions per row, as transformers' batched `generate`), each row samples with its
/// own generator (seeded `seed + row`) and stops at a stop id or `max_new_tokens`. Greedy
/// results equal one prompt at a time. A model with a soft prompt generates one prompt at a time.
pub fn generate_batch(
    model: &LlamaForCausalLM,
    prompts: &[Vec<u32>],
    s: &Sampling,
    pad_id: u32,
    device: &Device,
) -> Vec<Vec<u32>> {
    if model.prompt.is_some() || prompts.len() <= 1 {
        return prompts
            .iter()
            .enumerate()
            .map(|(r, p)| generate(model, p, &Sampling { seed: s.seed + r as u64, ..s.clone() }, device, |_| {}))
            .collect();
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pad: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let b = prompts.len();
    let mut input: Vec<i64> = prompts
        .iter()
        .zip(&pad)
        .flat_map(|(p, &n)| std::iter::repeat_n(pad_id, n).chain(p.iter().copied()))
        .map(|t| t as i64)
        .collect();
    let mut width = longest;
    let mut rngs: Vec<SplitMix64> = (0..b).map(|r| SplitMix64::new(s.seed + r as u64)).collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut done = vec![false; b];
    let mut cache = KvCache::default();
    for _ in 0..model.room_after(longest, s.max_new_tokens) {
        let ids = Tensor::<2, Int>::from_data(TensorData::new(input.clone(), [b, width]), device);
        let hidden = model.hidden_padded(ids, Some(&mut cache), Some(&pad));
        let [_, l, h] = hidden.dims();
        let logits: Vec<f32> = model
            .logits(hidden.slice(s![.., l - 1..l, ..]).reshape([b, h]))
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .expect("f32 logits");
        let vocab = logits.len() / b;
        let mut next = Vec::with_capacity(b);
        for r in 0..b {
            let t = if done[r] { pad_id } else { sample(&logits[r * vocab..(r + 1) * vocab], s, &mut rngs[r]) };
            if !done[r] {
                out[r].push(t);
                done[r] = s.stop_ids.contains(&t);
            }
            next.push(t as i64);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        input = next;
        width = 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax_and_top_p_truncates() {
        let logits = [0.0f32, 3.0, 1.0, 2.9];
        let mut rng = SplitMix64::new(1);
        assert_eq!(sample(&logits, &Sampling::default(), &mut rng), 1);
        // top_p tiny: only the most likely token survives, whatever the temperature.
        let s = Sampling { temperature: 5.0, top_p: 1e-6, ..Default::default() };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &s, &mut rng), 1);
        }
        // High temperature, no truncation: every token shows up.
        let s = Sampling { temperature: 100.0, top_p: 1.0, ..Default::default() };
        let mut seen = [false; 4];
        for _ in 0..200 {
            seen[sample(&logits, &s, &mut rng) as usize] = true;
        }
        assert!(seen.iter().all(|&b| b), "{seen:?}");
    }
}
