//! A bounds-checked SafeTensors reader: the 8-byte header length, the JSON header (dtypes,
//! shapes, `data_offsets`), and a check that the tensors tile the data section exactly (no
//! overlaps, no gaps, nothing past the end). Also sharded models: `model.safetensors.index.json`
//! must name existing shards that between them hold every tensor it lists, and nothing else.

// `Problem` is large (it carries the precise location), but it is built once, on the path
// that ends verification; boxing it would only obscure the fields callers read.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use crate::problem::{io_problem, Problem, ProblemKind, Summary};

/// The SafeTensors format's own limit on the JSON header.
pub const MAX_HEADER: u64 = 100_000_000;
pub const INDEX_FILE: &str = "model.safetensors.index.json";
const MAX_INDEX: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Offsets inside the data section, as the header gives them.
    pub begin: u64,
    pub end: u64,
    pub n_elements: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeTensors {
    /// File name (for messages).
    pub file: String,
    pub file_size: u64,
    /// Absolute offset of the data section: 8 + header length.
    pub data_start: u64,
    /// Sorted by `begin`.
    pub tensors: Vec<TensorEntry>,
    pub metadata: BTreeMap<String, String>,
}

impl SafeTensors {
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Bits per element of a SafeTensors dtype.
pub fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

/// A JSON object's entries in file order, duplicates kept (serde_json's map drops them).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                // No size hint: the count comes from the input.
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads and checks the SafeTensors file at `path`.
pub fn read_file(path: &Path) -> Result<SafeTensors, Problem> {
    let f = std::fs::File::open(path).map_err(|e| io_problem(path, &e))?;
    let file_size = f.metadata().map_err(|e| io_problem(path, &e))?.len();
    let mut r = std::io::BufReader::new(f);
    let mut len = [0u8; 8];
    if file_size < 8 {
        return Err(truncated_len(file_size));
    }
    r.read_exact(&mut len).map_err(|e| io_problem(path, &e))?;
    let n = check_header_len(u64::from_le_bytes(len), file_size)?;
    let mut buf = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    buf.extend_from_slice(&len);
    r.take(n)
        .read_to_end(&mut buf)
        .map_err(|e| io_problem(path, &e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse(&buf, file_size, &name).map_err(|p| p.in_file(name))
}

fn truncated_len(file_size: u64) -> Problem {
    Problem::new(
        ProblemKind::Truncated,
        format!("the file is {file_size} bytes: too short for the 8-byte header length"),
    )
    .at(0)
    .expected("at least 8 bytes")
    .found(format!("{file_size} bytes"))
}

fn check_header_len(n: u64, file_size: u64) -> Result<u64, Problem> {
    if n > MAX_HEADER {
        return Err(Problem::new(
            ProblemKind::BadHeaderLength,
            format!("header length {n} is over SafeTensors' limit of {MAX_HEADER} bytes"),
        )
        .at(0)
        .expected(format!("at most {MAX_HEADER}"))
        .found(n));
    }
    if n.checked_add(8).is_none_or(|end| end > file_size) {
        return Err(Problem::new(
            ProblemKind::Truncated,
            format!("the header claims {n} bytes but the file has {file_size} in all"),
        )
        .at(8)
        .expected(format!("a file of at least {} bytes", n.saturating_add(8)))
        .found(format!("{file_size} bytes")));
    }
    Ok(n)
}

/// Parses and checks a SafeTensors file whose first bytes are `prefix` (at least the length
/// and the header; the data section need not be there) and whose full size is `file_size`.
pub fn parse(prefix: &[u8], file_size: u64, file: &str) -> Result<SafeTensors, Problem> {
    let Some((len, rest)) = prefix.split_first_chunk::<8>() else {
        return Err(truncated_len(file_size));
    };
    let n = check_header_len(u64::from_le_bytes(*len), file_size)?;
    let header = usize::try_from(n)
        .ok()
        .and_then(|n| rest.get(..n))
        .ok_or_else(|| {
            Problem::new(ProblemKind::Truncated, "the header was cut short")
                .at(8)
                .expected(format!("{n} header bytes"))
                .found(format!("{} bytes", rest.len()))
        })?;
    let data_start = 8 + n;
    let data_len = file_size - data_start;
    let entries: Entries = serde_json::from_slice(header).map_err(|e| {
        Problem::new(
            ProblemKind::BadHeaderJson,
            format!("the header is not a JSON object: {e}"),
        )
        .at(8)
    })?;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::new();
    let mut seen = HashSet::new();
    for (name, v) in entries.0 {
        if name == "__metadata__" {
            let obj = v.as_object().ok_or_else(|| {
                Problem::new(
                    ProblemKind::BadMetadata,
                    "__metadata__ is not an object of strings",
                )
                .at(8)
            })?;
            for (k, v) in obj {
                let s = v.as_str().ok_or_else(|| {
                    Problem::new(
                        ProblemKind::BadMetadata,
                        format!("__metadata__ value of {k:?} is not a string"),
                    )
                    .at(8)
                    .expected("a string")
                    .found(v)
                })?;
                metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        if !seen.insert(name.clone()) {
            return Err(Problem::new(
                ProblemKind::DuplicateTensor,
                format!("tensor {name:?} appears twice in the header"),
            )
            .tensor(name)
            .at(8));
        }
        tensors.push(entry(&name, &v)?);
    }
    tensors.sort_by_key(|t| (t.begin, t.end));
    let mut expected = 0u64;
    let mut prev: Option<&TensorEntry> = None;
    for t in &tensors {
        let abs = |o: u64| data_start.saturating_add(o);
        if t.end > data_len {
            return Err(Problem::new(
                ProblemKind::TensorOutOfBounds,
                format!(
                    "tensor {:?} ({} {:?}) needs bytes {}..{} but the file ends at {}: the file is truncated or corrupt",
                    t.name, t.dtype, t.shape, abs(t.begin), abs(t.end), file_size
                ),
            )
            .tensor(&t.name)
            .at(abs(t.begin))
            .expected(format!("a file of at least {} bytes", abs(t.end)))
            .found(format!("{file_size} bytes")));
        }
        if t.begin != expected {
            let (kind, message) = if t.begin < expected {
                let other = prev.map(|p| p.name.as_str()).unwrap_or("");
                (
                    ProblemKind::Overlap,
                    format!(
                        "tensor {:?} starts at byte {} inside tensor {other:?}, which ends at {}",
                        t.name,
                        abs(t.begin),
                        abs(expected)
                    ),
                )
            } else {
                (
                    ProblemKind::Gap,
                    format!(
                        "{} unused bytes before tensor {:?}: it starts at byte {} but the previous data ends at {}",
                        t.begin - expected,
                        t.name,
                        abs(t.begin),
                        abs(expected)
                    ),
                )
            };
            return Err(Problem::new(kind, message)
                .tensor(&t.name)
                .at(abs(t.begin))
                .expected(format!("start at {}", abs(expected)))
                .found(abs(t.begin)));
        }
        expected = t.end;
        prev = Some(t);
    }
    if expected != data_len {
        return Err(Problem::new(
            ProblemKind::TrailingData,
            format!(
                "the tensors end at byte {} but the file has {} bytes: {} bytes belong to no tensor",
                data_start.saturating_add(expected),
                file_size,
                data_len - expected
            ),
        )
        .at(data_start.saturating_add(expected))
        .expected(format!("a file of {} bytes", data_start.saturating_add(expected)))
        .found(format!("{file_size} bytes")));
    }
    Ok(SafeTensors {
        file: file.to_string(),
        file_size,
        data_start,
        tensors,
        metadata,
    })
}

fn entry(name: &str, v: &serde_json::Value) -> Result<TensorEntry, Problem> {
    let bad = |what: &str, found: &dyn std::fmt::Display| {
        Problem::new(
            ProblemKind::BadTensorEntry,
            format!("tensor {name:?}: {what}, found {found}"),
        )
        .tensor(name)
        .at(8)
        .expected(what)
        .found(found)
    };
    let obj = v
        .as_object()
        .ok_or_else(|| bad("an object with dtype, shape, data_offsets", v))?;
    let dtype = obj
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| bad("a string dtype", &format!("{:?}", obj.get("dtype"))))?;
    let bits = dtype_bits(dtype).ok_or_else(|| bad("a known SafeTensors dtype", &dtype))?;
    let shape_v = obj
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad("a shape array", &format!("{:?}", obj.get("shape"))))?;
    let mut shape = Vec::new();
    for d in shape_v {
        shape.push(
            d.as_u64()
                .ok_or_else(|| bad("non-negative integer dimensions", d))?,
        );
    }
    let offs = obj
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .ok_or_else(|| {
            bad(
                "a data_offsets array",
                &format!("{:?}", obj.get("data_offsets")),
            )
        })?;
    let (begin, end) = match offs.as_slice() {
        [b, e] => (
            b.as_u64()
                .ok_or_else(|| bad("non-negative integer offsets", b))?,
            e.as_u64()
                .ok_or_else(|| bad("non-negative integer offsets", e))?,
        ),
        _ => return Err(bad("data_offsets of two numbers", &offs.len())),
    };
    if end < begin {
        return Err(bad(
            "data_offsets [begin, end] with begin <= end",
            &format!("[{begin}, {end}]"),
        ));
    }
    let n_elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            bad(
                "a shape whose element count fits in 64 bits",
                &format!("{shape:?}"),
            )
        })?;
    let bits_total = n_elements.checked_mul(bits).ok_or_else(|| {
        bad(
            "a shape whose byte size fits in 64 bits",
            &format!("{shape:?}"),
        )
    })?;
    if bits_total % 8 != 0 {
        return Err(bad(
            "a whole number of bytes",
            &format!("{bits_total} bits for {dtype} {shape:?}"),
        ));
    }
    let bytes = bits_total / 8;
    if end - begin != bytes {
        return Err(Problem::new(
            ProblemKind::SizeMismatch,
            format!(
                "tensor {name:?} ({dtype} {shape:?}) needs {bytes} bytes but data_offsets [{begin}, {end}] span {}",
                end - begin
            ),
        )
        .tensor(name)
        .at(8)
        .expected(format!("{bytes} bytes"))
        .found(format!("{} bytes", end - begin)));
    }
    Ok(TensorEntry {
        name: name.to_string(),
        dtype: dtype.to_string(),
        shape,
        begin,
        end,
        n_elements,
    })
}

/// No tensor name may appear in two files of one model.
pub fn check_disjoint(set: &[SafeTensors]) -> Result<(), Problem> {
    let mut owner: HashMap<&str, &str> = HashMap::new();
    for st in set {
        for t in &st.tensors {
            if let Some(first) = owner.insert(&t.name, &st.file) {
                return Err(Problem::new(
                    ProblemKind::DuplicateTensor,
                    format!("tensor {:?} is in both {first} and {}", t.name, st.file),
                )
                .tensor(&t.name)
                .in_file(st.file.clone()));
            }
        }
    }
    Ok(())
}

/// A shard name must be a plain file name in the model's folder.
fn safe_shard_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

/// Reads `model.safetensors.index.json` in `dir` and every shard it names; checks that the
/// shards exist, hold every tensor the index maps to them, and nothing the index leaves out.
pub fn read_index(dir: &Path) -> Result<Vec<SafeTensors>, Problem> {
    let p = dir.join(INDEX_FILE);
    let len = std::fs::metadata(&p).map_err(|e| io_problem(&p, &e))?.len();
    if len > MAX_INDEX {
        return Err(Problem::new(
            ProblemKind::BadIndex,
            format!("the index is over {MAX_INDEX} bytes"),
        )
        .found(len)
        .in_file(INDEX_FILE));
    }
    let text = std::fs::read(&p).map_err(|e| io_problem(&p, &e))?;
    check_index(
        &text,
        |shard| read_file(&dir.join(shard)),
        |shard| dir.join(shard).is_file(),
    )
}

/// The index logic apart from the file system (so tests and fuzzers can drive it).
pub fn check_index(
    index_json: &[u8],
    mut load: impl FnMut(&str) -> Result<SafeTensors, Problem>,
    exists: impl Fn(&str) -> bool,
) -> Result<Vec<SafeTensors>, Problem> {
    let bad = |msg: String| Problem::new(ProblemKind::BadIndex, msg).in_file(INDEX_FILE);
    let v: serde_json::Value =
        serde_json::from_slice(index_json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| bad(format!("weight_map[{tensor:?}] is not a file name")))?;
        if !safe_shard_name(shard) {
            return Err(bad(format!(
                "weight_map[{tensor:?}] = {shard:?} is not a plain file name in the model folder"
            ))
            .tensor(tensor.clone()));
        }
        wanted.entry(shard).or_default().push(tensor);
    }
    if wanted.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    let mut shards = Vec::new();
    for (shard, tensors) in &wanted {
        if !exists(shard) {
            return Err(Problem::new(
                ProblemKind::MissingShard,
                format!(
                    "the index maps {} tensors (first {:?}) to {shard}, which does not exist",
                    tensors.len(),
                    tensors.first().copied().unwrap_or("")
                ),
            )
            .tensor(tensors.first().copied().unwrap_or(""))
            .expected(format!("file {shard}"))
            .found("no such file")
            .in_file(INDEX_FILE));
        }
        let st = load(shard).map_err(|p| p.in_file(*shard))?;
        for t in tensors {
            if st.get(t).is_none() {
                return Err(Problem::new(
                    ProblemKind::MissingTensor,
                    format!("the index says tensor {t:?} is in {shard}, but it is not"),
                )
                .tensor(*t)
                .expected(format!("tensor in {shard}"))
                .found("absent")
                .in_file(*shard));
            }
        }
        for t in &st.tensors {
            if map.get(&t.name).and_then(|s| s.as_str()) != Some(*shard) {
                return Err(Problem::new(
                    ProblemKind::UnindexedTensor,
                    format!(
                        "{shard} holds tensor {:?}, which the index maps to {}",
                        t.name,
                        map.get(&t.name)
                            .map_or("nothing".to_string(), |s| s.to_string())
                    ),
                )
                .tensor(&t.name)
                .at(st.data_start.saturating_add(t.begin))
                .in_file(*shard));
            }
        }
        shards.push(st);
    }
    Ok(shards)
}

/// What a set of SafeTensors files (one model) is, with `config.json` when present.
pub fn summarize(set: &[SafeTensors], config: Option<&serde_json::Value>, context: u32) -> Summary {
    let mut bytes_by_dtype: BTreeMap<&str, u64> = BTreeMap::new();
    let mut params = 0u64;
    let mut weight_bytes = 0u64;
    let mut count = 0u64;
    for st in set {
        for t in &st.tensors {
            params = params.saturating_add(t.n_elements);
            let b = t.end - t.begin;
            weight_bytes = weight_bytes.saturating_add(b);
            *bytes_by_dtype.entry(&t.dtype).or_default() += b;
            count += 1;
        }
    }
    let quantization = bytes_by_dtype
        .iter()
        .max_by_key(|&(_, b)| *b)
        .map(|(d, _)| d.to_string())
        .unwrap_or_default();
    let mut s = config_summary(config, context, weight_bytes);
    s.parameter_count = params;
    s.quantization = quantization;
    s.tensor_count = count;
    s.file_size_bytes = set
        .iter()
        .map(|st| st.file_size)
        .fold(0, u64::saturating_add);
    s
}

/// Architecture, context and a memory estimate (weights + f16 KV cache) from a Hugging Face
/// `config.json`.
pub fn config_summary(
    config: Option<&serde_json::Value>,
    context: u32,
    weight_bytes: u64,
) -> Summary {
    let get = |k: &str| config.and_then(|c| c.get(k)).and_then(|v| v.as_u64());
    let architecture = config
        .and_then(|c| c.get("model_type"))
        .and_then(|v| v.as_str())
        .or_else(|| {
            config
                .and_then(|c| c.get("architectures"))
                .and_then(|a| a.get(0))
                .and_then(|v| v.as_str())
        })
        .unwrap_or("unknown")
        .to_string();
    let trained = get("max_position_embeddings")
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    let ctx = if trained > 0 {
        context.min(trained)
    } else {
        context
    };
    let layers = get("num_hidden_layers").unwrap_or(0);
    let heads = get("num_attention_heads").unwrap_or(0);
    let kv_heads = get("num_key_value_heads").unwrap_or(heads);
    let head_dim = get("head_dim").unwrap_or_else(|| {
        get("hidden_size")
            .zip(Some(heads))
            .and_then(|(h, n)| h.checked_div(n))
            .unwrap_or(0)
    });
    let kv = 4u64
        .saturating_mul(layers)
        .saturating_mul(u64::from(ctx))
        .saturating_mul(kv_heads)
        .saturating_mul(head_dim);
    Summary {
        architecture,
        context_length: trained,
        estimated_memory_bytes: weight_bytes.saturating_add(kv),
        estimated_for_context: ctx,
        ..Default::default()
    }
}
