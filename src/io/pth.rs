//! PyTorch checkpoints (`.pth`, `.bin`, `.pt`) read without running Python: both layouts that
//! `torch.save` has written, through the code-free [`pickle`] reader.
//!
//! - zip (torch >= 1.6): `<archive>/data.pkl` holds the object, each storage is the entry
//!   `<archive>/data/<key>`.
//! - legacy (torch < 1.6, e.g. torchvision's ImageNet weights): consecutive pickles (magic number,
//!   protocol version, system info, the object, the list of storage keys), then each storage as
//!   an 8-byte element count followed by its raw little-endian data.
//!
//! The object must be a state dict (a dict of tensors, possibly nested one level under
//! `state_dict` or `model`); every tensor is converted to f32 and made contiguous.

use super::pickle::{self, StorageDtype, TensorRef, Value};
use super::safetensors::HostTensor;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;

/// A PyTorch checkpoint's tensors, in f32, keyed by their state-dict names.
pub struct PthFile {
    path: PathBuf,
    tensors: BTreeMap<String, HostTensor>,
}

impl PthFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let what = path.display().to_string();
        let (object, storages) =
            if bytes.starts_with(b"PK\x03\x04") { read_zip(&bytes, &what)? } else { read_legacy(&bytes, &what)? };
        let mut refs = Vec::new();
        collect_tensors(&object, "", &mut refs, &what)?;
        if refs.is_empty() {
            bail!("{what}: the checkpoint holds no tensors");
        }
        // A stride-0 view turns a few bytes into any number of elements; legitimate views (shared
        // storages, tied weights) stay within a few times the file's own size.
        let budget = (1usize << 24).saturating_add(bytes.len().saturating_mul(4));
        let total = refs.iter().try_fold(0usize, |acc, (_, t)| t.numel().and_then(|n| acc.checked_add(n)));
        if total.is_none_or(|total| total > budget) {
            bail!(
                "{what}: its tensors would expand to {} elements from a file of {} bytes (views that repeat one \
                 storage without end?); refusing to materialise them",
                total.map_or("more than 2^64".to_string(), |t| t.to_string()),
                bytes.len()
            );
        }
        let mut tensors = BTreeMap::new();
        for (name, t) in refs {
            let storage = storages.get(&t.storage_key).ok_or_else(|| {
                anyhow!("{what}: tensor `{name}` refers to storage {} which the file lacks", t.storage_key)
            })?;
            tensors.insert(name.clone(), materialise(&t, storage).with_context(|| format!("{what}: tensor `{name}`"))?);
        }
        Ok(Self { path: path.to_path_buf(), tensors })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }
    pub fn get(&self, key: &str) -> Option<&HostTensor> {
        self.tensors.get(key)
    }
    pub fn into_tensors(self) -> BTreeMap<String, HostTensor> {
        self.tensors
    }
}

impl super::WeightSource for PthFile {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn contains(&self, key: &str) -> bool {
        PthFile::contains(self, key)
    }
    fn names(&self) -> Vec<String> {
        PthFile::names(self)
    }
    fn tensor_with_shape(&self, key: &str, expected: &[usize]) -> Result<HostTensor> {
        let t = self.tensors.get(key).ok_or_else(|| anyhow!("{}: no tensor named `{key}`", self.path.display()))?;
        if t.shape != expected {
            bail!("{}: tensor `{key}` has shape {:?}, expected {:?}", self.path.display(), t.shape, expected);
        }
        Ok(t.clone())
    }
}

/// Raw bytes of each storage, by key.
type Storages = HashMap<String, Vec<u8>>;

fn read_zip(bytes: &[u8], what: &str) -> Result<(Value, Storages)> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| anyhow!("{what}: corrupt PyTorch zip checkpoint ({e})"))?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .ok_or_else(|| anyhow!("{what}: zip file without data.pkl: not a PyTorch checkpoint"))?
        .clone();
    let prefix = pkl.strip_suffix("data.pkl").expect("ends with data.pkl").to_string();
    // torch stores its entries uncompressed; a compressed entry may expand, but not without bound.
    let mut left = (256u64 << 20).saturating_add((bytes.len() as u64).saturating_mul(16));
    let mut read_entry = |zip: &mut zip::ZipArchive<_>, name: &str| -> Result<Vec<u8>> {
        let f = zip.by_name(name).map_err(|e| anyhow!("{what}: entry {name}: {e}"))?;
        let mut out = Vec::with_capacity(f.size().min(left).min(bytes.len() as u64) as usize);
        f.take(left + 1).read_to_end(&mut out).map_err(|e| anyhow!("{what}: entry {name}: {e}"))?;
        if out.len() as u64 > left {
            bail!("{what}: entry {name} decompresses to far more than the file's size (a zip bomb?)");
        }
        left -= out.len() as u64;
        Ok(out)
    };
    let (object, _) = pickle::read(&read_entry(&mut zip, &pkl)?, what)?;
    let data_prefix = format!("{prefix}data/");
    let mut storages = Storages::new();
    for name in &names {
        if let Some(key) = name.strip_prefix(&data_prefix)
            && !key.is_empty()
            && !key.contains('/')
        {
            storages.insert(key.to_string(), read_entry(&mut zip, name)?);
        }
    }
    Ok((object, storages))
}

fn read_legacy(bytes: &[u8], what: &str) -> Result<(Value, Storages)> {
    let not_torch = || anyhow!("{what}: not a PyTorch checkpoint (neither a zip archive nor the legacy format)");
    let (magic, mut pos) = pickle::read(bytes, what).map_err(|_| not_torch())?;
    if magic != Value::Int(LEGACY_MAGIC) {
        return Err(not_torch());
    }
    let next = |pos: &mut usize| -> Result<Value> {
        let (v, used) = pickle::read(&bytes[*pos..], what)?;
        *pos += used;
        Ok(v)
    };
    let _protocol = next(&mut pos)?;
    let sys_info = next(&mut pos)?;
    if let Value::Dict(d) = &sys_info {
        for (k, v) in d {
            if k.as_str() == Some("little_endian") && *v == Value::Bool(false) {
                bail!("{what}: big-endian checkpoints are not supported");
            }
        }
    }
    let object = next(&mut pos)?;
    let Value::List(keys) = next(&mut pos)? else {
        bail!("{what}: legacy checkpoint without a storage key list");
    };
    // Element sizes come from the storages the object refers to.
    let mut sizes = HashMap::new();
    let mut refs = Vec::new();
    collect_tensors(&object, "", &mut refs, what)?;
    for (_, t) in &refs {
        sizes.insert(t.storage_key.clone(), (t.dtype.size(), t.storage_numel));
    }
    let mut storages = Storages::new();
    for key in keys {
        let key = match key {
            Value::Str(s) => s,
            Value::Int(i) => i.to_string(),
            _ => bail!("{what}: storage key is not a string"),
        };
        if bytes.len() - pos < 8 {
            bail!("{what}: file ends before storage {key} (truncated?)");
        }
        let numel = u64::from_le_bytes(bytes[pos..pos + 8].try_into().expect("8 bytes")) as usize;
        pos += 8;
        let &(elem, expected) = sizes
            .get(&key)
            .ok_or_else(|| anyhow!("{what}: storage {key} is not used by any tensor; cannot tell its element size"))?;
        if numel != expected {
            bail!("{what}: storage {key} holds {numel} elements, its tensors expect {expected}");
        }
        let len = numel.checked_mul(elem).filter(|&len| len <= bytes.len() - pos);
        let Some(len) = len else {
            bail!("{what}: file ends inside storage {key} (truncated?)");
        };
        storages.insert(key, bytes[pos..pos + len].to_vec());
        pos += len;
    }
    Ok((object, storages))
}

/// Every tensor in a (possibly nested) dict, with dotted names. A top-level `state_dict` or
/// `model` entry is unwrapped, the way training scripts commonly save checkpoints.
fn collect_tensors(v: &Value, prefix: &str, out: &mut Vec<(String, TensorRef)>, what: &str) -> Result<()> {
    match v {
        Value::Tensor(t) => out.push((prefix.to_string(), t.clone())),
        Value::Dict(items) => {
            if prefix.is_empty() {
                for wrapper in ["state_dict", "model"] {
                    if let Some((_, inner)) = items.iter().find(|(k, _)| k.as_str() == Some(wrapper))
                        && matches!(inner, Value::Dict(_))
                    {
                        return collect_tensors(inner, "", out, what);
                    }
                }
            }
            for (k, v) in items {
                let Some(k) = k.as_str() else { continue };
                let name = if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
                collect_tensors(v, &name, out, what)?;
            }
        }
        // Other entries (epoch counters, hyperparameters) are not weights.
        _ => {}
    }
    Ok(())
}

/// Gather a strided view of a storage into a contiguous f32 tensor.
fn materialise(t: &TensorRef, storage: &[u8]) -> Result<HostTensor> {
    let elem = t.dtype.size();
    if storage.len() / elem < t.storage_numel {
        bail!("storage {} has {} bytes, too few for {} elements", t.storage_key, storage.len(), t.storage_numel);
    }
    let n = t.numel().ok_or_else(|| anyhow!("shape {:?} has too many elements", t.shape))?;
    if n > 0 && t.last_element().is_none_or(|last| last >= t.storage_numel) {
        bail!("view {:?} at offset {} reaches past its storage of {} elements", t.shape, t.offset, t.storage_numel);
    }
    let read = |i: usize| -> f32 {
        let b = &storage[i * elem..(i + 1) * elem];
        match t.dtype {
            StorageDtype::F32 => f32::from_le_bytes(b.try_into().expect("4")),
            StorageDtype::F64 => f64::from_le_bytes(b.try_into().expect("8")) as f32,
            StorageDtype::F16 => half::f16::from_le_bytes(b.try_into().expect("2")).to_f32(),
            StorageDtype::Bf16 => half::bf16::from_le_bytes(b.try_into().expect("2")).to_f32(),
            StorageDtype::I64 => i64::from_le_bytes(b.try_into().expect("8")) as f32,
            StorageDtype::I32 => i32::from_le_bytes(b.try_into().expect("4")) as f32,
            StorageDtype::I16 => i16::from_le_bytes(b.try_into().expect("2")) as f32,
            StorageDtype::I8 => b[0] as i8 as f32,
            StorageDtype::U8 | StorageDtype::Bool => b[0] as f32,
        }
    };
    let mut data = Vec::with_capacity(n);
    let mut index = vec![0usize; t.shape.len()];
    for _ in 0..n {
        let at = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        data.push(read(at));
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(HostTensor::new(t.shape.clone(), data))
}
