//! Protocol codecs: what the sidecar reads out of inference payloads, off the forwarding path
//! (bodies are copied by the tee, bounded, and parsed once the exchange is over). Pure functions
//! of bytes, so they are unit-testable and never touch the forwarded bytes.

pub mod open_inference;
pub mod openai;
