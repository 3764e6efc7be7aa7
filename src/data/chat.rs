//! Chat templates: the Jinja template a model ships (`tokenizer_config.json`'s `chat_template`,
//! `chat_template.jinja`, or GGUF's `tokenizer.chat_template`) rendered the way `transformers`'
//! `apply_chat_template` does, with Python string methods available (`.strip()`, ...).

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// `source` is the Jinja text; `bos_token`/`eos_token` are visible to it, as in transformers.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string()).map_err(|e| anyhow!("chat template does not parse: {e}"))?;
        Ok(Self { env, source: source.into(), bos_token: bos_token.into(), eos_token: eos_token.into() })
    }

    /// What closes an assistant turn, trimmed (`<end_of_turn>`, `<|im_end|>`): the text the
    /// template puts after an assistant message, if any.
    pub fn turn_end(&self) -> Option<String> {
        let marker = "\u{1}answer\u{1}";
        let messages = [Message::new("user", "question"), Message::new("assistant", marker)];
        let text = self.render(&messages, false).ok()?;
        let after = text[text.rfind(marker)? + marker.len()..].trim();
        (!after.is_empty()).then(|| after.to_string())
    }

    /// The Jinja text.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// The conversation as text; with `add_generation_prompt`, followed by the header of an
    /// assistant turn (what generation continues from).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template("chat").expect("added in new");
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| anyhow!("rendering the chat template: {e}"))
    }

    /// The conversation split into pieces that alternate context (`false`) and assistant text
    /// (`true`), the latter being what a completion-only loss trains on: each assistant turn is
    /// what its full rendering adds to the rendering of the turns before it plus the generation
    /// prompt (so it includes the end-of-turn marker).
    pub fn segments(&self, messages: &[Message]) -> Result<Vec<(String, bool)>> {
        let mut out = Vec::new();
        let mut done = String::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prompt = self.render(&messages[..i], true)?;
            let full = self.render(&messages[..=i], false)?;
            let (Some(context), Some(answer)) =
                (prompt.strip_prefix(done.as_str()), full.strip_prefix(prompt.as_str()))
            else {
                anyhow::bail!(
                    "the chat template does not render conversations incrementally (turn {i}); \
                     completion-only loss needs each rendering to extend the previous one"
                );
            };
            out.push((context.to_string(), false));
            out.push((answer.to_string(), true));
            done = full;
        }
        let all = self.render(messages, false)?;
        let rest = all.strip_prefix(done.as_str()).ok_or_else(|| anyhow!("the chat template is not incremental"))?;
        if !rest.is_empty() {
            out.push((rest.to_string(), false));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// What closes an assistant turn: ChatML's `<|im_end|>`, Gemma's `<end_of_turn>`.
    #[test]
    fn finds_the_end_of_an_assistant_turn() {
        let chatml = ChatTemplate::new(SMOLLM, "<|im_start|>", "<|im_end|>").unwrap();
        assert_eq!(chatml.turn_end().as_deref(), Some("<|im_end|>"));
        let gemma =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/templates/gemma.jinja")).unwrap();
        let gemma = ChatTemplate::new(&gemma, "<bos>", "<eos>").unwrap();
        assert_eq!(gemma.turn_end().as_deref(), Some("<end_of_turn>"));
        let bare = ChatTemplate::new("{% for m in messages %}{{ m['content'] }}{% endfor %}", "", "").unwrap();
        assert_eq!(bare.turn_end(), None);
    }

    #[test]
    fn renders_like_transformers_and_splits_assistant_turns() {
        let t = ChatTemplate::new(SMOLLM, "<|im_start|>", "<|im_end|>").unwrap();
        let q = [Message::new("user", "Hi")];
        assert_eq!(
            t.render(&q, true).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let conv = [
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello!"),
            Message::new("user", "Bye"),
            Message::new("assistant", "Ciao"),
        ];
        let segs = t.segments(&conv).unwrap();
        let trained: Vec<&str> = segs.iter().filter(|s| s.1).map(|s| s.0.as_str()).collect();
        assert_eq!(trained, ["Hello!<|im_end|>\n", "Ciao<|im_end|>\n"]);
        let joined: String = segs.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(joined, t.render(&conv, false).unwrap());
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] == 'x' %}{{ raise_exception('bad role') }}{% endif %}{{ messages[0]['content'].strip() }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[Message::new("user", "  hi ")], false).unwrap(), "hi");
        assert!(t.render(&[Message::new("x", "hi")], false).unwrap_err().to_string().contains("bad role"));
    }
}
