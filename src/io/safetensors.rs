//! Reading and writing `.safetensors` files with errors that name the file and the key.

use super::atomic::write_atomic_with;
use anyhow::{Context, Result, anyhow, bail};
use safetensors::tensor::{Dtype, Metadata, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A memory-mapped safetensors file whose header has been validated.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    data_start: usize,
    metadata: Metadata,
}

/// A tensor converted to f32, in the file's (row-major) layout.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// Swap the two axes of a matrix (PyTorch `Linear` stores `[out, in]`, burn `[in, out]`).
    pub fn transpose2(&self) -> HostTensor {
        let [r, c] = [self.shape[0], self.shape[1]];
        let mut out = vec![0f32; self.data.len()];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        HostTensor::new(vec![c, r], out)
    }
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the map is read-only and the file is not modified while we hold it; a file
        // truncated underneath us is a user error we cannot defend against without copying.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&mmap)
            .map_err(|e| anyhow!("{}: corrupt or not a safetensors file ({e})", path.display()))?;
        let data_start = 8 + header_len;
        let data_len = mmap.len() - data_start;
        if metadata.data_len() != data_len {
            bail!(
                "{}: corrupt safetensors file: header describes {} data bytes but the file holds {}",
                path.display(),
                metadata.data_len(),
                data_len
            );
        }
        Ok(Self { path: path.to_path_buf(), mmap, data_start, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metadata.tensors().into_keys().collect();
        names.sort();
        names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.metadata.info(name).map(|i| i.shape.clone())
    }

    pub fn user_metadata(&self) -> HashMap<String, String> {
        self.metadata.metadata().clone().unwrap_or_default()
    }

    /// Read one tensor as f32 (F16, BF16, F64 and small integer types are converted).
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let info =
            self.metadata.info(name).ok_or_else(|| anyhow!("{}: missing tensor '{name}'", self.path.display()))?;
        let (start, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        let data =
            decode_f32(bytes, info.dtype).with_context(|| format!("{}: tensor '{name}'", self.path.display()))?;
        Ok(HostTensor::new(info.shape.clone(), data))
    }

    /// Read a tensor and check its shape, naming file, key and both shapes on mismatch.
    pub fn tensor_with_shape(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let t = self.tensor(name)?;
        if t.shape != expected {
            bail!(
                "{}: shape mismatch for '{name}': file has {:?}, model expects {:?}",
                self.path.display(),
                t.shape,
                expected
            );
        }
        Ok(t)
    }
}

fn decode_f32(bytes: &[u8], dtype: Dtype) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F64 => {
            bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect()
        }
        // Small integers (codes, ids) are exact in f32.
        Dtype::U8 => bytes.iter().map(|&b| b as f32).collect(),
        Dtype::I32 => bytes.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32).collect(),
        Dtype::I64 => {
            bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect()
        }
        other => bail!("dtype {other:?} is not supported"),
    })
}

/// Write f32 tensors (sorted by name) to `path` atomically, with optional string metadata.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, HostTensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| (name.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone()))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(name, data, shape)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| anyhow!("tensor '{name}': {e}"))
        })
        .collect::<Result<_>>()?;
    let serialized =
        safetensors::tensor::serialize(views, metadata).map_err(|e| anyhow!("serializing {}: {e}", path.display()))?;
    write_atomic_with(path, |f| {
        use std::io::Write;
        f.write_all(&serialized).map_err(Into::into)
    })
}

impl super::WeightSource for SafetensorsFile {
    fn describe(&self) -> String {
        self.path().display().to_string()
    }
    fn contains(&self, key: &str) -> bool {
        SafetensorsFile::contains(self, key)
    }
    fn names(&self) -> Vec<String> {
        SafetensorsFile::names(self)
    }
    fn tensor_with_shape(&self, key: &str, expected: &[usize]) -> Result<HostTensor> {
        SafetensorsFile::tensor_with_shape(self, key, expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_shape_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        let t = HostTensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        write_safetensors(&p, &[("a.weight".into(), t.clone())], None).unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        assert_eq!(f.tensor("a.weight").unwrap().data, t.data);
        assert_eq!(f.tensor("a.weight").unwrap().transpose2().data, vec![1., 4., 2., 5., 3., 6.]);
        let err = f.tensor_with_shape("a.weight", &[3, 2]).unwrap_err().to_string();
        assert!(err.contains("a.weight") && err.contains("[2, 3]") && err.contains("w.safetensors"), "{err}");
        let err = f.tensor("nope").unwrap_err().to_string();
        assert!(err.contains("missing tensor 'nope'"), "{err}");
    }

    #[test]
    fn truncated_file_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        let t = HostTensor::new(vec![4], vec![1., 2., 3., 4.]);
        write_safetensors(&p, &[("x".into(), t)], None).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let err = SafetensorsFile::open(&p).err().unwrap().to_string();
        assert!(err.contains("w.safetensors"), "{err}");
        std::fs::write(&p, b"garbage").unwrap();
        let err = SafetensorsFile::open(&p).err().unwrap().to_string();
        assert!(err.contains("corrupt or not a safetensors file"), "{err}");
    }
}
