//! The llama.cpp backend: GGUF files memory-mapped by llama.cpp (through llama-cpp-2), with
//! Minerva's own sampling on top of the logits it returns.
//!
//! Files are opened with [`ModelFiles::open`] (header and tensor bounds checked) before llama.cpp
//! sees them, so a truncated or hostile file is refused with a precise error instead of reaching
//! C++ code that may abort.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use minerva_core::{
    check_chunks, Backend, Context, ContextOptions, CoreError, ForwardChunk, LoadOptions, Model,
    ModelFiles, ModelFormat, ModelInfo, Result, SeqId, Serves, TokenId,
};

pub use llama_cpp_2;

const NAME: &str = "llama.cpp";

/// llama.cpp's process-wide backend state, initialised once. Its logs go to `tracing` (target
/// `llama_cpp_2`), so `RUST_LOG` controls them.
pub fn llama_backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| CoreError::LoadFailed {
            backend: NAME,
            path: Default::default(),
            detail: format!("llama.cpp backend init failed: {e}"),
        })
}

/// The llama.cpp backend.
#[derive(Debug, Default, Clone, Copy)]
pub struct LlamaCppBackend;

impl Backend for LlamaCppBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build_info(&self) -> String {
        // SAFETY: returns a pointer to a static, NUL-terminated string.
        let info = unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) };
        format!(
            "llama.cpp (llama-cpp-sys-2 {}): {}",
            env!("MINERVA_LLAMA_CPP_SYS_VERSION"),
            info.to_string_lossy().trim()
        )
    }

    fn formats(&self) -> &'static [(ModelFormat, Serves)] {
        &[(ModelFormat::Gguf, Serves::ByDefault)]
    }

    fn load(&self, files: &ModelFiles, options: &LoadOptions) -> Result<Arc<dyn Model>> {
        Ok(Arc::new(LlamaCppModel::load_files(files, options)?))
    }
}

/// A GGUF model loaded (memory-mapped) by llama.cpp.
pub struct LlamaCppModel {
    model: Arc<LlamaModel>,
    info: ModelInfo,
    /// Read once at load: every context of this model uses it, and benchmark records report it.
    flash_attn: (llama_cpp_sys_2::llama_flash_attn_type, &'static str),
}

/// llama.cpp's flash-attention setting for a context: llama.cpp's "auto" (on for these models),
/// unless `MINERVA_FLASH_ATTN=on|off|auto` says otherwise. On the CPU its flash-attention kernel
/// gets slower as the context grows (backends/llamacpp/README.md). It stays on by default
/// because without it attention sums a sequence's KV cells in cell order, which in a shared
/// pool depends on what else runs, so batching moves tokens more often (ARCHITECTURE.md,
/// "Continuous batching"). Returns the setting and its name.
fn flash_attention() -> (llama_cpp_sys_2::llama_flash_attn_type, &'static str) {
    use llama_cpp_sys_2::{
        LLAMA_FLASH_ATTN_TYPE_AUTO as AUTO, LLAMA_FLASH_ATTN_TYPE_DISABLED as OFF,
        LLAMA_FLASH_ATTN_TYPE_ENABLED as ON,
    };
    match std::env::var("MINERVA_FLASH_ATTN").ok().as_deref() {
        Some("on") => (ON, "on"),
        Some("off") => (OFF, "off"),
        _ => (AUTO, "auto"),
    }
}

/// Whether this llama.cpp build can offload layers to a GPU (CUDA, Metal, ...) and sees one.
pub fn gpu_offload_available() -> bool {
    llama_backend().is_ok_and(|b| b.supports_gpu_offload())
}

impl LlamaCppModel {
    /// Opens and checks the file at `path`, then loads it.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        Self::load_files(&ModelFiles::open(path)?, options)
    }

    /// Loads a GGUF file that [`ModelFiles::open`] has read and checked (llama.cpp's C++ trusts
    /// the header's counts and offsets; ours does not).
    pub fn load_files(files: &ModelFiles, options: &LoadOptions) -> Result<Self> {
        let path = files.path();
        let header = files.gguf_header().ok_or_else(|| CoreError::BadModel {
            backend: NAME,
            path: path.to_path_buf(),
            detail: format!(
                "llama.cpp reads GGUF files, not {}",
                files.format().as_str()
            ),
        })?;
        let backend = llama_backend()?;
        let params = LlamaModelParams::default()
            .with_n_gpu_layers(options.gpu_layers)
            .with_use_mmap(true);
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| {
            CoreError::LoadFailed {
                backend: NAME,
                path: path.to_path_buf(),
                detail: e.to_string(),
            }
        })?;
        let mut info = ModelInfo::from_gguf(header);
        let vocab = model.vocab();
        info.vocab_size = u32::try_from(model.n_vocab()).unwrap_or(0);
        info.add_bos = vocab.should_add_bos();
        info.bos_token = u32::try_from(vocab.bos().0).ok();
        info.eos_token = u32::try_from(vocab.eos().0).ok();
        if info.trained_context_length == 0 {
            info.trained_context_length = model.n_ctx_train();
        }
        Ok(Self {
            model: Arc::new(model),
            info,
            flash_attn: flash_attention(),
        })
    }

    fn token(&self, token: TokenId) -> Result<LlamaToken> {
        minerva_core::engine::check_token(&self.info, token)?;
        Ok(LlamaToken(token as i32))
    }
}

impl Model for LlamaCppModel {
    fn backend(&self) -> &'static str {
        NAME
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<TokenId>> {
        let tokens = self
            .model
            .vocab()
            .tokenize(text.as_bytes(), add_special, true);
        Ok(tokens.into_iter().map(|t| t.0 as TokenId).collect())
    }

    fn token_bytes(&self, token: TokenId) -> Result<Vec<u8>> {
        let t = self.token(token)?;
        Ok(self.model.vocab().token_to_piece(t, false, None))
    }

    fn token_text(&self, token: TokenId) -> Result<String> {
        let t = self.token(token)?;
        let bytes = self.model.vocab().token_to_piece(t, true, None);
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn is_end_of_generation(&self, token: TokenId) -> bool {
        self.token(token)
            .map(|t| self.model.vocab().is_eog(t))
            .unwrap_or(false)
    }

    fn settings(&self) -> Vec<(String, String)> {
        vec![("flash_attn".into(), self.flash_attn.1.into())]
    }

    fn new_context(&self, options: &ContextOptions) -> Result<Box<dyn Context>> {
        Ok(Box::new(LlamaCppContext::new(
            Arc::clone(&self.model),
            self.info.vocab_size,
            options,
            self.flash_attn.0,
        )?))
    }
}

/// A llama.cpp context (KV cache) plus a reusable batch.
///
/// Field order matters: `ctx` and `batch` are dropped before `model`, which they point into.
struct LlamaCppContext {
    ctx: LlamaContext<'static>,
    batch: LlamaBatch<'static>,
    pending: Vec<(usize, i32)>,
    options: ContextOptions,
    vocab_size: u32,
    /// Keeps the model alive for as long as `ctx` and `batch`, which point into it.
    _model: Arc<LlamaModel>,
}

impl LlamaCppContext {
    fn new(
        model: Arc<LlamaModel>,
        vocab_size: u32,
        options: &ContextOptions,
        flash_attn: llama_cpp_sys_2::llama_flash_attn_type,
    ) -> Result<Self> {
        let fail = |detail: String| CoreError::ContextFailed {
            backend: NAME,
            context_length: options.context_length,
            detail,
        };
        let n_seq = options.max_sequences.max(1);
        // Per-sequence KV: llama.cpp splits n_ctx evenly into one stream per sequence.
        let total = if options.kv_per_sequence {
            options.context_length.checked_mul(n_seq).ok_or_else(|| {
                fail(format!(
                    "{n_seq} sequences x {} tokens",
                    options.context_length
                ))
            })?
        } else {
            options.context_length
        };
        let n_ctx = NonZeroU32::new(total)
            .ok_or_else(|| fail("context length must be at least 1".into()))?;
        let threads = i32::try_from(options.threads.max(1)).unwrap_or(i32::MAX);
        let batch_size = options.batch_size.clamp(1, total);
        let params = LlamaContextParams::default()
            .with_n_ctx(Some(n_ctx))
            .with_n_batch(batch_size)
            .with_n_ubatch(batch_size.min(512))
            .with_n_seq_max(n_seq)
            // Shared: one pool of KV cells for all sequences, the daemon admitting sequences
            // while their reservations fit it. Per sequence: a stream of context_length cells
            // each, and attention reads only the sequence's own stream (with one shared pool
            // every sequence's attention spans all cells in use, masked).
            .with_kv_unified(!options.kv_per_sequence)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let params = params.with_flash_attention_policy(flash_attn);
        let backend = llama_backend()?;
        let ctx = model
            .new_context(backend, params)
            .map_err(|e| fail(e.to_string()))?;
        // SAFETY: the context refers to the model, which lives in the Arc stored beside it and
        // is dropped after it (struct fields drop in declaration order).
        let ctx: LlamaContext<'static> = unsafe { std::mem::transmute(ctx) };
        let batch = LlamaBatch::new(batch_size as usize, options.max_sequences.max(1) as i32);
        let mut options = options.clone();
        options.batch_size = batch_size;
        Ok(Self {
            ctx,
            batch,
            pending: Vec::new(),
            options,
            vocab_size,
            _model: model,
        })
    }

    fn decode_batch(&mut self, logits: &mut [Vec<f32>]) -> Result<()> {
        self.ctx
            .decode(&mut self.batch)
            .map_err(|e| CoreError::Forward {
                backend: NAME,
                detail: e.to_string(),
            })?;
        // Rows arrive in token order: a chunk's rows may span several batches.
        let vocab = self.vocab_size as usize;
        for (chunk, idx) in self.pending.drain(..) {
            let row = self.ctx.get_logits_ith(idx);
            logits[chunk].extend_from_slice(&row[..vocab.min(row.len())]);
        }
        self.batch.clear();
        Ok(())
    }
}

impl Context for LlamaCppContext {
    fn options(&self) -> &ContextOptions {
        &self.options
    }

    fn clear_sequence(&mut self, seq: SeqId) -> Result<()> {
        self.ctx
            .clear_kv_cache_seq(Some(seq.0), None, None)
            .map_err(|e| CoreError::Forward {
                backend: NAME,
                detail: format!("clearing sequence {}: {e}", seq.0),
            })?;
        Ok(())
    }

    fn keep_prefix(&mut self, seq: SeqId, len: u32) -> Result<bool> {
        // llama.cpp refuses a partial removal where its memory cannot do one (recurrent
        // state, some sliding-window caches): false, and the caller clears the sequence.
        self.ctx
            .clear_kv_cache_seq(Some(seq.0), Some(len), None)
            .map_err(|e| CoreError::Forward {
                backend: NAME,
                detail: format!("cutting sequence {} at {len}: {e}", seq.0),
            })
    }

    fn copy_sequence(&mut self, from: SeqId, to: SeqId) -> Result<()> {
        // In one KV pool the cells get `to` as a second owner (no data moves); across the
        // streams of --kv-per-sequence, llama.cpp copies the whole stream at the next decode.
        self.clear_sequence(to)?;
        self.ctx
            .copy_kv_cache_seq(from.0 as i32, to.0 as i32, None, None)
            .map_err(|e| CoreError::Forward {
                backend: NAME,
                detail: format!("copying sequence {} to {}: {e}", from.0, to.0),
            })
    }

    fn forward(&mut self, chunks: &[ForwardChunk<'_>], logits: &mut Vec<Vec<f32>>) -> Result<()> {
        check_chunks(chunks, &self.options, self.vocab_size, NAME)?;
        logits.resize_with(chunks.len(), Vec::new);
        self.batch.clear();
        self.pending.clear();
        let cap = self.options.batch_size as usize;
        for (ci, chunk) in chunks.iter().enumerate() {
            logits[ci].clear();
            for (j, &tok) in chunk.tokens.iter().enumerate() {
                if self.batch.n_tokens() as usize == cap {
                    self.decode_batch(logits)?;
                }
                let wanted = chunk.wants(j);
                let idx = self.batch.n_tokens();
                self.batch
                    .add(
                        LlamaToken(tok as i32),
                        (chunk.start_pos as usize + j) as i32,
                        &[chunk.seq.0 as i32],
                        wanted,
                    )
                    .map_err(|e| CoreError::Forward {
                        backend: NAME,
                        detail: e.to_string(),
                    })?;
                if wanted {
                    self.pending.push((ci, idx));
                }
            }
        }
        if self.batch.n_tokens() > 0 {
            self.decode_batch(logits)?;
        }
        Ok(())
    }
}
