//! Chat requests rendered with the model's own Jinja chat template (GGUF
//! `tokenizer.chat_template`, or `tokenizer_config.json` for Hugging Face folders), the way
//! Hugging Face transformers renders it: `messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token`, Python string methods, and `raise_exception`.
//!
//! A template comes with the model file, so it is untrusted code: every render runs on a budget
//! of template instructions ([`RENDER_FUEL`]) and of output bytes ([`MAX_RENDERED_BYTES`]). A
//! template that loops within minijinja's per-range limits (nested `range(50000)` loops) would
//! otherwise render for minutes and grow past any memory, holding a blocking thread that even
//! shutdown waits on; with the budget it fails at once with a message that names the template.

use std::io::Write;

use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::{CoreError, Result};

/// Roles a chat message may have.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Template instructions one render may run. A real template spends a few dozen per message
/// (the unit tests render 2,000 messages with ChatML well inside it), so only a runaway loop
/// reaches it.
pub const RENDER_FUEL: u64 = 10_000_000;

/// Bytes one render may produce: far beyond any context a model has (a million tokens are a few
/// megabytes of text), so only a runaway template reaches it.
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(RENDER_FUEL));
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| CoreError::ChatTemplate {
                detail: format!("the model's template does not compile: {e}"),
            })?;
        Ok(Self { env })
    }

    /// Renders `messages` followed by the prompt for the assistant's turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(CoreError::InvalidParameter {
                parameter: "chat.messages",
                detail: "no messages: send at least one".into(),
            });
        }
        for (i, m) in messages.iter().enumerate() {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(CoreError::InvalidParameter {
                    parameter: "chat.messages.role",
                    detail: format!(
                        "message {i} has role {:?}; roles are {}",
                        m.role,
                        ROLES.join(", ")
                    ),
                });
            }
        }
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| CoreError::ChatTemplate {
                detail: e.to_string(),
            })?;
        let mut out = CappedWriter {
            bytes: Vec::new(),
            cap: MAX_RENDERED_BYTES,
        };
        let rendered = template.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => bos_token,
                eos_token => eos_token,
            },
            &mut out,
        );
        if let Err(e) = rendered {
            let detail = if out.bytes.len() >= out.cap {
                format!(
                    "the model's chat template wrote more than {} MiB: it runs away; send a plain \
                     prompt, or fix the template",
                    MAX_RENDERED_BYTES >> 20
                )
            } else if e.kind() == ErrorKind::OutOfFuel {
                format!(
                    "the model's chat template ran more than {RENDER_FUEL} instructions without \
                     finishing: it loops; send a plain prompt, or fix the template"
                )
            } else {
                match e.detail() {
                    Some(d) => d.to_string(),
                    None => e.to_string(),
                }
            };
            return Err(CoreError::ChatTemplate { detail });
        }
        String::from_utf8(out.bytes).map_err(|_| CoreError::ChatTemplate {
            detail: "the rendered text is not UTF-8".into(),
        })
    }
}

/// Collects a render's output and fails the write that would pass `cap` bytes.
struct CappedWriter {
    bytes: Vec<u8>,
    cap: usize,
}

impl Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.cap {
            self.bytes.resize(self.cap, 0);
            return Err(std::io::Error::other("render output cap reached"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn renders_chatml_with_default_system_prompt() {
        let t = ChatTemplate::new(CHATML).unwrap();
        let out = t.render(&[msg("user", "Hi")], "", "").unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('must start with user') }}{% endif %}{{ bos_token }}{{ messages[0]['content'].strip() }}",
        )
        .unwrap();
        assert_eq!(
            t.render(&[msg("user", "  x  ")], "<s>", "</s>").unwrap(),
            "<s>x"
        );
        let e = t
            .render(&[msg("assistant", "x")], "<s>", "</s>")
            .unwrap_err();
        assert!(e.to_string().contains("must start with user"), "{e}");
    }

    #[test]
    fn bad_role_and_no_messages_are_rejected() {
        let t = ChatTemplate::new(CHATML).unwrap();
        assert!(t.render(&[], "", "").is_err());
        let e = t
            .render(&[msg("wizard", "x")], "", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("wizard"), "{e}");
    }

    #[test]
    fn a_long_real_conversation_renders_within_the_budget() {
        let t = ChatTemplate::new(CHATML).unwrap();
        let turns: Vec<_> = (0..2000)
            .map(|i| msg(if i % 2 == 0 { "user" } else { "assistant" }, "some words"))
            .collect();
        let out = t.render(&turns, "", "").unwrap();
        assert_eq!(out.matches("<|im_start|>user").count(), 1000);
    }

    #[test]
    fn a_template_that_loops_fails_fast_naming_the_template() {
        // Within minijinja's per-range limit, but 2.5e9 iterations in all.
        let t = ChatTemplate::new(
            "{% for i in range(50000) %}{% for j in range(50000) %}{% endfor %}{% endfor %}x",
        )
        .unwrap();
        let started = std::time::Instant::now();
        let e = t
            .render(&[msg("user", "Hi")], "", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("chat template") && e.contains("loops"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_template_that_writes_without_end_is_cut_at_the_output_cap() {
        // 1,000 x 1,000 x 100 bytes = 100 MB with few instructions per byte.
        let t = ChatTemplate::new(
            "{% for i in range(1000) %}{% for j in range(1000) %}{{ 'y' * 100 }}{% endfor %}{% endfor %}",
        )
        .unwrap();
        let e = t
            .render(&[msg("user", "Hi")], "", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("16 MiB") && e.contains("runs away"), "{e}");
    }
}
