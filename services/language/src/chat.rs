//! Chat messages and the ChatML prompt format.
//!
//! Qwen2.5 and SmolLM2 are both trained on ChatML:
//!
//! ```text
//! <|im_start|>system
//! You are a helpful assistant.<|im_end|>
//! <|im_start|>user
//! Hello<|im_end|>
//! <|im_start|>assistant
//! ```
//!
//! Their Jinja templates (`tokenizer.chat_template`) also insert a default
//! system message when the conversation does not start with one; that text
//! is read from the template so prompts match what the models were tuned on.
//! No Jinja engine is involved: [`ChatTemplate::from_jinja`] only recognises
//! ChatML templates and extracts their default system prompt.

use std::fmt;

use crate::error::{Error, Result};

/// `<|im_start|>`, opens a ChatML message.
pub const IM_START: &str = "<|im_start|>";
/// `<|im_end|>`, closes a ChatML message and ends the assistant's turn.
pub const IM_END: &str = "<|im_end|>";

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The person (or the pipeline) asking.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The ChatML role name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl Message {
    /// A message with any role.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message::new(Role::User, content)
    }

    /// An assistant message (for few-shot examples or earlier turns).
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new(Role::Assistant, content)
    }
}

/// A piece of a rendered prompt: control tokens are kept apart from text so
/// they can be inserted by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    Special(&'static str),
    Text(std::borrow::Cow<'a, str>),
}

/// The ChatML chat format, with the model's default system prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatTemplate {
    default_system: Option<String>,
}

impl ChatTemplate {
    /// Plain ChatML with an optional default system prompt.
    pub fn chatml(default_system: Option<String>) -> Self {
        ChatTemplate { default_system }
    }

    /// Recognises a ChatML Jinja template (`tokenizer.chat_template`) and
    /// extracts the system prompt it inserts when the conversation does not
    /// start with a system message.
    pub fn from_jinja(template: &str) -> Result<Self> {
        let chatml = template.contains(IM_START)
            && template.contains(IM_END)
            && template.contains("assistant");
        if !chatml {
            let head: String = template.chars().take(80).collect();
            return Err(Error::UnsupportedChatTemplate(format!(
                "only ChatML (<|im_start|>role ... <|im_end|>) is supported; template starts with {head:?}"
            )));
        }
        Ok(ChatTemplate {
            default_system: default_system_prompt(template),
        })
    }

    /// The system prompt used when a conversation has none.
    pub fn default_system(&self) -> Option<&str> {
        self.default_system.as_deref()
    }

    /// The prompt as text, ending with the opening of the assistant's turn.
    pub fn render(&self, messages: &[Message]) -> String {
        self.pieces(messages)
            .into_iter()
            .map(|p| match p {
                Piece::Special(s) => std::borrow::Cow::Borrowed(s),
                Piece::Text(t) => t,
            })
            .collect()
    }

    pub(crate) fn pieces<'a>(&'a self, messages: &'a [Message]) -> Vec<Piece<'a>> {
        let mut pieces = Vec::with_capacity(4 * messages.len() + 6);
        let mut push = |role: &'static str, content: &'a str| {
            pieces.push(Piece::Special(IM_START));
            pieces.push(Piece::Text(format!("{role}\n{content}").into()));
            pieces.push(Piece::Special(IM_END));
            pieces.push(Piece::Text("\n".into()));
        };
        let starts_with_system = messages.first().is_some_and(|m| m.role == Role::System);
        if !starts_with_system && let Some(system) = &self.default_system {
            push(Role::System.as_str(), system);
        }
        for m in messages {
            push(m.role.as_str(), &m.content);
        }
        pieces.push(Piece::Special(IM_START));
        pieces.push(Piece::Text("assistant\n".into()));
        pieces
    }
}

/// Finds `<|im_start|>system\n<literal text><|im_end|>` in a Jinja template,
/// where the text is a constant (no quotes, no expressions).
fn default_system_prompt(template: &str) -> Option<String> {
    let open = format!("{IM_START}system");
    let mut rest = template;
    while let Some(at) = rest.find(&open) {
        rest = &rest[at + open.len()..];
        // Inside a Jinja string literal the newline is written `\n`; in a raw
        // template it may be a real newline.
        let body = rest.strip_prefix("\\n").or_else(|| rest.strip_prefix('\n'));
        let Some(body) = body else { continue };
        let Some(end) = body.find(IM_END) else {
            continue;
        };
        let text = &body[..end];
        let constant = !text.is_empty() && !text.contains(['\'', '"', '{', '}', '+', '\\']);
        if constant {
            return Some(text.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN_LIKE: &str = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

    const SMOL_LIKE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn extracts_default_system_prompts() {
        let qwen = ChatTemplate::from_jinja(QWEN_LIKE).unwrap();
        assert_eq!(
            qwen.default_system(),
            Some("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
        );
        let smol = ChatTemplate::from_jinja(SMOL_LIKE).unwrap();
        assert_eq!(
            smol.default_system(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        let plain = ChatTemplate::from_jinja(
            "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}{{ '<|im_start|>assistant\n' }}",
        )
        .unwrap();
        assert_eq!(plain.default_system(), None);
    }

    #[test]
    fn rejects_other_formats() {
        let llama3 = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}";
        assert!(matches!(
            ChatTemplate::from_jinja(llama3),
            Err(Error::UnsupportedChatTemplate(_))
        ));
    }

    #[test]
    fn renders_chatml_with_default_system() {
        let t = ChatTemplate::from_jinja(QWEN_LIKE).unwrap();
        let prompt = t.render(&[Message::user("What is the capital of France?")]);
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn explicit_system_replaces_default_and_turns_are_kept() {
        let t = ChatTemplate::from_jinja(SMOL_LIKE).unwrap();
        let prompt = t.render(&[
            Message::system("Answer briefly."),
            Message::user("Hi"),
            Message::assistant("Hello!"),
            Message::user("Bye"),
        ]);
        assert_eq!(
            prompt,
            "<|im_start|>system\nAnswer briefly.<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n\
             <|im_start|>user\nBye<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let none = ChatTemplate::chatml(None);
        assert_eq!(
            none.render(&[Message::user("x")]),
            "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
