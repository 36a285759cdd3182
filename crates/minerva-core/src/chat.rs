//! Chat requests rendered with the model's own Jinja chat template (GGUF
//! `tokenizer.chat_template`, or `tokenizer_config.json` for Hugging Face folders), the way
//! Hugging Face transformers renders it: `messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token`, Python string methods, and `raise_exception`.

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
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => bos_token,
                eos_token => eos_token,
            })
            .map_err(|e| CoreError::ChatTemplate {
                detail: match e.detail() {
                    Some(d) => d.to_string(),
                    None => e.to_string(),
                },
            })
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
}
