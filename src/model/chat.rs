//! Chat templates: the Jinja template a base ships (`tokenizer.chat_template` in a GGUF file,
//! `chat_template` in `tokenizer_config.json`, or `chat_template.jinja`), rendered with
//! minijinja as transformers' `apply_chat_template` does (trim_blocks, lstrip_blocks, Python
//! string methods, `raise_exception`). Owns no tokenization and no I/O beyond reading the
//! template files of a base directory.

use crate::error::{Error, Result};
use minijinja::{context, Environment};
use std::path::Path;

/// One chat message. `content` parts (`[{"type": "text", "text": …}]`) are joined.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    /// Parses an OpenAI-style message object.
    pub fn from_json(v: &serde_json::Value) -> Result<Message> {
        let bad = |m: &str| Error::InvalidArgument(format!("messages: {m}"));
        let role = v.get("role").and_then(|r| r.as_str()).ok_or_else(|| bad("each message needs a string \"role\""))?;
        let content = match v.get("content") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.get("type").and_then(|t| t.as_str()), p.get("text").and_then(|t| t.as_str())) {
                        (Some("text"), Some(t)) => s.push_str(t),
                        _ => return Err(bad("only text content parts are supported")),
                    }
                }
                s
            }
            None | Some(serde_json::Value::Null) => String::new(),
            Some(_) => return Err(bad("\"content\" must be a string or a list of text parts")),
        };
        Ok(Message { role: role.to_string(), content })
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

impl ChatTemplate {
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::InvalidArgument(format!("chat template syntax: {e}")))?;
        env.set_syntax(syntax);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String {
            let (y, m, d, ..) = crate::util::civil(crate::util::now_secs());
            fmt.replace("%Y", &format!("{y:04}")).replace("%m", &format!("{m:02}")).replace("%d", &format!("{d:02}"))
        });
        env.add_template_owned("chat", source.to_string()).map_err(|e| Error::InvalidArgument(format!("chat template: {e}")))?;
        Ok(ChatTemplate { env, bos: bos.into(), eos: eos.into() })
    }

    /// The template of a base directory, if it has one.
    pub fn from_dir(dir: &Path) -> Result<Option<ChatTemplate>> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match crate::util::read_bounded(&cfg_path, crate::util::MAX_CONFIG_BYTES) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::json(cfg_path.display().to_string(), e))?,
            Err(_) => serde_json::Value::Null,
        };
        let special = |k: &str| match cfg.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(o) => o.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
            None => String::new(),
        };
        let src = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or(named.first())
                .and_then(|t| t.get("template").and_then(|s| s.as_str()).map(str::to_string)),
            _ => crate::util::read_text_bounded(&dir.join("chat_template.jinja"), crate::util::MAX_CONFIG_BYTES).ok(),
        };
        src.map(|s| ChatTemplate::new(&s, &special("bos_token"), &special("eos_token"))).transpose()
    }

    /// The prompt for `messages`, ending with the assistant's turn when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::InvalidArgument("messages must not be empty".into()));
        }
        let t = self.env.get_template("chat").map_err(|e| Error::InvalidArgument(e.to_string()))?;
        t.render(context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone(),
            eos_token => self.eos.clone(),
        })
        .map_err(|e| Error::InvalidArgument(format!("chat template: {e}")))
    }
}
