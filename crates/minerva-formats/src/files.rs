//! [`ModelFiles`]: a model's files, detected, verified and parsed once, before any backend sees
//! them. The daemon opens a model with it; backends load from what it read instead of reading
//! and checking the same headers again.

use std::path::{Path, PathBuf};

use crate::gguf::{self, GgufError, GgufHeader};
use crate::problem::{self, Problem, Summary};
use crate::verify;
use crate::{ModelFormat, ModelInfo};

/// Why a path could not be opened as a model.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Nothing at the path looks like a model.
    #[error("{} is not a model: expected a .gguf file, or a folder with config.json and model.safetensors or pytorch_model.bin", path.display())]
    NotAModel { path: PathBuf },
    #[error("{} is not a usable GGUF model: {source}", path.display())]
    BadGguf {
        path: PathBuf,
        #[source]
        source: GgufError,
    },
    /// The files failed the checks of `minerva verify`.
    #[error("{}: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        problem: Box<Problem>,
    },
}

/// What was read from the files, by kind.
#[derive(Debug, Clone)]
enum Parsed {
    Gguf(GgufHeader),
    /// A Hugging Face or MLX folder (or a weights file inside one): its config.json, when it has
    /// one, and the weight files that were checked.
    Folder {
        config: Option<serde_json::Value>,
        weight_files: Vec<String>,
    },
}

/// A model's files, opened once: the format, the parsed GGUF header or config.json, and the
/// verification summary. Cheap to clone (headers only, never weights).
#[derive(Debug, Clone)]
pub struct ModelFiles {
    path: PathBuf,
    format: ModelFormat,
    parsed: Parsed,
    summary: Summary,
}

impl ModelFiles {
    /// Detects what `path` is (a .gguf file, a model folder, or a weights file inside one),
    /// checks it as `minerva verify` does, with bounded reads, and keeps what it parsed.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        if !path.exists() {
            return Err(OpenError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let format = ModelFormat::detect(path).ok_or_else(|| OpenError::NotAModel {
            path: path.to_path_buf(),
        })?;
        if format == ModelFormat::Gguf {
            let header = gguf::read_header(path).map_err(|source| OpenError::BadGguf {
                path: path.to_path_buf(),
                source,
            })?;
            let info = ModelInfo::from_gguf(&header);
            let summary = Summary {
                architecture: info.architecture,
                parameter_count: info.parameter_count,
                quantization: info.quantization,
                context_length: info.trained_context_length,
                tensor_count: header.tensors.len() as u64,
                file_size_bytes: header.file_size,
                ..Summary::default()
            };
            return Ok(Self {
                path: path.to_path_buf(),
                format,
                parsed: Parsed::Gguf(header),
                summary,
            });
        }
        let report = verify::verify_path(path).map_err(|e| match e {
            verify::VerifyError::NotFound { path } => OpenError::NotFound { path },
            verify::VerifyError::Io { path, source } => OpenError::Io { path, source },
        })?;
        if let Some(problem) = report.error {
            return Err(OpenError::Invalid {
                path: path.to_path_buf(),
                problem: Box::new(problem),
            });
        }
        let dir = folder_of(path);
        let config = problem::read_config(&dir).map_err(|problem| OpenError::Invalid {
            path: path.to_path_buf(),
            problem: Box::new(problem),
        })?;
        let weight_files = report
            .files
            .iter()
            .filter(|f| f.ends_with(".safetensors") || f.ends_with(".bin"))
            .cloned()
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            format,
            parsed: Parsed::Folder {
                config,
                weight_files,
            },
            summary: report.summary,
        })
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's folder: the path itself for a folder, else the folder of the file.
    pub fn dir(&self) -> PathBuf {
        folder_of(&self.path)
    }

    pub fn format(&self) -> ModelFormat {
        self.format
    }

    /// The GGUF header, for a GGUF model.
    pub fn gguf_header(&self) -> Option<&GgufHeader> {
        match &self.parsed {
            Parsed::Gguf(h) => Some(h),
            Parsed::Folder { .. } => None,
        }
    }

    /// A folder's config.json, when it has one.
    pub fn config(&self) -> Option<&serde_json::Value> {
        match &self.parsed {
            Parsed::Folder { config, .. } => config.as_ref(),
            Parsed::Gguf(_) => None,
        }
    }

    /// A folder's weight files that were checked, relative to [`Self::dir`].
    pub fn weight_files(&self) -> &[String] {
        match &self.parsed {
            Parsed::Folder { weight_files, .. } => weight_files,
            Parsed::Gguf(_) => &[],
        }
    }

    /// What verification found (architecture, parameters, quantization, trained context).
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The context length the model was trained with; 0 when the files do not say.
    pub fn trained_context_length(&self) -> u32 {
        self.summary.context_length
    }

    /// What the files say about the model without loading it. Backends refine the tokenizer
    /// fields (vocabulary, BOS/EOS) from the tokenizer they load.
    pub fn info(&self) -> ModelInfo {
        if let Some(h) = self.gguf_header() {
            return ModelInfo::from_gguf(h);
        }
        let s = &self.summary;
        let n = |k: &str| {
            self.config()
                .and_then(|c| c.get(k))
                .and_then(serde_json::Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0)
        };
        let heads = n("num_attention_heads");
        let hidden = n("hidden_size");
        ModelInfo {
            format: self.format,
            architecture: s.architecture.clone(),
            parameter_count: s.parameter_count,
            quantization: s.quantization.clone(),
            trained_context_length: s.context_length,
            vocab_size: n("vocab_size"),
            layer_count: n("num_hidden_layers"),
            embedding_length: hidden,
            head_count: heads,
            head_count_kv: match n("num_key_value_heads") {
                0 => heads,
                kv => kv,
            },
            head_dim: match n("head_dim") {
                0 => hidden.checked_div(heads).unwrap_or(0),
                d => d,
            },
            file_size_bytes: s.file_size_bytes,
            chat_template: read_chat_template(&self.dir()),
            bos_token: None,
            eos_token: None,
            add_bos: true,
        }
    }
}

/// The folder a model path stands for.
fn folder_of(path: &Path) -> PathBuf {
    if path.is_file() {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        path.to_path_buf()
    }
}

/// tokenizer_config.json's chat template, read with the same size bound as config.json.
fn read_chat_template(dir: &Path) -> Option<String> {
    let p = dir.join("tokenizer_config.json");
    let len = std::fs::metadata(&p).ok()?.len();
    if len > problem::MAX_CONFIG_BYTES {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
    v.get("chat_template")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_path_and_a_folder_without_a_model_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.gguf");
        assert!(matches!(
            ModelFiles::open(&missing),
            Err(OpenError::NotFound { .. })
        ));
        assert!(matches!(
            ModelFiles::open(dir.path()),
            Err(OpenError::NotAModel { .. })
        ));
    }

    #[test]
    fn a_truncated_gguf_is_refused_with_the_readers_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.gguf");
        std::fs::write(&f, b"GGUF\x03\x00\x00\x00").unwrap();
        let e = ModelFiles::open(&f).unwrap_err();
        assert!(matches!(e, OpenError::BadGguf { .. }), "{e}");
    }

    #[test]
    fn a_folder_is_verified_and_its_config_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"num_attention_heads":4,
                "num_hidden_layers":2,"vocab_size":32,"max_position_embeddings":128}"#,
        )
        .unwrap();
        // A SafeTensors file whose header promises more bytes than the file has.
        let header = br#"{"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
        let e = ModelFiles::open(dir.path()).unwrap_err();
        assert!(matches!(e, OpenError::Invalid { .. }), "{e}");

        bytes.extend_from_slice(&[0u8; 64]);
        std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
        let files = ModelFiles::open(dir.path()).unwrap();
        assert_eq!(files.format(), ModelFormat::SafeTensors);
        assert_eq!(files.trained_context_length(), 128);
        assert_eq!(files.weight_files(), ["model.safetensors"]);
        let info = files.info();
        assert_eq!(
            (info.head_count, info.head_dim, info.vocab_size),
            (4, 16, 32)
        );
    }
}
