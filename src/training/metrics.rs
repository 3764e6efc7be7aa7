//! Classification and regression metrics and the JSON-lines metrics log.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Metrics of one evaluation pass: the loss, and accuracy and macro-F1 for classes, or Pearson and
/// Spearman correlations for values (regression).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct EvalMetrics {
    pub loss: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macro_f1: Option<f64>,
    /// Multi-label: F1 over every (example, label) decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_f1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pearson: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spearman: Option<f64>,
    /// Token classification: seqeval's micro-averaged entity precision, recall and F1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
    pub examples: usize,
}

impl EvalMetrics {
    /// Metrics of classes: accuracy and macro-F1 of (predicted, actual) pairs.
    pub fn of_classes(loss: f64, pairs: &[(usize, usize)], num_labels: usize) -> Self {
        let (predicted, actual): (Vec<usize>, Vec<usize>) = pairs.iter().copied().unzip();
        let (accuracy, macro_f1) = accuracy_and_macro_f1(&predicted, &actual, num_labels);
        Self { accuracy: Some(accuracy), macro_f1: Some(macro_f1), ..Self::empty(loss, pairs.len()) }
    }

    fn empty(loss: f64, examples: usize) -> Self {
        Self {
            loss,
            accuracy: None,
            macro_f1: None,
            micro_f1: None,
            pearson: None,
            spearman: None,
            precision: None,
            recall: None,
            f1: None,
            examples,
        }
    }

    /// Metrics of label sets (multi-label): exact-match accuracy (scikit-learn's subset
    /// accuracy), micro-F1 over every decision, macro-F1 over labels (a label never predicted
    /// nor present scores 0, as scikit-learn does).
    pub fn of_sets(loss: f64, pairs: &[(Vec<usize>, Vec<usize>)], num_labels: usize) -> Self {
        let exact = pairs.iter().filter(|(p, a)| p == a).count();
        let (mut tp, mut fp, mut fn_) = (vec![0usize; num_labels], vec![0usize; num_labels], vec![0usize; num_labels]);
        for (p, a) in pairs {
            for k in 0..num_labels {
                match (p.contains(&k), a.contains(&k)) {
                    (true, true) => tp[k] += 1,
                    (true, false) => fp[k] += 1,
                    (false, true) => fn_[k] += 1,
                    (false, false) => {}
                }
            }
        }
        let f1 = |tp: usize, fp: usize, fn_: usize| {
            let d = 2 * tp + fp + fn_;
            if d == 0 { 0.0 } else { 2.0 * tp as f64 / d as f64 }
        };
        let macro_f1 = (0..num_labels).map(|k| f1(tp[k], fp[k], fn_[k])).sum::<f64>() / num_labels.max(1) as f64;
        let sum = |v: &[usize]| v.iter().sum::<usize>();
        Self {
            accuracy: Some(exact as f64 / pairs.len().max(1) as f64),
            macro_f1: Some(macro_f1),
            micro_f1: Some(f1(sum(&tp), sum(&fp), sum(&fn_))),
            ..Self::empty(loss, pairs.len())
        }
    }

    /// Metrics of tagged words: word accuracy (seqeval's `accuracy_score`) and entity precision,
    /// recall and F1 (seqeval's micro average; 0 where nothing was predicted or present).
    pub fn of_tags(loss: f64, t: &crate::training::loss::TagScores, examples: usize) -> Self {
        let correct = t.words.iter().filter(|(p, a)| p == a).count();
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (precision, recall) =
            (ratio(t.correct_entities, t.predicted_entities), ratio(t.correct_entities, t.gold_entities));
        let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
        Self {
            accuracy: Some(ratio(correct, t.words.len())),
            precision: Some(precision),
            recall: Some(recall),
            f1: Some(f1),
            ..Self::empty(loss, examples)
        }
    }

    /// Metrics of values: Pearson and Spearman correlations of (predicted, actual) pairs.
    pub fn of_values(loss: f64, pairs: &[(f32, f32)]) -> Self {
        let (p, a): (Vec<f64>, Vec<f64>) = pairs.iter().map(|&(p, a)| (p as f64, a as f64)).unzip();
        Self { pearson: Some(pearson(&p, &a)), spearman: Some(spearman(&p, &a)), ..Self::empty(loss, pairs.len()) }
    }

    /// The value of `metric` (NaN when this evaluation has no such metric; the recipe's checks
    /// keep a run from selecting on one).
    pub fn get(&self, metric: crate::training::config::Metric) -> f64 {
        use crate::training::config::Metric;
        match metric {
            Metric::Accuracy => self.accuracy,
            Metric::MacroF1 => self.macro_f1,
            Metric::Pearson => self.pearson,
            Metric::Spearman => self.spearman,
            Metric::F1 => self.f1,
            Metric::MicroF1 => self.micro_f1,
            Metric::Loss => Some(self.loss),
        }
        .unwrap_or(f64::NAN)
    }

    /// The metrics besides the loss, for a log line: `accuracy 0.8312 macro-F1 0.8301` or
    /// `Pearson 0.8120 Spearman 0.8034`.
    pub fn scores(&self) -> String {
        let named = [
            ("accuracy", self.accuracy),
            ("macro-F1", self.macro_f1),
            ("micro-F1", self.micro_f1),
            ("Pearson", self.pearson),
            ("Spearman", self.spearman),
            ("entity precision", self.precision),
            ("recall", self.recall),
            ("F1", self.f1),
        ];
        named.iter().filter_map(|(n, v)| v.map(|v| format!("{n} {v:.4}"))).collect::<Vec<_>>().join(" ")
    }
}

/// The entities of a tag sequence as seqeval finds them (its default, conlleval-compatible
/// mode): (type, first word, last word). A chunk starts at `B-`, `S-`, or an `I-`/`E-` that does
/// not continue a chunk of its type, and ends before `B-`, `S-`, `O` or another type.
pub fn entities<'a>(tags: &[&'a str]) -> Vec<(&'a str, usize, usize)> {
    let split = |t: &'a str| -> (char, &'a str) {
        let kind = t.chars().next().unwrap_or('O');
        let rest = t.get(1..).unwrap_or("");
        let ty = rest.split_once('-').map_or(rest, |(_, ty)| ty);
        (kind, if ty.is_empty() { "_" } else { ty })
    };
    let mut out = Vec::new();
    let (mut prev_tag, mut prev_type, mut begin) = ('O', "", 0);
    for (i, t) in tags.iter().copied().chain(std::iter::once("O")).enumerate() {
        let (tag, ty) = split(t);
        let end = matches!(prev_tag, 'E' | 'S')
            || (matches!(prev_tag, 'B' | 'I') && matches!(tag, 'B' | 'S' | 'O'))
            || (prev_tag != 'O' && prev_tag != '.' && prev_type != ty);
        if end {
            out.push((prev_type, begin, i - 1));
        }
        let start = matches!(tag, 'B' | 'S')
            || (matches!(prev_tag, 'E' | 'S' | 'O') && matches!(tag, 'E' | 'I'))
            || (tag != 'O' && tag != '.' && prev_type != ty);
        if start {
            begin = i;
        }
        (prev_tag, prev_type) = (tag, ty);
    }
    out
}

/// Pearson's correlation coefficient (0 when either side is constant).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len());
    let n = x.len() as f64;
    if x.is_empty() {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 { 0.0 } else { sxy / (sxx * syy).sqrt() }
}

/// Spearman's rank correlation: Pearson's of the ranks, ties given their mean rank (as SciPy's
/// `spearmanr`).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = mean_rank;
        }
        i = j + 1;
    }
    out
}

/// Accuracy and macro-averaged F1 of `predicted` against `actual` over `num_labels` classes.
/// A class that is neither predicted nor present scores F1 = 0, as scikit-learn does with
/// `labels=range(num_labels)` (it contributes to the average).
pub fn accuracy_and_macro_f1(predicted: &[usize], actual: &[usize], num_labels: usize) -> (f64, f64) {
    assert_eq!(predicted.len(), actual.len());
    if actual.is_empty() {
        return (0.0, 0.0);
    }
    let correct = predicted.iter().zip(actual).filter(|(p, a)| p == a).count();
    let mut f1_sum = 0.0;
    for c in 0..num_labels {
        let tp = predicted.iter().zip(actual).filter(|&(&p, &a)| p == c && a == c).count() as f64;
        let fp = predicted.iter().zip(actual).filter(|&(&p, &a)| p == c && a != c).count() as f64;
        let fn_ = predicted.iter().zip(actual).filter(|&(&p, &a)| p != c && a == c).count() as f64;
        let denom = 2.0 * tp + fp + fn_;
        f1_sum += if denom > 0.0 { 2.0 * tp / denom } else { 0.0 };
    }
    (correct as f64 / actual.len() as f64, f1_sum / num_labels as f64)
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogRecord {
    /// A training step: mean loss over the logged interval.
    Train { step: usize, epoch: usize, loss: f64, lr: f64, grad_norm: f64, examples_per_s: f64 },
    /// An evaluation at the end of an epoch.
    Eval { step: usize, epoch: usize, split: String, metrics: EvalMetrics },
    /// A layer group became trainable.
    Unfreeze { step: usize, epoch: usize, group: String },
}

impl LogRecord {
    pub fn step(&self) -> usize {
        match self {
            Self::Train { step, .. } | Self::Eval { step, .. } | Self::Unfreeze { step, .. } => *step,
        }
    }
}

/// Appends records to `metrics.jsonl`, one JSON object per line.
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// Open the log; with `keep_up_to_step = Some(s)` (a resumed run) records after step `s`,
    /// written by the interrupted run after its last checkpoint, are dropped first.
    pub fn open(path: &Path, keep_up_to_step: Option<usize>) -> Result<Self> {
        match keep_up_to_step {
            None => crate::io::atomic::write_atomic(path, b"")?,
            Some(s) => {
                // Kept lines are copied byte for byte (a float parsed and printed again can move
                // by an ulp); a line the kill cut short is dropped.
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let mut kept = String::new();
                for line in text.lines() {
                    match serde_json::from_str::<LogRecord>(line) {
                        Ok(r) if r.step() <= s => {
                            kept.push_str(line);
                            kept.push('\n');
                        }
                        Ok(_) => {}
                        Err(_) if line.trim().is_empty() => {}
                        Err(_) => tracing::warn!("{}: dropping a damaged record: {line:.80}", path.display()),
                    }
                }
                crate::io::atomic::write_atomic(path, kept.as_bytes())?;
            }
        }
        Ok(Self { path: path.to_path_buf() })
    }

    pub fn append(&self, record: &LogRecord) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        writeln!(f, "{}", serde_json::to_string(record)?)
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub fn read_log(path: &Path) -> Result<Vec<LogRecord>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}: bad record", path.display(), i + 1)))
        .collect()
}

/// Words for WER: lower case, punctuation removed (apostrophes and inner hyphens kept as part of
/// a word), whitespace collapsed.
pub fn normalize_words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Word-level edit distance (substitutions + deletions + insertions) and the reference length.
pub fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let (r, h) = (normalize_words(reference), normalize_words(hypothesis));
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut row = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            row[j + 1] = (prev[j] + usize::from(rw != hw)).min(prev[j + 1] + 1).min(row[j] + 1);
        }
        prev = row;
    }
    (prev[h.len()], r.len())
}

/// Corpus word error rate of (reference, hypothesis) pairs.
pub fn word_error_rate<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> f64 {
    let (errors, words) = pairs.into_iter().map(|(r, h)| word_errors(r, h)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    errors as f64 / words.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_matches_hand_computation() {
        // class 0: tp=2 fp=1 fn=0 -> f1=0.8; class 1: tp=1 fp=0 fn=1 -> 0.6667; class 2: absent -> 0
        let (acc, f1) = accuracy_and_macro_f1(&[0, 0, 0, 1], &[0, 0, 1, 1], 2);
        assert!((acc - 0.75).abs() < 1e-12);
        assert!((f1 - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        let (_, f1_3) = accuracy_and_macro_f1(&[0, 0, 0, 1], &[0, 0, 1, 1], 3);
        assert!((f1_3 - (0.8 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn label_set_metrics_match_scikit_learn() {
        // scikit-learn: accuracy_score, f1_score(average="micro"/"macro", zero_division=0) of these
        // rows as indicator matrices: 0.25, 0.5454..., 0.375.
        let pairs = vec![(vec![0, 2], vec![0, 2]), (vec![2], vec![1]), (vec![], vec![1, 2]), (vec![0, 1], vec![0])];
        let m = EvalMetrics::of_sets(0.0, &pairs, 4);
        assert!((m.accuracy.unwrap() - 0.25).abs() < 1e-12);
        assert!((m.micro_f1.unwrap() - 6.0 / 11.0).abs() < 1e-12, "{m:?}");
        assert!((m.macro_f1.unwrap() - 0.375).abs() < 1e-12, "{m:?}");
    }

    #[test]
    fn entities_match_seqeval() {
        // seqeval 1.2.2 get_entities of the same sequences.
        let tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-ORG", "B-ORG", "I-PER", "O", "B-MISC"];
        assert_eq!(
            entities(&tags),
            vec![("PER", 0, 1), ("LOC", 3, 4), ("ORG", 5, 5), ("ORG", 6, 6), ("PER", 7, 7), ("MISC", 9, 9)]
        );
        assert_eq!(entities(&["O", "O"]), vec![]);
        assert_eq!(entities(&["B-geo-loc", "I-geo-loc"]), vec![("geo-loc", 0, 1)]);
    }

    #[test]
    fn correlations_match_scipy() {
        // scipy.stats.pearsonr / spearmanr (1.16) of these vectors; y has a tie.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let y = [2.0, 1.0, 4.0, 4.0, 7.0, 5.5];
        assert!((pearson(&x, &y) - 0.862_376_449_067_670_9).abs() < 1e-12, "{}", pearson(&x, &y));
        assert!((spearman(&x, &y) - 0.869_656_553_478_672_7).abs() < 1e-12, "{}", spearman(&x, &y));
        assert_eq!(pearson(&x, &[3.0; 6]), 0.0);
    }

    #[test]
    fn word_error_rate_counts_edits_after_normalising() {
        assert_eq!(
            word_errors("He was not an ill-disposed young man.", "he was not an ill disposed young man"),
            (0, 8)
        );
        assert_eq!(word_errors("a b c d", "a x c"), (2, 4));
        assert_eq!(word_errors("a b", "a b c"), (1, 2));
        assert!((word_error_rate([("a b c d", "a x c"), ("e f", "e f")]) - 2.0 / 6.0).abs() < 1e-12);
    }
}
