//! A bounds-checked reader for GGUF headers: metadata, tensor infos, and a check that every
//! tensor lies inside the file with the byte size its type and shape imply. It reads headers
//! only (a few MB at most), never allocates from an unchecked count, and never panics, so the
//! daemon can look at a model (and refuse a broken one) before handing it to llama.cpp.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

const MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Longest metadata string accepted (chat templates are tens of KB; 16 MiB is generous).
const MAX_STRING: u64 = 16 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GgufError {
    #[error("not a GGUF file: it starts with {found:?}, GGUF files start with \"GGUF\"")]
    BadMagic { found: String },
    #[error("GGUF version {version} is not supported (2 and 3 are)")]
    UnsupportedVersion { version: u32 },
    #[error("file is truncated: reading {what} at byte {offset} needs {needed} bytes, the file has {file_size}")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        file_size: u64,
    },
    #[error("{what} at byte {offset} is invalid: {detail}")]
    Invalid {
        what: String,
        offset: u64,
        detail: String,
    },
    #[error("tensor {name:?} has unknown ggml type {type_id}")]
    UnknownTensorType { name: String, type_id: u32 },
    #[error("tensor {name:?} ({type_name}, shape {shape:?}) needs bytes {start}..{end} but the file ends at {file_size}: the file is truncated or corrupt")]
    TensorOutOfBounds {
        name: String,
        type_name: &'static str,
        shape: Vec<u64>,
        start: u64,
        end: u64,
        file_size: u64,
    },
    #[error("metadata key {key:?} at byte {offset} appears twice")]
    DuplicateKey { key: String, offset: u64 },
    #[error("tensor {name:?} (info at byte {offset}) appears twice")]
    DuplicateTensor { name: String, offset: u64 },
    #[error("tensor {name:?} (bytes {start}..{end}) overlaps tensor {other:?} (bytes {other_start}..{other_end})")]
    TensorOverlap {
        name: String,
        start: u64,
        end: u64,
        other: String,
        other_start: u64,
        other_end: u64,
    },
    #[error("cannot read the file: {0}")]
    Io(String),
}

/// A metadata value. Arrays keep their element type and length, and their contents only when
/// they are short scalar arrays (token lists are skipped, not stored).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    String(String),
    Array { elem_type: u32, len: u64 },
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U64(v) => Some(v),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ne[0] first, as ggml stores it.
    pub shape: Vec<u64>,
    pub type_id: u32,
    /// Offset inside the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

/// A metadata array's contents, kept only where a caller asked for them
/// ([`read_header_with_tokenizer`]): integers of any width as i64, floats as f64.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    Strings(Vec<String>),
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Bools(Vec<bool>),
}

#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    /// The contents of the `tokenizer.*` arrays (tokens, scores, token types, merges), when the
    /// header was read with [`read_header_with_tokenizer`]; empty otherwise.
    pub arrays: BTreeMap<String, MetaArray>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    pub file_size: u64,
}

impl GgufHeader {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
    /// `{arch}.{suffix}` as a number.
    pub fn arch_u64(&self, suffix: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.get_u64(&format!("{arch}.{suffix}"))
    }
    pub fn parameter_count(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.n_elements)
            .fold(0u64, u64::saturating_add)
    }
    /// Quantization name from `general.file_type` (llama.cpp's LLAMA_FTYPE), or from the most
    /// common tensor type when the key is missing.
    pub fn quantization(&self) -> String {
        if let Some(ft) = self.get_u64("general.file_type") {
            if let Some(name) = file_type_name(ft) {
                return name.to_string();
            }
            return format!("file_type {ft}");
        }
        let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
        for t in &self.tensors {
            *counts.entry(t.type_id).or_default() += t.n_bytes;
        }
        counts
            .into_iter()
            .max_by_key(|&(_, bytes)| bytes)
            .and_then(|(ty, _)| ggml_type(ty).map(|t| t.name.to_string()))
            .unwrap_or_else(|| "unknown".into())
    }
}

/// Block layout of a ggml tensor type.
#[derive(Debug, Clone, Copy)]
pub struct GgmlType {
    pub name: &'static str,
    pub block_elements: u64,
    pub block_bytes: u64,
}

/// ggml's type table (ggml.h `enum ggml_type`), for the types GGUF files carry.
pub fn ggml_type(id: u32) -> Option<GgmlType> {
    let (name, block_elements, block_bytes) = match id {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        39 => ("MXFP4", 32, 17),
        _ => return None,
    };
    Some(GgmlType {
        name,
        block_elements,
        block_bytes,
    })
}

/// llama.cpp's `enum llama_ftype` names.
pub fn file_type_name(ft: u64) -> Option<&'static str> {
    Some(match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// Reads and checks the header of the GGUF file at `path` (array contents are skipped).
pub fn read_header(path: &Path) -> Result<GgufHeader, GgufError> {
    read_header_keeping(path, false)
}

/// Like [`read_header`], keeping the contents of the `tokenizer.*` arrays in
/// [`GgufHeader::arrays`]: what a backend that builds its own tokenizer needs. Every element is
/// read with the same bounds as the rest of the header.
pub fn read_header_with_tokenizer(path: &Path) -> Result<GgufHeader, GgufError> {
    read_header_keeping(path, true)
}

fn read_header_keeping(path: &Path, tokenizer: bool) -> Result<GgufHeader, GgufError> {
    let file = File::open(path).map_err(|e| GgufError::Io(e.to_string()))?;
    let file_size = file
        .metadata()
        .map_err(|e| GgufError::Io(e.to_string()))?
        .len();
    parse(
        BufReader::with_capacity(1 << 16, file),
        file_size,
        tokenizer,
    )
}

/// Parses a GGUF header from `reader`, a stream of a file of `file_size` bytes.
pub fn parse_header(reader: impl Read, file_size: u64) -> Result<GgufHeader, GgufError> {
    parse(reader, file_size, false)
}

fn parse(reader: impl Read, file_size: u64, tokenizer: bool) -> Result<GgufHeader, GgufError> {
    let mut r = Cursor {
        inner: reader,
        pos: 0,
        file_size,
        keep: tokenizer.then(BTreeMap::new),
    };
    let magic = r.bytes::<4>("magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic {
            found: String::from_utf8_lossy(&magic).into_owned(),
        });
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("metadata count")?;
    // Each KV needs at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at least
    // 8 + 4 + 4 + 8 bytes. Counts that cannot fit in the file are lies.
    r.check_count("metadata count", n_kv, 13)?;
    r.check_count("tensor count", n_tensors, 24)?;

    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string("metadata key")?;
        let at = r.pos;
        let ty = r.u32("metadata type")?;
        let value = r.value(ty, &key, at)?;
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey {
                key,
                offset: at.saturating_sub(4),
            });
        }
        metadata.insert(key, value);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(GgufError::Invalid {
                    what: "general.alignment".into(),
                    offset: 0,
                    detail: format!("{v:?} is not a power of two up to 1 MiB"),
                })
            }
        },
    };

    // n_tensors was checked against the file size above, so this capacity is bounded.
    let mut tensors = Vec::with_capacity(usize::try_from(n_tensors).unwrap_or(0));
    let mut names = std::collections::HashSet::new();
    for _ in 0..n_tensors {
        let name_at = r.pos;
        let name = r.string("tensor name")?;
        if !names.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor {
                name,
                offset: name_at,
            });
        }
        let at = r.pos;
        let n_dims = r.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::Invalid {
                what: format!("tensor {name:?} dimension count"),
                offset: at,
                detail: format!("{n_dims} is not in 1..={MAX_DIMS}"),
            });
        }
        let mut shape = Vec::with_capacity(MAX_DIMS as usize);
        for _ in 0..n_dims {
            shape.push(r.u64("tensor dimension")?);
        }
        let type_id = r.u32("tensor type")?;
        let offset = r.u64("tensor offset")?;
        let ty = ggml_type(type_id).ok_or_else(|| GgufError::UnknownTensorType {
            name: name.clone(),
            type_id,
        })?;
        let n_elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= file_size.saturating_mul(ty.block_elements))
            .ok_or_else(|| GgufError::Invalid {
                what: format!("tensor {name:?} shape"),
                offset: at,
                detail: format!("{shape:?} has more elements than the file can hold"),
            })?;
        let first = shape.first().copied().unwrap_or(0);
        if first % ty.block_elements != 0 {
            return Err(GgufError::Invalid {
                what: format!("tensor {name:?} shape"),
                offset: at,
                detail: format!(
                    "first dimension {} is not a multiple of {}'s block of {}",
                    first, ty.name, ty.block_elements
                ),
            });
        }
        let n_bytes = n_elements / ty.block_elements * ty.block_bytes;
        if offset % alignment != 0 {
            return Err(GgufError::Invalid {
                what: format!("tensor {name:?} offset"),
                offset: at,
                detail: format!("{offset} is not aligned to {alignment}"),
            });
        }
        tensors.push(TensorInfo {
            name,
            shape,
            type_id,
            offset,
            n_elements,
            n_bytes,
        });
    }
    let data_offset = r
        .pos
        .div_ceil(alignment)
        .checked_mul(alignment)
        .ok_or_else(|| GgufError::Invalid {
            what: "data section start".into(),
            offset: r.pos,
            detail: "overflows".into(),
        })?;
    if !tensors.is_empty() && data_offset > file_size {
        return Err(GgufError::Truncated {
            what: "tensor data section".into(),
            offset: data_offset,
            needed: 0,
            file_size,
        });
    }
    for t in &tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(_), Some(end)) if end <= file_size => {}
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    name: t.name.clone(),
                    type_name: ggml_type(t.type_id).map_or("?", |t| t.name),
                    shape: t.shape.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_size,
                })
            }
        }
    }
    check_overlaps(&tensors, data_offset)?;
    Ok(GgufHeader {
        version,
        metadata,
        arrays: r.keep.unwrap_or_default(),
        tensors,
        data_offset,
        file_size,
    })
}

/// Tensors must not share bytes (zero-sized tensors share nothing). Offsets are already known
/// to lie inside the file, so the sums below cannot overflow.
fn check_overlaps(tensors: &[TensorInfo], data_offset: u64) -> Result<(), GgufError> {
    let spans = tensors
        .iter()
        .filter(|t| t.n_bytes > 0)
        .map(|t| {
            (
                t.offset,
                t.offset.saturating_add(t.n_bytes),
                t.name.as_str(),
            )
        })
        .collect();
    if let Some(((a_start, a_end, a), (b_start, b_end, b))) = crate::span::first_overlap(spans) {
        return Err(GgufError::TensorOverlap {
            name: b.to_string(),
            start: data_offset.saturating_add(b_start),
            end: data_offset.saturating_add(b_end),
            other: a.to_string(),
            other_start: data_offset.saturating_add(a_start),
            other_end: data_offset.saturating_add(a_end),
        });
    }
    Ok(())
}

impl GgufHeader {
    /// Alignment of the data section (general.alignment, default 32).
    pub fn alignment(&self) -> u64 {
        self.get_u64("general.alignment")
            .unwrap_or(DEFAULT_ALIGNMENT)
    }
}

struct Cursor<R> {
    inner: R,
    pos: u64,
    file_size: u64,
    /// Where `tokenizer.*` arrays go when their contents are kept.
    keep: Option<BTreeMap<String, MetaArray>>,
}

impl<R: Read> Cursor<R> {
    fn need(&self, what: &str, n: u64) -> Result<(), GgufError> {
        if self
            .pos
            .checked_add(n)
            .is_none_or(|end| end > self.file_size)
        {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.pos,
                needed: n,
                file_size: self.file_size,
            });
        }
        Ok(())
    }

    fn check_count(&self, what: &str, count: u64, min_bytes_each: u64) -> Result<(), GgufError> {
        let room = self.file_size.saturating_sub(self.pos);
        if count > room / min_bytes_each {
            return Err(GgufError::Invalid {
                what: what.into(),
                offset: self.pos,
                detail: format!("{count} entries cannot fit in the {room} bytes left in the file"),
            });
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        self.need(what, N as u64)?;
        let mut buf = [0u8; N];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| GgufError::Io(e.to_string()))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn skip(&mut self, what: &str, n: u64) -> Result<(), GgufError> {
        self.need(what, n)?;
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|e| GgufError::Io(e.to_string()))?;
        if copied != n {
            return Err(GgufError::Io(format!("short read while skipping {what}")));
        }
        self.pos += n;
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > MAX_STRING {
            return Err(GgufError::Invalid {
                what: what.into(),
                offset: at,
                detail: format!("string length {len} is over the {MAX_STRING}-byte limit"),
            });
        }
        self.need(what, len)?;
        let mut buf = vec![0u8; len as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| GgufError::Io(e.to_string()))?;
        self.pos += len;
        String::from_utf8(buf).map_err(|_| GgufError::Invalid {
            what: what.into(),
            offset: at,
            detail: "not UTF-8".into(),
        })
    }

    fn value(&mut self, ty: u32, key: &str, at: u64) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            0 => MetaValue::U64(u64::from(self.bytes::<1>(key)?[0])),
            1 => MetaValue::I64(i64::from(self.bytes::<1>(key)?[0] as i8)),
            2 => MetaValue::U64(u64::from(u16::from_le_bytes(self.bytes(key)?))),
            3 => MetaValue::I64(i64::from(i16::from_le_bytes(self.bytes(key)?))),
            4 => MetaValue::U64(u64::from(self.u32(key)?)),
            5 => MetaValue::I64(i64::from(i32::from_le_bytes(self.bytes(key)?))),
            6 => MetaValue::F64(f64::from(f32::from_le_bytes(self.bytes(key)?))),
            7 => MetaValue::Bool(self.bytes::<1>(key)?[0] != 0),
            8 => MetaValue::String(self.string(key)?),
            9 => {
                let elem_type = self.u32(key)?;
                let len = self.u64(key)?;
                if self.keep.is_some() && key.starts_with("tokenizer.") && elem_type != 9 {
                    let array = self.array(elem_type, len, key, at)?;
                    if let Some(keep) = self.keep.as_mut() {
                        keep.insert(key.to_string(), array);
                    }
                    return Ok(MetaValue::Array { elem_type, len });
                }
                match elem_type {
                    8 => {
                        self.check_count(key, len, 8)?;
                        for _ in 0..len {
                            let n = self.u64(key)?;
                            self.skip(key, n)?;
                        }
                    }
                    9 => {
                        return Err(GgufError::Invalid {
                            what: format!("metadata {key:?}"),
                            offset: at,
                            detail: "nested arrays are not supported".into(),
                        })
                    }
                    t => {
                        let size = scalar_size(t).ok_or_else(|| GgufError::Invalid {
                            what: format!("metadata {key:?} array element type"),
                            offset: at,
                            detail: format!("unknown type {t}"),
                        })?;
                        let total = len.checked_mul(size).ok_or_else(|| GgufError::Invalid {
                            what: format!("metadata {key:?} array length"),
                            offset: at,
                            detail: format!("{len} elements overflow"),
                        })?;
                        self.skip(key, total)?;
                    }
                }
                MetaValue::Array { elem_type, len }
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.bytes(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.bytes(key)?)),
            t => {
                return Err(GgufError::Invalid {
                    what: format!("metadata {key:?} type"),
                    offset: at,
                    detail: format!("unknown type {t}"),
                })
            }
        })
    }
}

impl<R: Read> Cursor<R> {
    /// An array's elements, each read and bounded like a single value.
    fn array(
        &mut self,
        elem_type: u32,
        len: u64,
        key: &str,
        at: u64,
    ) -> Result<MetaArray, GgufError> {
        let min_size = if elem_type == 8 {
            8
        } else {
            scalar_size(elem_type).ok_or_else(|| GgufError::Invalid {
                what: format!("metadata {key:?} array element type"),
                offset: at,
                detail: format!("unknown type {elem_type}"),
            })?
        };
        // Bounded by the file: every element takes at least `min_size` bytes.
        self.check_count(key, len, min_size)?;
        let n = usize::try_from(len).unwrap_or(0);
        Ok(match elem_type {
            8 => MetaArray::Strings((0..n).map(|_| self.string(key)).collect::<Result<_, _>>()?),
            6 | 12 => MetaArray::Floats(
                (0..n)
                    .map(|_| match self.value(elem_type, key, at)? {
                        MetaValue::F64(v) => Ok(v),
                        other => Err(self.odd_element(key, at, &other)),
                    })
                    .collect::<Result<_, GgufError>>()?,
            ),
            7 => MetaArray::Bools(
                (0..n)
                    .map(|_| Ok(self.bytes::<1>(key)?[0] != 0))
                    .collect::<Result<_, GgufError>>()?,
            ),
            _ => MetaArray::Ints(
                (0..n)
                    .map(|_| match self.value(elem_type, key, at)? {
                        MetaValue::U64(v) => Ok(i64::try_from(v).unwrap_or(i64::MAX)),
                        MetaValue::I64(v) => Ok(v),
                        other => Err(self.odd_element(key, at, &other)),
                    })
                    .collect::<Result<_, GgufError>>()?,
            ),
        })
    }
}

impl<R> Cursor<R> {
    fn odd_element(&self, key: &str, at: u64, found: &MetaValue) -> GgufError {
        GgufError::Invalid {
            what: format!("metadata {key:?} array element"),
            offset: at,
            detail: format!("{found:?} does not match the array's element type"),
        }
    }
}

fn scalar_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny but valid GGUF: two metadata keys and one F32 tensor of 8 elements.
    fn tiny() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&2u64.to_le_bytes()); // kv
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend_from_slice(&(s.len() as u64).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        };
        s(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "tokenizer.ggml.tokens");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        s(&mut b, "a");
        s(&mut b, "bc");
        s(&mut b, "w");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend_from_slice(&[0u8; 32]);
        b
    }

    fn parse(b: &[u8]) -> Result<GgufHeader, GgufError> {
        parse_header(b, b.len() as u64)
    }

    #[test]
    fn tokenizer_arrays_are_kept_only_when_asked_for() {
        let b = tiny();
        assert!(parse(&b).unwrap().arrays.is_empty());
        let h = super::parse(&b[..], b.len() as u64, true).unwrap();
        assert_eq!(
            h.arrays.get("tokenizer.ggml.tokens"),
            Some(&MetaArray::Strings(vec!["a".into(), "bc".into()]))
        );
        // The array still reads as its type and length, as without contents.
        assert_eq!(
            h.get("tokenizer.ggml.tokens"),
            Some(&MetaValue::Array {
                elem_type: 8,
                len: 2
            })
        );
        // A string array whose last element runs past the end is refused, not half kept.
        let end = b.windows(2).position(|w| w == b"bc").unwrap();
        let short = &b[..end + 1];
        assert!(super::parse(short, short.len() as u64, true).is_err());
    }

    #[test]
    fn reads_a_valid_file() {
        let h = parse(&tiny()).unwrap();
        assert_eq!(h.architecture(), Some("llama"));
        assert_eq!(h.tensors.len(), 1);
        assert_eq!(h.parameter_count(), 8);
        assert_eq!(h.tensors[0].n_bytes, 32);
        assert_eq!(h.quantization(), "F32");
        assert!(matches!(
            h.get("tokenizer.ggml.tokens"),
            Some(MetaValue::Array { len: 2, .. })
        ));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = tiny();
        for cut in 0..full.len() {
            assert!(
                parse(&full[..cut]).is_err(),
                "a file cut at {cut} bytes parsed"
            );
        }
    }

    #[test]
    fn bad_magic_and_huge_counts_are_rejected() {
        let mut b = tiny();
        b[0] = b'X';
        assert!(matches!(parse(&b), Err(GgufError::BadMagic { .. })));
        let mut b = tiny();
        b[8..16].copy_from_slice(&(1u64 << 63).to_le_bytes());
        assert!(matches!(parse(&b), Err(GgufError::Invalid { .. })));
        let mut b = tiny();
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&b), Err(GgufError::Invalid { .. })));
    }

    #[test]
    fn tensor_past_the_end_is_named() {
        let mut b = tiny();
        b.truncate(b.len() - 1);
        let e = parse(&b).unwrap_err();
        assert!(
            matches!(e, GgufError::TensorOutOfBounds { ref name, .. } if name == "w"),
            "{e}"
        );
    }
}
