//! The MLflow Model Registry backend: aliases, versions, runs and model artifacts over MLflow's
//! REST API, turned into lineage records. Quirks handled (seen on MLflow 3.17): JSON inside
//! strings (dataset `source`, the MLmodel signature), versions without a `tags` key, the model
//! ID only in `source` (`models:/m-…`), 400 for an unknown alias and 404 for an unknown version.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::{
    Code, DatasetKey, DatasetVersion, Environment, Feature, LineageRecord, ModelRecord, Promotion,
    Registry, RegistryData, TrainingData, VersionRecord,
};
use crate::codec::time::rfc3339_ms;
use crate::config::{ConfigError, ConfigErrors, Credentials, MlflowSettings};

/// Reads models from an MLflow tracking server.
pub struct MlflowRegistry {
    settings: MlflowSettings,
    http: reqwest::Client,
}

/// Why an MLflow call failed.
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    /// Network error, TLS failure or timeout (retried). Shown with every cause: reqwest's own
    /// message ("error sending request") hides the one that says what to fix.
    #[error("{url}: {}{}", causes(source), tls_hint(source))]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// MLflow answered with an error status.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// MLflow's error body.
        body: String,
    },
    /// MLflow refused the call: no credentials, or not these.
    #[error(
        "{url}: HTTP {status}: MLflow {refused}; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (basic) or MLFLOW_TRACKING_TOKEN (bearer), or registry.username with registry.password_file, or registry.token_file"
    )]
    Unauthorized {
        /// The URL.
        url: String,
        /// 401 or 403.
        status: u16,
        /// What was wrong.
        refused: &'static str,
    },
    /// The answer was not the JSON expected.
    #[error("{url}: unexpected answer: {source}")]
    Decode {
        /// The URL.
        url: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// An error and its causes, outermost first, each said once.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// What to set when MLflow's certificate was not trusted.
fn tls_hint(e: &(dyn std::error::Error + 'static)) -> &'static str {
    if causes(e).contains("invalid peer certificate") {
        " (set registry.tls.ca_file or MLFLOW_TRACKING_SERVER_CERT_PATH to the CA that signed MLflow's certificate)"
    } else {
        ""
    }
}

impl MlflowError {
    fn retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            Self::Decode { .. } | Self::Unauthorized { .. } => false,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Tag {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Default, Deserialize)]
struct RegisteredModelAnswer {
    registered_model: RegisteredModel,
}

#[derive(Debug, Default, Deserialize)]
struct RegisteredModel {
    #[serde(default)]
    aliases: Vec<Alias>,
}

#[derive(Debug, Default, Deserialize)]
struct Alias {
    alias: String,
    version: String,
}

#[derive(Debug, Default, Deserialize)]
struct SearchAnswer {
    #[serde(default)]
    model_versions: Vec<ModelVersion>,
    next_page_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ModelVersion {
    version: String,
    creation_timestamp: Option<i64>,
    last_updated_timestamp: Option<i64>,
    user_id: Option<String>,
    source: Option<String>,
    run_id: Option<String>,
    status: Option<String>,
    // A version without tags has no `tags` key at all.
    #[serde(default)]
    tags: Vec<Tag>,
}

#[derive(Debug, Default, Deserialize)]
struct RunAnswer {
    run: Run,
}

#[derive(Debug, Default, Deserialize)]
struct Run {
    info: RunInfo,
    #[serde(default)]
    data: RunData,
    #[serde(default)]
    inputs: RunInputs,
}

#[derive(Debug, Default, Deserialize)]
struct RunInfo {
    run_id: String,
    #[serde(default)]
    experiment_id: String,
    user_id: Option<String>,
    start_time: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
struct RunData {
    #[serde(default)]
    metrics: Vec<Metric>,
    #[serde(default)]
    params: Vec<Tag>,
    #[serde(default)]
    tags: Vec<Tag>,
}

#[derive(Debug, Default, Deserialize)]
struct Metric {
    key: String,
    value: f64,
}

#[derive(Debug, Default, Deserialize)]
struct RunInputs {
    #[serde(default)]
    dataset_inputs: Vec<DatasetInput>,
}

#[derive(Debug, Default, Deserialize)]
struct DatasetInput {
    #[serde(default)]
    tags: Vec<Tag>,
    dataset: Dataset,
}

#[derive(Debug, Default, Deserialize)]
struct Dataset {
    name: String,
    digest: Option<String>,
    source: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct SearchRunsAnswer {
    #[serde(default)]
    runs: Vec<Run>,
}

#[derive(Debug, Default, Deserialize)]
struct LoggedModelAnswer {
    model: LoggedModel,
}

#[derive(Debug, Default, Deserialize)]
struct LoggedModel {
    info: LoggedModelInfo,
}

#[derive(Debug, Default, Deserialize)]
struct LoggedModelInfo {
    artifact_uri: Option<String>,
}

/// What the MLmodel artifact tells: the signature's inputs and the environment.
#[derive(Debug, Default, Deserialize)]
struct MlModel {
    #[serde(default)]
    flavors: Flavors,
    mlflow_version: Option<String>,
    signature: Option<Signature>,
}

/// The flavors the record reads; the others are skipped.
#[derive(Debug, Default, Deserialize)]
struct Flavors {
    python_function: Option<PythonFunction>,
}

#[derive(Debug, Default, Deserialize)]
struct PythonFunction {
    python_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Signature {
    // JSON inside a YAML string.
    inputs: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ColSpec {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    required: bool,
}

fn yes() -> bool {
    true
}

impl MlflowRegistry {
    /// A backend for these settings.
    pub fn new(settings: MlflowSettings) -> Result<Self, ConfigErrors> {
        let builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout);
        let http = settings
            .tls
            .reqwest_client(builder)
            .map_err(|e| ConfigErrors(vec![ConfigError::new("registry.tls", e.to_string())]))?;
        Ok(Self { settings, http })
    }

    async fn send_once(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<bytes::Bytes, MlflowError> {
        let url = format!("{}{path}", self.settings.uri);
        let req = match body {
            Some(b) => self.http.post(&url).json(b),
            None => self.http.get(&url),
        };
        let req = match &self.settings.credentials {
            Some(Credentials::Basic { username, password }) => {
                req.basic_auth(username, Some(&password.0))
            }
            Some(Credentials::Bearer(token)) => req.bearer_auth(&token.0),
            None => req,
        };
        let resp = req.send().await.map_err(|source| MlflowError::Transport {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| MlflowError::Transport {
                url: url.clone(),
                source,
            })?;
        if matches!(status.as_u16(), 401 | 403) {
            return Err(MlflowError::Unauthorized {
                url,
                status: status.as_u16(),
                refused: match (&self.settings.credentials, status.as_u16()) {
                    (None, _) => "asks for credentials and none are set",
                    (Some(_), 401) => "refused the credentials",
                    (Some(_), _) => "refused these credentials access",
                },
            });
        }
        if !status.is_success() {
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(MlflowError::Status {
                url,
                status: status.as_u16(),
                body,
            });
        }
        Ok(bytes)
    }

    /// One call, retried with exponential back-off on transport errors, 5xx and 429 (every
    /// call here is a read, so a retry is always safe).
    async fn send(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<bytes::Bytes, MlflowError> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            match self.send_once(path, body).await {
                Err(e) if e.retryable() && attempt < self.settings.retries => {
                    debug!(error = %e, attempt, "MLflow call failed; retrying.");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn get(&self, path: &str) -> Result<bytes::Bytes, MlflowError> {
        self.send(path, None).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, MlflowError> {
        self.decode(path, &self.get(path).await?)
    }

    async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, MlflowError> {
        self.decode(path, &self.send(path, Some(body)).await?)
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &[u8],
    ) -> Result<T, MlflowError> {
        serde_json::from_slice(body).map_err(|source| MlflowError::Decode {
            url: format!("{}{path}", self.settings.uri),
            source,
        })
    }

    async fn fetch_model(&self, name: &str, data: &mut RegistryData) -> Result<(), MlflowError> {
        let q = crate::codec::percent::component(name);
        let registered: RegisteredModelAnswer = match self
            .get_json(&format!("/api/2.0/mlflow/registered-models/get?name={q}"))
            .await
        {
            Ok(r) => r,
            // Not registered (yet): no records for it, which resolves to `unknown`, not an outage.
            Err(MlflowError::Status { status: 404, .. }) => {
                warn!(
                    model = name,
                    "Model is not registered in MLflow; its requests resolve to unknown."
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut versions = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let token = page
                .as_deref()
                .map(|t| format!("&page_token={}", crate::codec::percent::component(t)))
                .unwrap_or_default();
            let filter =
                crate::codec::percent::component(&format!("name='{}'", name.replace('\'', "\\'")));
            let answer: SearchAnswer = self
                .get_json(&format!(
                    "/api/2.0/mlflow/model-versions/search?filter={filter}&max_results=200{token}"
                ))
                .await?;
            versions.extend(answer.model_versions);
            match answer.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => page = Some(t),
                None => break,
            }
        }
        let mut model = ModelRecord::default();
        let mut experiments = BTreeMap::new();
        for mv in versions
            .into_iter()
            .filter(|v| v.status.as_deref().is_none_or(|s| s == "READY"))
        {
            let run = match &mv.run_id {
                Some(id) if !id.is_empty() => Some(
                    self.get_json::<RunAnswer>(&format!(
                        "/api/2.0/mlflow/runs/get?run_id={}",
                        crate::codec::percent::component(id)
                    ))
                    .await?
                    .run,
                ),
                _ => None,
            };
            let mlmodel = self.mlmodel(mv.source.as_deref()).await;
            if let Some(r) = &run {
                experiments.insert(r.info.experiment_id.clone(), ());
            }
            let record = record(
                name,
                &mv,
                run.as_ref(),
                mlmodel.as_ref(),
                &self.settings.uri,
            );
            // The run link holds the URL this sidecar reaches MLflow by: replicas that spell
            // it differently must give one record one ID, so the link stays out of the hash.
            // The ID that hashed it (before 2026-12-07) still resolves.
            let lineage_id = record.lineage_id_without_run_url();
            let former = record.lineage_id();
            model.versions.insert(
                mv.version.clone(),
                VersionRecord {
                    former_ids: (former != lineage_id)
                        .then_some(former)
                        .into_iter()
                        .collect(),
                    lineage_id,
                    record: Arc::new(record),
                },
            );
        }
        for a in registered.registered_model.aliases {
            model.aliases.insert(a.alias, a.version);
        }
        for experiment in experiments.keys().filter(|e| !e.is_empty()) {
            self.latest_datasets(experiment, data).await?;
        }
        data.models.insert(name.to_string(), model);
        Ok(())
    }

    /// Every digest each (dataset name, source) was logged with in an experiment, at the start
    /// of the first run that used it, so a version trained on an older digest can be flagged
    /// stale.
    async fn latest_datasets(
        &self,
        experiment: &str,
        data: &mut RegistryData,
    ) -> Result<(), MlflowError> {
        let body = serde_json::json!({ "experiment_ids": [experiment], "max_results": 200, "order_by": ["attributes.start_time DESC"] });
        let answer: SearchRunsAnswer = self.post_json("/api/2.0/mlflow/runs/search", &body).await?;
        for run in answer.runs {
            for input in run.inputs.dataset_inputs {
                let Some(digest) = input.dataset.digest else {
                    continue;
                };
                let key = DatasetKey {
                    name: input.dataset.name.clone(),
                    source: source_uri(input.dataset.source.as_deref()),
                };
                data.datasets.record(
                    key,
                    DatasetVersion {
                        written_ms: run.info.start_time.unwrap_or(0),
                        digest,
                        seen_in: format!("mlflow run {}", run.info.run_id),
                        job: None,
                    },
                );
            }
        }
        Ok(())
    }

    /// The MLmodel artifact and the requirements digest, when the artifacts are served by the
    /// tracking server (`mlflow-artifacts:/`). Anything else is left out, not an error.
    async fn mlmodel(&self, source: Option<&str>) -> Option<(MlModel, Option<String>)> {
        let model_id = source?.strip_prefix("models:/")?;
        if !model_id.starts_with("m-") {
            return None;
        }
        let logged: LoggedModelAnswer = match self
            .get_json(&format!(
                "/api/2.0/mlflow/logged-models/{}",
                crate::codec::percent::component(model_id)
            ))
            .await
        {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "Cannot read the logged model; its schema and environment stay unknown.");
                return None;
            }
        };
        let path = logged
            .model
            .info
            .artifact_uri?
            .strip_prefix("mlflow-artifacts:/")?
            .trim_start_matches('/')
            .to_string();
        let base = format!("/api/2.0/mlflow-artifacts/artifacts/{path}");
        let text = self.get(&format!("{base}/MLmodel")).await.ok()?;
        let mlmodel: MlModel = super::file::from_yaml(std::str::from_utf8(&text).ok()?).ok()?;
        let requirements = self
            .get(&format!("{base}/requirements.txt"))
            .await
            .ok()
            .map(|b| format!("sha256:{}", hex(&Sha256::digest(&b))));
        Some((mlmodel, requirements))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A dataset `source` is JSON inside a string (`{"uri": "file:///data/churn.parquet"}`).
fn source_uri(source: Option<&str>) -> Option<String> {
    let s = source?;
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v) => v
            .get("uri")
            .and_then(|u| u.as_str())
            .map(str::to_string)
            .or_else(|| Some(s.to_string())),
        Err(_) => Some(s.to_string()),
    }
}

fn tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key == key)
        .map(|t| t.value.as_str())
        .filter(|v| !v.is_empty())
}

fn millis(ms: Option<i64>) -> Option<String> {
    ms.filter(|ms| *ms >= 0).map(rfc3339_ms)
}

/// Build the lineage record of one version from what MLflow holds.
fn record(
    model: &str,
    mv: &ModelVersion,
    run: Option<&Run>,
    mlmodel: Option<&(MlModel, Option<String>)>,
    uri: &str,
) -> LineageRecord {
    let run_tags: &[Tag] = run.map_or(&[], |r| &r.data.tags);
    let datasets: Vec<TrainingData> = run
        .map(|r| {
            r.inputs
                .dataset_inputs
                .iter()
                .map(|d| TrainingData {
                    name: d.dataset.name.clone(),
                    source: source_uri(d.dataset.source.as_deref()),
                    digest: d.dataset.digest.clone(),
                    context: tag(&d.tags, "mlflow.data.context").map(str::to_string),
                    upstream_tables: Vec::new(),
                })
                .collect()
        })
        .unwrap_or_default();
    let training = datasets
        .iter()
        .position(|d| d.context.as_deref() == Some("training"))
        .or(if datasets.is_empty() { None } else { Some(0) });
    let mut other_datasets = datasets.clone();
    let training_data = training.map(|i| other_datasets.remove(i));
    let (mlmodel, requirements) = match mlmodel {
        Some((m, r)) => (Some(m), r.clone()),
        None => (None, None),
    };
    let python = mlmodel
        .and_then(|m| m.flavors.python_function.as_ref())
        .and_then(|f| f.python_version.clone());
    LineageRecord {
        model: model.to_string(),
        version: mv.version.clone(),
        code: Code {
            repo: tag(run_tags, "mlflow.source.git.repoURL").map(str::to_string),
            commit: tag(run_tags, "mlflow.source.git.commit").map(str::to_string),
            branch: tag(run_tags, "mlflow.source.git.branch").map(str::to_string),
        },
        training_data,
        other_datasets,
        environment: Environment {
            python,
            runtime: mlmodel
                .and_then(|m| m.mlflow_version.as_ref())
                .map(|v| format!("mlflow {v}")),
            lock_digest: requirements,
            image: None,
        },
        training_run: run.map(|r| r.info.run_id.clone()),
        training_run_url: run.map(|r| {
            format!(
                "{uri}/#/experiments/{}/runs/{}",
                r.info.experiment_id, r.info.run_id
            )
        }),
        created_by: mv
            .user_id
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| run.and_then(|r| r.info.user_id.clone())),
        created_at: millis(mv.creation_timestamp),
        promotion: Promotion {
            by: tag(&mv.tags, "promoted_by").map(str::to_string),
            at: tag(&mv.tags, "promoted_at")
                .map(str::to_string)
                .or_else(|| millis(mv.last_updated_timestamp)),
            reason: tag(&mv.tags, "promotion_reason").map(str::to_string),
            ticket: tag(&mv.tags, "ticket").map(str::to_string),
        },
        input_schema: mlmodel.map(signature_features).unwrap_or_default(),
        prediction: None,
        metrics: run
            .map(|r| {
                r.data
                    .metrics
                    .iter()
                    .map(|m| (m.key.clone(), m.value))
                    .collect()
            })
            .unwrap_or_default(),
        params: run
            .map(|r| {
                r.data
                    .params
                    .iter()
                    .map(|p| (p.key.clone(), p.value.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Map an MLflow column-spec signature onto the registry's input schema.
fn signature_features(m: &MlModel) -> Vec<Feature> {
    let Some(inputs) = m.signature.as_ref().and_then(|s| s.inputs.as_deref()) else {
        return Vec::new();
    };
    let cols: Vec<ColSpec> = serde_json::from_str(inputs).unwrap_or_default();
    cols.into_iter()
        .filter_map(|c| {
            Some(Feature {
                name: c.name?,
                kind: c.kind,
                nullable: !c.required,
                ..Feature::default()
            })
        })
        .collect()
}

impl Registry for MlflowRegistry {
    fn describe(&self) -> String {
        format!("mlflow:{}", self.settings.uri)
    }

    fn fetch(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<RegistryData, ConfigErrors>> + Send + '_>> {
        Box::pin(async move {
            let mut data = RegistryData::default();
            for name in &self.settings.models {
                self.fetch_model(name, &mut data).await.map_err(|e| {
                    ConfigErrors(vec![ConfigError::new(
                        format!("registry (mlflow model {name})"),
                        e.to_string(),
                    )])
                })?;
            }
            Ok(data)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MLMODEL: &str = include_str!("../../../../tests/fixtures/mlflow-3.17/MLmodel");
    const RUN: &str = include_str!("../../../../tests/fixtures/mlflow-3.17/rest-run.json");
    const MV: &str = include_str!("../../../../tests/fixtures/mlflow-3.17/rest-alias.json");

    #[derive(Deserialize)]
    struct MvAnswer {
        model_version: ModelVersion,
    }

    #[test]
    fn builds_the_record_from_real_mlflow_answers() {
        let mv: MvAnswer = serde_json::from_str(MV).unwrap_or_else(|e| panic!("{e}"));
        let run: RunAnswer = serde_json::from_str(RUN).unwrap_or_else(|e| panic!("{e}"));
        let mlmodel: MlModel =
            super::super::file::from_yaml(MLMODEL).unwrap_or_else(|e| panic!("{e:?}"));
        let r = record(
            "churn",
            &mv.model_version,
            Some(&run.run),
            Some(&(mlmodel, Some("sha256:ab".into()))),
            "http://mlflow:5000",
        );
        assert_eq!(
            r.code.commit.as_deref(),
            Some("97f447d6223f68cae5edd43a0b1c522b1caa9515")
        );
        assert_eq!(r.code.branch.as_deref(), Some("master"));
        let data = r.training_data.clone().unwrap_or_default();
        assert_eq!(
            (data.name.as_str(), data.digest.as_deref()),
            ("churn-train", Some("e5d39153"))
        );
        assert_eq!(
            data.source.as_deref(),
            Some("file:///data/churn.parquet"),
            "JSON inside the string is unpacked"
        );
        assert_eq!(data.context.as_deref(), Some("training"));
        assert_eq!(
            r.training_run.as_deref(),
            Some("158875bc13554262a703e459bc80e0de")
        );
        assert_eq!(
            r.training_run_url.as_deref(),
            Some("http://mlflow:5000/#/experiments/1/runs/158875bc13554262a703e459bc80e0de")
        );
        assert_eq!(r.environment.python.as_deref(), Some("3.11.7"));
        assert_eq!(r.environment.runtime.as_deref(), Some("mlflow 3.17.2"));
        assert_eq!(
            r.input_schema
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            ["tenure", "monthly_charges", "support_calls", "usage_gb"]
        );
        assert!(
            r.input_schema
                .iter()
                .all(|f| f.kind == "double" && !f.nullable)
        );
        assert_eq!(r.metrics.get("train_acc"), Some(&0.96));
        assert_eq!(r.params.get("C").map(String::as_str), Some("1.0"));
        assert_eq!(r.created_at.as_deref(), Some("2026-11-26T06:05:27.853Z"));
        // The same answers read afresh, from MLflow at `uri`.
        let afresh = |uri: &str| {
            record(
                "churn",
                &mv.model_version,
                Some(&run.run),
                Some(&(
                    super::super::file::from_yaml(MLMODEL).unwrap_or_else(|e| panic!("{e:?}")),
                    Some("sha256:ab".into()),
                )),
                uri,
            )
        };
        let again = afresh("http://mlflow:5000");
        assert_eq!(
            r.lineage_id(),
            again.lineage_id(),
            "the same MLflow answers give the same lineage ID"
        );
        let bare = record(
            "churn",
            &mv.model_version,
            Some(&run.run),
            None,
            "http://mlflow:5000",
        );
        assert_ne!(r.lineage_id(), bare.lineage_id());

        // Another spelling of the same MLflow: the run link differs, the ID does not; the
        // golden ID pins the canonical form of an MLflow record.
        let elsewhere = afresh("http://10.0.0.7:5000");
        assert_ne!(r.training_run_url, elsewhere.training_run_url);
        assert_eq!(
            r.lineage_id_without_run_url(),
            elsewhere.lineage_id_without_run_url()
        );
        assert_eq!(r.lineage_id_without_run_url(), "ln_18df860ac6bca9e5");
        assert_ne!(r.lineage_id(), elsewhere.lineage_id());
    }

    #[test]
    fn versions_without_tags_and_odd_sources_parse() {
        let mv: MvAnswer = serde_json::from_str(include_str!(
            "../../../../tests/fixtures/mlflow-3.17/rest-mv.json"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(mv.model_version.tags.is_empty());
        assert_eq!(
            mv.model_version.source.as_deref(),
            Some("models:/m-3a9dac8dde9e407399158ec80600884a")
        );
        let r = record("churn", &mv.model_version, None, None, "http://x");
        assert_eq!(r.version, "2");
        assert_eq!(
            source_uri(Some("s3://bucket/x")).as_deref(),
            Some("s3://bucket/x")
        );
        assert_eq!(
            crate::codec::percent::component("name='a b'"),
            "name%3D%27a%20b%27"
        );
    }
}
