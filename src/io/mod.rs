//! File formats and storage: safetensors, GGUF, PyTorch `.pth` (a code-free pickle reader),
//! CTranslate2, peft adapter directories, the hub cache, atomic writes, and moving parameters
//! between burn modules and name-keyed host tensors. Nothing here knows a model or a recipe.

pub mod atomic;
pub mod ctranslate2;
pub mod failpoint;
pub mod gguf;
pub mod gguf_writer;
pub mod hub;
pub mod params;
pub mod paths;
pub mod peft;
pub mod pickle;
pub mod pth;
pub mod safetensors;

use anyhow::Result;
use safetensors::HostTensor;

/// Where checkpoint tensors come from: a safetensors file, or a GGUF file seen through the
/// Hugging Face names (`models::gguf_llama`), a `.pth` file, a CTranslate2 model. Tensors come back in PyTorch layout.
pub trait WeightSource {
    /// The file, for error messages.
    fn describe(&self) -> String;
    fn contains(&self, key: &str) -> bool;
    fn names(&self) -> Vec<String>;
    /// Read a tensor, checking its shape (the error names the source, the key and both shapes).
    fn tensor_with_shape(&self, key: &str, expected: &[usize]) -> Result<HostTensor>;
}

/// A boxed source (a file whose format is known only at run time) is a source.
impl<S: WeightSource + ?Sized> WeightSource for Box<S> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn contains(&self, key: &str) -> bool {
        (**self).contains(key)
    }
    fn names(&self) -> Vec<String> {
        (**self).names()
    }
    fn tensor_with_shape(&self, key: &str, expected: &[usize]) -> Result<HostTensor> {
        (**self).tensor_with_shape(key, expected)
    }
}
