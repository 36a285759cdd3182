//! The engine interface over [`Transformer`]: loading a folder (checked by minerva-core's
//! verifier first, then against config.json tensor by tensor), the tokenizer, and contexts with
//! one KV cache per sequence.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use minerva_candle::config::Config;
use minerva_candle::tokenizer::Tok;
use minerva_core::{
    Backend, Context, ContextOptions, CoreError, ForwardChunk, LoadOptions, Model, ModelFormat,
    ModelInfo, Result, SeqId, TokenId,
};

use crate::model::{layer_windows, SeqCache, Transformer};
use crate::weights::Tensors;
use crate::NAME;

/// The MLX backend.
#[derive(Debug, Default, Clone, Copy)]
pub struct MlxBackend;

impl Backend for MlxBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build_info(&self) -> String {
        format!(
            "mlx-rs 0.33.0 on MLX (mlx-sys 0.7.0); default device {:?}; f32 compute; MLX schedules its own CPU threads (the threads option is not used){}",
            mlx_rs::Device::default(),
            if cfg!(target_os = "macos") {
                ", Metal + Accelerate"
            } else {
                ""
            }
        )
    }

    fn load(&self, path: &Path, _options: &LoadOptions) -> Result<Arc<dyn Model>> {
        Ok(Arc::new(MlxModel::load(path)?))
    }
}

pub struct MlxModel {
    /// MLX arrays may move between threads but not be used from two at once: the contexts
    /// (one per worker) take turns.
    transformer: Arc<Mutex<Transformer>>,
    tok: Tok,
    info: ModelInfo,
    eog: Vec<TokenId>,
}

fn bad(path: &Path, detail: impl Into<String>) -> CoreError {
    CoreError::BadModel {
        backend: NAME,
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

impl MlxModel {
    /// Loads an MLX-format folder (or a plain Hugging Face SafeTensors folder), or the folder of
    /// a `.safetensors` file inside one.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(CoreError::FileNotFound {
                path: path.to_path_buf(),
            });
        }
        let dir: PathBuf = if path.is_file() {
            path.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            path.to_path_buf()
        };
        match ModelFormat::detect(path) {
            Some(ModelFormat::Mlx | ModelFormat::SafeTensors) => {}
            Some(other) => {
                return Err(bad(
                    path,
                    format!(
                        "the mlx backend reads MLX-format (and Hugging Face SafeTensors) folders, not {}",
                        other.as_str()
                    ),
                ))
            }
            None => {
                return Err(bad(
                    path,
                    "not a model: expected a folder with config.json and model.safetensors (or model.safetensors.index.json)",
                ))
            }
        }
        // Header, bounds, index and quantization triples, before MLX reads anything.
        let report =
            minerva_formats::verify::verify_path(&dir).map_err(|e| bad(&dir, e.to_string()))?;
        if let Some(p) = report.error {
            return Err(bad(&dir, p.to_string()));
        }
        let cfg = Config::from_hf_folder(&dir).map_err(|e| bad(&dir, e))?;
        let config_json: serde_json::Value = std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let quantization = minerva_formats::mlx::quantization_of(&config_json)
            .transpose()
            .map_err(|p| bad(&dir, p.to_string()))?;
        let windows = layer_windows(&cfg, &config_json).map_err(|e| bad(&dir, e))?;
        let files: Vec<String> = report
            .files
            .iter()
            .filter(|f| f.ends_with(".safetensors"))
            .cloned()
            .collect();
        let tensors = Tensors::open(&dir, &files, quantization).map_err(|e| bad(&dir, e))?;
        let transformer = Transformer::new(&cfg, windows, tensors).map_err(|e| bad(&dir, e))?;
        let (tok, settings) =
            Tok::from_hf_folder(&dir, cfg.bos_token_id).map_err(|e| bad(&dir, e))?;
        if tok.vocab_size() > cfg.vocab_size {
            return Err(bad(
                &dir,
                format!(
                    "the tokenizer has {} tokens but the model's vocabulary is {}",
                    tok.vocab_size(),
                    cfg.vocab_size
                ),
            ));
        }
        let mut eog = cfg.eos_token_ids.clone();
        eog.extend(settings.eos_token);
        eog.sort_unstable();
        eog.dedup();
        let summary = report.summary;
        let info = ModelInfo {
            format: if report.format == "mlx" {
                ModelFormat::Mlx
            } else {
                ModelFormat::SafeTensors
            },
            architecture: cfg.architecture.clone(),
            parameter_count: summary.parameter_count,
            quantization: if summary.quantization.is_empty() {
                transformer.weight_kind()
            } else {
                summary.quantization
            },
            trained_context_length: u32::try_from(cfg.max_position_embeddings).unwrap_or(u32::MAX),
            vocab_size: cfg.vocab_size as u32,
            layer_count: cfg.num_layers as u32,
            embedding_length: cfg.hidden_size as u32,
            head_count: cfg.num_heads as u32,
            head_count_kv: cfg.num_kv_heads as u32,
            head_dim: cfg.head_dim as u32,
            file_size_bytes: summary.file_size_bytes,
            chat_template: settings.chat_template.clone(),
            bos_token: settings.bos_token.or(cfg.bos_token_id),
            eos_token: settings.eos_token.or(cfg.eos_token_ids.first().copied()),
            add_bos: settings.add_bos,
        };
        tracing::debug!(path = %dir.display(), quantization = %info.quantization, "mlx model loaded");
        Ok(MlxModel {
            transformer: Arc::new(Mutex::new(transformer)),
            tok,
            info,
            eog,
        })
    }
}

impl Model for MlxModel {
    fn backend(&self) -> &'static str {
        NAME
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<TokenId>> {
        self.tok
            .encode(text, add_special)
            .map_err(|detail| CoreError::InvalidParameter {
                parameter: "prompt",
                detail,
            })
    }

    fn token_bytes(&self, token: TokenId) -> Result<Vec<u8>> {
        self.info.check_token(token)?;
        Ok(self.tok.token_bytes(token).unwrap_or_default().to_vec())
    }

    fn token_text(&self, token: TokenId) -> Result<String> {
        self.info.check_token(token)?;
        Ok(self.tok.token_text(token).unwrap_or_default())
    }

    fn is_end_of_generation(&self, token: TokenId) -> bool {
        self.eog.contains(&token)
    }

    fn new_context(&self, options: &ContextOptions) -> Result<Box<dyn Context>> {
        if options.context_length == 0 {
            return Err(CoreError::ContextFailed {
                backend: NAME,
                context_length: 0,
                detail: "the context needs at least one position".into(),
            });
        }
        Ok(Box::new(MlxContext {
            transformer: Arc::clone(&self.transformer),
            vocab: self.info.vocab_size,
            seqs: HashMap::new(),
            options: options.clone(),
        }))
    }
}

/// KV caches of up to `max_sequences` sequences over one shared decoder.
pub struct MlxContext {
    transformer: Arc<Mutex<Transformer>>,
    vocab: u32,
    seqs: HashMap<SeqId, SeqCache>,
    options: ContextOptions,
}

fn fwd_err(e: impl std::fmt::Display) -> CoreError {
    CoreError::Forward {
        backend: NAME,
        detail: e.to_string(),
    }
}

impl MlxContext {
    /// Checks a chunk and returns its sequence's cache, cut back to `start_pos` positions.
    fn cache_for(
        &mut self,
        seq: SeqId,
        start_pos: u32,
        tokens: &[TokenId],
    ) -> Result<&mut SeqCache> {
        if tokens.is_empty() {
            return Err(fwd_err("a chunk with no tokens"));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t >= self.vocab) {
            return Err(fwd_err(format!(
                "token {t} is outside the vocabulary of {} tokens",
                self.vocab
            )));
        }
        let end = start_pos as usize + tokens.len();
        if end > self.options.context_length as usize {
            return Err(fwd_err(format!(
                "positions {start_pos}..{end} exceed the context of {} tokens",
                self.options.context_length
            )));
        }
        let max = self.options.max_sequences as usize;
        if !self.seqs.contains_key(&seq) && self.seqs.len() >= max {
            return Err(fwd_err(format!("context holds {max} sequences already")));
        }
        let cache = self.seqs.entry(seq).or_default();
        if start_pos as usize > cache.len() {
            return Err(fwd_err(format!(
                "sequence {} has {} cached positions; cannot continue at {start_pos}",
                seq.0,
                cache.len()
            )));
        }
        cache.truncate(start_pos as usize).map_err(fwd_err)?;
        Ok(cache)
    }

    fn run(
        &mut self,
        seq: SeqId,
        start_pos: u32,
        tokens: &[TokenId],
        all: bool,
    ) -> Result<Vec<f32>> {
        let transformer = Arc::clone(&self.transformer);
        let cache = self.cache_for(seq, start_pos, tokens)?;
        let t = transformer.lock().unwrap_or_else(|e| e.into_inner());
        t.forward(tokens, cache, all).map_err(fwd_err)
    }
}

impl Context for MlxContext {
    fn options(&self) -> &ContextOptions {
        &self.options
    }

    fn clear_sequence(&mut self, seq: SeqId) -> Result<()> {
        self.seqs.remove(&seq);
        Ok(())
    }

    fn keep_prefix(&mut self, seq: SeqId, len: u32) -> Result<bool> {
        match self.seqs.get_mut(&seq) {
            Some(cache) if len as usize <= cache.len() => {
                cache.truncate(len as usize).map_err(fwd_err)?;
                Ok(true)
            }
            _ => Ok(len == 0),
        }
    }

    fn forward(&mut self, chunks: &[ForwardChunk<'_>], logits: &mut Vec<Vec<f32>>) -> Result<()> {
        logits.resize_with(chunks.len(), Vec::new);
        for (chunk, out) in chunks.iter().zip(logits.iter_mut()) {
            *out = self.run(chunk.seq, chunk.start_pos, chunk.tokens, false)?;
        }
        Ok(())
    }

    fn forward_all(
        &mut self,
        seq: SeqId,
        start_pos: u32,
        tokens: &[TokenId],
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        if tokens.is_empty() {
            logits.clear();
            return Ok(());
        }
        *logits = self.run(seq, start_pos, tokens, true)?;
        Ok(())
    }
}
