//! Writing GGUF files (llama.cpp's format, version 3), the counterpart of [`super::gguf`]:
//! typed metadata, a tensor directory, and the tensor data aligned to 32 bytes.
//!
//! llama.cpp checks metadata types strictly (a key it reads as `u32` must be stored as `u32`), so
//! every value carries its GGUF type ([`ValueType`]); values copied from another GGUF file keep
//! the type they had there. Tensors are given in PyTorch order (slowest dimension first) with
//! their bytes already encoded (`quant::ggml::encode`); the file is written to a temporary name
//! and renamed, so a reader never sees half a file.

use super::gguf::{GgmlType, GgufFile, Value, ValueType};
use anyhow::{Context, Result, bail, ensure};
use std::io::Write;
use std::path::Path;

const ALIGNMENT: usize = 32;

/// A GGUF file being assembled.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, ValueType, Value)>,
    tensors: Vec<(String, Vec<usize>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `key` (replacing an earlier value).
    pub fn set(&mut self, key: &str, ty: ValueType, value: Value) {
        self.metadata.retain(|(k, _, _)| k != key);
        self.metadata.push((key.to_string(), ty, value));
    }
    pub fn str(&mut self, key: &str, v: &str) {
        self.set(key, ValueType::STR, Value::Str(v.to_string()));
    }
    pub fn u32(&mut self, key: &str, v: u32) {
        self.set(key, ValueType::U32, Value::U64(v as u64));
    }
    pub fn f32(&mut self, key: &str, v: f32) {
        self.set(key, ValueType::F32, Value::F64(v as f64));
    }
    pub fn bool(&mut self, key: &str, v: bool) {
        self.set(key, ValueType::BOOL, Value::Bool(v));
    }

    /// Copy `key` from `file` with its original type; false when the file lacks it.
    pub fn copy(&mut self, file: &GgufFile, key: &str) -> bool {
        match (file.metadata.get(key), file.metadata_types.get(key)) {
            (Some(v), Some(t)) => {
                self.set(key, *t, v.clone());
                true
            }
            _ => false,
        }
    }

    /// Add a tensor: `shape` in PyTorch order, `data` encoded as `ty`.
    pub fn tensor(&mut self, name: &str, shape: &[usize], ty: GgmlType, data: Vec<u8>) -> Result<()> {
        let numel: usize = shape.iter().product();
        let (per_block, block_bytes) = ty.block();
        ensure!(
            shape.last().is_some_and(|&row| row.is_multiple_of(per_block))
                && data.len() == numel / per_block * block_bytes,
            "tensor '{name}': {} bytes of {} do not hold shape {shape:?}",
            data.len(),
            ty.name()
        );
        ensure!(!self.tensors.iter().any(|(n, ..)| n == name), "tensor '{name}' written twice");
        self.tensors.push((name.to_string(), shape.to_vec(), ty, data));
        Ok(())
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, ..)| n.as_str())
    }

    /// Write the file atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, ty, value) in &self.metadata {
            string(&mut header, key);
            header.extend_from_slice(&ty.ty.to_le_bytes());
            write_value(&mut header, *ty, value).with_context(|| format!("metadata '{key}'"))?;
        }
        let mut offset = 0usize;
        for (name, shape, ty, data) in &self.tensors {
            string(&mut header, name);
            header.extend_from_slice(&(shape.len() as u32).to_le_bytes());
            for d in shape.iter().rev() {
                header.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            header.extend_from_slice(&ty.id().to_le_bytes());
            header.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + data.len()).div_ceil(ALIGNMENT) * ALIGNMENT;
        }
        header.resize(header.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);
        super::atomic::write_atomic_with(path, |f| {
            f.write_all(&header)?;
            for (_, _, _, data) in &self.tensors {
                f.write_all(data)?;
                let pad = data.len().div_ceil(ALIGNMENT) * ALIGNMENT - data.len();
                f.write_all(&[0u8; ALIGNMENT][..pad])?;
            }
            Ok(())
        })
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// One value as GGUF type `ty` (its array items as `ty.item`).
fn write_value(out: &mut Vec<u8>, ty: ValueType, value: &Value) -> Result<()> {
    let int = |v: &Value| -> Result<i128> {
        match *v {
            Value::U64(x) => Ok(x as i128),
            Value::I64(x) => Ok(x as i128),
            Value::Bool(b) => Ok(b as i128),
            _ => bail!("{v:?} is not an integer"),
        }
    };
    let float = |v: &Value| v.as_f64().with_context(|| format!("{v:?} is not a number"));
    match (ty.ty, value) {
        (0, v) => out.push(u8::try_from(int(v)?)?),
        (1, v) => out.extend_from_slice(&i8::try_from(int(v)?)?.to_le_bytes()),
        (2, v) => out.extend_from_slice(&u16::try_from(int(v)?)?.to_le_bytes()),
        (3, v) => out.extend_from_slice(&i16::try_from(int(v)?)?.to_le_bytes()),
        (4, v) => out.extend_from_slice(&u32::try_from(int(v)?)?.to_le_bytes()),
        (5, v) => out.extend_from_slice(&i32::try_from(int(v)?)?.to_le_bytes()),
        (6, v) => out.extend_from_slice(&(float(v)? as f32).to_le_bytes()),
        (7, Value::Bool(b)) => out.push(*b as u8),
        (8, Value::Str(s)) => string(out, s),
        (9, Value::Array(items)) => {
            let item = ty.item.context("an array needs its item type")?;
            out.extend_from_slice(&item.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for v in items {
                write_value(out, ValueType { ty: item, item: None }, v)?;
            }
        }
        (10, v) => out.extend_from_slice(&u64::try_from(int(v)?)?.to_le_bytes()),
        (11, v) => out.extend_from_slice(&i64::try_from(int(v)?)?.to_le_bytes()),
        (12, v) => out.extend_from_slice(&float(v)?.to_le_bytes()),
        (t, v) => bail!("cannot write {v:?} as GGUF type {t}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_read_back_with_their_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        let mut w = GgufWriter::new();
        w.str("general.architecture", "llama");
        w.u32("llama.block_count", 2);
        w.f32("llama.rope.freq_base", 10000.0);
        w.bool("tokenizer.ggml.add_bos_token", false);
        w.set("tokenizer.ggml.token_type", ValueType::ARRAY_I32, Value::Array(vec![Value::I64(1), Value::I64(3)]));
        let data: Vec<f32> = (0..64).map(|i| i as f32 * 0.5).collect();
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.tensor("a.weight", &[2, 32], GgmlType::F32, bytes).unwrap();
        w.tensor("b.weight", &[3], GgmlType::F32, vec![0; 12]).unwrap();
        w.write(&path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.metadata["llama.block_count"], Value::U64(2));
        assert_eq!(f.metadata_types["llama.block_count"], ValueType::U32);
        assert_eq!(f.metadata_types["tokenizer.ggml.token_type"], ValueType::ARRAY_I32);
        assert_eq!(f.tensor_f32("a.weight").unwrap(), (vec![2, 32], data));
        // Copying keeps the type.
        let mut again = GgufWriter::new();
        assert!(again.copy(&f, "tokenizer.ggml.token_type") && !again.copy(&f, "missing"));
        assert_eq!(again.metadata[0].1, ValueType::ARRAY_I32);
    }
}
