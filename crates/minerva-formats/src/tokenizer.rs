//! Tokenizers for the in-process backends (candle, MLX), all through the `tokenizers` crate: a
//! folder's `tokenizer.json`, a SentencePiece `tokenizer.model` (converted the way transformers'
//! Llama converter does), or a GGUF file's vocabulary (SentencePiece "llama" or byte-level BPE
//! "gpt2").

use std::collections::HashMap;
use std::path::Path;

use crate::gguf::{GgufHeader, MetaArray};
use crate::gguf_write as gw;
use crate::sentencepiece::{Piece, PieceType, SpModel};
use serde_json::{json, Value};

pub struct Tok {
    inner: tokenizers::Tokenizer,
    /// What each token contributes to generated text (empty for special tokens).
    bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
}

/// Chat and special-token settings that come with the tokenizer files.
#[derive(Debug, Clone, Default)]
pub struct TokSettings {
    pub chat_template: Option<String>,
    pub add_bos: bool,
    pub bos_token: Option<u32>,
    pub eos_token: Option<u32>,
}

type TResult<T> = Result<T, String>;

impl Tok {
    fn from_json(v: &Value) -> TResult<Tok> {
        let text = v.to_string();
        let inner = tokenizers::Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| format!("tokenizer: {e}"))?;
        let byte_level = v
            .get("decoder")
            .map(|d| d.to_string().contains("\"ByteLevel\""))
            .unwrap_or(false);
        Ok(Self::with_tables(inner, byte_level))
    }

    fn with_tables(inner: tokenizers::Tokenizer, byte_level: bool) -> Tok {
        let n = inner.get_vocab_size(true);
        let special_ids: std::collections::HashSet<u32> = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        let unbyte = byte_decoder();
        let mut bytes = Vec::with_capacity(n);
        let mut special = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let is_special = special_ids.contains(&id);
            special.push(is_special);
            let piece = inner.id_to_token(id).unwrap_or_default();
            bytes.push(if is_special {
                Vec::new()
            } else if byte_level {
                piece
                    .chars()
                    .map(|c| unbyte.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| piece.as_bytes().to_vec())
            } else if let Some(b) = byte_piece(&piece) {
                vec![b]
            } else {
                piece.replace('▁', " ").into_bytes()
            });
        }
        Tok {
            inner,
            bytes,
            special,
        }
    }

    /// A Hugging Face folder: tokenizer.json, else tokenizer.model; and tokenizer_config.json.
    pub fn from_hf_folder(dir: &Path, bos_default: Option<u32>) -> TResult<(Tok, TokSettings)> {
        let config: Value = match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| format!("tokenizer_config.json is not valid JSON: {e}"))?,
            Err(_) => Value::Null,
        };
        let tok = if dir.join("tokenizer.json").is_file() {
            let text = std::fs::read_to_string(dir.join("tokenizer.json"))
                .map_err(|e| format!("cannot read tokenizer.json: {e}"))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| format!("tokenizer.json is not valid JSON: {e}"))?;
            Self::from_json(&v)?
        } else if dir.join("tokenizer.model").is_file() {
            let bytes = std::fs::read(dir.join("tokenizer.model"))
                .map_err(|e| format!("cannot read tokenizer.model: {e}"))?;
            let sp = SpModel::parse(&bytes).map_err(|e| format!("tokenizer.model: {e}"))?;
            Self::from_sentencepiece(&sp, bos_default.unwrap_or(1))?
        } else {
            return Err(format!(
                "{} has neither tokenizer.json nor tokenizer.model",
                dir.display()
            ));
        };
        let token_of = |key: &str| -> Option<u32> {
            let v = config.get(key)?;
            let s = v
                .as_str()
                .or_else(|| v.get("content").and_then(Value::as_str))?;
            tok.inner.token_to_id(s)
        };
        let chat_template = match config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: the default one.
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(str::to_string),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        let settings = TokSettings {
            chat_template,
            add_bos: config
                .get("add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(tok.adds_bos()),
            bos_token: token_of("bos_token").or(bos_default),
            eos_token: token_of("eos_token"),
        };
        Ok((tok, settings))
    }

    fn from_sentencepiece(sp: &SpModel, bos: u32) -> TResult<Tok> {
        Self::from_json(&spm_json(sp, bos)?)
    }

    /// A GGUF file's vocabulary, from a header read with
    /// [`crate::gguf::read_header_with_tokenizer`].
    pub fn from_gguf(header: &GgufHeader) -> TResult<(Tok, TokSettings)> {
        let (v, settings) = gguf_json(header)?;
        Ok((Self::from_json(&v)?, settings))
    }

    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    fn adds_bos(&self) -> bool {
        self.inner.get_post_processor().is_some()
    }

    pub fn encode(&self, text: &str, add_special: bool) -> TResult<Vec<u32>> {
        self.inner
            .encode_fast(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize).map(Vec::as_slice)
    }

    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }
}

fn piece_type(t: i32) -> PieceType {
    match t {
        2 => PieceType::Unknown,
        3 => PieceType::Control,
        4 => PieceType::UserDefined,
        5 => PieceType::Unused,
        6 => PieceType::Byte,
        _ => PieceType::Normal,
    }
}

/// "<0x0A>" -> 0x0A.
fn byte_piece(p: &str) -> Option<u8> {
    let hex = p.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2)
        .then(|| u8::from_str_radix(hex, 16).ok())
        .flatten()
}

/// GPT-2's byte <-> printable-character table, inverted.
fn byte_decoder() -> HashMap<char, u8> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .filter_map(|(b, c)| Some((char::from_u32(c)?, b as u8)))
        .collect()
}

/// The byte-level pre-tokenizers (GGUF `tokenizer.ggml.pre`) this backend knows.
const BYTE_LEVEL_PRES: &[&str] = &["default", "smollm", "llama3"];

/// The pre-tokenizer llama.cpp applies for `pre` (the splits of its llama-vocab.cpp), as
/// Hugging Face tokenizers express it.
fn byte_level_pre_tokenizer(pre: &str) -> Option<Value> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level,
        // SmolLM: every digit on its own, then GPT-2's split.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level
        ]}),
        "llama3" | "llama-bpe" | "llama-v3" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]}),
        _ => return None,
    })
}

/// tokenizer.json for a GGUF byte-level BPE vocabulary, with the pre-tokenizer llama.cpp uses
/// for `pre` (the splits of its llama-vocab.cpp, as Hugging Face tokenizers express them).
fn byte_level_json(
    tokens: &[String],
    types: &[i32],
    merges: &[String],
    pre: &str,
    bos: Option<u32>,
) -> TResult<Value> {
    let pre_tokenizer = byte_level_pre_tokenizer(pre).ok_or_else(|| {
        format!(
            "GGUF pre-tokenizer {pre:?} is not supported by the pure-Rust backend yet ({} are)",
            BYTE_LEVEL_PRES.join(", ")
        )
    })?;
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": types.get(i).copied() == Some(4), "special": types.get(i).copied() == Some(3)})
        })
        .collect();
    let post = match bos {
        Some(id) => {
            let t = tokens
                .get(id as usize)
                .ok_or("BOS id outside the vocabulary")?;
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": t, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {t.as_str(): {"id": t, "ids": [id], "tokens": [t]}}})
        }
        None => Value::Null,
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    }))
}

/// tokenizer.json for a SentencePiece vocabulary whose post-processor prepends `bos`.
fn spm_json(sp: &SpModel, bos: u32) -> TResult<Value> {
    let unk = sp
        .pieces
        .iter()
        .position(|p| p.kind == PieceType::Unknown)
        .unwrap_or(0) as u32;
    if bos as usize >= sp.pieces.len() {
        return Err(format!(
            "BOS id {bos} is outside the vocabulary of {}",
            sp.pieces.len()
        ));
    }
    Ok(crate::spm_tokenizer::tokenizer_json(sp, bos, unk))
}

/// tokenizer.json (and the settings beside it) for a GGUF file's vocabulary, the way
/// `minerva convert` writes it and the candle backend reads it.
pub fn gguf_json(header: &GgufHeader) -> TResult<(Value, TokSettings)> {
    let strings = |key: &str| -> TResult<Vec<String>> {
        match header.arrays.get(key) {
            Some(MetaArray::Strings(a)) => Ok(a.clone()),
            Some(_) => Err(format!("GGUF metadata {key} is not a list of strings")),
            None => Err(format!("GGUF metadata has no {key}")),
        }
    };
    let token = |key: &str| header.get_u64(key).and_then(|v| u32::try_from(v).ok());
    let flag = |key: &str| header.get(key).and_then(crate::gguf::MetaValue::as_bool);
    let text = |key: &str| header.get_str(key).map(str::to_string);
    let tokens = strings("tokenizer.ggml.tokens")?;
    let types: Vec<i32> = match header.arrays.get("tokenizer.ggml.token_type") {
        Some(MetaArray::Ints(a)) => a.iter().map(|&i| i32::try_from(i).unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let model = text("tokenizer.ggml.model").unwrap_or_default();
    let bos = token("tokenizer.ggml.bos_token_id");
    let settings = TokSettings {
        chat_template: text("tokenizer.chat_template"),
        add_bos: flag("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama"),
        bos_token: bos,
        eos_token: token("tokenizer.ggml.eos_token_id"),
    };
    let tok_json = match model.as_str() {
        "llama" => {
            let scores: Vec<f32> = match header.arrays.get("tokenizer.ggml.scores") {
                Some(MetaArray::Floats(a)) => a.iter().map(|&v| v as f32).collect(),
                _ => vec![0.0; tokens.len()],
            };
            let pieces = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| Piece {
                    text: t.clone(),
                    score: scores.get(i).copied().unwrap_or(0.0),
                    kind: piece_type(types.get(i).copied().unwrap_or(1)),
                })
                .collect();
            let sp = SpModel {
                pieces,
                add_dummy_prefix: flag("tokenizer.ggml.add_space_prefix").unwrap_or(true),
            };
            let mut v = spm_json(&sp, bos.unwrap_or(1))?;
            if !settings.add_bos {
                v["post_processor"] = Value::Null;
            }
            v
        }
        "gpt2" => {
            let pre = text("tokenizer.ggml.pre").unwrap_or_else(|| "default".into());
            let merges = strings("tokenizer.ggml.merges")?;
            byte_level_json(
                &tokens,
                &types,
                &merges,
                &pre,
                settings.add_bos.then_some(bos).flatten(),
            )?
        }
        other => {
            return Err(format!(
                "GGUF tokenizer model {other:?} is not supported (\"llama\" and \"gpt2\" are)"
            ))
        }
    };
    Ok((tok_json, settings))
}

/// `pre_tokenizer` JSON without the keys that don't change the splits.
fn splits_of(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "trim_offsets")
                .map(|(k, v)| (k.clone(), splits_of(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(splits_of).collect()),
        other => other.clone(),
    }
}

/// Whether a SentencePiece-style tokenizer.json prepends "▁" to the text.
fn prepends_space(v: &Value) -> bool {
    let text = |key: &str| v.get(key).map(Value::to_string).unwrap_or_default();
    let normalizer = text("normalizer");
    let pre = text("pre_tokenizer");
    normalizer.contains("\"Prepend\"")
        || (pre.contains("\"Metaspace\"")
            && (pre.contains("\"add_prefix_space\":true")
                || pre.contains("\"prepend_scheme\":\"first\"")
                || pre.contains("\"prepend_scheme\":\"always\"")))
}

fn gw_strings(v: Vec<String>) -> gw::Value {
    gw::Value::StrArray(v)
}

/// The `tokenizer.*` GGUF metadata for a Hugging Face folder's tokenizer, as llama.cpp's
/// convert_hf_to_gguf.py writes it: a SentencePiece `tokenizer.model` (preferred, as there)
/// or a tokenizer.json byte-fallback BPE become the "llama" vocabulary (scores from the merge
/// ranks when there is no .model); a byte-level BPE becomes "gpt2" with its merges and the
/// llama.cpp pre-tokenizer whose splits are the same as the file's.
pub fn gguf_metadata(dir: &Path) -> TResult<Vec<(String, gw::Value)>> {
    let (_, settings) = Tok::from_hf_folder(dir, None)?;
    let mut md: Vec<(String, gw::Value)> = Vec::new();
    let mut put = |k: &str, v: gw::Value| md.push((k.to_string(), v));
    let sp_path = dir.join("tokenizer.model");
    let unk;
    if sp_path.is_file() {
        let bytes =
            std::fs::read(&sp_path).map_err(|e| format!("cannot read tokenizer.model: {e}"))?;
        let sp = SpModel::parse(&bytes).map_err(|e| format!("tokenizer.model: {e}"))?;
        unk = sp.pieces.iter().position(|p| p.kind == PieceType::Unknown);
        put("tokenizer.ggml.model", gw::Value::Str("llama".into()));
        put("tokenizer.ggml.pre", gw::Value::Str("default".into()));
        put(
            "tokenizer.ggml.tokens",
            gw_strings(sp.pieces.iter().map(|p| p.text.clone()).collect()),
        );
        put(
            "tokenizer.ggml.scores",
            gw::Value::F32Array(sp.pieces.iter().map(|p| p.score).collect()),
        );
        put(
            "tokenizer.ggml.token_type",
            gw::Value::I32Array(sp.pieces.iter().map(|p| p.kind as i32).collect()),
        );
        put(
            "tokenizer.ggml.add_space_prefix",
            gw::Value::Bool(sp.add_dummy_prefix),
        );
    } else {
        let text = std::fs::read_to_string(dir.join("tokenizer.json"))
            .map_err(|e| format!("cannot read tokenizer.json: {e}"))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("tokenizer.json is not valid JSON: {e}"))?;
        let model = &v["model"];
        if model["type"].as_str() != Some("BPE") {
            return Err(format!(
                "tokenizer.json model {} has no GGUF vocabulary type here (BPE has)",
                model["type"]
            ));
        }
        let mut tokens: Vec<Option<String>> = Vec::new();
        let mut set = |id: u64, t: &str| {
            let id = id as usize;
            if tokens.len() <= id {
                tokens.resize(id + 1, None);
            }
            tokens[id] = Some(t.to_string());
        };
        for (t, id) in model["vocab"]
            .as_object()
            .ok_or("tokenizer.json has no model.vocab")?
        {
            set(
                id.as_u64()
                    .ok_or("tokenizer.json: a vocab id is not a number")?,
                t,
            );
        }
        let mut added: HashMap<usize, bool> = HashMap::new();
        for a in v["added_tokens"].as_array().into_iter().flatten() {
            if let (Some(id), Some(t)) = (a["id"].as_u64(), a["content"].as_str()) {
                set(id, t);
                added.insert(id as usize, a["special"].as_bool().unwrap_or(false));
            }
        }
        let tokens: Vec<String> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.ok_or_else(|| format!("tokenizer.json has no token with id {i}")))
            .collect::<TResult<_>>()?;
        // Merges are "a b" strings (tokenizers < 0.20) or ["a", "b"] pairs.
        let merges: Vec<(String, String)> = model["merges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| match m {
                Value::String(s) => s.split_once(' ').map(|(a, b)| (a.into(), b.into())),
                Value::Array(p) => Some((p.first()?.as_str()?.into(), p.get(1)?.as_str()?.into())),
                _ => None,
            })
            .collect();
        let unk_text = model["unk_token"].as_str();
        unk = unk_text.and_then(|u| tokens.iter().position(|t| t == u));
        let types: Vec<i32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| match added.get(&i) {
                Some(true) if Some(t.as_str()) == unk_text => PieceType::Unknown as i32,
                Some(true) => PieceType::Control as i32,
                Some(false) => PieceType::UserDefined as i32,
                None if Some(t.as_str()) == unk_text => PieceType::Unknown as i32,
                None if model["byte_fallback"] == true && byte_piece(t).is_some() => {
                    PieceType::Byte as i32
                }
                None => PieceType::Normal as i32,
            })
            .collect();
        if model["byte_fallback"] == true {
            // llama.cpp's SentencePiece tokenizer merges the best-scored pair first: a token's
            // score is minus the rank of the merge that makes it. Tokens no merge makes (single
            // characters, bytes, specials) keep 0; they are never the result of a merge.
            let index: HashMap<&str, usize> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.as_str(), i))
                .collect();
            let mut scores = vec![0f32; tokens.len()];
            let mut scored = vec![false; tokens.len()];
            for (rank, (a, b)) in merges.iter().enumerate() {
                if let Some(&i) = index.get(format!("{a}{b}").as_str()) {
                    if !scored[i] {
                        scores[i] = -(rank as f32);
                        scored[i] = true;
                    }
                }
            }
            put("tokenizer.ggml.model", gw::Value::Str("llama".into()));
            put("tokenizer.ggml.pre", gw::Value::Str("default".into()));
            put("tokenizer.ggml.tokens", gw_strings(tokens));
            put("tokenizer.ggml.scores", gw::Value::F32Array(scores));
            put("tokenizer.ggml.token_type", gw::Value::I32Array(types));
            put(
                "tokenizer.ggml.add_space_prefix",
                gw::Value::Bool(prepends_space(&v)),
            );
        } else if v["pre_tokenizer"].to_string().contains("\"ByteLevel\"") {
            let want = splits_of(&v["pre_tokenizer"]);
            let pre = BYTE_LEVEL_PRES
                .iter()
                .find(|p| byte_level_pre_tokenizer(p).map(|j| splits_of(&j)) == Some(want.clone()))
                .ok_or_else(|| {
                    format!(
                        "tokenizer.json's byte-level pre-tokenizer is not one llama.cpp names here ({}): {}",
                        BYTE_LEVEL_PRES.join(", "),
                        v["pre_tokenizer"]
                    )
                })?;
            put("tokenizer.ggml.model", gw::Value::Str("gpt2".into()));
            put("tokenizer.ggml.pre", gw::Value::Str((*pre).into()));
            put("tokenizer.ggml.tokens", gw_strings(tokens));
            put("tokenizer.ggml.token_type", gw::Value::I32Array(types));
            put(
                "tokenizer.ggml.merges",
                gw_strings(merges.iter().map(|(a, b)| format!("{a} {b}")).collect()),
            );
        } else {
            return Err(
                "tokenizer.json is a BPE neither byte-fallback (SentencePiece style) nor byte-level (GPT-2 style)".into(),
            );
        }
    }
    let id = |i: Option<u32>| i.map(gw::Value::U32);
    if let Some(v) = id(settings.bos_token) {
        put("tokenizer.ggml.bos_token_id", v);
    }
    if let Some(v) = id(settings.eos_token) {
        put("tokenizer.ggml.eos_token_id", v);
    }
    if let Some(u) = unk {
        put("tokenizer.ggml.unknown_token_id", gw::Value::U32(u as u32));
    }
    put(
        "tokenizer.ggml.add_bos_token",
        gw::Value::Bool(settings.add_bos),
    );
    put("tokenizer.ggml.add_eos_token", gw::Value::Bool(false));
    if let Some(t) = settings.chat_template {
        put("tokenizer.chat_template", gw::Value::Str(t));
    }
    Ok(md)
}
