//! Minerva's pure-Rust backend: Llama and Mistral decoders on candle, with no C or C++ inference
//! code. It loads Hugging Face folders (SafeTensors, sharded or not; PyTorch `.bin` whose pickle
//! is scanned against a whitelist and never run) and GGUF files (kept quantized), all into one
//! decoder implementation ([`model::Transformer`]), so every format runs the same code.

pub mod config;
#[cfg(feature = "cuda")]
pub mod gpu;
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
use crate::pool::Pool;
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
            "candle 0.11 (pure Rust, f32 compute on CPU{}; Minerva kernels for mapped weights: {}; avx {}, f16c {}, neon {}); {} threads for candle's ops (process-wide: RAYON_NUM_THREADS or physical cores)",
            if cfg!(feature = "cuda") {
                "; CUDA: candle's kernels when a model loads with gpu_layers > 0"
            } else {
                ""
            },
            kernels::kernel_name(),
            candle_core::utils::with_avx(),
            candle_core::utils::with_f16c(),
            candle_core::utils::with_neon(),
            candle_core::utils::get_num_threads()
        )
    }

    fn load(&self, path: &Path, options: &LoadOptions) -> Result<Arc<dyn Model>> {
        Ok(Arc::new(CandleModel::load_with(path, options)?))
    }
}

/// Whether this build can run the candle backend on a GPU and sees one (CUDA device 0).
pub fn gpu_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| gpu::open_device().is_some())
    }
    #[cfg(not(feature = "cuda"))]
    false
}

/// The decoder a model runs on.
enum Decoder {
    Cpu(Arc<Transformer>),
    #[cfg(feature = "cuda")]
    Gpu(Arc<gpu::GpuTransformer>),
}

pub struct CandleModel {
    decoder: Decoder,
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
    /// Loads a Hugging Face folder (or a weights file inside one) or a GGUF file, on the CPU.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &LoadOptions { gpu_layers: 0 })
    }

    /// Like [`Self::load`]; with `gpu_layers > 0` in a CUDA build the whole decoder runs on
    /// CUDA device 0 (candle's GPU path has no partial offload), else on the CPU.
    pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Self> {
        let gpu = options.gpu_layers > 0;
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
            ModelFormat::Gguf => Self::load_gguf(path, gpu),
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
                Self::load_hf(&dir, format, gpu)
            }
        }
    }

    fn load_hf(dir: &Path, format: ModelFormat, gpu: bool) -> Result<Self> {
        let cfg = Config::from_hf_folder(dir).map_err(|e| bad(dir, e))?;
        let weights = Weights::from_hf_folder(dir).map_err(|e| bad(dir, e))?;
        let (tok, settings) =
            Tok::from_hf_folder(dir, cfg.bos_token_id).map_err(|e| bad(dir, e))?;
        Self::assemble(dir.to_path_buf(), format, cfg, weights, tok, settings, gpu)
    }

    fn load_gguf(path: &Path, gpu: bool) -> Result<Self> {
        // minerva_core's reader checks the header and every tensor's bounds before candle's
        // reader sees the file (candle trusts counts and offsets).
        let report =
            minerva_formats::verify::verify_path(path).map_err(|e| bad(path, e.to_string()))?;
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
            gpu,
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
        gpu: bool,
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
        let decoder = Self::place(transformer, gpu).map_err(|e| bad(&path, e))?;
        release_freed_heap();
        Ok(CandleModel {
            decoder,
            tok,
            info,
            eog,
        })
    }

    #[cfg(feature = "cuda")]
    fn place(transformer: Transformer, gpu: bool) -> std::result::Result<Decoder, String> {
        if let Some(dev) = gpu.then(gpu::open_device).flatten() {
            let g = gpu::GpuTransformer::new(transformer, dev)
                .map_err(|e| format!("moving the model to the GPU: {e}"))?;
            tracing::info!("candle: the model runs on CUDA device 0");
            return Ok(Decoder::Gpu(Arc::new(g)));
        }
        Ok(Decoder::Cpu(Arc::new(transformer)))
    }

    #[cfg(not(feature = "cuda"))]
    fn place(transformer: Transformer, _gpu: bool) -> std::result::Result<Decoder, String> {
        Ok(Decoder::Cpu(Arc::new(transformer)))
    }

    /// Whether every matrix stays in the mapped file, multiplied there by Minerva's kernels
    /// (false on a GPU, and for GGUF types those kernels lack, which candle holds in memory).
    pub fn matrices_in_place(&self) -> bool {
        match &self.decoder {
            Decoder::Cpu(t) => t.matrices_in_place(),
            #[cfg(feature = "cuda")]
            Decoder::Gpu(_) => false,
        }
    }

    /// Whether the decoder runs on a GPU.
    pub fn on_gpu(&self) -> bool {
        !matches!(self.decoder, Decoder::Cpu(_))
    }

    fn max_positions(&self) -> usize {
        match &self.decoder {
            Decoder::Cpu(t) => t.max_positions(),
            #[cfg(feature = "cuda")]
            Decoder::Gpu(t) => t.max_positions(),
        }
    }
}

/// Hands the heap memory that loading freed back to the system. Loading allocates and frees
/// large buffers (tensor data read from the file, the CPU copies of layers once they are on
/// the GPU); glibc keeps freed heap memory below its top in the process, where it counts in
/// the daemon's RSS until something reuses it. Measured on a 7B Q4_K_M on candle's CUDA path:
/// 4.07 GB of anonymous memory after the load without this.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
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
        let limit = self.max_positions();
        if options.context_length as usize > limit || options.context_length == 0 {
            return Err(CoreError::ContextFailed {
                backend: NAME,
                context_length: options.context_length,
                detail: format!("the candle backend supports 1..={limit} positions for this model"),
            });
        }
        let threads = candle_core::utils::get_num_threads();
        if options.threads as usize != threads && !self.on_gpu() {
            tracing::warn!(
                requested = options.threads,
                threads,
                "candle's thread pool is process-wide; set RAYON_NUM_THREADS before starting the daemon to change it"
            );
        }
        Ok(match &self.decoder {
            Decoder::Cpu(t) => Box::new(CandleContext::new(Arc::clone(t), options)),
            #[cfg(feature = "cuda")]
            Decoder::Gpu(t) => Box::new(CandleContext::new(Arc::clone(t), options)),
        })
    }
}

/// What a context needs of a decoder: forward passes of one sequence over its own cache.
pub trait Decode: Send + Sync + 'static {
    type Cache: Default + Send;
    /// Threads the context's pool needs (the CPU kernels'), 1 when it needs none.
    fn pool_threads(&self, requested: u32) -> usize;
    /// Runs `tokens` at positions `cache_len(cache)..`; logits [n, vocab] on the CPU, for the
    /// last token or, with `all`, every token.
    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut Self::Cache,
        all: bool,
        pool: &Pool,
    ) -> candle_core::Result<candle_core::Tensor>;
    fn cache_len(cache: &Self::Cache) -> usize;
    fn truncate(cache: &mut Self::Cache, pos: usize) -> candle_core::Result<()>;
}

impl Decode for Transformer {
    type Cache = SeqCache;
    fn pool_threads(&self, requested: u32) -> usize {
        requested.max(1) as usize
    }
    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut SeqCache,
        all: bool,
        pool: &Pool,
    ) -> candle_core::Result<candle_core::Tensor> {
        Transformer::forward(self, tokens, cache, all, pool)
    }
    fn cache_len(cache: &SeqCache) -> usize {
        cache.len()
    }
    fn truncate(cache: &mut SeqCache, pos: usize) -> candle_core::Result<()> {
        cache.truncate(pos)
    }
}

#[cfg(feature = "cuda")]
impl Decode for gpu::GpuTransformer {
    type Cache = gpu::GpuCache;
    fn pool_threads(&self, _requested: u32) -> usize {
        1
    }
    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut gpu::GpuCache,
        all: bool,
        _pool: &Pool,
    ) -> candle_core::Result<candle_core::Tensor> {
        gpu::GpuTransformer::forward(self, tokens, cache, all)
    }
    fn cache_len(cache: &gpu::GpuCache) -> usize {
        cache.len()
    }
    fn truncate(cache: &mut gpu::GpuCache, pos: usize) -> candle_core::Result<()> {
        cache.truncate(pos);
        Ok(())
    }
}

/// KV caches of up to `max_sequences` sequences over one shared decoder.
pub struct CandleContext<D: Decode = Transformer> {
    /// Threads for the quantized kernels (candle's own ops use its process-wide pool).
    pool: Pool,
    decoder: Arc<D>,
    seqs: HashMap<SeqId, D::Cache>,
    options: ContextOptions,
}

impl<D: Decode> CandleContext<D> {
    fn new(decoder: Arc<D>, options: &ContextOptions) -> Self {
        CandleContext {
            pool: Pool::new(decoder.pool_threads(options.threads)),
            decoder,
            seqs: HashMap::new(),
            options: options.clone(),
        }
    }
}

fn fwd_err(e: impl std::fmt::Display) -> CoreError {
    CoreError::Forward {
        backend: NAME,
        detail: e.to_string(),
    }
}

/// The cache of `seq`, cut back to `start_pos` positions (a new one if it has none).
fn cache_at<D: Decode>(
    seqs: &mut HashMap<SeqId, D::Cache>,
    max_sequences: u32,
    seq: SeqId,
    start_pos: u32,
) -> Result<&mut D::Cache> {
    {
        if !seqs.contains_key(&seq) && seqs.len() >= max_sequences as usize {
            return Err(fwd_err(format!(
                "context holds {max_sequences} sequences already"
            )));
        }
        let cache = seqs.entry(seq).or_default();
        let start = start_pos as usize;
        if start > D::cache_len(cache) {
            return Err(fwd_err(format!(
                "sequence {} has {} cached positions; cannot continue at {start}",
                seq.0,
                D::cache_len(cache)
            )));
        }
        D::truncate(cache, start).map_err(fwd_err)?;
        Ok(cache)
    }
}

impl<D: Decode> CandleContext<D> {
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

impl<D: Decode> Context for CandleContext<D> {
    fn options(&self) -> &ContextOptions {
        &self.options
    }

    fn clear_sequence(&mut self, seq: SeqId) -> Result<()> {
        self.seqs.remove(&seq);
        Ok(())
    }

    fn keep_prefix(&mut self, seq: SeqId, len: u32) -> Result<bool> {
        match self.seqs.get_mut(&seq) {
            Some(cache) if len as usize <= D::cache_len(cache) => {
                D::truncate(cache, len as usize).map_err(fwd_err)?;
                Ok(true)
            }
            _ => Ok(len == 0),
        }
    }

    fn forward(&mut self, chunks: &[ForwardChunk<'_>], logits: &mut Vec<Vec<f32>>) -> Result<()> {
        logits.resize_with(chunks.len(), Vec::new);
        let decoder = Arc::clone(&self.decoder);
        for (chunk, out) in chunks.iter().zip(logits.iter_mut()) {
            if chunk.tokens.is_empty() {
                return Err(fwd_err("a chunk with no tokens"));
            }
            self.check_len(chunk.start_pos, chunk.tokens.len())?;
            let max = self.options.max_sequences;
            let cache = cache_at::<D>(&mut self.seqs, max, chunk.seq, chunk.start_pos)?;
            let l = decoder
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
        let decoder = Arc::clone(&self.decoder);
        let max = self.options.max_sequences;
        let cache = cache_at::<D>(&mut self.seqs, max, seq, start_pos)?;
        let l = decoder
            .forward(tokens, cache, true, &self.pool)
            .map_err(fwd_err)?;
        *logits = l
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(fwd_err)?;
        Ok(())
    }
}
