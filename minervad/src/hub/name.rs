//! `hf:` names: what a request asks the Hub for, parsed and shown.

use crate::error::{DaemonError, Result};

/// What an `hf:` name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HubRef {
    pub(crate) owner: String,
    pub(crate) repo: String,
    pub(crate) revision: String,
    pub(crate) selector: Option<Selector>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selector {
    /// A path in the repo.
    File(String),
    /// A GGUF quantization tag such as `Q4_K_M`, matched against GGUF file names.
    Quant(String),
}

impl HubRef {
    /// Parses `hf:OWNER/REPO[@REV][:FILE|:QUANT]`; `None` when `name` is not an `hf:` name.
    pub(crate) fn parse(name: &str) -> Option<Result<HubRef>> {
        let rest = name.strip_prefix("hf:")?;
        Some(
            Self::parse_rest(rest).map_err(|detail| DaemonError::InvalidRequest {
                field: "model",
                detail: format!(
                    "{name:?}: {detail}; expected hf:OWNER/REPO[@REVISION][:FILE or :QUANT]"
                ),
            }),
        )
    }

    fn parse_rest(rest: &str) -> std::result::Result<HubRef, String> {
        let (repo_part, selector) = match rest.split_once(':') {
            Some((r, "")) => return Err(format!("nothing after ':' in {r:?}")),
            Some((r, s)) => (r, Some(s)),
            None => (rest, None),
        };
        let (id, revision) = match repo_part.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev.to_string()),
            Some(_) => return Err("empty revision after '@'".into()),
            None => (repo_part, "main".to_string()),
        };
        let (owner, repo) = id
            .split_once('/')
            .ok_or_else(|| "the repository needs an owner: OWNER/REPO".to_string())?;
        let valid = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !valid(owner) || !valid(repo) {
            return Err(format!("{id:?} is not a repository id"));
        }
        if !revision
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            || revision.split('/').any(|p| p.is_empty() || p == "..")
        {
            return Err(format!("{revision:?} is not a revision"));
        }
        let selector = match selector {
            None => None,
            Some(s) if s.contains('.') || s.contains('/') => {
                if s.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
                    return Err(format!("{s:?} is not a path inside the repository"));
                }
                Some(Selector::File(s.to_string()))
            }
            Some(s) => {
                if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "{s:?} is neither a file name nor a quantization tag"
                    ));
                }
                Some(Selector::Quant(s.to_ascii_uppercase()))
            }
        };
        Ok(HubRef {
            owner: owner.to_string(),
            repo: repo.to_string(),
            revision,
            selector,
        })
    }

    pub(crate) fn repo_id(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }

    /// The cache folder name huggingface_hub uses.
    pub(super) fn folder(&self) -> String {
        format!("models--{}--{}", self.owner, self.repo)
    }
}

/// Does the GGUF file name carry this quantization tag (`...-Q4_K_M.gguf`, `...Q4_K_M-00001-of-00002.gguf`)?
pub(super) fn has_quant_tag(path: &str, tag: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_uppercase();
    if !name.ends_with(".GGUF") {
        return false;
    }
    let stem = &name[..name.len() - 5];
    stem.split(['.', '-'])
        .any(|part| part == tag || part.trim_start_matches('_') == tag)
}

pub(crate) fn display_name(r: &HubRef) -> String {
    let rev = if r.revision == "main" {
        String::new()
    } else {
        format!("@{}", r.revision)
    };
    match &r.selector {
        None => format!("hf:{}{rev}", r.repo_id()),
        Some(Selector::File(f)) => format!("hf:{}{rev}:{f}", r.repo_id()),
        Some(Selector::Quant(q)) => format!("hf:{}{rev}:{q}", r.repo_id()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> HubRef {
        HubRef::parse(s).expect("an hf: name").expect("valid")
    }

    #[test]
    fn parses_names() {
        assert!(HubRef::parse("smollm2-135m").is_none());
        let r = parse("hf:TheBloke/Mistral-7B-Instruct-v0.2-GGUF:Q4_K_M");
        assert_eq!(r.owner, "TheBloke");
        assert_eq!(r.repo, "Mistral-7B-Instruct-v0.2-GGUF");
        assert_eq!(r.revision, "main");
        assert_eq!(r.selector, Some(Selector::Quant("Q4_K_M".into())));
        let r = parse("hf:mistralai/Mistral-7B-v0.1@refs/pr/3");
        assert_eq!(r.revision, "refs/pr/3");
        assert_eq!(r.selector, None);
        let r = parse("hf:o/r:sub/model-q8_0.gguf");
        assert_eq!(
            r.selector,
            Some(Selector::File("sub/model-q8_0.gguf".into()))
        );
        assert_eq!(display_name(&r), "hf:o/r:sub/model-q8_0.gguf");
        for bad in [
            "hf:",
            "hf:repo",
            "hf:/r",
            "hf:o/",
            "hf:o/r:",
            "hf:o/r@",
            "hf:o/r:../x.gguf",
            "hf:o/r:a//b.gguf",
            "hf:o/../r",
            "hf:o/r@a/../b",
            "hf:o/r:Q4 K",
        ] {
            assert!(
                matches!(
                    HubRef::parse(bad),
                    Some(Err(DaemonError::InvalidRequest { .. }))
                ),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn matches_quant_tags() {
        assert!(has_quant_tag(
            "mistral-7b-instruct-v0.2.Q4_K_M.gguf",
            "Q4_K_M"
        ));
        assert!(has_quant_tag("Model-Q8_0.gguf", "Q8_0"));
        assert!(has_quant_tag(
            "x/Model-Q4_K_M-00001-of-00002.gguf",
            "Q4_K_M"
        ));
        assert!(!has_quant_tag("mistral.Q4_K_S.gguf", "Q4_K_M"));
        assert!(!has_quant_tag("mistral.Q4_K_M.safetensors", "Q4_K_M"));
        assert!(!has_quant_tag("mistral.Q4_K_MM.gguf", "Q4_K_M"));
    }
}
