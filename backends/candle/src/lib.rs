//! Minerva's pure-Rust backend: Llama and Mistral decoders on candle, with no C or C++ inference
//! code. It loads Hugging Face folders (SafeTensors, sharded or not; PyTorch `.bin` whose pickle
//! is scanned against a whitelist and never run) and GGUF files (kept quantized), all into one
//! decoder implementation ([`model::Transformer`]), so every format runs the same code.

#[cfg(feature = "cuda")]
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod pool;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use minerva_core::in_process::{InProcessModel, Vocabulary, WeightsSummary};
use minerva_core::{
    Backend, Context, ContextOptions, CoreError, LoadOptions, Logits, Model, ModelFiles,
    ModelFormat, PerSequenceContext, Result, SequenceModel, Serves, TokenId,
};

use crate::model::{SeqCache, Transformer};
use crate::pool::Pool;
use crate::weights::Weights;
use minerva_formats::config::Config;
use minerva_formats::tokenizer::{Tok, TokSettings};

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
            "candle {} (pure Rust, f32 compute on CPU{}; Minerva kernels for mapped weights: {}; avx {}, f16c {}, neon {}); {} threads for candle's ops (process-wide: RAYON_NUM_THREADS or physical cores)",
            env!("MINERVA_CANDLE_VERSION"),
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

    fn formats(&self) -> &'static [(ModelFormat, Serves)] {
        &[
            (ModelFormat::Gguf, Serves::ByDefault),
            (ModelFormat::SafeTensors, Serves::ByDefault),
            (ModelFormat::PyTorch, Serves::ByDefault),
        ]
    }

    fn load(&self, files: &ModelFiles, options: &LoadOptions) -> Result<Arc<dyn Model>> {
        Ok(Arc::new(CandleModel::load_files(files, options)?))
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
    vocab: Vocabulary,
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
        Self::load_files(&ModelFiles::open(path)?, options)
    }

    /// Loads files that [`ModelFiles::open`] has read and checked.
    pub fn load_files(files: &ModelFiles, options: &LoadOptions) -> Result<Self> {
        let gpu = options.gpu_layers > 0;
        let path = files.path();
        match files.format() {
            ModelFormat::Gguf => Self::load_gguf(files, gpu),
            ModelFormat::Mlx => Err(bad(
                path,
                "this is an MLX-format folder (config.json has \"quantization\"); the candle backend reads plain Hugging Face folders and GGUF",
            )),
            format @ (ModelFormat::SafeTensors | ModelFormat::PyTorch) => {
                Self::load_hf(files, format, gpu)
            }
        }
    }

    fn load_hf(files: &ModelFiles, format: ModelFormat, gpu: bool) -> Result<Self> {
        let dir = files.dir();
        let cfg = Config::from_files(files).map_err(|e| bad(&dir, e))?;
        let weights = Weights::from_hf_folder(&dir).map_err(|e| bad(&dir, e))?;
        let (tok, settings) =
            Tok::from_hf_folder(&dir, cfg.bos_token_id).map_err(|e| bad(&dir, e))?;
        Self::assemble(dir, format, cfg, weights, tok, settings, gpu)
    }

    /// Tensors come from the checked header (offsets and shapes inside the file); only the
    /// tokenizer's arrays, which the first read skips, are read again.
    fn load_gguf(files: &ModelFiles, gpu: bool) -> Result<Self> {
        let path = files.path();
        let header = files
            .gguf_header()
            .ok_or_else(|| bad(path, "not a GGUF file"))?;
        let cfg = Config::from_gguf(header).map_err(|e| bad(path, e))?;
        let weights = Weights::from_gguf(path, header).map_err(|e| bad(path, e))?;
        let with_tokenizer =
            minerva_formats::gguf::read_header_with_tokenizer(path).map_err(|source| {
                CoreError::BadGguf {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        let (tok, settings) = Tok::from_gguf(&with_tokenizer).map_err(|e| bad(path, e))?;
        let trained = files.trained_context_length();
        let info_ctx = if trained > 0 {
            trained as usize
        } else {
            cfg.max_position_embeddings
        };
        let mut m = Self::assemble(
            path.to_path_buf(),
            ModelFormat::Gguf,
            cfg,
            weights,
            tok,
            settings,
            gpu,
        )?;
        m.vocab.info_mut().trained_context_length = u32::try_from(info_ctx).unwrap_or(u32::MAX);
        Ok(m)
    }

    fn assemble(
        path: PathBuf,
        format: ModelFormat,
        cfg: Config,
        weights: Weights,
        tok: Tok,
        settings: TokSettings,
        gpu: bool,
    ) -> Result<Self> {
        let summary = WeightsSummary {
            parameter_count: weights.parameter_count,
            quantization: weights.stored_dtype.clone(),
            file_size_bytes: weights.file_bytes,
        };
        let vocab =
            Vocabulary::new(tok, settings, &cfg, format, summary).map_err(|e| bad(&path, e))?;
        let positions = cfg.max_position_embeddings.clamp(1, MAX_POSITIONS);
        let transformer = Transformer::new(cfg, weights, positions).map_err(|e| bad(&path, e))?;
        let decoder = Self::place(transformer, gpu).map_err(|e| bad(&path, e))?;
        release_freed_heap();
        Ok(CandleModel { decoder, vocab })
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
/// the daemon's RSS until something reuses it (bench/results/README.md has the measurement).
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl InProcessModel for CandleModel {
    const BACKEND: &'static str = NAME;

    fn vocabulary(&self) -> &Vocabulary {
        &self.vocab
    }

    fn context(&self, options: &ContextOptions) -> Result<Box<dyn Context>> {
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
            Decoder::Cpu(t) => Box::new(PerSequenceContext::new(
                CandleSequences::new(Arc::clone(t), self.vocab.info().vocab_size, options),
                options,
            )),
            #[cfg(feature = "cuda")]
            Decoder::Gpu(t) => Box::new(PerSequenceContext::new(
                CandleSequences::new(Arc::clone(t), self.vocab.info().vocab_size, options),
                options,
            )),
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
    /// A cache of its own with the same positions (several samples of one prompt).
    fn copy_cache(cache: &Self::Cache) -> std::result::Result<Self::Cache, String>;
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
    fn copy_cache(cache: &SeqCache) -> std::result::Result<SeqCache, String> {
        Ok(cache.clone())
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
    fn copy_cache(_cache: &gpu::GpuCache) -> std::result::Result<gpu::GpuCache, String> {
        // Its tensors are written in place; a copy needs new device buffers, not built yet.
        Err("several samples of one prompt (n > 1) are not built for candle's CUDA path".into())
    }
}

/// One sequence's forward passes on a decoder, with the context's thread pool: what
/// [`PerSequenceContext`] needs of this backend.
pub struct CandleSequences<D: Decode> {
    decoder: Arc<D>,
    /// Threads for the quantized kernels (candle's own ops use its process-wide pool).
    pool: Pool,
    vocab_size: u32,
}

impl<D: Decode> CandleSequences<D> {
    fn new(decoder: Arc<D>, vocab_size: u32, options: &ContextOptions) -> Self {
        Self {
            pool: Pool::new(decoder.pool_threads(options.threads)),
            decoder,
            vocab_size,
        }
    }
}

impl<D: Decode> SequenceModel for CandleSequences<D> {
    type Cache = D::Cache;

    fn backend(&self) -> &'static str {
        NAME
    }

    fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    fn forward(
        &self,
        tokens: &[TokenId],
        cache: &mut D::Cache,
        logits: Logits,
    ) -> std::result::Result<Vec<f32>, String> {
        let all = logits == Logits::All;
        self.decoder
            .forward(tokens, cache, all, &self.pool)
            .and_then(|l| l.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| e.to_string())
    }

    fn cache_len(cache: &D::Cache) -> usize {
        D::cache_len(cache)
    }

    fn truncate(cache: &mut D::Cache, len: usize) -> std::result::Result<(), String> {
        D::truncate(cache, len).map_err(|e| e.to_string())
    }

    fn copy_cache(cache: &D::Cache) -> std::result::Result<D::Cache, String> {
        D::copy_cache(cache)
    }
}
