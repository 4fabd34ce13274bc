//! Protocol codecs and the inspection worker: what the sidecar reads out of inference payloads,
//! off the forwarding path. Bodies are copied by the proxy's tee (bounded, within a memory
//! budget), queued once the exchange is over, and decoded on one worker thread into
//! per-version prediction, data-quality and drift signals. Codecs are pure functions of bytes,
//! so they are unit-testable and never touch the forwarded bytes.

pub mod binary;
pub mod codec;
pub mod drift;
pub mod exposition;
pub mod grpc_infer;
pub mod open_inference;
pub mod openai;
pub mod profile;
pub mod quality;
pub mod rest;
pub mod stats;
pub mod table;
mod tensor;
pub mod worker;

pub use codec::{Codec, Framing};
pub use profile::Profile;
pub use worker::{Inspector, Job, Skip};

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &[&[u8]] = &[
        br#"{"inputs":[{"name":"tenure","datatype":"FP64","shape":[2,1],"data":[-0.67,-1.8]},{"name":"x","datatype":"FP32","shape":[1,3],"data":[[1,2,3]]}]}"#,
        br#"{"model_name":"churn","model_version":"2","outputs":[{"name":"output-1","shape":[2,1],"datatype":"INT64","data":[0,0]}]}"#,
        br#"{"instances": [[6.8, 2.8, 4.8, 1.4], {"tag": "foo"}], "predictions": [[0.1, 0.9], {"label": "a"}, 3]}"#,
        br#"{"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [null, 2]]}, "outputs": {"s": [1]}}"#,
        b"data: {\"model\":\"gpt-x\",\"choices\":[]}\n\ndata: [DONE]\n\n",
    ];

    /// Every codec on one input; only panics would fail.
    fn all(body: &[u8]) {
        let names = ["a".to_string(), "b".to_string()];
        let _ = open_inference::reported_version(body);
        let _ = open_inference::request_features(body, &names);
        let _ = open_inference::response_predictions(body);
        let _ = rest::instances_features(body, &names);
        let _ = rest::mlflow_features(body, &names);
        let _ = rest::predictions(body);
        let _ = openai::json_model(body);
        let _ = openai::sse_model(body);
        let _ = openai::json_usage(body);
        let _ = openai::sse_usage(body);
        let _ = grpc_infer::leading(body);
        let _ = grpc_infer::reported_version(body);
        for codec in [
            Codec::OpenInference,
            Codec::OpenInferenceGrpc,
            Codec::KserveV1,
            Codec::Mlflow,
            Codec::OpenAi,
        ] {
            for framing in [
                Framing::Whole,
                Framing::Sse,
                Framing::JsonHead(body.len() / 2),
            ] {
                let _ = codec.features(body, framing, &names);
                let _ = codec.predicted(body, framing);
            }
        }
    }

    #[test]
    fn no_truncation_or_corruption_panics_a_codec() {
        let mut seed: u64 = 0x5eed;
        let mut next = || {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z ^ (z >> 27)
        };
        for golden in GOLDEN {
            for cut in 0..=golden.len() {
                all(&golden[..cut]);
            }
            for _ in 0..2_000 {
                let mut bytes = golden.to_vec();
                for _ in 0..(next() % 4 + 1) {
                    let i = usize::try_from(next() % bytes.len() as u64).unwrap_or(0);
                    bytes[i] = (next() & 0xff) as u8;
                }
                all(&bytes);
            }
        }
        let deep = format!("{{\"inputs\":{}", "[".repeat(100_000));
        all(deep.as_bytes());
        for huge in [
            format!("{{\"instances\":[{}1]}}", "1,".repeat(500_000)),
            format!("{{\"instances\":[[{}1]]}}", "1,".repeat(500_000)),
        ] {
            let f = rest::instances_features(huge.as_bytes(), &[]).unwrap_or_default();
            assert_eq!(
                f.len(),
                table::MAX_VALUES,
                "bounded work on huge arrays, rows or columns"
            );
            assert!(f.columns().len() <= table::MAX_VALUES);
        }
    }
}
