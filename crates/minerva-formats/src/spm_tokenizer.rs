//! A Hugging Face `tokenizer.json` for a SentencePiece BPE vocabulary, as transformers'
//! `LlamaConverter` (convert_slow_tokenizer.py) writes it for Llama and Mistral: a BPE model
//! with byte fallback, merges rebuilt from the vocabulary and scores the way its
//! `SentencePieceExtractor` does, a normalizer that prepends "▁" and turns spaces into "▁", and
//! the matching decoder. Used for `tokenizer.model` files and for GGUF files with a "llama"
//! vocabulary (their pieces, scores and types are SentencePiece's).

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::sentencepiece::{PieceType, SpModel};

/// BPE merges from a SentencePiece vocabulary, exactly as `SentencePieceExtractor.extract` with
/// scores: for every piece, every split into two pieces both in the vocabulary (ordered by the
/// halves' ids), then all merges stably sorted by the merged piece's score, highest first.
pub fn merges(vocab: &SpModel) -> Vec<(&str, &str)> {
    let ids: HashMap<&str, usize> = vocab
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.text.as_str(), i))
        .collect();
    let mut all: Vec<(&str, &str, f32)> = Vec::new();
    let mut local: Vec<(&str, &str, f32)> = Vec::new();
    for p in &vocab.pieces {
        let s = p.text.as_str();
        local.clear();
        for (i, _) in s.char_indices().skip(1) {
            let (l, r) = s.split_at(i);
            if ids.contains_key(l) && ids.contains_key(r) {
                local.push((l, r, p.score));
            }
        }
        local.sort_by_key(|(l, r, _)| (ids[l], ids[r]));
        all.extend_from_slice(&local);
    }
    // Stable, like Python's sorted(reverse=True).
    all.sort_by(|a, b| b.2.total_cmp(&a.2));
    all.into_iter().map(|(l, r, _)| (l, r)).collect()
}

/// The pieces that are added tokens in tokenizer.json (unknown, control, user-defined).
pub fn added_tokens(vocab: &SpModel) -> Vec<Value> {
    vocab
        .pieces
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            matches!(
                p.kind,
                PieceType::Unknown | PieceType::Control | PieceType::UserDefined
            )
        })
        .map(|(id, p)| {
            json!({
                "id": id,
                "content": p.text,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": p.kind == PieceType::UserDefined,
                "special": p.kind != PieceType::UserDefined,
            })
        })
        .collect()
}

/// tokenizer.json.
///
/// `bos_token_id` (prepended by the post-processor) and `unk_token_id` must be ids of `vocab`.
pub fn tokenizer_json(vocab: &SpModel, bos_token_id: u32, unk_token_id: u32) -> Value {
    let bos = &vocab.pieces[bos_token_id as usize].text;
    let unk = &vocab.pieces[unk_token_id as usize].text;
    let bpe_vocab: serde_json::Map<String, Value> = vocab
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.text.clone(), json!(i)))
        .collect();
    // "left right" strings, the form every tokenizers version reads; pieces never hold a plain
    // space (SentencePiece writes it as "▁"), so the split is unambiguous.
    let merges: Vec<Value> = merges(vocab)
        .into_iter()
        .map(|(l, r)| {
            if l.contains(' ') || r.contains(' ') {
                json!([l, r])
            } else {
                json!(format!("{l} {r}"))
            }
        })
        .collect();
    let mut normalizers = Vec::new();
    if vocab.add_dummy_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if vocab.add_dummy_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(vocab),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}}
            ],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}}
            ],
            "special_tokens": {
                bos.as_str(): {"id": bos, "ids": [bos_token_id], "tokens": [bos]}
            }
        },
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": bpe_vocab,
            "merges": merges
        }
    })
}
