//! Hugging Face tokenizer files for a SentencePiece vocabulary: tokenizer.json comes from
//! [`minerva_formats::spm_tokenizer`]; tokenizer_config.json and special_tokens_map.json are written
//! here, as Mistral's repositories have them.

use serde_json::{json, Value};

use crate::synth::gguf_write::MISTRAL_CHAT_TEMPLATE;
use crate::synth::shape::Shape;
use minerva_formats::sentencepiece::SpModel;
use minerva_formats::spm_tokenizer::added_tokens;

/// tokenizer_config.json, as Mistral's repositories have it.
pub fn tokenizer_config_json(shape: &Shape, vocab: &SpModel) -> Value {
    let name = |id: u32| vocab.pieces[id as usize].text.clone();
    let decoder: serde_json::Map<String, Value> = added_tokens(vocab)
        .into_iter()
        .map(|mut t| {
            let id = t["id"].to_string();
            if let Some(o) = t.as_object_mut() {
                o.remove("id");
            }
            (id, t)
        })
        .collect();
    json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "added_tokens_decoder": decoder,
        "bos_token": name(shape.bos_token_id),
        "eos_token": name(shape.eos_token_id),
        "unk_token": name(shape.unk_token_id),
        "pad_token": null,
        "chat_template": MISTRAL_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "legacy": true,
        "model_max_length": 1_000_000_000_000_000_000u64,
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": false,
        "tokenizer_class": "LlamaTokenizer",
        "use_default_system_prompt": false
    })
}

pub fn special_tokens_map_json(shape: &Shape, vocab: &SpModel) -> Value {
    let name = |id: u32| vocab.pieces[id as usize].text.clone();
    json!({
        "bos_token": name(shape.bos_token_id),
        "eos_token": name(shape.eos_token_id),
        "unk_token": name(shape.unk_token_id),
    })
}
