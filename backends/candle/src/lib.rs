//! Minerva's pure-Rust backend: Llama and Mistral decoders on candle, with no C or C++ inference
//! code. It loads Hugging Face folders (SafeTensors, sharded or not; PyTorch `.bin` whose pickle
//! is scanned against a whitelist and never run) and GGUF files (kept quantized), all into one
//! decoder implementation ([`model::Transformer`]), so every format runs the same code.

pub mod config;
pub mod convert;
pub mod kernels;
pub mod model;
pub mod pool;
pub mod tokenizer;
pub mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minerva_core::{
    Backend, Context, ContextOptions, CoreError, ForwardChunk, LoadOptions, Model, ModelFormat,
    ModelInfo, Result, SeqId, TokenId,
};

use crate::config::Config;
use crate::model::{SeqCache, Transformer};
use crate::tokenizer::Tok;
use crate::weights::Weights;

pub const NAME: &str = "candle";

/// Positions the RoPE tables cover at most (a longer trained context is capped here).
const MAX_POSITIONS: usize = 32_768;

/// The candle backend.
#[derive(Debug, Default, Clone, Copy)]
pub struct CandleBackend;

impl Backend for CandleBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build_info(&self) -> String {
        format!(
            "candle 0.11 (pure Rust, f32 compute on CPU; Minerva kernels for mapped weights: {}; avx {}, f16c {}, neon {}); {} threads for candle's ops (process-wide: RAYON_NUM_THREADS or physical cores)",
            kernels::kernel_name(),
            candle_core::utils::with_avx(),
            candle_core::utils::with_f16c(),
            candle_core::utils::with_neon(),
            candle_core::utils::get_num_threads()
        )
    }

    fn load(&self, path: &Path, _options: &LoadOptions) -> Result<Arc<dyn Model>> {
        Ok(Arc::new(CandleModel::load(path)?))
    }
}

pub struct CandleModel {
    transformer: Arc<Transformer>,
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

impl CandleModel {
    /// Loads a Hugging Face folder (or a weights file inside one) or a GGUF file.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(CoreError::FileNotFound {
                path: path.to_path_buf(),
            });
        }
        let format = ModelFormat::detect(path).ok_or_else(|| {
            bad(
                path,
                "not a model: expected a .gguf file or a folder with config.json and model.safetensors / pytorch_model.bin",
            )
        })?;
        match format {
            ModelFormat::Gguf => Self::load_gguf(path),
            ModelFormat::Mlx => Err(bad(
                path,
                "this is an MLX-format folder (config.json has \"quantization\"); the candle backend reads plain Hugging Face folders and GGUF",
            )),
            ModelFormat::SafeTensors | ModelFormat::PyTorch => {
                let dir = if path.is_file() {
                    path.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    path.to_path_buf()
                };
                Self::load_hf(&dir, format)
            }
        }
    }

    fn load_hf(dir: &Path, format: ModelFormat) -> Result<Self> {
        let cfg = Config::from_hf_folder(dir).map_err(|e| bad(dir, e))?;
        let weights = Weights::from_hf_folder(dir).map_err(|e| bad(dir, e))?;
        let (tok, settings) =
            Tok::from_hf_folder(dir, cfg.bos_token_id).map_err(|e| bad(dir, e))?;
        Self::assemble(dir.to_path_buf(), format, cfg, weights, tok, settings)
    }

    fn load_gguf(path: &Path) -> Result<Self> {
        // minerva_core's reader checks the header and every tensor's bounds before candle's
        // reader sees the file (candle trusts counts and offsets).
        let report =
            minerva_core::verify::verify_path(path).map_err(|e| bad(path, e.to_string()))?;
        if let Some(p) = report.error {
            return Err(bad(path, p.to_string()));
        }
        let (weights, content) = Weights::from_gguf(path).map_err(|e| bad(path, e))?;
        let cfg = Config::from_gguf(&content).map_err(|e| bad(path, e))?;
        let (tok, settings) = Tok::from_gguf(&content).map_err(|e| bad(path, e))?;
        let mut info_ctx = cfg.max_position_embeddings;
        if let Some(n) = report
            .summary
            .context_length
            .try_into()
            .ok()
            .filter(|&n: &usize| n > 0)
        {
            info_ctx = n;
        }
        let mut m = Self::assemble(
            path.to_path_buf(),
            ModelFormat::Gguf,
            cfg,
            weights,
            tok,
            settings,
        )?;
        m.info.trained_context_length = u32::try_from(info_ctx).unwrap_or(u32::MAX);
        Ok(m)
    }

    fn assemble(
        path: PathBuf,
        format: ModelFormat,
        cfg: Config,
        weights: Weights,
        tok: Tok,
        settings: tokenizer::TokSettings,
    ) -> Result<Self> {
        if tok.vocab_size() > cfg.vocab_size {
            return Err(bad(
                &path,
                format!(
                    "the tokenizer has {} tokens but the model's vocabulary is {}",
                    tok.vocab_size(),
                    cfg.vocab_size
                ),
            ));
        }
        let quantization = weights.stored_dtype.clone();
        let parameter_count = weights.parameter_count;
        let file_size_bytes = weights.file_bytes;
        let positions = cfg.max_position_embeddings.clamp(1, MAX_POSITIONS);
        let mut eog = cfg.eos_token_ids.clone();
        eog.extend(settings.eos_token);
        eog.sort_unstable();
        eog.dedup();
        let info = ModelInfo {
            format,
            architecture: cfg.architecture.clone(),
            parameter_count,
            quantization,
            trained_context_length: u32::try_from(cfg.max_position_embeddings).unwrap_or(u32::MAX),
            vocab_size: cfg.vocab_size as u32,
            layer_count: cfg.num_layers as u32,
            embedding_length: cfg.hidden_size as u32,
            head_count: cfg.num_heads as u32,
            head_count_kv: cfg.num_kv_heads as u32,
            head_dim: cfg.head_dim as u32,
            file_size_bytes,
            chat_template: settings.chat_template.clone(),
            bos_token: settings.bos_token.or(cfg.bos_token_id),
            eos_token: settings.eos_token.or(cfg.eos_token_ids.first().copied()),
            add_bos: settings.add_bos,
        };
        let transformer = Transformer::new(cfg, weights, positions).map_err(|e| bad(&path, e))?;
        Ok(CandleModel {
            transformer: Arc::new(transformer),
            tok,
            info,
            eog,
        })
    }

    /// The decoder, for tests that drive it directly.
    pub fn transformer(&self) -> &Arc<Transformer> {
        &self.transformer
    }
}

impl Model for CandleModel {
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
        let limit = self.transformer.max_positions();
        if options.context_length as usize > limit || options.context_length == 0 {
            return Err(CoreError::ContextFailed {
                backend: NAME,
                context_length: options.context_length,
                detail: format!("the candle backend supports 1..={limit} positions for this model"),
            });
        }
        let threads = candle_core::utils::get_num_threads();
        if options.threads as usize != threads {
            tracing::warn!(
                requested = options.threads,
                threads,
                "candle's thread pool is process-wide; set RAYON_NUM_THREADS before starting the daemon to change it"
            );
        }
        Ok(Box::new(CandleContext {
            pool: pool::Pool::new(options.threads.max(1) as usize),
            transformer: Arc::clone(&self.transformer),
            seqs: HashMap::new(),
            options: options.clone(),
        }))
    }
}

/// KV caches of up to `max_sequences` sequences over one shared decoder.
pub struct CandleContext {
    /// Threads for the quantized kernels (candle's own ops use its process-wide pool).
    pool: pool::Pool,
    transformer: Arc<Transformer>,
    seqs: HashMap<SeqId, SeqCache>,
    options: ContextOptions,
}

fn fwd_err(e: impl std::fmt::Display) -> CoreError {
    CoreError::Forward {
        backend: NAME,
        detail: e.to_string(),
    }
}

/// The cache of `seq`, cut back to `start_pos` positions (a new one if it has none).
fn cache_at(
    seqs: &mut HashMap<SeqId, SeqCache>,
    max_sequences: u32,
    seq: SeqId,
    start_pos: u32,
) -> Result<&mut SeqCache> {
    {
        if !seqs.contains_key(&seq) && seqs.len() >= max_sequences as usize {
            return Err(fwd_err(format!(
                "context holds {max_sequences} sequences already"
            )));
        }
        let cache = seqs.entry(seq).or_default();
        let start = start_pos as usize;
        if start > cache.len() {
            return Err(fwd_err(format!(
                "sequence {} has {} cached positions; cannot continue at {start}",
                seq.0,
                cache.len()
            )));
        }
        cache.truncate(start).map_err(fwd_err)?;
        Ok(cache)
    }
}

impl CandleContext {
    fn check_len(&self, start: u32, n: usize) -> Result<()> {
        if start as usize + n > self.options.context_length as usize {
            return Err(fwd_err(format!(
                "positions {start}..{} exceed the context of {} tokens",
                start as usize + n,
                self.options.context_length
            )));
        }
        Ok(())
    }
}

impl Context for CandleContext {
    fn options(&self) -> &ContextOptions {
        &self.options
    }

    fn clear_sequence(&mut self, seq: SeqId) -> Result<()> {
        self.seqs.remove(&seq);
        Ok(())
    }

    fn forward(&mut self, chunks: &[ForwardChunk<'_>], logits: &mut Vec<Vec<f32>>) -> Result<()> {
        logits.resize_with(chunks.len(), Vec::new);
        let transformer = Arc::clone(&self.transformer);
        for (chunk, out) in chunks.iter().zip(logits.iter_mut()) {
            if chunk.tokens.is_empty() {
                return Err(fwd_err("a chunk with no tokens"));
            }
            self.check_len(chunk.start_pos, chunk.tokens.len())?;
            let max = self.options.max_sequences;
            let cache = cache_at(&mut self.seqs, max, chunk.seq, chunk.start_pos)?;
            let l = transformer
                .forward(chunk.tokens, cache, false, &self.pool)
                .map_err(fwd_err)?;
            *out = l
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(fwd_err)?;
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
        self.check_len(start_pos, tokens.len())?;
        let transformer = Arc::clone(&self.transformer);
        let max = self.options.max_sequences;
        let cache = cache_at(&mut self.seqs, max, seq, start_pos)?;
        let l = transformer
            .forward(tokens, cache, true, &self.pool)
            .map_err(fwd_err)?;
        *logits = l
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(fwd_err)?;
        Ok(())
    }
}
