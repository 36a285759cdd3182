//! The model shapes `synth` can produce: hyperparameters, and the tensor list derived from them
//! (names in both llama.cpp's GGUF and Hugging Face's spelling, shapes in HF order `[out, in]`).

use crate::synth::SynthError;

/// Which Mistral SentencePiece tokenizer a shape ships with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// Mistral 7B v0.1's tokenizer.model (32000 pieces).
    MistralV1,
    /// Mistral 7B v0.3's tokenizer (32768 pieces: v1 plus control tokens).
    MistralV3,
}

/// Hyperparameters of a Mistral-architecture model.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// The name `--shape` takes.
    pub name: &'static str,
    /// Human-readable name written to the files' metadata.
    pub display_name: &'static str,
    pub tokenizer: TokenizerKind,
    pub vocab_size: u64,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_layers: u64,
    pub num_heads: u64,
    pub num_kv_heads: u64,
    pub head_dim: u64,
    pub rope_theta: f32,
    pub sliding_window: Option<u64>,
    pub max_position_embeddings: u64,
    pub rms_norm_eps: f32,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
    pub unk_token_id: u32,
}

/// What a tensor holds: norms are vectors of ones, everything else a random matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    Norm,
    Matrix,
}

/// One weight tensor of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// llama.cpp's name, e.g. `blk.0.attn_q.weight`.
    pub gguf_name: String,
    /// Hugging Face's name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub hf_name: String,
    /// Shape in row-major (PyTorch) order: `[out, in]` for matrices, `[n]` for norms. GGUF
    /// stores the reverse (`ne0` is the innermost dimension).
    pub shape: Vec<u64>,
    pub kind: TensorKind,
}

impl TensorSpec {
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

pub const SHAPE_NAMES: &[&str] = &["mistral-7b-v0.1", "mistral-7b-v0.3", "tiny"];

const MISTRAL_7B_V01: Shape = Shape {
    name: "mistral-7b-v0.1",
    display_name: "Mistral 7B v0.1 (synthetic random weights)",
    tokenizer: TokenizerKind::MistralV1,
    vocab_size: 32000,
    hidden_size: 4096,
    intermediate_size: 14336,
    num_layers: 32,
    num_heads: 32,
    num_kv_heads: 8,
    head_dim: 128,
    rope_theta: 10000.0,
    sliding_window: Some(4096),
    max_position_embeddings: 32768,
    rms_norm_eps: 1e-5,
    bos_token_id: 1,
    eos_token_id: 2,
    unk_token_id: 0,
};

impl Shape {
    /// Looks up a shape by its `--shape` name.
    pub fn by_name(name: &str) -> Result<Shape, SynthError> {
        match name {
            "mistral-7b-v0.1" => Ok(MISTRAL_7B_V01),
            "mistral-7b-v0.3" => Ok(Shape {
                name: "mistral-7b-v0.3",
                display_name: "Mistral 7B v0.3 (synthetic random weights)",
                tokenizer: TokenizerKind::MistralV3,
                vocab_size: 32768,
                rope_theta: 1_000_000.0,
                sliding_window: None,
                ..MISTRAL_7B_V01
            }),
            // Mistral's architecture and real v1 tokenizer at test size. Hidden 256 and
            // intermediate 512 (not smaller) so every row is a multiple of 256 and llama.cpp's
            // k-quants (Q4_K, Q6_K) apply as they do at 7B instead of falling back to Q5_0.
            "tiny" => Ok(Shape {
                name: "tiny",
                display_name: "Mistral tiny (synthetic random weights)",
                hidden_size: 256,
                intermediate_size: 512,
                num_layers: 2,
                num_heads: 4,
                num_kv_heads: 2,
                head_dim: 64,
                max_position_embeddings: 4096,
                sliding_window: Some(4096),
                ..MISTRAL_7B_V01
            }),
            other => Err(SynthError::UnknownShape {
                name: other.to_string(),
            }),
        }
    }

    /// Every weight tensor, in the order the files store them.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let ff = self.intermediate_size;
        let t = |gguf: String, hf: String, shape: Vec<u64>, kind| TensorSpec {
            gguf_name: gguf,
            hf_name: hf,
            shape,
            kind,
        };
        let mut out = vec![t(
            "token_embd.weight".into(),
            "model.embed_tokens.weight".into(),
            vec![self.vocab_size, h],
            TensorKind::Matrix,
        )];
        for i in 0..self.num_layers {
            let g = |s: &str| format!("blk.{i}.{s}.weight");
            let f = |s: &str| format!("model.layers.{i}.{s}.weight");
            use TensorKind::{Matrix, Norm};
            out.push(t(g("attn_norm"), f("input_layernorm"), vec![h], Norm));
            out.push(t(g("attn_q"), f("self_attn.q_proj"), vec![q, h], Matrix));
            out.push(t(g("attn_k"), f("self_attn.k_proj"), vec![kv, h], Matrix));
            out.push(t(g("attn_v"), f("self_attn.v_proj"), vec![kv, h], Matrix));
            out.push(t(
                g("attn_output"),
                f("self_attn.o_proj"),
                vec![h, q],
                Matrix,
            ));
            out.push(t(
                g("ffn_norm"),
                f("post_attention_layernorm"),
                vec![h],
                Norm,
            ));
            out.push(t(g("ffn_gate"), f("mlp.gate_proj"), vec![ff, h], Matrix));
            out.push(t(g("ffn_up"), f("mlp.up_proj"), vec![ff, h], Matrix));
            out.push(t(g("ffn_down"), f("mlp.down_proj"), vec![h, ff], Matrix));
        }
        out.push(t(
            "output_norm.weight".into(),
            "model.norm.weight".into(),
            vec![h],
            TensorKind::Norm,
        ));
        out.push(t(
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![self.vocab_size, h],
            TensorKind::Matrix,
        ));
        out
    }

    /// Number of weights (all tensors).
    pub fn parameter_count(&self) -> u64 {
        self.tensors().iter().map(TensorSpec::elements).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistral_7b_has_7_24b_parameters() {
        // Mistral 7B's published count: 7,241,732,096.
        let s = Shape::by_name("mistral-7b-v0.1").unwrap();
        assert_eq!(s.parameter_count(), 7_241_732_096);
        let v3 = Shape::by_name("mistral-7b-v0.3").unwrap();
        assert_eq!(v3.parameter_count(), 7_241_732_096 + 2 * 768 * 4096);
        assert_eq!(s.tensors().len(), 3 + 9 * 32);
    }

    #[test]
    fn unknown_shape_is_refused() {
        let e = Shape::by_name("llama-70b").unwrap_err();
        assert!(e.to_string().contains("mistral-7b-v0.1"), "{e}");
    }
}
