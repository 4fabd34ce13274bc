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

#[cfg(test)]
mod tests {
    use super::*;

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
