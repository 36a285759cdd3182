//! Structured output: a request's constraint (JSON schema, any JSON object, regex, Lark grammar,
//! a choice of strings) compiled by llguidance against the model's own vocabulary and applied
//! at each step as a mask over the logits, so the text always parses.
//!
//! llguidance is what llama.cpp and mistral.rs use: its token trie walks the vocabulary once per
//! step with the grammar's lexer, so a mask costs far less than a forward pass. The trie is built
//! once per loaded model (`Vocabulary`), the parser once per request (`Constraint`), here on the
//! request's side so that a bad schema is refused before anything is queued.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use minerva_core::{Model, TokenId};

use crate::error::{DaemonError, Result};

/// What a request asked the text to be.
#[derive(Debug, Clone)]
pub(crate) enum ConstraintSpec {
    JsonSchema(String),
    JsonObject,
    Regex(String),
    Grammar(String),
    Choice(Vec<String>),
}

impl ConstraintSpec {
    /// The request field that carries it, for error messages.
    fn field(&self) -> &'static str {
        match self {
            ConstraintSpec::JsonSchema(_) => "constraint.json_schema",
            ConstraintSpec::JsonObject => "constraint.json_object",
            ConstraintSpec::Regex(_) => "constraint.regex",
            ConstraintSpec::Grammar(_) => "constraint.grammar",
            ConstraintSpec::Choice(_) => "constraint.choice",
        }
    }

    fn grammar(&self) -> Result<TopLevelGrammar> {
        let invalid = |m: String| DaemonError::invalid(self.field(), m);
        Ok(match self {
            ConstraintSpec::JsonSchema(text) => {
                let schema: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| invalid(format!("the schema is not JSON: {e}")))?;
                TopLevelGrammar::from_json_schema(with_layout(schema))
            }
            ConstraintSpec::JsonObject => TopLevelGrammar::from_json_schema(with_layout(
                serde_json::json!({"type": "object"}),
            )),
            ConstraintSpec::Regex(rx) if rx.is_empty() => {
                return Err(invalid("the regex is empty".into()))
            }
            ConstraintSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            ConstraintSpec::Grammar(g) if g.trim().is_empty() => {
                return Err(invalid("the grammar is empty".into()))
            }
            ConstraintSpec::Grammar(g) => TopLevelGrammar::from_lark(g.clone()),
            ConstraintSpec::Choice(options) => {
                if options.is_empty() {
                    return Err(invalid("give at least one option".into()));
                }
                if options.iter().any(String::is_empty) {
                    return Err(invalid("an option is empty".into()));
                }
                // Each option as a literal: every character outside [A-Za-z0-9 ] escaped.
                let alternatives: Vec<String> = options.iter().map(|o| literal(o)).collect();
                TopLevelGrammar::from_regex(&format!("({})", alternatives.join("|")))
            }
        })
    }
}

/// `s` as a regex that matches exactly it.
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == ' ' || !c.is_ascii() {
            out.push(c);
        } else if c.is_ascii_graphic() {
            out.push('\\');
            out.push(c);
        } else {
            out.push_str(&format!("\\x{:02X}", c as u32));
        }
    }
    out
}

/// Compact JSON with a space after `,` and `:`, unless the schema chose its own layout: with
/// free whitespace a small model can spend its whole budget on newlines.
fn with_layout(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    }
    schema
}

/// A model's vocabulary as llguidance sees it: each token's bytes in a trie, control tokens
/// marked as such (so no grammar text can produce them), the end-of-generation tokens as the
/// ones a complete text may end with. Built once per loaded model, on first use.
pub(crate) struct Vocabulary {
    factory: ParserFactory,
}

struct ModelTokenizer {
    model: Arc<dyn Model>,
    trie: TokTrie,
}

impl TokenizerEnv for ModelTokenizer {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // The model's own tokenizer where the bytes are text; the trie's greedy walk for bytes
        // that are not UTF-8 (a partial character).
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.model
                .tokenize(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(text.as_bytes()))
        })
    }
}

impl Vocabulary {
    pub(crate) fn new(model: Arc<dyn Model>) -> Result<Self> {
        let vocab = model.info().vocab_size;
        let mut words = Vec::with_capacity(vocab as usize);
        let mut ends = Vec::new();
        for t in 0..vocab {
            let bytes = model.token_bytes(t)?;
            if model.is_end_of_generation(t) {
                ends.push(t);
            }
            words.push(if bytes.is_empty() {
                // A control token: its name behind the marker byte, as llguidance expects.
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(model.token_text(t)?.as_bytes());
                w
            } else {
                bytes
            });
        }
        let Some(&first_end) = ends.first() else {
            return Err(DaemonError::Internal(
                "the model has no end-of-generation token; structured output needs one".into(),
            ));
        };
        let trie = TokTrie::from(&TokRxInfo::new(vocab, first_end), &words).with_eos_tokens(&ends);
        let env = ModelTokenizer { model, trie };
        let mut factory = ParserFactory::new_simple(&(Arc::new(env) as _))
            .map_err(|e| DaemonError::Internal(format!("structured output: {e}")))?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// Compiles `spec` for this vocabulary; a spec that does not compile is the client's error.
    pub(crate) fn compile(&self, spec: &ConstraintSpec) -> Result<Constraint> {
        let parser = self
            .factory
            .create_parser(spec.grammar()?)
            .map_err(|e| DaemonError::invalid(spec.field(), e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(DaemonError::invalid(spec.field(), e));
        }
        Ok(Constraint { matcher })
    }
}

/// One request's constraint: where its text stands in the grammar.
#[derive(Clone)]
pub(crate) struct Constraint {
    matcher: Matcher,
}

impl Constraint {
    /// The tokens that may come next; only end-of-generation tokens once the text is complete.
    pub(crate) fn allowed(&mut self) -> std::result::Result<SimpleVob, String> {
        self.matcher
            .compute_mask_or_eos()
            .map_err(|e| e.to_string())
    }

    /// Moves past `token`, which `allowed` allowed.
    pub(crate) fn accept(&mut self, token: TokenId) -> std::result::Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    /// Whether the text so far is a whole answer (the grammar may end here).
    pub(crate) fn is_complete(&mut self) -> bool {
        self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false)
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_matches_only_itself() {
        assert_eq!(literal("a.b"), "a\\.b");
        assert_eq!(literal("x|y (z)"), "x\\|y \\(z\\)");
        assert_eq!(literal("tab\there"), "tab\\x09here");
        assert_eq!(literal("café"), "café");
    }

    #[test]
    fn a_schema_keeps_its_own_layout_and_gets_ours_otherwise() {
        let ours = with_layout(serde_json::json!({"type": "string"}));
        assert_eq!(ours["x-guidance"]["whitespace_flexible"], false);
        let theirs = with_layout(serde_json::json!({"x-guidance": {"lenient": true}}));
        assert_eq!(theirs["x-guidance"], serde_json::json!({"lenient": true}));
        assert_eq!(
            with_layout(serde_json::json!(true)),
            serde_json::json!(true)
        );
    }

    #[test]
    fn malformed_specs_are_refused_with_the_field_named() {
        for (spec, words) in [
            (ConstraintSpec::JsonSchema("{".into()), "not JSON"),
            (ConstraintSpec::Regex(String::new()), "empty"),
            (ConstraintSpec::Grammar(" ".into()), "empty"),
            (ConstraintSpec::Choice(vec![]), "at least one"),
            (
                ConstraintSpec::Choice(vec!["a".into(), String::new()]),
                "empty",
            ),
        ] {
            let e = spec.grammar().unwrap_err().to_string();
            assert!(e.contains(spec.field()) && e.contains(words), "{e}");
        }
    }
}
