//! What the backends that tokenize in this process (candle, MLX) share above their decoders:
//! the tokenizer with the tokens that end generation and the [`ModelInfo`] a model's config
//! gives ([`Vocabulary`]), and with them every [`Model`] method but contexts
//! ([`InProcessModel`]). Behind the `tokenizer` feature.

use minerva_formats::config::Config;
use minerva_formats::tokenizer::{Tok, TokSettings};

use crate::engine::{check_token, Context, ContextOptions, Model, ModelFormat, ModelInfo, TokenId};
use crate::{CoreError, Result};

/// What a model's weight files say of it, beside its config.
pub struct WeightsSummary {
    pub parameter_count: u64,
    /// e.g. "Q4_1", "F16".
    pub quantization: String,
    pub file_size_bytes: u64,
}

/// A model's tokenizer, the tokens that end its generation, and what the model is.
pub struct Vocabulary {
    tok: Tok,
    info: ModelInfo,
    /// Sorted, without repeats.
    eog: Vec<TokenId>,
}

impl Vocabulary {
    /// The tokenizer `tok` of a model with config `cfg`; an error (to report as a bad model)
    /// when it has more tokens than the model's vocabulary.
    pub fn new(
        tok: Tok,
        settings: TokSettings,
        cfg: &Config,
        format: ModelFormat,
        weights: WeightsSummary,
    ) -> std::result::Result<Self, String> {
        if tok.vocab_size() > cfg.vocab_size {
            return Err(format!(
                "the tokenizer has {} tokens but the model's vocabulary is {}",
                tok.vocab_size(),
                cfg.vocab_size
            ));
        }
        let mut eog = cfg.eos_token_ids.clone();
        eog.extend(settings.eos_token);
        eog.sort_unstable();
        eog.dedup();
        let info = ModelInfo {
            format,
            architecture: cfg.architecture.clone(),
            parameter_count: weights.parameter_count,
            quantization: weights.quantization,
            trained_context_length: u32::try_from(cfg.max_position_embeddings).unwrap_or(u32::MAX),
            vocab_size: cfg.vocab_size as u32,
            layer_count: cfg.num_layers as u32,
            embedding_length: cfg.hidden_size as u32,
            head_count: cfg.num_heads as u32,
            head_count_kv: cfg.num_kv_heads as u32,
            head_dim: cfg.head_dim as u32,
            file_size_bytes: weights.file_size_bytes,
            chat_template: settings.chat_template,
            bos_token: settings.bos_token.or(cfg.bos_token_id),
            eos_token: settings.eos_token.or(cfg.eos_token_ids.first().copied()),
            add_bos: settings.add_bos,
        };
        Ok(Self { tok, info, eog })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// For what a backend knows better than the config (a GGUF file's trained context).
    pub fn info_mut(&mut self) -> &mut ModelInfo {
        &mut self.info
    }
}

/// A model whose tokenizer is a [`Vocabulary`]: the backend supplies its contexts, and
/// [`Model`] comes with it.
pub trait InProcessModel: Send + Sync {
    /// The backend's id.
    const BACKEND: &'static str;
    fn vocabulary(&self) -> &Vocabulary;
    /// [`Model::new_context`].
    fn context(&self, options: &ContextOptions) -> Result<Box<dyn Context>>;
}

impl<M: InProcessModel> Model for M {
    fn backend(&self) -> &'static str {
        M::BACKEND
    }

    fn info(&self) -> &ModelInfo {
        &self.vocabulary().info
    }

    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<TokenId>> {
        self.vocabulary()
            .tok
            .encode(text, add_special)
            .map_err(|detail| CoreError::InvalidParameter {
                parameter: "prompt",
                detail,
            })
    }

    fn token_bytes(&self, token: TokenId) -> Result<Vec<u8>> {
        let v = self.vocabulary();
        check_token(&v.info, token)?;
        Ok(v.tok.token_bytes(token).unwrap_or_default().to_vec())
    }

    fn token_text(&self, token: TokenId) -> Result<String> {
        let v = self.vocabulary();
        check_token(&v.info, token)?;
        Ok(v.tok.token_text(token).unwrap_or_default())
    }

    fn is_end_of_generation(&self, token: TokenId) -> bool {
        self.vocabulary().eog.contains(&token)
    }

    fn new_context(&self, options: &ContextOptions) -> Result<Box<dyn Context>> {
        self.context(options)
    }
}
