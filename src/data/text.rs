//! Text-classification datasets in CSV/TSV and JSON Lines, with named text and label columns (and
//! a second text column for sentence pairs).
//!
//! A bad row (a malformed CSV line, a missing column, an empty text, a label outside the label
//! set) is an error naming the file and line, unless the user asked to skip such rows; then it
//! is skipped and counted.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::Targets;

/// Which columns hold the text and the label.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Columns {
    pub text: String,
    pub label: String,
    /// The second text of a sentence pair (NLI, paraphrase), if the task has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
    /// An empty label cell is a row without labels (multi-label data), not a bad row.
    #[serde(default, skip)]
    pub label_may_be_empty: bool,
}

impl Default for Columns {
    fn default() -> Self {
        Self { text: "text".into(), label: "label".into(), pair: None, label_may_be_empty: false }
    }
}

/// One usable row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub text: String,
    /// The second text, when the columns name a pair column.
    pub pair: Option<String>,
    pub label: String,
    /// 1-based line number in the source file.
    pub line: usize,
}

/// A row that could not be used, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub line: usize,
    pub reason: String,
}

/// The rows of one file.
#[derive(Debug, Clone)]
pub struct RawSplit {
    pub path: PathBuf,
    pub rows: Vec<Row>,
    pub skipped: Vec<BadRow>,
}

/// A split with labels mapped to ids (or read as values, for a regression).
#[derive(Debug, Clone)]
pub struct LabeledSplit {
    pub path: PathBuf,
    pub texts: Vec<String>,
    /// Second texts, one per text, for sentence-pair data.
    pub pairs: Option<Vec<String>>,
    pub targets: Targets,
    pub skipped: Vec<BadRow>,
}

impl LabeledSplit {
    pub fn len(&self) -> usize {
        self.texts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

/// The label vocabulary: names in id order. A regression's is one output, `LABEL_0`
/// (transformers' name for it), and its labels are numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSet {
    names: Vec<String>,
    index: HashMap<String, usize>,
    values: bool,
    /// Multi-label: a row's label cell holds any number of these names, split at this separator.
    separator: Option<String>,
}

impl LabelSet {
    pub fn new(names: Vec<String>) -> Result<Self> {
        let mut index = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            if index.insert(n.clone(), i).is_some() {
                bail!("label '{n}' is listed twice");
            }
        }
        if names.len() < 2 {
            bail!("a classification task needs at least 2 labels, found {:?}", names);
        }
        Ok(Self { names, index, values: false, separator: None })
    }

    /// The same names for multi-label data: a row holds any number of them, split at `separator`
    /// (a JSON list in a JSONL row is written joined with it).
    pub fn multi_label(self, separator: &str) -> Self {
        Self { separator: Some(separator.to_string()), ..self }
    }

    /// Every label of multi-label rows, sorted, each row's cell split at `separator`.
    pub fn infer_sets(rows: &[Row], separator: &str) -> Result<Self> {
        let set: BTreeSet<&str> = rows.iter().flat_map(|r| split_labels(&r.label, separator)).collect();
        Ok(Self::new(set.into_iter().map(String::from).collect())?.multi_label(separator))
    }

    /// Whether a row holds a set of labels (multi-label classification).
    pub fn is_multi_label(&self) -> bool {
        self.separator.is_some()
    }

    /// A regression's single output: the labels are numbers.
    pub fn regression() -> Self {
        Self {
            names: vec!["LABEL_0".into()],
            index: HashMap::from([("LABEL_0".to_string(), 0)]),
            values: true,
            separator: None,
        }
    }

    /// Whether the labels are numbers (a regression) rather than class names.
    pub fn is_regression(&self) -> bool {
        self.values
    }

    /// All labels seen in `rows`, sorted (numerically when every label is an integer).
    pub fn infer(rows: &[Row]) -> Result<Self> {
        let set: BTreeSet<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        let mut names: Vec<String> = set.into_iter().map(String::from).collect();
        if names.iter().all(|n| n.parse::<i64>().is_ok()) {
            names.sort_by_key(|n| n.parse::<i64>().unwrap_or_default());
        }
        Self::new(names)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
    pub fn id(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
}

enum Format {
    Delimited(u8),
    JsonLines,
}

fn format_of(path: &Path) -> Result<Format> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => Ok(Format::Delimited(b',')),
        Some("tsv") => Ok(Format::Delimited(b'\t')),
        Some("jsonl") | Some("ndjson") => Ok(Format::JsonLines),
        _ => bail!("{}: unknown dataset format (use .csv, .tsv or .jsonl)", path.display()),
    }
}

/// Read the rows of a CSV/TSV/JSONL file.
pub fn read_rows(path: &Path, columns: &Columns, skip_bad_rows: bool) -> Result<RawSplit> {
    let format = format_of(path)?;
    let text = super::read_text(path)?;
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut bad = |line: usize, reason: String| -> Result<()> {
        if skip_bad_rows {
            skipped.push(BadRow { line, reason });
            Ok(())
        } else {
            bail!("{}:{line}: {reason} (set skip_bad_rows = true to skip and count such rows)", path.display())
        }
    };
    match format {
        Format::Delimited(delimiter) => {
            let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).from_reader(text.as_bytes());
            let header = reader.headers().with_context(|| format!("{}: cannot read header", path.display()))?.clone();
            let find = |name: &str| {
                header.iter().position(|h| h == name).with_context(|| {
                    format!(
                        "{}: no column '{name}' in header (columns: {})",
                        path.display(),
                        header.iter().collect::<Vec<_>>().join(", ")
                    )
                })
            };
            let (ti, li) = (find(&columns.text)?, find(&columns.label)?);
            let pi = columns.pair.as_deref().map(find).transpose()?;
            // Lines from byte offsets: after CRLF endings the csv crate starts a record at the `\n`
            // of the line before, and counts lines one short.
            let line_starts: Vec<usize> =
                std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
            let line_of = |p: &csv::Position| {
                let skip = text.as_bytes()[p.byte() as usize..].iter().take_while(|&&b| b == b'\r' || b == b'\n');
                let start = p.byte() as usize + skip.count();
                line_starts.partition_point(|&s| s <= start)
            };
            for record in reader.records() {
                match record {
                    Err(e) => {
                        let line = e.position().map(line_of).unwrap_or(0);
                        bad(line, format!("malformed row: {}", csv_error_reason(&e)))?;
                    }
                    Ok(r) => {
                        let line = r.position().map(line_of).unwrap_or(0);
                        let pair = pi.map(|i| r.get(i));
                        match row_from_fields(r.get(ti), pair, r.get(li), columns, line) {
                            Ok(row) => rows.push(row),
                            Err(reason) => bad(line, reason)?,
                        }
                    }
                }
            }
        }
        Format::JsonLines => {
            for (line, value) in json_lines(&text) {
                let value = match value {
                    Ok(v) => v,
                    Err(reason) => {
                        bad(line, reason)?;
                        continue;
                    }
                };
                let field = |name: &str| -> Option<String> {
                    match value.get(name)? {
                        serde_json::Value::String(s) => Some(s.clone()),
                        // A list of labels (multi-label rows): joined with the default separator.
                        serde_json::Value::Array(items) if name == columns.label => Some(
                            items
                                .iter()
                                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                                .collect::<Vec<_>>()
                                .join(LIST_SEPARATOR),
                        ),
                        serde_json::Value::Null => None,
                        other => Some(other.to_string()),
                    }
                };
                let (t, l) = (field(&columns.text), field(&columns.label));
                let p = columns.pair.as_deref().map(field);
                let p = p.as_ref().map(|p| p.as_deref());
                match row_from_fields(t.as_deref(), p, l.as_deref(), columns, line) {
                    Ok(row) => rows.push(row),
                    Err(reason) => bad(line, reason)?,
                }
            }
        }
    }
    if rows.is_empty() {
        bail!("{}: no usable rows (empty dataset)", path.display());
    }
    Ok(RawSplit { path: path.to_path_buf(), rows, skipped })
}

/// What a JSONL list of labels is joined with when read (a character no label holds).
const LIST_SEPARATOR: &str = "\u{1f}";

/// The labels of a multi-label cell: split at `separator` (or where a JSONL list was joined),
/// trimmed, empty pieces dropped.
fn split_labels<'a>(cell: &'a str, separator: &'a str) -> impl Iterator<Item = &'a str> {
    cell.split(move |c: char| LIST_SEPARATOR.contains(c) || separator.contains(c))
        .map(str::trim)
        .filter(|l| !l.is_empty())
}

/// The JSON values of a JSON Lines text with their 1-based line numbers, blank lines skipped; a
/// line that is not JSON gives the reason to report.
pub fn json_lines(text: &str) -> impl Iterator<Item = (usize, Result<serde_json::Value, String>)> + '_ {
    text.lines()
        .enumerate()
        .filter(|(_, raw)| !raw.trim().is_empty())
        .map(|(i, raw)| (i + 1, serde_json::from_str(raw).map_err(|e| format!("malformed JSON: {e}"))))
}

fn csv_error_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("expected {expected_len} fields, found {len}")
        }
        _ => e.to_string(),
    }
}

/// `pair` is `None` without a pair column, `Some(None)` when the row lacks it.
fn row_from_fields(
    text: Option<&str>,
    pair: Option<Option<&str>>,
    label: Option<&str>,
    cols: &Columns,
    line: usize,
) -> Result<Row, String> {
    let text = text.ok_or_else(|| format!("missing column '{}'", cols.text))?;
    let label = label.ok_or_else(|| format!("missing column '{}'", cols.label))?;
    if text.trim().is_empty() {
        return Err(format!("empty text in column '{}'", cols.text));
    }
    let pair_column = cols.pair.as_deref().unwrap_or_default();
    let pair = match pair {
        None => None,
        Some(None) => return Err(format!("missing column '{pair_column}'")),
        Some(Some(p)) if p.trim().is_empty() => return Err(format!("empty text in column '{pair_column}'")),
        Some(Some(p)) => Some(p.to_string()),
    };
    if label.trim().is_empty() && !cols.label_may_be_empty {
        return Err(format!("empty label in column '{}'", cols.label));
    }
    Ok(Row { text: text.to_string(), pair, label: label.trim().to_string(), line })
}

/// Map labels to ids (a label outside `labels` is a bad row), or, for a regression, read them
/// as numbers (one that is not a finite number is a bad row).
pub fn label_rows(raw: RawSplit, labels: &LabelSet, skip_bad_rows: bool) -> Result<LabeledSplit> {
    let with_pairs = raw.rows.first().is_some_and(|r| r.pair.is_some());
    let (mut classes, mut values, mut sets) = (Vec::new(), Vec::new(), Vec::new());
    let mut out = LabeledSplit {
        path: raw.path,
        texts: Vec::new(),
        pairs: with_pairs.then(Vec::new),
        targets: Targets::Classes(Vec::new()),
        skipped: raw.skipped,
    };
    for row in raw.rows {
        let target = if let Some(sep) = &labels.separator {
            split_labels(&row.label, sep)
                .map(|l| {
                    labels.id(l).ok_or_else(|| format!("unknown label '{l}' (labels: {})", labels.names().join(", ")))
                })
                .collect::<Result<Vec<usize>, String>>()
                .map(|ids| sets.push(ids))
        } else if labels.is_regression() {
            row.label
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .map(|v| values.push(v))
                .ok_or_else(|| format!("label '{}' is not a number (a regression's labels are numbers)", row.label))
        } else {
            labels
                .id(&row.label)
                .map(|id| classes.push(id))
                .ok_or_else(|| format!("unknown label '{}' (labels: {})", row.label, labels.names().join(", ")))
        };
        match target {
            Ok(()) => {
                out.texts.push(row.text);
                if let (Some(pairs), Some(p)) = (out.pairs.as_mut(), row.pair) {
                    pairs.push(p);
                }
            }
            Err(reason) if skip_bad_rows => out.skipped.push(BadRow { line: row.line, reason }),
            Err(reason) => bail!(
                "{}:{}: {reason} (set skip_bad_rows = true to skip and count such rows)",
                out.path.display(),
                row.line,
            ),
        }
    }
    if out.texts.is_empty() {
        bail!("{}: no usable rows after label mapping", out.path.display());
    }
    out.targets = if labels.is_multi_label() {
        Targets::Sets { sets, num_labels: labels.len() }
    } else if labels.is_regression() {
        Targets::Values(values)
    } else {
        Targets::Classes(classes)
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn csv_with_quotes_and_labels() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.csv", "id,text,label\n1,\"Hello, world\",pos\n2,bad,neg\n");
        let raw = read_rows(&p, &Columns::default(), false).unwrap();
        assert_eq!(raw.rows[0].text, "Hello, world");
        assert_eq!(raw.rows[1].line, 3);
        let labels = LabelSet::infer(&raw.rows).unwrap();
        assert_eq!(labels.names(), ["neg", "pos"]);
        let s = label_rows(raw, &labels, false).unwrap();
        assert_eq!(s.targets, Targets::Classes(vec![1, 0]));
    }

    #[test]
    fn malformed_csv_line_names_file_and_line_or_is_counted() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "m.csv", "text,label\nok,1\nthis row,has,too many\nfine,0\n");
        let err = read_rows(&p, &Columns::default(), false).unwrap_err().to_string();
        assert!(err.contains("m.csv:3") && err.contains("expected 2 fields, found 3"), "{err}");
        let raw = read_rows(&p, &Columns::default(), true).unwrap();
        assert_eq!(raw.rows.len(), 2);
        assert_eq!(raw.skipped, vec![BadRow { line: 3, reason: "malformed row: expected 2 fields, found 3".into() }]);
    }

    #[test]
    fn byte_order_mark_crlf_and_non_utf8_text() {
        let d = tempfile::tempdir().unwrap();
        // A spreadsheet export: BOM, CRLF line ends. The first column keeps its name.
        let p = write(d.path(), "bom.csv", "\u{feff}text,label\r\ngood film,pos\r\nbad film,neg\r\n");
        let raw = read_rows(&p, &Columns::default(), false).unwrap();
        assert_eq!((raw.rows[1].text.as_str(), raw.rows[1].label.as_str(), raw.rows[1].line), ("bad film", "neg", 3));
        // Latin-1 on line 3: the error names the line, even with skip_bad_rows.
        let p = d.path().join("latin1.csv");
        std::fs::write(&p, b"text,label\ngood,pos\ncaf\xe9,neg\n").unwrap();
        let err = read_rows(&p, &Columns::default(), true).unwrap_err().to_string();
        assert!(err.contains("latin1.csv:3") && err.contains("not UTF-8") && err.contains("0xe9"), "{err}");
    }

    #[test]
    fn jsonl_missing_column_empty_text_and_unknown_label() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "x.jsonl",
            "{\"text\":\"good\",\"label\":1}\n{\"label\":0}\n{\"text\":\"  \",\"label\":0}\nnot json\n{\"text\":\"meh\",\"label\":7}\n",
        );
        let err = read_rows(&p, &Columns::default(), false).unwrap_err().to_string();
        assert!(err.contains("x.jsonl:2") && err.contains("missing column 'text'"), "{err}");
        let raw = read_rows(&p, &Columns::default(), true).unwrap();
        assert_eq!(raw.skipped.iter().map(|b| b.line).collect::<Vec<_>>(), vec![2, 3, 4]);
        let labels = LabelSet::new(vec!["0".into(), "1".into()]).unwrap();
        let err = label_rows(raw.clone(), &labels, false).unwrap_err().to_string();
        assert!(err.contains("x.jsonl:5") && err.contains("unknown label '7'"), "{err}");
        let s = label_rows(raw, &labels, true).unwrap();
        assert_eq!((s.len(), s.skipped.len()), (1, 4));
    }

    #[test]
    fn pair_column_is_read_and_its_absence_named() {
        let d = tempfile::tempdir().unwrap();
        let cols = Columns { text: "premise".into(), pair: Some("hypothesis".into()), ..Columns::default() };
        let p = write(
            d.path(),
            "p.csv",
            "premise,hypothesis,label\nA dog runs.,An animal moves.,entailment\nA cat.,,neutral\n",
        );
        let err = read_rows(&p, &cols, false).unwrap_err().to_string();
        assert!(err.contains("p.csv:3") && err.contains("empty text in column 'hypothesis'"), "{err}");
        let raw = read_rows(&p, &cols, true).unwrap();
        assert_eq!(raw.rows[0].pair.as_deref(), Some("An animal moves."));
        let labels = LabelSet::new(vec!["entailment".into(), "neutral".into()]).unwrap();
        let split = label_rows(raw, &labels, false).unwrap();
        assert_eq!(split.pairs, Some(vec!["An animal moves.".to_string()]));
        let p = write(d.path(), "p.jsonl", "{\"premise\":\"A dog.\",\"label\":\"neutral\"}\n");
        let err = read_rows(&p, &cols, false).unwrap_err().to_string();
        assert!(err.contains("p.jsonl:1") && err.contains("missing column 'hypothesis'"), "{err}");
        let p = write(d.path(), "h.csv", "premise,label\na,1\n");
        let err = read_rows(&p, &cols, false).unwrap_err().to_string();
        assert!(err.contains("no column 'hypothesis'"), "{err}");
    }

    #[test]
    fn missing_header_column_and_empty_file_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "h.csv", "sentence,label\na,1\n");
        let err = read_rows(&p, &Columns::default(), true).unwrap_err().to_string();
        assert!(err.contains("no column 'text'") && err.contains("sentence, label"), "{err}");
        let p = write(d.path(), "e.csv", "text,label\n");
        let err = read_rows(&p, &Columns::default(), true).unwrap_err().to_string();
        assert!(err.contains("empty dataset"), "{err}");
    }
}
