//! The engine interface over [`Transformer`]: loading a folder (checked by minerva-formats'
//! verifier first, then against config.json tensor by tensor), the tokenizer, and contexts with
//! one KV cache per sequence.

use std::path::Path;
use std::sync::{Arc, Mutex};

use minerva_core::in_process::{InProcessModel, Vocabulary, WeightsSummary};
use minerva_core::{
    Backend, Context, ContextOptions, CoreError, LoadOptions, Logits, Model, ModelFiles,
    ModelFormat, PerSequenceContext, Result, SequenceModel, Serves, TokenId,
};
use minerva_formats::config::Config;
use minerva_formats::tokenizer::Tok;

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
            "mlx-rs {} on MLX (mlx-sys {}); default device {:?}; f32 compute; MLX schedules its own CPU threads (the threads option is not used){}",
            env!("MINERVA_MLX_RS_VERSION"),
            env!("MINERVA_MLX_SYS_VERSION"),
            mlx_rs::Device::default(),
            if cfg!(target_os = "macos") {
                ", Metal + Accelerate"
            } else {
                ""
            }
        )
    }

    fn formats(&self) -> &'static [(ModelFormat, Serves)] {
        // Plain SafeTensors folders too, when asked: candle is their default.
        &[
            (ModelFormat::Mlx, Serves::ByDefault),
            (ModelFormat::SafeTensors, Serves::WhenAsked),
        ]
    }

    fn load(&self, files: &ModelFiles, _options: &LoadOptions) -> Result<Arc<dyn Model>> {
        Ok(Arc::new(MlxModel::load_files(files)?))
    }
}

pub struct MlxModel {
    /// MLX arrays may move between threads but not be used from two at once: the contexts
    /// (one per worker) take turns.
    transformer: Arc<Mutex<Transformer>>,
    vocab: Vocabulary,
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
        Self::load_files(&ModelFiles::open(path)?)
    }

    /// Loads a folder that [`ModelFiles::open`] has checked: headers, bounds, the index and the
    /// quantization triples, before MLX reads anything.
    pub fn load_files(files: &ModelFiles) -> Result<Self> {
        let path = files.path();
        let dir = files.dir();
        let format = files.format();
        if !matches!(format, ModelFormat::Mlx | ModelFormat::SafeTensors) {
            return Err(bad(
                path,
                format!(
                    "the mlx backend reads MLX-format (and Hugging Face SafeTensors) folders, not {}",
                    format.as_str()
                ),
            ));
        }
        let cfg = Config::from_files(files).map_err(|e| bad(&dir, e))?;
        let no_config = serde_json::Value::Null;
        let config_json = files.config().unwrap_or(&no_config);
        let quantization = minerva_formats::mlx::quantization_of(config_json)
            .transpose()
            .map_err(|p| bad(&dir, p.to_string()))?;
        let windows = layer_windows(&cfg, config_json).map_err(|e| bad(&dir, e))?;
        let weight_files: Vec<String> = files
            .weight_files()
            .iter()
            .filter(|f| f.ends_with(".safetensors"))
            .cloned()
            .collect();
        let tensors = Tensors::open(&dir, &weight_files, quantization).map_err(|e| bad(&dir, e))?;
        let transformer = Transformer::new(&cfg, windows, tensors).map_err(|e| bad(&dir, e))?;
        let (tok, settings) =
            Tok::from_hf_folder(&dir, cfg.bos_token_id).map_err(|e| bad(&dir, e))?;
        let summary = files.summary().clone();
        let weights = WeightsSummary {
            parameter_count: summary.parameter_count,
            quantization: if summary.quantization.is_empty() {
                transformer.weight_kind()
            } else {
                summary.quantization
            },
            file_size_bytes: summary.file_size_bytes,
        };
        let vocab =
            Vocabulary::new(tok, settings, &cfg, format, weights).map_err(|e| bad(&dir, e))?;
        tracing::debug!(path = %dir.display(), quantization = %vocab.info().quantization, "mlx model loaded");
        Ok(MlxModel {
            transformer: Arc::new(Mutex::new(transformer)),
            vocab,
        })
    }
}

impl InProcessModel for MlxModel {
    const BACKEND: &'static str = NAME;

    fn vocabulary(&self) -> &Vocabulary {
        &self.vocab
    }

    fn context(&self, options: &ContextOptions) -> Result<Box<dyn Context>> {
        if options.context_length == 0 {
            return Err(CoreError::ContextFailed {
                backend: NAME,
                context_length: 0,
                detail: "the context needs at least one position".into(),
            });
        }
        Ok(Box::new(PerSequenceContext::new(
            MlxSequences {
                transformer: Arc::clone(&self.transformer),
                vocab_size: self.vocab.info().vocab_size,
            },
            options,
        )))
    }
}

/// One sequence's forward passes on the shared transformer: what [`PerSequenceContext`] needs
/// of this backend.
pub struct MlxSequences {
    transformer: Arc<Mutex<Transformer>>,
    vocab_size: u32,
}

impl SequenceModel for MlxSequences {
    type Cache = SeqCache;

    fn backend(&self) -> &'static str {
        NAME
    }

    fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    fn forward(
        &self,
        tokens: &[TokenId],
        cache: &mut SeqCache,
        logits: Logits,
    ) -> std::result::Result<Vec<f32>, String> {
        let t = self.transformer.lock().unwrap_or_else(|e| e.into_inner());
        t.forward(tokens, cache, logits == Logits::All)
            .map_err(|e| e.to_string())
    }

    fn cache_len(cache: &SeqCache) -> usize {
        cache.len()
    }

    fn truncate(cache: &mut SeqCache, len: usize) -> std::result::Result<(), String> {
        cache.truncate(len).map_err(|e| e.to_string())
    }

    fn copy_cache(cache: &SeqCache) -> std::result::Result<SeqCache, String> {
        // MLX arrays are values: each cache's next step makes new ones, never writes these.
        Ok(cache.clone())
    }
}
