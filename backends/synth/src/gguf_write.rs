//! Writes an F16 GGUF (v3) the way llama.cpp's convert_hf_to_gguf.py writes a Mistral model:
//! architecture "llama", `llama.*` hyperparameters, the SentencePiece vocabulary as
//! `tokenizer.ggml.*`, 2-D weights in F16 and norms in F32. Tensors are streamed: the header is
//! built in memory (the vocabulary is the only large part), then each tensor's data is generated
//! in chunks and written through a buffered writer.

use std::io::Write;

use crate::shape::{Shape, TensorKind, TensorSpec};
use crate::weights::{extend_le_u16, Half, Rng, CHUNK_ELEMENTS};
use crate::Progress;
use minerva_core::sentencepiece::SpModel;

/// GGUF's default `general.alignment`.
const ALIGNMENT: u64 = 32;
const GGML_TYPE_F32: u32 = 0;
const GGML_TYPE_F16: u32 = 1;
/// `LLAMA_FTYPE_MOSTLY_F16`.
const FILE_TYPE_F16: u32 = 1;
/// `GGML_QNT_VERSION`, written by convert_hf_to_gguf.py whatever the type.
const QUANTIZATION_VERSION: u32 = 2;

enum Value<'a> {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(&'a str),
    StrArray(Vec<&'a str>),
    F32Array(Vec<f32>),
    I32Array(Vec<i32>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_kv(out: &mut Vec<u8>, key: &str, value: &Value<'_>) {
    put_str(out, key);
    match value {
        Value::U32(v) => {
            out.extend_from_slice(&4u32.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        Value::F32(v) => {
            out.extend_from_slice(&6u32.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        Value::Bool(v) => {
            out.extend_from_slice(&7u32.to_le_bytes());
            out.push(u8::from(*v));
        }
        Value::Str(s) => {
            out.extend_from_slice(&8u32.to_le_bytes());
            put_str(out, s);
        }
        Value::StrArray(items) => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&8u32.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for s in items {
                put_str(out, s);
            }
        }
        Value::F32Array(items) => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&6u32.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for v in items {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Value::I32Array(items) => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&5u32.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for v in items {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// Mistral's instruct template (as in Mistral-7B-Instruct's tokenizer_config.json), so chat
/// works against a synthetic model the way it does against the real one.
pub const MISTRAL_CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

fn tensor_type(t: &TensorSpec) -> u32 {
    match t.kind {
        TensorKind::Norm => GGML_TYPE_F32,
        TensorKind::Matrix => GGML_TYPE_F16,
    }
}

fn tensor_bytes(t: &TensorSpec) -> u64 {
    t.elements()
        * match t.kind {
            TensorKind::Norm => 4,
            TensorKind::Matrix => 2,
        }
}

fn align(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// Total bytes the F16 file will have.
pub fn file_size(shape: &Shape, vocab: &SpModel) -> u64 {
    let header = header(shape, vocab).len() as u64;
    let data: u64 = shape.tensors().iter().map(|t| align(tensor_bytes(t))).sum();
    align(header) + data
}

fn header(shape: &Shape, vocab: &SpModel) -> Vec<u8> {
    let tensors = shape.tensors();
    let u32_of = |v: u64| Value::U32(v as u32);
    let kvs: Vec<(&str, Value<'_>)> = vec![
        ("general.architecture", Value::Str("llama")),
        ("general.type", Value::Str("model")),
        ("general.name", Value::Str(shape.display_name)),
        ("general.file_type", Value::U32(FILE_TYPE_F16)),
        (
            "general.quantization_version",
            Value::U32(QUANTIZATION_VERSION),
        ),
        ("llama.vocab_size", u32_of(shape.vocab_size)),
        (
            "llama.context_length",
            u32_of(shape.max_position_embeddings),
        ),
        ("llama.embedding_length", u32_of(shape.hidden_size)),
        ("llama.block_count", u32_of(shape.num_layers)),
        ("llama.feed_forward_length", u32_of(shape.intermediate_size)),
        ("llama.rope.dimension_count", u32_of(shape.head_dim)),
        ("llama.attention.head_count", u32_of(shape.num_heads)),
        ("llama.attention.head_count_kv", u32_of(shape.num_kv_heads)),
        ("llama.attention.key_length", u32_of(shape.head_dim)),
        ("llama.attention.value_length", u32_of(shape.head_dim)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(shape.rms_norm_eps),
        ),
        ("llama.rope.freq_base", Value::F32(shape.rope_theta)),
        ("tokenizer.ggml.model", Value::Str("llama")),
        ("tokenizer.ggml.pre", Value::Str("default")),
        (
            "tokenizer.ggml.tokens",
            Value::StrArray(vocab.pieces.iter().map(|p| p.text.as_str()).collect()),
        ),
        (
            "tokenizer.ggml.scores",
            Value::F32Array(vocab.pieces.iter().map(|p| p.score).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::I32Array(vocab.pieces.iter().map(|p| p.kind as i32).collect()),
        ),
        (
            "tokenizer.ggml.bos_token_id",
            Value::U32(shape.bos_token_id),
        ),
        (
            "tokenizer.ggml.eos_token_id",
            Value::U32(shape.eos_token_id),
        ),
        (
            "tokenizer.ggml.unknown_token_id",
            Value::U32(shape.unk_token_id),
        ),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        ("tokenizer.ggml.add_eos_token", Value::Bool(false)),
        (
            "tokenizer.ggml.add_space_prefix",
            Value::Bool(vocab.add_dummy_prefix),
        ),
        ("tokenizer.chat_template", Value::Str(MISTRAL_CHAT_TEMPLATE)),
    ];
    let mut out = Vec::with_capacity(1 << 20);
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in &kvs {
        put_kv(&mut out, k, v);
    }
    let mut offset = 0u64;
    for t in &tensors {
        put_str(&mut out, &t.gguf_name);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&tensor_type(t).to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset += align(tensor_bytes(t));
    }
    out
}

/// Writes the F16 GGUF to `w`, reporting bytes written through `progress`.
pub fn write_f16(
    w: &mut impl Write,
    shape: &Shape,
    vocab: &SpModel,
    progress: &mut dyn FnMut(Progress),
) -> std::io::Result<u64> {
    let total = file_size(shape, vocab);
    let mut head = header(shape, vocab);
    head.resize(align(head.len() as u64) as usize, 0);
    w.write_all(&head)?;
    let mut done = head.len() as u64;
    let table = Half::F16.uniform_table();
    let mut values = vec![0u16; CHUNK_ELEMENTS];
    let mut bytes = Vec::with_capacity(CHUNK_ELEMENTS * 2);
    for t in shape.tensors() {
        let n = t.elements();
        match t.kind {
            TensorKind::Norm => {
                for _ in 0..n {
                    w.write_all(&1.0f32.to_le_bytes())?;
                }
            }
            TensorKind::Matrix => {
                let mut rng = Rng::for_tensor(&t.gguf_name);
                let mut left = n;
                while left > 0 {
                    let k = left.min(CHUNK_ELEMENTS as u64) as usize;
                    rng.fill_from_table(&table, &mut values[..k]);
                    bytes.clear();
                    extend_le_u16(&mut bytes, &values[..k]);
                    w.write_all(&bytes)?;
                    left -= k as u64;
                    done += 2 * k as u64;
                    progress(Progress {
                        phase: "write",
                        done,
                        total,
                    });
                }
            }
        }
        let size = tensor_bytes(&t);
        let pad = align(size) - size;
        w.write_all(&vec![0u8; pad as usize])?;
        if t.kind == TensorKind::Norm {
            done += size;
        }
        done += pad;
    }
    progress(Progress {
        phase: "write",
        done,
        total,
    });
    Ok(done)
}
