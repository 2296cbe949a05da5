//! Safetensors checkpoints, memory-mapped: a single `model.safetensors` or a sharded checkpoint
//! described by `model.safetensors.index.json`. Tensors are read by name and converted to f32 on the
//! host (the CPU reference computes in f32; the CUDA backend converts to its own dtype on upload).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// A host tensor in f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Transpose a 2-D tensor: [r, c] -> [c, r].
    pub fn transposed(&self) -> HostTensor {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0.0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        HostTensor::new(vec![c, r], out)
    }
}

/// Bytes of one checkpoint file: memory-mapped from disk, or embedded in the binary.
enum FileBytes {
    Mapped(memmap2::Mmap),
    Static(&'static [u8]),
}

impl FileBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Static(s) => s,
        }
    }
}

struct ShardFile {
    name: String,
    bytes: FileBytes,
    /// Offset of the data section (8 + header length).
    data_start: usize,
    metadata: safetensors::tensor::Metadata,
}

/// All tensors of a checkpoint, by name, across its shards.
pub struct TensorStore {
    location: String,
    shards: Vec<ShardFile>,
    /// tensor name -> shard index
    index: HashMap<String, usize>,
    /// Names `read_f32` has returned, so a loader can find the tensors it never used.
    read: Mutex<HashSet<String>>,
}

impl TensorStore {
    /// Open `model.safetensors` or `model.safetensors.index.json` in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            Self::open_sharded(dir, &index)
        } else if single.is_file() {
            let shard = ShardFile::open(&single)?;
            Self::from_shards(dir.display().to_string(), vec![shard])
        } else {
            Err(Error::ModelDir {
                dir: dir.to_path_buf(),
                msg: "no model.safetensors or model.safetensors.index.json (use --dummy-weights to run without weight files)".into(),
            })
        }
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Self> {
        let file = index_path.display().to_string();
        let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| Error::Json {
                file: file.clone(),
                cause: source,
            })?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::config(&file, "weight_map", "missing or not an object"))?;
        let mut shard_names: Vec<String> = Vec::new();
        let mut expected: HashMap<String, String> = HashMap::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| {
                Error::config(
                    &file,
                    &format!("weight_map.{tensor}"),
                    "expected a file name",
                )
            })?;
            if shard.contains('/') || shard.contains("..") {
                return Err(Error::config(
                    &file,
                    &format!("weight_map.{tensor}"),
                    format!("`{shard}` is not a file name in the model directory"),
                ));
            }
            if !shard_names.iter().any(|s| s == shard) {
                shard_names.push(shard.to_string());
            }
            expected.insert(tensor.clone(), shard.to_string());
        }
        shard_names.sort();
        let shards = shard_names
            .iter()
            .map(|s| ShardFile::open(&dir.join(s)))
            .collect::<Result<Vec<_>>>()?;
        let store = Self::from_shards(dir.display().to_string(), shards)?;
        // The index must agree with the shards' own headers.
        for (tensor, shard) in &expected {
            match store.index.get(tensor) {
                Some(&i) if store.shards[i].name.ends_with(shard.as_str()) => {}
                Some(&i) => {
                    return Err(Error::Safetensors {
                        file,
                        msg: format!(
                            "index puts `{tensor}` in {shard}, but it is in {}",
                            store.shards[i].name
                        ),
                    })
                }
                None => {
                    return Err(Error::MissingTensor {
                        name: tensor.clone(),
                        location: format!("{shard} (listed in {file})"),
                    })
                }
            }
        }
        Ok(store)
    }

    /// A store over files embedded in the binary (the tiny default models).
    pub fn from_static(location: &str, bytes: &'static [u8]) -> Result<Self> {
        let shard = ShardFile::parse(location.to_string(), FileBytes::Static(bytes))?;
        Self::from_shards(location.to_string(), vec![shard])
    }

    fn from_shards(location: String, shards: Vec<ShardFile>) -> Result<Self> {
        let mut index = HashMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.metadata.tensors().keys() {
                if let Some(prev) = index.insert(name.clone(), i) {
                    return Err(Error::Safetensors {
                        file: shard.name.clone(),
                        msg: format!("tensor `{name}` also appears in {}", shards[prev].name),
                    });
                }
            }
        }
        Ok(Self {
            location,
            shards,
            index,
            read: Mutex::new(HashSet::new()),
        })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    /// The file (shard) holding tensor `name`, if present.
    pub fn file_of(&self, name: &str) -> Option<&str> {
        Some(self.shards[*self.index.get(name)?].name.as_str())
    }

    /// The tensors no `read_f32` call has returned yet, sorted.
    pub fn unread(&self) -> Vec<String> {
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = self
            .index
            .keys()
            .filter(|n| !read.contains(*n))
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// The shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let shard = &self.shards[*self.index.get(name)?];
        shard.metadata.info(name).map(|i| i.shape.clone())
    }

    /// Read tensor `name` as f32, checking its shape against `expected`.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let &shard_idx = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            location: self.location.clone(),
        })?;
        let shard = &self.shards[shard_idx];
        let info = shard
            .metadata
            .info(name)
            .expect("index built from this shard's metadata");
        if info.shape != expected {
            return Err(Error::TensorShape {
                name: name.to_string(),
                file: shard.name.clone(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (begin, end) = info.data_offsets;
        let raw = &shard.bytes.bytes()[shard.data_start + begin..shard.data_start + end];
        let data = decode_f32(raw, info.dtype).ok_or_else(|| Error::TensorDtype {
            name: name.to_string(),
            file: shard.name.clone(),
            dtype: format!("{:?}", info.dtype),
        })?;
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
        Ok(HostTensor::new(info.shape.clone(), data))
    }
}

impl ShardFile {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the checkpoint is opened read-only; like every mmap-based loader we assume no other
        // process truncates it while it is mapped.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path.display().to_string(), FileBytes::Mapped(mmap))
    }

    fn parse(name: String, bytes: FileBytes) -> Result<Self> {
        let (header_len, metadata) =
            SafeTensors::read_metadata(bytes.bytes()).map_err(|e| Error::Safetensors {
                file: name.clone(),
                msg: describe_safetensors_error(&e),
            })?;
        Ok(Self {
            name,
            data_start: 8 + header_len,
            metadata,
            bytes,
        })
    }
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            "the data section does not match the header (truncated or corrupt file)".into()
        }
        E::HeaderTooSmall | E::InvalidHeaderLength => {
            "the header is cut short (truncated or not a safetensors file)".into()
        }
        other => format!("{other}"),
    }
}

/// Little-endian bytes of `dtype` to f32; `None` for dtypes a model's weights cannot have here.
fn decode_f32(raw: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    let out = match dtype {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    Some(out)
}

/// A tensor to write: name, dtype, shape and little-endian bytes.
pub struct OutTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl OutTensor {
    pub fn f32(name: &str, shape: Vec<usize>, data: &[f32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            bytes: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    pub fn i32(name: &str, data: &[i32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::I32,
            shape: vec![data.len()],
            bytes: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    pub fn f16(name: &str, shape: Vec<usize>, data: &[f32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::F16,
            shape,
            bytes: data
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect(),
        }
    }

    pub fn bf16(name: &str, shape: Vec<usize>, data: &[f32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::BF16,
            shape,
            bytes: data
                .iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect(),
        }
    }
}

/// Write tensors to a safetensors file, atomically (a temporary file renamed into place).
pub fn write_safetensors(path: &Path, tensors: &[OutTensor]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| Error::Safetensors {
                    file: path.display().to_string(),
                    msg: format!("tensor `{}`: {e}", t.name),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::Safetensors {
        file: path.display().to_string(),
        msg: e.to_string(),
    })?;
    crate::util::write_atomic(path, &bytes)
}

/// Read every tensor of a safetensors file as raw (dtype, shape, bytes), for tests and tools.
pub fn read_all_raw(path: &Path) -> Result<Vec<OutTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
        file: path.display().to_string(),
        msg: describe_safetensors_error(&e),
    })?;
    let mut out: Vec<OutTensor> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| OutTensor {
            name,
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            bytes: v.data().to_vec(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Decode raw little-endian bytes of a float tensor to f32 (tests and tools).
pub fn raw_to_f32(t: &OutTensor) -> Option<Vec<f32>> {
    decode_f32(&t.bytes, t.dtype)
}
