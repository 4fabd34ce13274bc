//! The file backend: a YAML file of models, aliases and version records.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{LineageRecord, ModelRecord, Registry, RegistryData, VersionRecord};
use crate::config::{ConfigError, ConfigErrors};

/// Reads `registry.yaml` on every fetch.
#[derive(Debug, Clone)]
pub struct FileRegistry {
    path: PathBuf,
}

impl FileRegistry {
    /// A registry backed by this file.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

impl Registry for FileRegistry {
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn fetch(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<RegistryData, ConfigErrors>> + Send + '_>> {
        let path = self.path.clone();
        // Reading and parsing a large registry takes long: never on an async worker thread.
        Box::pin(async move {
            let origin = path.display().to_string();
            tokio::task::spawn_blocking(move || {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigErrors(vec![ConfigError::new(&origin, format!("cannot read: {e}"))])
                })?;
                parse_registry(&text, &origin)
            })
            .await
            .unwrap_or_else(|e| {
                Err(ConfigErrors(vec![ConfigError::new(
                    "registry",
                    format!("the parser stopped: {e}"),
                )]))
            })
        })
    }
}

/// A YAML scalar key or value that may be written as a number (`1:`) or a string (`"1":`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Name(String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Name, E> {
                Ok(Name(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Name, E> {
                Ok(Name(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Name, E> {
                Ok(Name(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistryFile {
    #[serde(default)]
    models: BTreeMap<Name, RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    #[serde(default)]
    aliases: BTreeMap<Name, Name>,
    #[serde(default)]
    versions: BTreeMap<Name, LineageRecord>,
}

/// Fields whose values go into headers or metric labels: they must be safe there.
const MAX_VALUE_LEN: usize = 256;

/// Parse and validate registry YAML; `origin` names the file in errors.
pub fn parse_registry(text: &str, origin: &str) -> Result<RegistryData, ConfigErrors> {
    let raw: RawRegistryFile = serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("{origin}:{}:{}", l.line(), l.column()))
            .unwrap_or_else(|| origin.to_string());
        ConfigErrors(vec![ConfigError::new(at, e.to_string())])
    })?;
    let mut errs = Vec::new();
    let mut models = BTreeMap::new();
    for (Name(model), raw_model) in raw.models {
        let at = format!("models.{model}");
        if !crate::config::is_token(&model) {
            errs.push(ConfigError::new(
                &at,
                "invalid model name (visible ASCII, no spaces, at most 128 chars)",
            ));
        }
        let mut versions = BTreeMap::new();
        for (Name(version), mut record) in raw_model.versions {
            let vat = format!("{at}.versions.{version}");
            check_record(&mut errs, &vat, &model, &version, &record);
            record.model = model.clone();
            record.version = version.clone();
            let lineage_id = record.lineage_id();
            versions.insert(
                version,
                VersionRecord {
                    lineage_id,
                    record: Arc::new(record),
                },
            );
        }
        let mut aliases = BTreeMap::new();
        for (Name(alias), Name(version)) in raw_model.aliases {
            if !crate::config::is_token(&alias) {
                errs.push(ConfigError::new(
                    format!("{at}.aliases.{alias}"),
                    "invalid alias name",
                ));
            }
            if !versions.contains_key(&version) {
                errs.push(ConfigError::new(
                    format!("{at}.aliases.{alias}"),
                    format!("points to unknown version \"{version}\""),
                ));
            }
            aliases.insert(alias, version);
        }
        models.insert(model, ModelRecord { aliases, versions });
    }
    if errs.is_empty() {
        Ok(RegistryData {
            models,
            datasets: BTreeMap::new(),
        })
    } else {
        Err(ConfigErrors(errs))
    }
}

fn check_record(
    errs: &mut Vec<ConfigError>,
    at: &str,
    model: &str,
    version: &str,
    r: &LineageRecord,
) {
    if !crate::config::is_token(version) {
        errs.push(ConfigError::new(
            at,
            "invalid version (visible ASCII, no spaces, at most 128 chars)",
        ));
    }
    if !r.model.is_empty() && r.model != model {
        errs.push(ConfigError::new(
            format!("{at}.model"),
            format!("\"{}\" differs from the key \"{model}\"", r.model),
        ));
    }
    if !r.version.is_empty() && r.version != version {
        errs.push(ConfigError::new(
            format!("{at}.version"),
            format!("\"{}\" differs from the key \"{version}\"", r.version),
        ));
    }
    // These become metric label values in model_version_info: bounded, printable ASCII.
    let labelled = [
        ("code.commit", r.code.commit.as_deref()),
        ("training_data.digest", r.dataset_digest()),
    ];
    for (field, value) in labelled {
        if let Some(v) = value
            && (v.is_empty() || v.len() > MAX_VALUE_LEN || !v.bytes().all(|b| b.is_ascii_graphic()))
        {
            errs.push(ConfigError::new(
                format!("{at}.{field}"),
                format!("must be 1..={MAX_VALUE_LEN} visible ASCII characters, got {v:?}"),
            ));
        }
    }
    for (i, f) in r.input_schema.iter().enumerate() {
        if let (Some(lo), Some(hi)) = (f.min, f.max)
            && lo > hi
        {
            errs.push(ConfigError::new(
                format!("{at}.input_schema[{i}]"),
                format!("min {lo} > max {hi}"),
            ));
        }
        if let Some(problem) = f
            .reference
            .as_ref()
            .and_then(|r| r.problem(f.categories.len()))
        {
            errs.push(ConfigError::new(
                format!("{at}.input_schema[{i}].reference"),
                problem,
            ));
        }
    }
    if let Some(p) = &r.prediction {
        if let Some(problem) = p
            .reference
            .as_ref()
            .and_then(|r| r.problem(p.classes.len()))
        {
            errs.push(ConfigError::new(
                format!("{at}.prediction.reference"),
                problem,
            ));
        }
        if !p.buckets.iter().all(|b| b.is_finite()) || p.buckets.windows(2).any(|w| w[0] >= w[1]) {
            errs.push(ConfigError::new(
                format!("{at}.prediction.buckets"),
                "must be finite and increase strictly",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
models:
  churn:
    aliases: { champion: 1, challenger: "2" }
    versions:
      1:
        code: { repo: "https://git.example/churn", commit: "97f447d" }
        training_data: { name: churn-train, digest: e5d39153, upstream_tables: [crm.accounts] }
      "2":
        code: { commit: "1c2b" }
"#;

    #[test]
    fn parses_numeric_and_string_keys() {
        let data = parse_registry(GOOD, "r.yaml").unwrap_or_else(|e| unreachable!("{e}"));
        let churn = &data.models["churn"];
        assert_eq!(churn.aliases["champion"], "1");
        assert_eq!(churn.versions["1"].record.model, "churn");
        assert_eq!(churn.versions["1"].record.version, "1");
        assert_eq!(data.resolve("churn", "challenger", true), Some("2"));
        assert_eq!(data.resolve("churn", "3", false), None);
        let id = &churn.versions["2"].lineage_id;
        assert_eq!(
            data.by_lineage_id(id).map(|v| v.record.version.as_str()),
            Some("2")
        );
    }

    #[test]
    fn rejects_bad_records_with_paths() {
        let bad = "models:\n  churn:\n    aliases: { champion: 7 }\n    versions:\n      1:\n        code: { commit: \"a b\" }\n";
        let errs = parse_registry(bad, "r.yaml")
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "models.churn.versions.1.code.commit: must be 1..=256 visible ASCII characters, got \"a b\"".to_string(),
                "models.churn.aliases.champion: points to unknown version \"7\"".into(),
            ]
        );
    }

    #[test]
    fn rejects_unusable_reference_distributions() {
        let bad = "models:\n  m:\n    versions:\n      1:\n        input_schema:\n          - { name: a, type: double, reference: { edges: [1, 0], fractions: [0.5, 0.5, 0] } }\n          - { name: b, type: double, reference: { edges: [0], fractions: [0.5, 0.4] } }\n        prediction: { classes: [x, y], reference: { fractions: [1] }, buckets: [2, 1] }\n";
        let errs = parse_registry(bad, "r.yaml")
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "models.m.versions.1.input_schema[0].reference: edges must increase strictly"
                    .to_string(),
                "models.m.versions.1.input_schema[1].reference: fractions sum to 0.9, not 1".into(),
                "models.m.versions.1.prediction.reference: 1 fractions for 2 bins".into(),
                "models.m.versions.1.prediction.buckets: must be finite and increase strictly"
                    .into(),
            ]
        );
    }

    #[test]
    fn rejects_unknown_fields_and_bad_yaml_with_location() {
        let errs = parse_registry("models:\n  churn:\n    versionz: {}\n", "r.yaml")
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].path.starts_with("r.yaml:3:"), "{errs:?}");
        assert!(
            errs[0].message.contains("unknown field `versionz`"),
            "{errs:?}"
        );
    }
}
