//! Hostile-file harness: mutate real input files and feed them to `finetune check` in child
//! processes under a memory limit, counting every outcome that is not a clean `ok` or `error`.
//!
//! Why a child process: the failures that matter most here (a stack overflow, an allocation of
//! terabytes, an abort, an endless loop) kill or stall a process, which `catch_unwind` in the same
//! process cannot observe. `finetune check` prints one flushed line per file, so when a child dies
//! the first file without a line is the culprit; the rest of the batch then runs in a new child.
//!
//! Everything is deterministic: input `i` of target `t` is a function of (run seed, `t`, `i`), so
//! a failure is reproduced with `finetune-fuzz --target t --case i` (the inputs are also kept).
//!
//! This file depends on `std` only: the `finetune-fuzz` binary (`fuzz/src/main.rs`) and the
//! integration test `tests/integration/hostile.rs` both include it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One file of a seed: its name (which tells `finetune check` its kind) and bytes.
#[derive(Clone)]
pub struct SeedFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A real input to mutate: the file that is mutated and any companions it is read with (an
/// adapter's weights beside its config), copied unchanged.
#[derive(Clone)]
pub struct Seed {
    pub origin: String,
    pub file: SeedFile,
    pub companions: Vec<SeedFile>,
}

pub struct Target {
    pub name: &'static str,
    pub seeds: Vec<Seed>,
    /// Applied after mutation: repairs checksums so that mutations reach the fields behind them.
    pub fixup: Option<fn(&mut [u8])>,
}

impl Target {
    pub fn new(name: &'static str, seeds: Vec<Seed>) -> Self {
        Target { name, seeds, fixup: None }
    }
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Recompute the CRC of every whole chunk of a PNG: without it nearly every mutation stops at
/// the first checksum, and the header fields (sizes, bit depth, colour type) go untested.
pub fn fix_png_crcs(data: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= data.len() {
        let len = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= data.len()) else { break };
        let crc = crc32(&data[at + 4..end]);
        data[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

impl Seed {
    /// `path` read from disk, with `companions` (file names in the same directory).
    pub fn from_path(path: &Path, companions: &[&str]) -> std::io::Result<Self> {
        let read = |p: &Path| -> std::io::Result<SeedFile> {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Ok(SeedFile { name, bytes: std::fs::read(p)? })
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok(Seed {
            origin: path.display().to_string(),
            file: read(path)?,
            companions: companions.iter().map(|c| read(&dir.join(c))).collect::<std::io::Result<_>>()?,
        })
    }

    pub fn generated(origin: &str, name: &str, bytes: Vec<u8>) -> Self {
        Seed { origin: origin.into(), file: SeedFile { name: name.into(), bytes }, companions: Vec::new() }
    }
}

/// SplitMix64: small, fast, and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn hash(parts: &[&[u8]]) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike std's hasher.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for &b in *p {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Integers that break size arithmetic: zero, one, sign and width boundaries, and values near
/// the input's own length.
fn interesting(rng: &mut Rng, len: usize) -> u64 {
    const FIXED: [u64; 16] = [
        0,
        1,
        2,
        7,
        0x7f,
        0x80,
        0xff,
        0x7fff,
        0xffff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        0x1_0000_0000,
        0x7fff_ffff_ffff_ffff,
        0x8000_0000_0000_0000,
        u64::MAX,
    ];
    match rng.below(4) {
        0 => (len as u64).wrapping_add(rng.below(16) as u64).wrapping_sub(8),
        1 => 1u64 << rng.below(64),
        _ => FIXED[rng.below(FIXED.len())],
    }
}

/// A position, half the time within the first 512 bytes, where the headers are.
fn position(rng: &mut Rng, len: usize) -> usize {
    if len == 0 {
        0
    } else if rng.chance(50) {
        rng.below(len.min(512))
    } else {
        rng.below(len)
    }
}

const TEXT_NUMBERS: [&str; 14] = [
    "0",
    "-1",
    "1",
    "65536",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "1e308",
    "1e309",
    "NaN",
    "0.0000001",
    "340282366920938463463374607431768211456",
];

/// One mutation, in place. Text inputs (JSON, TOML, CSV) also get edits that keep them
/// parseable: numbers swapped for boundary values, lines deleted or repeated, deep nesting.
fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, text: bool, other: &[u8]) {
    let len = data.len();
    let kinds = if text { 14 } else { 9 };
    match rng.below(kinds) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                if data.is_empty() {
                    break;
                }
                let p = position(rng, data.len());
                data[p] ^= 1 << rng.below(8);
            }
        }
        1 if len > 0 => {
            let p = position(rng, len);
            data[p] = [0u8, 0xff, 0x7f, 0x80, 0x01, b'"', b'\n', b'['][rng.below(8)];
        }
        2 if len > 0 => {
            // An integer field overwritten, little- or big-endian, 1 to 8 bytes wide.
            let width = [1, 2, 4, 8][rng.below(4)];
            let p = position(rng, len);
            let v = interesting(rng, len);
            let bytes = if rng.chance(75) { v.to_le_bytes() } else { v.to_be_bytes() };
            let bytes = if rng.chance(75) { &bytes[..width] } else { &bytes[8 - width..] };
            for (i, b) in bytes.iter().enumerate() {
                if p + i < data.len() {
                    data[p + i] = *b;
                }
            }
        }
        3 => data.truncate(position(rng, len + 1)),
        4 if len > 0 => {
            let start = position(rng, len);
            let end = (start + 1 + rng.below(256)).min(len);
            data.drain(start..end);
        }
        5 => {
            let p = position(rng, len + 1);
            let n = 1 + rng.below(64);
            let insert: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(p..p, insert);
        }
        6 if len > 0 => {
            // A chunk repeated: lengths stop matching, arrays grow.
            let start = position(rng, len);
            let end = (start + 1 + rng.below(64)).min(len);
            let chunk = data[start..end].to_vec();
            let times = 1 + rng.below(16);
            let at = end;
            data.splice(at..at, chunk.iter().copied().cycle().take(chunk.len() * times));
        }
        7 if !other.is_empty() => {
            // Splice: this input's head, another seed's tail.
            let cut = position(rng, len + 1);
            let from = rng.below(other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        8 if len >= 16 => {
            // Copy a 4- or 8-byte field over another (offsets pointing at each other).
            let w = [4, 8][rng.below(2)];
            let a = position(rng, len - w);
            let b = rng.below(len - w);
            let field = data[a..a + w].to_vec();
            data[b..b + w].copy_from_slice(&field);
        }
        9 => {
            // A number replaced by a boundary value.
            let digits: Vec<usize> = (0..len).filter(|&i| data[i].is_ascii_digit()).collect();
            if let Some(&d) = digits.get(rng.below(digits.len().max(1))) {
                let mut start = d;
                while start > 0 && (data[start - 1].is_ascii_digit() || data[start - 1] == b'.') {
                    start -= 1;
                }
                let mut end = d;
                while end < len && (data[end].is_ascii_digit() || data[end] == b'.') {
                    end += 1;
                }
                let n = TEXT_NUMBERS[rng.below(TEXT_NUMBERS.len())].as_bytes().to_vec();
                data.splice(start..end, n);
            }
        }
        10 | 11 => {
            // A line deleted, or repeated many times.
            let lines: Vec<usize> =
                std::iter::once(0).chain((0..len).filter(|&i| data[i] == b'\n').map(|i| i + 1)).collect();
            let i = rng.below(lines.len());
            let start = lines[i];
            let end = lines.get(i + 1).copied().unwrap_or(len);
            if rng.chance(50) {
                data.drain(start..end);
            } else {
                let line = data[start..end].to_vec();
                let times = 1 + rng.below(200);
                data.splice(end..end, line.iter().copied().cycle().take(line.len() * times));
            }
        }
        12 => {
            // Deep nesting where a value starts.
            let p = position(rng, len + 1);
            let depth = 1 + rng.below(100_000);
            let open = [b'[', b'{'][rng.below(2)];
            data.splice(p..p, std::iter::repeat_n(open, depth));
        }
        13 => {
            // A string made empty, huge or full of odd characters.
            let quotes: Vec<usize> = (0..len).filter(|&i| data[i] == b'"').collect();
            if quotes.len() >= 2 {
                let i = rng.below(quotes.len() - 1);
                let (a, b) = (quotes[i] + 1, quotes[i + 1]);
                let replacement: Vec<u8> = match rng.below(4) {
                    0 => Vec::new(),
                    1 => "x".repeat(1 + rng.below(1 << 20)).into_bytes(),
                    2 => "\u{0}\u{202e}\u{fffd}𝕏\\u0000\\ud800".as_bytes().to_vec(),
                    _ => b"../../../../etc/passwd".to_vec(),
                };
                data.splice(a..b, replacement);
            }
        }
        _ => data.push(rng.next() as u8),
    }
}

/// Input `case` of a target: a seed, mutated one to four times.
pub fn make_case(target: &Target, run_seed: u64, case: u64) -> (usize, Vec<u8>) {
    let mut rng = Rng::new(hash(&[&run_seed.to_le_bytes(), target.name.as_bytes(), &case.to_le_bytes()]));
    let s = rng.below(target.seeds.len());
    let seed = &target.seeds[s];
    let other = &target.seeds[rng.below(target.seeds.len())].file.bytes;
    let text = seed.file.bytes.iter().take(4096).all(|&b| b == b'\n' || b == b'\r' || b == b'\t' || b >= 0x20);
    let mut data = seed.file.bytes.clone();
    for _ in 0..1 + rng.below(4) {
        mutate_once(&mut rng, &mut data, text, other);
    }
    // A quarter of the inputs keep their broken checksums: those must be refused too.
    if let Some(fix) = target.fixup
        && rng.chance(75)
    {
        fix(&mut data);
    }
    (s, data)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Read fine (a mutation can leave a file valid).
    Ok,
    /// Refused with an error message: what a hostile file should get.
    Error,
    /// `finetune check` caught a panic: a bug.
    Bug,
    /// The process died: abort, signal, stack overflow, allocation failure.
    Crash,
    /// No answer within the time limit.
    Hang,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub target: &'static str,
    pub case: u64,
    pub seed: String,
    pub verdict: Verdict,
    pub detail: String,
    pub kept: Option<PathBuf>,
}

#[derive(Debug, Default, Clone)]
pub struct TargetReport {
    pub counts: BTreeMap<String, usize>,
    /// Error messages with the path and numbers taken out, and how often each came: which
    /// checks the inputs reached.
    pub errors: BTreeMap<String, usize>,
    pub seconds: f64,
}

/// An error line without its path and numbers.
fn error_shape(line: &str, path: &Path) -> String {
    let line = line.trim_start_matches("error ").replace(&path.display().to_string(), "<file>");
    let mut out = String::new();
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out.chars().take(140).collect()
}

#[derive(Debug, Default)]
pub struct Report {
    pub targets: BTreeMap<&'static str, TargetReport>,
    pub failures: Vec<Failure>,
}

pub struct Settings {
    /// The `finetune` binary.
    pub binary: PathBuf,
    pub run_seed: u64,
    /// Address-space limit of each child, in KiB (`ulimit -v`).
    pub memory_kib: u64,
    /// How long one file may take.
    pub timeout: Duration,
    /// Files per child process.
    pub batch: usize,
    /// Scratch space for the inputs of a batch.
    pub work: PathBuf,
    /// Where failing inputs are kept (with their companions), if anywhere.
    pub keep: Option<PathBuf>,
}

/// Run cases `cases` of `target`; failures are kept under `settings.keep`.
pub fn run_target(target: &Target, cases: std::ops::Range<u64>, settings: &Settings, report: &mut Report) {
    let start = Instant::now();
    let mut pending: Vec<u64> = cases.collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    while !pending.is_empty() {
        let batch: Vec<u64> = pending.iter().copied().take(settings.batch).collect();
        let dir = settings.work.join(target.name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut paths = Vec::new();
        let mut seeds = Vec::new();
        for &case in &batch {
            let (s, bytes) = make_case(target, settings.run_seed, case);
            let seed = &target.seeds[s];
            let case_dir = dir.join(case.to_string());
            std::fs::create_dir_all(&case_dir).expect("scratch directory");
            for c in &seed.companions {
                std::fs::write(case_dir.join(&c.name), &c.bytes).expect("scratch file");
            }
            let path = case_dir.join(&seed.file.name);
            std::fs::write(&path, &bytes).expect("scratch file");
            paths.push(path);
            seeds.push(seed.origin.clone());
        }
        let (answered, fate) = run_batch(&paths, settings);
        for (i, line) in answered.iter().enumerate() {
            let verdict = if line.starts_with("ok ") {
                Verdict::Ok
            } else if line.starts_with("error ") {
                Verdict::Error
            } else {
                Verdict::Bug
            };
            *counts.entry(format!("{verdict:?}")).or_default() += 1;
            if verdict == Verdict::Error {
                *errors.entry(error_shape(line, &paths[i])).or_default() += 1;
            }
            if verdict == Verdict::Bug {
                report.failures.push(failure(target, batch[i], &seeds[i], verdict, line.clone(), &paths[i], settings));
            }
        }
        let done = answered.len();
        if let Some((verdict, detail)) = fate {
            // The file being read when the child died or stalled.
            *counts.entry(format!("{verdict:?}")).or_default() += 1;
            report.failures.push(failure(target, batch[done], &seeds[done], verdict, detail, &paths[done], settings));
            pending.drain(..done + 1);
        } else {
            pending.drain(..batch.len());
        }
    }
    let _ = std::fs::remove_dir_all(settings.work.join(target.name));
    report.targets.insert(target.name, TargetReport { counts, errors, seconds: start.elapsed().as_secs_f64() });
}

/// Every seed of `target`, unmutated, must read `ok`: mutations then start from valid files
/// and explore the checks behind the first one. Returns the seeds that do not, with the answer.
pub fn bad_seeds(target: &Target, settings: &Settings) -> Vec<(String, String)> {
    let dir = settings.work.join(format!("{}-seeds", target.name));
    let mut paths = Vec::new();
    for (i, seed) in target.seeds.iter().enumerate() {
        let case_dir = dir.join(i.to_string());
        std::fs::create_dir_all(&case_dir).expect("scratch directory");
        for c in seed.companions.iter().chain([&seed.file]) {
            std::fs::write(case_dir.join(&c.name), &c.bytes).expect("scratch file");
        }
        paths.push(case_dir.join(&seed.file.name));
    }
    let (lines, fate) = run_batch(&paths, settings);
    let _ = std::fs::remove_dir_all(&dir);
    let mut bad: Vec<(String, String)> = target
        .seeds
        .iter()
        .zip(&lines)
        .filter(|(_, line)| !line.starts_with("ok "))
        .map(|(seed, line)| (seed.origin.clone(), line.clone()))
        .collect();
    if let Some((verdict, detail)) = fate {
        bad.push((target.seeds[lines.len()].origin.clone(), format!("{verdict:?}: {detail}")));
    }
    bad
}

fn failure(
    target: &Target,
    case: u64,
    seed: &str,
    verdict: Verdict,
    detail: String,
    path: &Path,
    settings: &Settings,
) -> Failure {
    let kept = settings.keep.as_ref().map(|keep| {
        let to = keep.join(format!("{}-{case}", target.name));
        let _ = std::fs::create_dir_all(&to);
        if let Ok(entries) = std::fs::read_dir(path.parent().expect("case directory")) {
            for e in entries.flatten() {
                let _ = std::fs::copy(e.path(), to.join(e.file_name()));
            }
        }
        to
    });
    Failure { target: target.name, case, seed: seed.to_string(), verdict, detail, kept }
}

/// Run one child over `paths`: the lines it printed (one per file, in order), and, if it died
/// or stalled before the end, how.
fn run_batch(paths: &[PathBuf], settings: &Settings) -> (Vec<String>, Option<(Verdict, String)>) {
    let mut child: Child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {}; exec \"$0\" check \"$@\"", settings.memory_kib))
        .arg(&settings.binary)
        .args(paths)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start finetune check");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let mut deadline = Instant::now() + settings.timeout;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                // One line per file, naming it: anything else (an answer broken over lines by
                // text from the file) is a bug of its own.
                let expected = paths.get(lines.len()).map(|p| p.display().to_string());
                if expected.is_some_and(|p| line.contains(&p)) {
                    lines.push(line);
                } else if let Some(last) = lines.last_mut() {
                    if !last.starts_with("BUG") {
                        *last = format!("BUG   answer spread over several lines: {last} / {line}");
                    }
                } else {
                    lines.push(format!("BUG   unexpected output: {line}"));
                }
                deadline = Instant::now() + settings.timeout;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Answered every file but did not exit: the last one is charged with the stall.
                lines.truncate(paths.len() - 1);
                let _ = child.kill();
                let _ = child.wait();
                let _ = err_reader.join();
                let secs = settings.timeout.as_secs_f64();
                return (lines, Some((Verdict::Hang, format!("no answer within {secs} s"))));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().expect("wait for finetune check");
    let stderr = err_reader.join().unwrap_or_default();
    if lines.len() >= paths.len() {
        return (lines, None);
    }
    let tail: String =
        stderr.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
    (lines, Some((Verdict::Crash, format!("{status}: {tail}"))))
}

/// A small CTranslate2 model (binary version 6): float variables of each dtype, integer
/// scalars and an alias, the layout `Ct2Model` reads. The whisper model.bin (75 MB) is too big to
/// mutate ten thousand times.
pub fn ct2_seed() -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16 + 1).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    let mut b = 6u32.to_le_bytes().to_vec();
    string(&mut b, "WhisperSpec");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&4u32.to_le_bytes());
    // (name, shape, dtype id, element width)
    for (name, shape, dtype, width) in [
        ("encoder/conv1/weight", vec![4u32, 2, 3], 0u8, 4usize),
        ("decoder/embeddings/weight", vec![8, 4], 4, 2),
        ("decoder/layer_norm/gamma", vec![4], 5, 2),
        ("decoder/num_heads", vec![], 2, 2),
    ] {
        string(&mut b, name);
        b.push(shape.len() as u8);
        for d in &shape {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.push(dtype);
        let n: u32 = shape.iter().product();
        let bytes = n as usize * width;
        b.extend_from_slice(&(bytes as u32).to_le_bytes());
        b.extend((0..bytes).map(|i| (i * 37 % 251) as u8 & 0x3f));
    }
    b.extend_from_slice(&1u32.to_le_bytes());
    string(&mut b, "decoder/projection/weight");
    string(&mut b, "decoder/embeddings/weight");
    b
}

/// A small Llama GGUF file (version 3): the metadata `models::gguf_llama` turns into a config,
/// a byte-level BPE vocabulary with merges that `data::tokenizer` turns into a tokenizer, and f32
/// tensors of one block. The real SmolLM2 file (98 MB) is too big to mutate ten thousand times.
pub fn gguf_llama_seed() -> Vec<u8> {
    gguf_seed("llama", false)
}

/// The same for llama.cpp's `gemma3` architecture with a SentencePiece (`llama`) vocabulary:
/// control, unknown, byte and whitespace-only user-defined tokens, no merges (rebuilt by the
/// reader).
pub fn gguf_gemma_seed() -> Vec<u8> {
    gguf_seed("gemma3", true)
}

fn gguf_seed(arch: &str, sentencepiece: bool) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    enum V<'a> {
        U32(u32),
        F32(f32),
        Bool(bool),
        Str(&'a str),
        Strs(Vec<&'a str>),
        I32s(Vec<i32>),
    }
    let (tokens, types): (Vec<&str>, Vec<i32>) = if sentencepiece {
        let t = ["<pad>", "<eos>", "<bos>", "<unk>", "\u{2581}", "a", "b", "\u{2581}a", "ab", "<0x00>", "<0x41>", "  "];
        (t.to_vec(), vec![3, 3, 3, 2, 1, 1, 1, 1, 1, 6, 6, 4])
    } else {
        let t = ["<|endoftext|>", "<|im_start|>", "a", "b", "c", "Ġ", "ab", "Ġa", "H", "e", "l", "o"];
        (t.to_vec(), (0..t.len()).map(|i| if i < 2 { 3 } else { 1 }).collect())
    };
    let hidden = 8u64;
    let key = |k: &str| -> &'static str { Box::leak(format!("{arch}.{k}").into_boxed_str()) };
    let mut kv: Vec<(&str, V)> = vec![
        ("general.architecture", V::Str(arch)),
        ("general.name", V::Str("fuzz seed")),
        (key("block_count"), V::U32(1)),
        (key("context_length"), V::U32(64)),
        (key("embedding_length"), V::U32(hidden as u32)),
        (key("feed_forward_length"), V::U32(16)),
        (key("attention.head_count"), V::U32(2)),
        (key("attention.head_count_kv"), V::U32(1)),
        (key("rope.freq_base"), V::F32(10000.0)),
        (key("attention.layer_norm_rms_epsilon"), V::F32(1e-5)),
        ("tokenizer.ggml.model", V::Str(if sentencepiece { "llama" } else { "gpt2" })),
        ("tokenizer.ggml.pre", V::Str("default")),
        ("tokenizer.ggml.tokens", V::Strs(tokens.clone())),
        ("tokenizer.ggml.token_type", V::I32s(types)),
    ];
    if sentencepiece {
        kv.extend([
            (key("attention.sliding_window"), V::U32(4)),
            ("tokenizer.ggml.bos_token_id", V::U32(2)),
            ("tokenizer.ggml.eos_token_id", V::U32(1)),
            ("tokenizer.ggml.unknown_token_id", V::U32(3)),
            ("tokenizer.ggml.add_bos_token", V::Bool(true)),
        ]);
    } else {
        kv.extend([
            ("tokenizer.ggml.merges", V::Strs(vec!["a b", "Ġ a"])),
            ("tokenizer.ggml.bos_token_id", V::U32(1)),
            ("tokenizer.ggml.eos_token_id", V::U32(0)),
            ("tokenizer.ggml.add_bos_token", V::Bool(false)),
        ]);
    }
    let vocab = tokens.len() as u64;
    // (name, GGUF dims: fastest-varying first)
    let tensors: Vec<(&str, Vec<u64>)> = vec![
        ("token_embd.weight", vec![hidden, vocab]),
        ("blk.0.attn_norm.weight", vec![hidden]),
        ("blk.0.attn_q.weight", vec![hidden, hidden]),
        ("output_norm.weight", vec![hidden]),
    ];
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (key, value) in &kv {
        string(&mut b, key);
        match value {
            V::U32(v) => {
                b.extend_from_slice(&4u32.to_le_bytes());
                b.extend_from_slice(&v.to_le_bytes());
            }
            V::F32(v) => {
                b.extend_from_slice(&6u32.to_le_bytes());
                b.extend_from_slice(&v.to_le_bytes());
            }
            V::Bool(v) => {
                b.extend_from_slice(&7u32.to_le_bytes());
                b.push(*v as u8);
            }
            V::Str(v) => {
                b.extend_from_slice(&8u32.to_le_bytes());
                string(&mut b, v);
            }
            V::Strs(items) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&8u32.to_le_bytes());
                b.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    string(&mut b, s);
                }
            }
            V::I32s(items) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&5u32.to_le_bytes());
                b.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    b.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    let mut data = Vec::new();
    for (name, dims) in &tensors {
        string(&mut b, name);
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&offset.to_le_bytes());
        let n: u64 = dims.iter().product();
        data.extend((0..n).flat_map(|i| ((i % 17) as f32 / 17.0 - 0.5).to_le_bytes()));
        while data.len() % 32 != 0 {
            data.push(0);
        }
        offset = data.len() as u64;
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend_from_slice(&data);
    b
}

/// A small IDX image file (three 5x4 images), raw: the real Fashion-MNIST images file is 4 MB
/// gzipped. The labels seed is the real `t10k-labels-idx1-ubyte.gz`.
pub fn idx_images_seed() -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [3u32, 5, 4] {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend((0..60).map(|i| (i * 13 % 256) as u8));
    b
}

/// Every target with seeds from the committed fixtures (`fixtures`: tests/fixtures, `recipes`)
/// and, where given, real assets from the hub cache (`assets`: name -> file).
pub fn targets(fixtures: &Path, recipes: &Path, assets: &BTreeMap<&str, PathBuf>) -> std::io::Result<Vec<Target>> {
    let f = |p: &str| Seed::from_path(&fixtures.join(p), &[]);
    let asset = |name: &str| assets.get(name).map(|p| Seed::from_path(p, &[])).transpose();
    let mut out = vec![
        Target::new("safetensors", vec![f("tiny-bert/model.safetensors")?, f("peft/lora/adapter_model.safetensors")?]),
        Target::new(
            "gguf",
            vec![
                f("gguf-blocks.gguf")?,
                Seed::generated("fuzz::gguf_llama_seed", "llama.gguf", gguf_llama_seed()),
                Seed::generated("fuzz::gguf_gemma_seed", "gemma.gguf", gguf_gemma_seed()),
            ],
        ),
        Target::new("pth", vec![f("pth/zip.pth")?, f("pth/legacy.pth")?]),
        Target::new("ct2", vec![Seed::generated("fuzz::ct2_seed", "model.bin", ct2_seed())]),
        Target {
            name: "image",
            seeds: vec![f("images/coffee.png")?, f("images/rocket.png")?],
            fixup: Some(fix_png_crcs),
        },
        Target::new("tokenizer", vec![f("tiny-bert/tokenizer.json")?]),
        Target::new("config", vec![f("tiny-bert/config.json")?, f("tiny-llama/config.json")?]),
        Target::new(
            "adapter",
            vec![
                Seed::from_path(&fixtures.join("peft/lora/adapter_config.json"), &["adapter_model.safetensors"])?,
                Seed::from_path(&fixtures.join("peft/prompt/adapter_config.json"), &["adapter_model.safetensors"])?,
            ],
        ),
        Target::new(
            "recipe",
            vec![
                Seed::from_path(&recipes.join("minilm-movie-lora.toml"), &[])?,
                Seed::from_path(&recipes.join("smollm2-chatterbot-qlora.toml"), &[])?,
            ],
        ),
        Target::new("dataset", vec![f("uci-sample.csv")?]),
        Target::new("idx", vec![Seed::generated("fuzz::idx_images_seed", "x-images-idx3-ubyte", idx_images_seed())]),
        Target::new("wav", Vec::new()),
    ];
    // Real assets, when fetched: a mobilenet config, speech clips, chat rows, gzipped labels.
    let extra = [
        ("config", "mobilenet-config"),
        ("wav", "wav"),
        ("dataset", "chat-jsonl"),
        ("dataset", "labelled-jsonl"),
        ("idx", "idx-labels"),
        ("tokenizer", "bpe-tokenizer"),
    ];
    for (target, name) in extra {
        if let Some(seed) = asset(name)? {
            out.iter_mut().find(|t| t.name == target).expect("known target").seeds.push(seed);
        }
    }
    out.retain(|t| !t.seeds.is_empty());
    Ok(out)
}
