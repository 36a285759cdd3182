//! Writes an F16 GGUF (v3) the way llama.cpp's convert_hf_to_gguf.py writes a Mistral model:
//! architecture "llama", `llama.*` hyperparameters, the SentencePiece vocabulary as
//! `tokenizer.ggml.*`, 2-D weights in F16 and norms in F32. Tensors are streamed: the header is
//! built in memory (the vocabulary is the only large part), then each tensor's data is generated
//! in chunks and written through a buffered writer.

use std::io::Write;

use crate::synth::shape::{Shape, TensorKind, TensorSpec};
use crate::synth::weights::{extend_le_u16, Half, Rng, CHUNK_ELEMENTS};
use crate::synth::Progress;
use minerva_formats::gguf_write::{
    self as gw, align, Value, GGML_TYPE_F16, GGML_TYPE_F32, QUANTIZATION_VERSION,
};
use minerva_formats::sentencepiece::SpModel;

/// `LLAMA_FTYPE_MOSTLY_F16`.
const FILE_TYPE_F16: u32 = 1;

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

/// Total bytes the F16 file will have.
pub fn file_size(shape: &Shape, vocab: &SpModel) -> u64 {
    let (metadata, tensors) = layout(shape, vocab);
    gw::file_size(&metadata, &tensors)
}

fn layout(shape: &Shape, vocab: &SpModel) -> (Vec<(String, Value)>, Vec<gw::Tensor>) {
    let u32_of = |v: u64| Value::U32(v as u32);
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::Str("llama".into())),
        ("general.type", Value::Str("model".into())),
        ("general.name", Value::Str(shape.display_name.into())),
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
        ("tokenizer.ggml.model", Value::Str("llama".into())),
        ("tokenizer.ggml.pre", Value::Str("default".into())),
        (
            "tokenizer.ggml.tokens",
            Value::StrArray(vocab.pieces.iter().map(|p| p.text.clone()).collect()),
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
        (
            "tokenizer.chat_template",
            Value::Str(MISTRAL_CHAT_TEMPLATE.into()),
        ),
    ];
    let tensors = shape
        .tensors()
        .iter()
        .map(|t| gw::Tensor {
            name: t.gguf_name.clone(),
            shape: t.shape.clone(),
            ggml_type: tensor_type(t),
            bytes: tensor_bytes(t),
        })
        .collect();
    let metadata = metadata
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    (metadata, tensors)
}

/// Writes the F16 GGUF to `w`, reporting bytes written through `progress`.
pub fn write_f16(
    w: &mut impl Write,
    shape: &Shape,
    vocab: &SpModel,
    progress: &mut dyn FnMut(Progress),
) -> std::io::Result<u64> {
    let (metadata, tensors) = layout(shape, vocab);
    let total = gw::file_size(&metadata, &tensors);
    let head = gw::header(&metadata, &tensors);
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
