//! Batches: seeded shuffling and dynamic padding to the longest sequence in the batch.

use super::tokenizer::Encoded;
use crate::ops::rng::SplitMix64;
use burn::prelude::*;

/// Token ids, segment ids and a 1/0 attention mask, all `[batch, seq]`.
#[derive(Debug, Clone)]
pub struct EncoderInput {
    pub input_ids: Tensor<2, Int>,
    pub token_type_ids: Tensor<2, Int>,
    pub attention_mask: Tensor<2>,
}

/// Indices `0..n` in the order used for `epoch` (Fisher-Yates with a generator seeded by both).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed ^ (epoch as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Split an index order into batches of `batch_size` (the last one may be smaller).
pub fn chunk(order: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect()
}

/// Batches of similar lengths from a shuffled `order`, as transformers' `group_by_length`
/// (`LengthGroupedSampler`) makes them: the order is cut into mega-batches of 50 batches, each
/// mega-batch is sorted by length (longest first) and cut into batches. Batches stay random in
/// content from epoch to epoch, but each pads far less; the batch count is unchanged.
pub fn length_grouped(order: &[usize], lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    const BATCHES_PER_MEGABATCH: usize = 50;
    let batch_size = batch_size.max(1);
    order
        .chunks(batch_size * BATCHES_PER_MEGABATCH)
        .flat_map(|mega| {
            let mut mega = mega.to_vec();
            mega.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            chunk(&mega, batch_size)
        })
        .collect()
}

/// Indices sorted by length (longest first), for inference where order does not matter:
/// batches of similar lengths waste less work on padding.
pub fn length_sorted(encoded: &[Encoded]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].ids.len()));
    order
}

/// Pad the selected sequences to the longest among them and build the model input.
pub fn collate(encoded: &[Encoded], indices: &[usize], pad_id: u32, device: &Device) -> EncoderInput {
    let b = indices.len();
    let l = indices.iter().map(|&i| encoded[i].ids.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![pad_id as i64; b * l];
    let mut types = vec![0i64; b * l];
    let mut mask = vec![0f32; b * l];
    for (row, &i) in indices.iter().enumerate() {
        let e = &encoded[i];
        for (j, (&id, &ty)) in e.ids.iter().zip(&e.type_ids).enumerate() {
            ids[row * l + j] = id as i64;
            types[row * l + j] = ty as i64;
            mask[row * l + j] = 1.0;
        }
    }
    EncoderInput {
        input_ids: Tensor::from_data(TensorData::new(ids, [b, l]), device),
        token_type_ids: Tensor::from_data(TensorData::new(types, [b, l]), device),
        attention_mask: Tensor::from_data(TensorData::new(mask, [b, l]), device),
    }
}

/// Labels of the selected rows as an int tensor.
pub fn label_tensor(labels: &[usize], indices: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = indices.iter().map(|&i| labels[i] as i64).collect();
    Tensor::from_data(TensorData::new(v, [indices.len()]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(100, 7, 0);
        assert_eq!(a, epoch_order(100, 7, 0));
        assert_ne!(a, epoch_order(100, 7, 1));
        assert_ne!(a, epoch_order(100, 8, 0));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn length_grouped_batches_cover_the_order_and_pad_less() {
        let n = 1000;
        let lengths: Vec<usize> = (0..n).map(|i| 5 + (i * 7919) % 60).collect();
        let order = epoch_order(n, 3, 0);
        let grouped = length_grouped(&order, &lengths, 8);
        let plain = chunk(&order, 8);
        assert_eq!(grouped.len(), plain.len());
        let mut seen: Vec<usize> = grouped.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
        // Padded tokens: every batch padded to its longest member.
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches.iter().map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap()).sum()
        };
        assert!(padded(&grouped) * 10 < padded(&plain) * 7, "{} vs {}", padded(&grouped), padded(&plain));
        // Each mega-batch (400 examples) holds the same examples as the shuffled order's slice.
        let mut first: Vec<usize> = grouped[..50].concat();
        let mut expected = order[..400].to_vec();
        first.sort_unstable();
        expected.sort_unstable();
        assert_eq!(first, expected);
    }

    #[test]
    fn collate_pads_to_longest_in_batch() {
        let enc = vec![
            Encoded { ids: vec![2, 5, 3], type_ids: vec![0; 3] },
            Encoded { ids: vec![2, 6, 7, 8, 3], type_ids: vec![0; 5] },
        ];
        let x = collate(&enc, &[0, 1], 0, &Device::flex());
        assert_eq!(x.input_ids.dims(), [2, 5]);
        let ids: Vec<i64> = x.input_ids.into_data().convert::<i64>().try_into_vec().unwrap();
        assert_eq!(ids, vec![2, 5, 3, 0, 0, 2, 6, 7, 8, 3]);
        let m: Vec<f32> = x.attention_mask.into_data().try_into_vec().unwrap();
        assert_eq!(m, vec![1., 1., 1., 0., 0., 1., 1., 1., 1., 1.]);
        assert_eq!(chunk(&[0, 1, 2, 3, 4], 2), vec![vec![0, 1], vec![2, 3], vec![4]]);
    }
}
