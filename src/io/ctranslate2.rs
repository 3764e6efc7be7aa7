//! CTranslate2 model files (`model.bin`, binary version 6): a spec name and revision, named
//! variables (rank, dims, dtype, raw bytes) and aliases (e.g. a decoder projection tied to the
//! embeddings). Float variables (f32, f16, bf16) are read as f32; small integer ones (flags,
//! head counts) as integers. Int8-quantized weights (`*_scale` companions) are refused.

use crate::io::safetensors::HostTensor;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Dtype {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2Dtype {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }
    fn width(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Ct2Variable {
    pub shape: Vec<usize>,
    pub dtype: Ct2Dtype,
    /// Shared: an alias is the same data under another name, and costs no copy.
    bytes: Arc<[u8]>,
}

#[derive(Debug)]
pub struct Ct2Model {
    pub path: PathBuf,
    pub spec: String,
    pub revision: u32,
    pub variables: BTreeMap<String, Ct2Variable>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else { bail!("truncated at byte {} (wanted {n} more)", self.at) };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    /// A length-prefixed, NUL-terminated string.
    fn string(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        let raw = self.take(n)?;
        let text = raw.strip_suffix(&[0]).unwrap_or(raw);
        Ok(String::from_utf8(text.to_vec())?)
    }
}

impl Ct2Model {
    /// Read `model.bin` (give the file or the model directory).
    pub fn open(path: &Path) -> Result<Self> {
        let path = if path.is_dir() { path.join("model.bin") } else { path.to_path_buf() };
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&bytes, path.clone()).with_context(|| format!("{}: not a CTranslate2 model", path.display()))
    }

    fn parse(bytes: &[u8], path: PathBuf) -> Result<Self> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u32()?;
        if version != 6 {
            bail!("binary version {version}; this reader knows version 6");
        }
        let spec = r.string()?;
        let revision = r.u32()?;
        let count = r.u32()?;
        let mut variables = BTreeMap::new();
        for _ in 0..count {
            let name = r.string()?;
            let rank = r.u8()? as usize;
            let shape = (0..rank).map(|_| r.u32().map(|d| d as usize)).collect::<Result<Vec<_>>>()?;
            let id = r.u8()?;
            let dtype = Ct2Dtype::from_id(id).with_context(|| format!("'{name}': unknown dtype id {id}"))?;
            let size = r.u32()? as usize;
            let expected = shape.iter().try_fold(dtype.width(), |acc, &d| acc.checked_mul(d));
            if expected != Some(size) {
                bail!("'{name}': {size} bytes for shape {shape:?} of {dtype:?}");
            }
            variables.insert(name, Ct2Variable { shape, dtype, bytes: r.take(size)?.into() });
        }
        let aliases = r.u32()?;
        for _ in 0..aliases {
            let alias = r.string()?;
            let target = r.string()?;
            let v = variables.get(&target).with_context(|| format!("alias '{alias}' of unknown '{target}'"))?.clone();
            variables.insert(alias, v);
        }
        if r.at != bytes.len() {
            bail!("{} trailing bytes", bytes.len() - r.at);
        }
        Ok(Self { path, spec, revision, variables })
    }

    fn get(&self, name: &str) -> Result<&Ct2Variable> {
        self.variables.get(name).with_context(|| format!("{}: no variable '{name}'", self.path.display()))
    }

    /// A float variable as f32 (int8 weights with a scale are refused).
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let v = self.get(name)?;
        if self.variables.contains_key(&format!("{name}_scale")) {
            bail!(
                "{}: '{name}' is int8-quantized; convert the model with --quantization float32/float16",
                self.path.display()
            );
        }
        let data: Vec<f32> = match v.dtype {
            Ct2Dtype::F32 => v.bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4"))).collect(),
            Ct2Dtype::F16 => v.bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Ct2Dtype::Bf16 => {
                v.bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            other => bail!("{}: '{name}' is {other:?}, not a float tensor", self.path.display()),
        };
        Ok(HostTensor::new(v.shape.clone(), data))
    }

    /// A scalar integer or boolean variable (`decoder/num_heads`, `encoder/pre_norm`, ...).
    pub fn scalar(&self, name: &str) -> Result<i64> {
        let v = self.get(name)?;
        let b = &v.bytes;
        Ok(match (v.dtype, b.len()) {
            (Ct2Dtype::I8, 1) => b[0] as i8 as i64,
            (Ct2Dtype::I16, 2) => i16::from_le_bytes([b[0], b[1]]) as i64,
            (Ct2Dtype::I32, 4) => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            _ => bail!("{}: '{name}' is not an integer scalar", self.path.display()),
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.variables.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16 + 1).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    #[test]
    fn reads_variables_scalars_and_aliases_and_rejects_truncation() {
        let mut b = 6u32.to_le_bytes().to_vec();
        string(&mut b, "TestSpec");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&2u32.to_le_bytes());
        string(&mut b, "w");
        b.push(2);
        for d in [1u32, 2] {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.push(4);
        b.extend_from_slice(&4u32.to_le_bytes());
        for v in [1.5f32, -2.0] {
            b.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        string(&mut b, "heads");
        b.push(0);
        b.push(2);
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&6i16.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        string(&mut b, "tied");
        string(&mut b, "w");
        let m = Ct2Model::parse(&b, "m.bin".into()).unwrap();
        assert_eq!((m.spec.as_str(), m.revision), ("TestSpec", 1));
        assert_eq!(m.tensor("tied").unwrap().data, vec![1.5, -2.0]);
        assert_eq!(m.scalar("heads").unwrap(), 6);
        let e = format!("{:#}", Ct2Model::parse(&b[..b.len() - 3], "m.bin".into()).unwrap_err());
        assert!(e.contains("truncated"), "{e}");
    }
}
