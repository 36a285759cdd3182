//! Hugging Face's Mistral layout: config.json, generation_config.json, the tokenizer files, and
//! the weights as sharded safetensors (`model-0000N-of-0000M.safetensors` plus
//! `model.safetensors.index.json`), HF tensor names, bf16. The safetensors writer here streams
//! each tensor in chunks and is shared with [`crate::synth::mlx`].

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::synth::shape::{Shape, TensorKind};
use crate::synth::weights::{extend_le_u16, Half, Rng, CHUNK_ELEMENTS};
use crate::synth::{hf_tokenizer, io_err, Progress, SynthError};
use minerva_formats::sentencepiece::SpModel;

/// transformers' default `max_shard_size` ("5GB").
pub const MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// What a safetensors tensor holds.
#[derive(Debug, Clone, Copy)]
pub enum Data {
    /// Uniform random values (see [`crate::synth::weights`]).
    Random(Half),
    /// Every element the same value.
    Const(Half, f32),
    /// Random 32-bit words (packed quantized weights: every bit pattern is valid).
    RandomU32,
}

impl Data {
    fn dtype(self) -> &'static str {
        match self {
            Data::Random(Half::F16) | Data::Const(Half::F16, _) => "F16",
            Data::Random(Half::Bf16) | Data::Const(Half::Bf16, _) => "BF16",
            Data::RandomU32 => "U32",
        }
    }

    fn element_bytes(self) -> u64 {
        match self {
            Data::RandomU32 => 4,
            _ => 2,
        }
    }
}

/// One tensor of a safetensors file.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<u64>,
    pub data: Data,
}

impl Entry {
    fn bytes(&self) -> u64 {
        self.shape.iter().product::<u64>() * self.data.element_bytes()
    }
}

/// Writes `entries` as safetensors shards of at most [`MAX_SHARD_BYTES`] in `dir`, plus
/// model.safetensors.index.json. `format` is the header's `__metadata__.format` ("pt", "mlx").
/// Returns the file names written.
pub fn write_shards(
    dir: &Path,
    entries: &[Entry],
    format: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<PathBuf>, SynthError> {
    let mut shards: Vec<Vec<&Entry>> = vec![Vec::new()];
    let mut size = 0u64;
    for e in entries {
        let last = shards.last_mut().expect("one shard");
        if !last.is_empty() && size + e.bytes() > MAX_SHARD_BYTES {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("one shard").push(e);
        size += e.bytes();
    }
    let total: u64 = entries.iter().map(Entry::bytes).sum();
    let count = shards.len();
    let mut names = Vec::new();
    let mut weight_map = serde_json::Map::new();
    let mut done = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        let path = dir.join(&name);
        let file = std::fs::File::create(&path).map_err(io_err(&path))?;
        let mut w = BufWriter::with_capacity(8 << 20, file);
        write_one(&mut w, shard, format, &mut |n| {
            done += n;
            progress(Progress {
                phase: "write",
                done,
                total,
            })
        })
        .and_then(|()| w.flush())
        .map_err(io_err(&path))?;
        for e in shard {
            weight_map.insert(e.name.clone(), json!(name));
        }
        names.push(PathBuf::from(name));
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    names.push(write_json(dir, "model.safetensors.index.json", &index)?);
    Ok(names)
}

fn write_one(
    w: &mut impl Write,
    entries: &[&Entry],
    format: &str,
    advanced: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": format }));
    let mut offset = 0u64;
    for e in entries {
        header.insert(
            e.name.clone(),
            json!({
                "dtype": e.data.dtype(),
                "shape": e.shape,
                "data_offsets": [offset, offset + e.bytes()],
            }),
        );
        offset += e.bytes();
    }
    let mut head = serde_json::to_vec(&Value::Object(header))?;
    // The data starts 8-byte aligned; safetensors pads the header with spaces.
    while (head.len() + 8) % 8 != 0 {
        head.push(b' ');
    }
    w.write_all(&(head.len() as u64).to_le_bytes())?;
    w.write_all(&head)?;
    let f16 = Half::F16.uniform_table();
    let bf16 = Half::Bf16.uniform_table();
    let mut halves = vec![0u16; CHUNK_ELEMENTS];
    let mut words = vec![0u32; CHUNK_ELEMENTS / 2];
    let mut bytes = Vec::with_capacity(CHUNK_ELEMENTS * 2);
    for e in entries {
        let mut rng = Rng::for_tensor(&e.name);
        let mut left = e.shape.iter().product::<u64>();
        let per_chunk = match e.data {
            Data::RandomU32 => words.len(),
            _ => halves.len(),
        } as u64;
        while left > 0 {
            let k = left.min(per_chunk) as usize;
            bytes.clear();
            match e.data {
                Data::Random(h) => {
                    let table = if h == Half::F16 { &f16 } else { &bf16 };
                    rng.fill_from_table(table, &mut halves[..k]);
                    extend_le_u16(&mut bytes, &halves[..k]);
                }
                Data::Const(h, v) => {
                    halves[..k].fill(h.encode(v));
                    extend_le_u16(&mut bytes, &halves[..k]);
                }
                Data::RandomU32 => {
                    rng.fill_u32(&mut words[..k]);
                    for v in &words[..k] {
                        bytes.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
            w.write_all(&bytes)?;
            advanced(bytes.len() as u64);
            left -= k as u64;
        }
    }
    Ok(())
}

pub(crate) fn write_json(dir: &Path, name: &str, value: &Value) -> Result<PathBuf, SynthError> {
    let path = dir.join(name);
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    text.push('\n');
    std::fs::write(&path, text).map_err(io_err(&path))?;
    Ok(PathBuf::from(name))
}

/// config.json of `MistralForCausalLM`.
pub fn config_json(shape: &Shape, dtype: &str) -> Value {
    json!({
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "attention_dropout": 0.0,
        "bos_token_id": shape.bos_token_id,
        "eos_token_id": shape.eos_token_id,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "num_attention_heads": shape.num_heads,
        "num_hidden_layers": shape.num_layers,
        "num_key_value_heads": shape.num_kv_heads,
        "rms_norm_eps": shape.rms_norm_eps as f64,
        "rope_theta": shape.rope_theta as f64,
        "sliding_window": shape.sliding_window,
        "tie_word_embeddings": false,
        "torch_dtype": dtype,
        "transformers_version": "4.42.3",
        "use_cache": true,
        "vocab_size": shape.vocab_size
    })
}

/// The tokenizer and config files every HF-style directory gets.
pub(crate) fn write_common(
    dir: &Path,
    shape: &Shape,
    vocab: &SpModel,
    sp_bytes: &[u8],
    config: &Value,
) -> Result<Vec<PathBuf>, SynthError> {
    let mut files = vec![
        write_json(dir, "config.json", config)?,
        write_json(
            dir,
            "generation_config.json",
            &json!({
                "_from_model_config": true,
                "bos_token_id": shape.bos_token_id,
                "eos_token_id": shape.eos_token_id,
                "transformers_version": "4.42.3"
            }),
        )?,
        write_json(
            dir,
            "tokenizer.json",
            &minerva_formats::spm_tokenizer::tokenizer_json(
                vocab,
                shape.bos_token_id,
                shape.unk_token_id,
            ),
        )?,
        write_json(
            dir,
            "tokenizer_config.json",
            &hf_tokenizer::tokenizer_config_json(shape, vocab),
        )?,
        write_json(
            dir,
            "special_tokens_map.json",
            &hf_tokenizer::special_tokens_map_json(shape, vocab),
        )?,
    ];
    let sp = dir.join("tokenizer.model");
    std::fs::write(&sp, sp_bytes).map_err(io_err(&sp))?;
    files.push(PathBuf::from("tokenizer.model"));
    Ok(files)
}

/// What one Hugging Face-style folder format writes beside the tokenizer files.
pub struct Folder {
    pub config: Value,
    pub entries: Vec<Entry>,
    /// The shards' `__metadata__.format` ("pt", "mlx").
    pub format: &'static str,
}

/// The safetensors folder (bf16, as Mistral's own repositories).
pub fn folder(shape: &Shape) -> Folder {
    let entries = shape
        .tensors()
        .into_iter()
        .map(|t| Entry {
            name: t.hf_name,
            shape: t.shape,
            data: match t.kind {
                TensorKind::Norm => Data::Const(Half::Bf16, 1.0),
                TensorKind::Matrix => Data::Random(Half::Bf16),
            },
        })
        .collect();
    Folder {
        config: config_json(shape, "bfloat16"),
        entries,
        format: "pt",
    }
}

/// Writes `folder` with the tokenizer files at `dir`, which it creates; nothing stays there
/// when writing fails.
pub fn write_dir(
    dir: &Path,
    shape: &Shape,
    vocab: &SpModel,
    sp_bytes: &[u8],
    folder: &Folder,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<PathBuf>, SynthError> {
    std::fs::create_dir(dir).map_err(io_err(dir))?;
    let result = (|| {
        let mut files = write_common(dir, shape, vocab, sp_bytes, &folder.config)?;
        files.extend(write_shards(dir, &folder.entries, folder.format, progress)?);
        Ok(files)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}
