//! OpenAI-compatible APIs: which operation a path is, and the `model` of requests and of
//! responses (JSON, or the first SSE event that names one).

use serde::Deserialize;

/// `gen_ai.operation.name` for an OpenAI-compatible path, or `None` for other paths.
pub fn operation(path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or(path);
    if !path.contains("/v1/") {
        return None;
    }
    if path.ends_with("/chat/completions") {
        Some("chat")
    } else if path.ends_with("/completions") {
        Some("text_completion")
    } else if path.ends_with("/embeddings") {
        Some("embeddings")
    } else {
        None
    }
}

#[derive(Deserialize)]
struct Model {
    model: Option<String>,
}

/// The `model` of a JSON request or response body.
pub fn json_model(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Model>(body).ok()?.model
}

/// The `model` of the first event of an SSE stream that names one (a prefix of the stream is
/// enough; a cut-off last line is ignored).
pub fn sse_model(prefix: &[u8]) -> Option<String> {
    for line in prefix.split(|b| *b == b'\n') {
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            break;
        }
        if let Some(m) = json_model(data) {
            return Some(m);
        }
    }
    None
}

/// What an OpenAI-compatible response says about its generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// `usage.prompt_tokens`.
    pub input_tokens: Option<u64>,
    /// `usage.completion_tokens`.
    pub output_tokens: Option<u64>,
    /// The `finish_reason` of each choice that finished.
    pub finish_reasons: Vec<String>,
}

/// Finish reasons counted by name; anything else is `other` (label values stay bounded).
pub const FINISH_REASONS: &[&str] = &[
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "function_call",
];

#[derive(Deserialize)]
struct UsageBody {
    usage: Option<Tokens>,
    #[serde(default)]
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Tokens {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Choice {
    finish_reason: Option<String>,
}

impl Usage {
    fn add(&mut self, body: UsageBody) {
        if let Some(u) = body.usage {
            self.input_tokens = u.prompt_tokens.or(self.input_tokens);
            self.output_tokens = u.completion_tokens.or(self.output_tokens);
        }
        self.finish_reasons
            .extend(body.choices.into_iter().filter_map(|c| c.finish_reason));
    }
}

/// Token usage and finish reasons of a JSON response (chat, completions, embeddings).
pub fn json_usage(body: &[u8]) -> Result<Usage, serde_json::Error> {
    let mut usage = Usage::default();
    usage.add(serde_json::from_slice(body)?);
    Ok(usage)
}

/// Token usage and finish reasons of an SSE stream: finish reasons from every chunk, usage
/// from the chunk that carries it (the last one, with `stream_options.include_usage`).
pub fn sse_usage(stream: &[u8]) -> Usage {
    let mut usage = Usage::default();
    for line in stream.split(|b| *b == b'\n') {
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            break;
        }
        if let Ok(chunk) = serde_json::from_slice::<UsageBody>(data) {
            usage.add(chunk);
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_from_json_and_sse() {
        // OpenAI API reference: a chat completion, and a stream with include_usage.
        let chat = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#;
        let u = json_usage(chat).unwrap_or_default();
        assert_eq!((u.input_tokens, u.output_tokens), (Some(9), Some(12)));
        assert_eq!(u.finish_reasons, ["stop"]);
        let embed = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        let u = json_usage(embed).unwrap_or_default();
        assert_eq!((u.input_tokens, u.output_tokens), (Some(8), None));
        let stream = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}],\"usage\":null}\n\n\
            data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}],\"usage\":null}\n\n\
            data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":16,\"total_tokens\":21}}\n\n\
            data: [DONE]\n\n";
        let u = sse_usage(stream);
        assert_eq!((u.input_tokens, u.output_tokens), (Some(5), Some(16)));
        assert_eq!(u.finish_reasons, ["length"]);
        assert!(json_usage(b"{").is_err());
    }

    #[test]
    fn operations_by_path() {
        assert_eq!(operation("/v1/chat/completions"), Some("chat"));
        assert_eq!(
            operation("/openai/v1/completions?x=1"),
            Some("text_completion")
        );
        assert_eq!(operation("/v1/embeddings"), Some("embeddings"));
        assert_eq!(operation("/v2/models/churn/infer"), None);
        assert_eq!(operation("/chat/completions"), None);
    }

    #[test]
    fn models_from_json_and_sse() {
        let req =
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        assert_eq!(json_model(req).as_deref(), Some("gpt-4o-mini"));
        let stream = b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[]}\n\n\
                       data: {\"id\":\"c1\",\"model\":\"other\"}\n\ndata: [DONE]\n\n";
        assert_eq!(sse_model(stream).as_deref(), Some("gpt-4o-mini-2024-07-18"));
        assert_eq!(sse_model(b"data: [DONE]\n\n"), None);
        assert_eq!(
            sse_model(b"data: {\"id\":\"c1\",\"mod"),
            None,
            "a cut-off event is ignored"
        );
        assert_eq!(json_model(b"[1,2]"), None);
    }
}
