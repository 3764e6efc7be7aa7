//! Reading GGUF files (llama.cpp's format): metadata, tensor directory, and tensor data in the
//! ggml block formats finetune understands (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K).
//!
//! Layout (GGUF v2/v3, little endian): magic `GGUF`, version, tensor count, metadata count; the
//! metadata as typed key/value pairs; one record per tensor (name, dims with the fastest-varying
//! first, ggml type, offset); then the tensor data, aligned to `general.alignment` (32).
//! Quantized types store fixed-size blocks along the fastest dimension (a PyTorch row).

use anyhow::{Context, Result, anyhow, bail, ensure};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A metadata value's GGUF type id (0 u8 … 12 f64, 8 string, 9 array) and, for an array, its
/// items' type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueType {
    pub ty: u32,
    pub item: Option<u32>,
}

impl ValueType {
    pub const U32: Self = Self { ty: 4, item: None };
    pub const I32: Self = Self { ty: 5, item: None };
    pub const F32: Self = Self { ty: 6, item: None };
    pub const BOOL: Self = Self { ty: 7, item: None };
    pub const STR: Self = Self { ty: 8, item: None };
    pub const ARRAY_STR: Self = Self { ty: 9, item: Some(8) };
    pub const ARRAY_I32: Self = Self { ty: 9, item: Some(5) };
    pub const ARRAY_F32: Self = Self { ty: 9, item: Some(6) };
}

/// The ggml storage types we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4K,
    Q6K,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// The type's id in a GGUF tensor record.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q6K => 14,
            Self::Bf16 => 30,
        }
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q6K => (256, 210),
        }
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, Self::F32 | Self::F16 | Self::Bf16)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q6K => "Q6_K",
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// PyTorch order (slowest first): GGUF's `[ne0, ne1]` becomes `[ne1, ne0]`.
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Byte range inside the file.
    pub start: usize,
    pub len: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A memory-mapped GGUF file with its metadata and tensor directory parsed.
pub struct GgufFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    pub metadata: BTreeMap<String, Value>,
    /// Each metadata value's GGUF type (and an array's item type), so it can be written again
    /// exactly (llama.cpp checks types: a `u32` key written as `u64` is refused).
    pub metadata_types: BTreeMap<String, ValueType>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile").field("path", &self.path).field("tensors", &self.tensors.len()).finish()
    }
}

/// Metadata arrays may nest (an array of arrays); deeper than this is a corrupt file, not data.
const MAX_NESTING: usize = 8;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| anyhow!("truncated at byte {} (wanted {n} more bytes)", self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    /// A count of items that each take at least `min_bytes` bytes of what is left of the file:
    /// a count the rest of the file cannot hold is corrupt (and must not size an allocation).
    fn count(&mut self, min_bytes: usize) -> Result<usize> {
        let n = self.u64()?;
        let left = (self.bytes.len() - self.pos) as u64;
        ensure!(
            n.saturating_mul(min_bytes.max(1) as u64) <= left,
            "count {n} at byte {} exceeds what the rest of the file ({left} bytes) can hold",
            self.pos - 8
        );
        Ok(n as usize)
    }
    fn len(&mut self) -> Result<usize> {
        self.count(1)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        let pos = self.pos;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| anyhow!("string at byte {pos} is not UTF-8"))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U64(self.u8()? as u64),
            1 => Value::I64(self.u8()? as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.take(2)?.try_into()?) as u64),
            3 => Value::I64(i16::from_le_bytes(self.take(2)?.try_into()?) as i64),
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(self.u32()? as i32 as i64),
            6 => Value::F64(f32::from_le_bytes(self.take(4)?.try_into()?) as f64),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::Str(self.string()?),
            9 => {
                ensure!(depth < MAX_NESTING, "metadata arrays nested deeper than {MAX_NESTING}");
                let item = self.u32()?;
                let n = self.count(Self::min_size(item))?;
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_le_bytes(self.take(8)?.try_into()?)),
            other => bail!("unknown metadata value type {other}"),
        })
    }
    /// The fewest bytes one value of type `ty` takes (strings and arrays: their length field).
    fn min_size(ty: u32) -> usize {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8..=12 => 8,
            _ => 1,
        }
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: read-only map of a file we do not modify while it is open.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        let (metadata, metadata_types, tensors) =
            Self::parse(&mmap).with_context(|| format!("{}: corrupt or not a GGUF file", path.display()))?;
        Ok(Self { path: path.to_path_buf(), mmap, metadata, metadata_types, tensors })
    }

    #[allow(clippy::type_complexity)]
    fn parse(
        bytes: &[u8],
    ) -> Result<(BTreeMap<String, Value>, BTreeMap<String, ValueType>, BTreeMap<String, TensorInfo>)> {
        let mut c = Cursor { bytes, pos: 0 };
        ensure!(c.take(4)? == b"GGUF", "bad magic (expected 'GGUF')");
        let version = c.u32()?;
        ensure!(matches!(version, 2 | 3), "GGUF version {version} is not supported (2 or 3)");
        // A tensor entry takes at least 24 bytes (name length, dims, type, offset), a key-value
        // pair 13 (key length, type, one byte of value).
        let n_tensors = c.count(24)?;
        let n_kv = c.count(13)?;
        let mut metadata = BTreeMap::new();
        let mut types = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            // An array's item type is the next u32; peek it before the value is read.
            let item =
                (ty == 9).then(|| c.bytes.get(c.pos..c.pos + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4"))));
            let v = c.value(ty, 0).with_context(|| format!("metadata '{key}'"))?;
            types.insert(key.clone(), ValueType { ty, item: item.flatten() });
            metadata.insert(key, v);
        }
        let mut raw = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            ensure!(n_dims <= 4, "tensor '{name}' has {n_dims} dimensions");
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = c.u64()?;
                dims.push(usize::try_from(d).with_context(|| format!("tensor '{name}': dimension {d}"))?);
            }
            let ty_id = c.u32()?;
            let ty = GgmlType::from_id(ty_id)
                .ok_or_else(|| anyhow!("tensor '{name}' has ggml type {ty_id}, which finetune cannot read (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K)"))?;
            let offset = usize::try_from(c.u64()?).with_context(|| format!("tensor '{name}': offset"))?;
            dims.reverse();
            raw.push((name, dims, ty, offset));
        }
        let alignment = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(32);
        ensure!(
            alignment.is_power_of_two() && alignment <= 1 << 16,
            "general.alignment = {alignment}: must be a power of two up to 65536"
        );
        let alignment = alignment as usize;
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, shape, ty, offset) in raw {
            let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            let numel =
                numel.with_context(|| format!("tensor '{name}': shape {shape:?} has more elements than fit"))?;
            let (per_block, block_bytes) = ty.block();
            let row = *shape.last().unwrap_or(&1);
            ensure!(
                row.is_multiple_of(per_block),
                "tensor '{name}': row length {row} is not a multiple of {per_block}"
            );
            let len = (numel / per_block).checked_mul(block_bytes);
            let start = data_start.checked_add(offset);
            let (Some(len), Some(start)) = (len, start) else {
                bail!("tensor '{name}': offset {offset} or shape {shape:?} is beyond any file");
            };
            ensure!(
                start.checked_add(len).is_some_and(|e| e <= bytes.len()),
                "tensor '{name}' ({} bytes at {start}) runs past the end of the file ({} bytes)",
                len,
                bytes.len()
            );
            tensors.insert(name, TensorInfo { shape, ggml_type: ty, start, len });
        }
        Ok((metadata, types, tensors))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata value, with an error naming the file and the key.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| anyhow!("{}: metadata key '{key}' is missing", self.path.display()))
    }

    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| anyhow!("{}: missing tensor '{name}'", self.path.display()))
    }

    /// The stored bytes of a tensor (blocks, for quantized types).
    pub fn raw(&self, name: &str) -> Result<&[u8]> {
        let info = self.info(name)?;
        Ok(&self.mmap[info.start..info.start + info.len])
    }

    /// A tensor dequantized to f32, row-major in PyTorch order.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.info(name)?;
        let mut out = vec![0f32; info.numel()];
        dequantize(info.ggml_type, self.raw(name)?, &mut out);
        Ok((info.shape.clone(), out))
    }
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Dequantize whole blocks of `ty` from `src` into `out` (`out.len()` elements).
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    let (per_block, block_bytes) = ty.block();
    debug_assert_eq!(src.len(), out.len() / per_block * block_bytes);
    let blocks = src.chunks_exact(block_bytes).zip(out.chunks_exact_mut(per_block));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16(b)),
        GgmlType::Bf16 => blocks.for_each(|(b, y)| y[0] = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| {
            let d = f16(b);
            for (j, &q) in b[2..18].iter().enumerate() {
                y[j] = ((q & 0xF) as f32 - 8.0) * d;
                y[j + 16] = ((q >> 4) as f32 - 8.0) * d;
            }
        }),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| {
            let (d, m) = (f16(b), f16(&b[2..]));
            for (j, &q) in b[4..20].iter().enumerate() {
                y[j] = (q & 0xF) as f32 * d + m;
                y[j + 16] = (q >> 4) as f32 * d + m;
            }
        }),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| {
            // d, 32 high bits, 16 bytes of low nibbles (ggml's dequantize_row_q5_0).
            let d = f16(b);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for (j, &q) in b[6..22].iter().enumerate() {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                y[j] = (((q as u32 & 0xF) | h0) as f32 - 16.0) * d;
                y[j + 16] = (((q as u32 >> 4) | h1) as f32 - 16.0) * d;
            }
        }),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| {
            let d = f16(b);
            for (j, &q) in b[2..34].iter().enumerate() {
                y[j] = q as i8 as f32 * d;
            }
        }),
        GgmlType::Q4K => blocks.for_each(|(b, y)| dequantize_q4k(b, y)),
        GgmlType::Q6K => blocks.for_each(|(b, y)| dequantize_q6k(b, y)),
    }
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K block (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, s: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    };
    (sc as f32, m as f32)
}

/// Q4_K: 256 values as 8 sub-blocks of 32 with 6-bit scales and minima (`d`, `dmin`, 12 bytes
/// of scales, 128 bytes of 4-bit codes).
fn dequantize_q4k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16(b), f16(&b[2..]));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        for l in 0..32 {
            y[l] = d * sc1 * (q[l] & 0xF) as f32 - dmin * m1;
            y[l + 32] = d * sc2 * (q[l] >> 4) as f32 - dmin * m2;
        }
    }
}

/// Q6_K: 256 values as 16 sub-blocks of 16 with 8-bit scales (128 bytes of low 4 bits, 64 of high
/// 2 bits, 16 scales, `d`).
fn dequantize_q6k(b: &[u8], y: &mut [f32]) {
    let d = f16(&b[208..]);
    for half_block in 0..2 {
        let ql = &b[half_block * 64..];
        let qh = &b[128 + half_block * 32..];
        let sc = &b[192 + half_block * 8..];
        let y = &mut y[half_block * 128..];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| sc[is + k] as i8 as f32;
            y[l] = d * s(0) * q1 as f32;
            y[l + 32] = d * s(2) * q2 as f32;
            y[l + 64] = d * s(4) * q3 as f32;
            y[l + 96] = d * s(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_gguf(path: &Path, tensors: &[(&str, &[usize], u32, Vec<u8>)]) {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend(1u64.to_le_bytes());
        let s = |out: &mut Vec<u8>, s: &str| {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        };
        s(&mut out, "general.architecture");
        out.extend(8u32.to_le_bytes());
        s(&mut out, "llama");
        let mut offset = 0u64;
        for (name, dims, ty, data) in tensors {
            s(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims.iter().rev() {
                out.extend((*d as u64).to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        for (_, _, _, data) in tensors {
            out.extend(data);
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
        }
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn reads_metadata_and_dequantizes_q8_0_and_q4_1() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        // Q8_0: d = 0.5, codes -16..16.
        let mut q8 = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        q8.extend((-16i8..16).map(|v| v as u8));
        // Q4_1: d = 2, m = -1, codes 0..16 in the low nibbles, 15 - j in the high ones.
        let mut q41 = half::f16::from_f32(2.0).to_le_bytes().to_vec();
        q41.extend(half::f16::from_f32(-1.0).to_le_bytes());
        q41.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
        let f32s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        write_gguf(&p, &[("a", &[1, 32], 8, q8), ("b", &[32], 3, q41), ("c", &[2], 0, f32s)]);
        let f = GgufFile::open(&p).unwrap();
        assert_eq!(f.get("general.architecture").and_then(Value::as_str), Some("llama"));
        let (shape, a) = f.tensor_f32("a").unwrap();
        assert_eq!(shape, vec![1, 32]);
        assert_eq!(a[0], -8.0);
        assert_eq!(a[31], 7.5);
        let (_, b) = f.tensor_f32("b").unwrap();
        assert_eq!((b[0], b[15], b[16], b[31]), (-1.0, 29.0, 29.0, -1.0));
        assert_eq!(f.tensor_f32("c").unwrap().1, vec![1.5, -2.0]);
        let err = f.tensor_f32("nope").unwrap_err().to_string();
        assert!(err.contains("missing tensor 'nope'") && err.contains("m.gguf"), "{err}");
    }

    /// Every block type against llama.cpp's own Python dequantization (`gguf.quants.dequantize`)
    /// of random blocks (scripts/make_gguf_fixtures.py): exact, since both compute in f32 from
    /// the same f16 scales.
    #[test]
    fn block_types_match_gguf_py() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let f = GgufFile::open(&fixtures.join("gguf-blocks.gguf")).unwrap();
        let reference =
            crate::io::safetensors::SafetensorsFile::open(&fixtures.join("gguf-blocks-reference.safetensors")).unwrap();
        for name in ["q4_0", "q4_1", "q8_0", "q4_k", "q6_k", "f16"] {
            let (shape, got) = f.tensor_f32(name).unwrap();
            let want = reference.tensor(name).unwrap();
            assert_eq!(shape, want.shape, "{name}");
            let worst = got.iter().zip(&want.data).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0f32, f32::max);
            assert!(worst <= 1e-6, "{name}: max relative difference {worst}");
        }
    }

    #[test]
    fn corrupt_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.gguf");
        std::fs::write(&p, b"GGML0000").unwrap();
        let err = format!("{:#}", GgufFile::open(&p).err().unwrap());
        assert!(err.contains("bad.gguf") && err.contains("bad magic"), "{err}");
        write_gguf(&p, &[("a", &[1, 32], 8, vec![0; 34])]);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 40]).unwrap();
        let err = format!("{:#}", GgufFile::open(&p).err().unwrap());
        assert!(err.contains("runs past the end"), "{err}");
    }
}
