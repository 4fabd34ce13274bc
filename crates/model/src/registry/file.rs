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
    max_bytes: u64,
}

impl FileRegistry {
    /// A registry backed by this file, refused when larger than `max_bytes`.
    pub fn new(path: PathBuf, max_bytes: u64) -> Self {
        Self { path, max_bytes }
    }
}

impl Registry for FileRegistry {
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn fetch(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<RegistryData, ConfigErrors>> + Send + '_>> {
        let (path, max_bytes) = (self.path.clone(), self.max_bytes);
        // Reading and parsing a large registry takes long: never on an async worker thread.
        Box::pin(async move {
            let origin = path.display().to_string();
            tokio::task::spawn_blocking(move || {
                let text = read_bounded(&path, max_bytes, "registry.max_bytes")
                    .map_err(|e| ConfigErrors(vec![ConfigError::new(&origin, e)]))?;
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

/// Read a UTF-8 file of at most `max_bytes`, the bound `limit` names in the error. The bound
/// holds while the file grows: at most `max_bytes + 1` bytes are ever read.
pub fn read_bounded(path: &std::path::Path, max_bytes: u64, limit: &str) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max_bytes {
        return Err(format!(
            "larger than {max_bytes} bytes ({limit}); refused without parsing"
        ));
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))
}

/// The most events all aliases of one document may replay (serde-saphyr's own default). A
/// schema of 40 plain features shared by a thousand versions replays about 400,000; an alias
/// bomb (a few KB that would expand to GBs) is stopped here, in about a third of a second on
/// this project's two-core machine (RELIABILITY.md, row 4).
const MAX_ALIAS_REPLAY_EVENTS: usize = 1_000_000;

/// The most scalar bytes all aliases of one document may replay.
const MAX_ALIAS_REPLAY_BYTES: usize = 64 << 20;

/// Deepest nesting of mappings and sequences; a registry record needs about eight.
const MAX_DEPTH: usize = 32;

/// Parse one YAML document into `T`, bounded: work and memory grow with the input's length,
/// never with what its aliases expand to; nesting is capped; a key given twice in a mapping
/// is an error naming its line.
pub fn from_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<T, (Option<(u64, u64)>, String)> {
    let mut budget = serde_saphyr::Budget::default();
    // Plain YAML has at most one event per input byte; replays are bounded on their own.
    budget.max_events = text.len().saturating_add(MAX_ALIAS_REPLAY_EVENTS);
    budget.max_nodes = budget.max_events;
    budget.max_total_scalar_bytes = text.len().saturating_add(MAX_ALIAS_REPLAY_BYTES);
    budget.max_recorded_anchor_bytes = MAX_ALIAS_REPLAY_BYTES;
    budget.max_recorded_anchor_events = MAX_ALIAS_REPLAY_EVENTS;
    budget.max_depth = MAX_DEPTH;
    budget.max_documents = 1;
    // Many aliases of one anchor (a shared schema) are legitimate; the replay bound is what
    // stops an expansion.
    budget.enforce_alias_anchor_ratio = false;
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = MAX_ALIAS_REPLAY_EVENTS;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits = alias_limits;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options.with_snippet = false;
    // As serde_yaml read registries (YAML 1.2 core schema): only `true`/`false` are booleans
    // (`on`, `no` are names), and `01` or `1_000` are the strings they look like.
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        use serde_saphyr::MessageFormatter;
        let at = e.location().map(|l| (l.line(), l.column()));
        let message = serde_saphyr::UserMessageFormatter.format_message(e.without_snippet());
        (at, message.into_owned())
    })
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

/// A mapping whose keys are [`Name`]s: `1:` and `"1":` are the same name, so a key given in
/// both spellings is a duplicate (the parser only sees two different scalars).
struct Names<V>(BTreeMap<Name, V>);

impl<V> Default for Names<V> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Names<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Names<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Names<T>, A::Error> {
                let mut names = BTreeMap::new();
                while let Some(key) = map.next_key::<Name>()? {
                    let value = map.next_value()?;
                    if names.contains_key(&key) {
                        return Err(de::Error::custom(format_args!(
                            "duplicate entry with key \"{}\"",
                            key.0
                        )));
                    }
                    names.insert(key, value);
                }
                Ok(Names(names))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistryFile {
    #[serde(default)]
    models: Names<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    #[serde(default)]
    aliases: Names<Name>,
    #[serde(default)]
    versions: Names<LineageRecord>,
}

/// Fields whose values go into headers or metric labels: they must be safe there.
const MAX_VALUE_LEN: usize = 256;

/// Parse and validate registry YAML; `origin` names the file in errors.
pub fn parse_registry(text: &str, origin: &str) -> Result<RegistryData, ConfigErrors> {
    let raw: RawRegistryFile = from_yaml(text).map_err(|(at, message)| {
        let at = at
            .map(|(line, column)| format!("{origin}:{line}:{column}"))
            .unwrap_or_else(|| origin.to_string());
        ConfigErrors(vec![ConfigError::new(at, message)])
    })?;
    let mut errs = Vec::new();
    let mut models = BTreeMap::new();
    for (Name(model), raw_model) in raw.models.0 {
        let at = format!("models.{model}");
        if !crate::config::is_token(&model) {
            errs.push(ConfigError::new(
                &at,
                "invalid model name (visible ASCII, no spaces, at most 128 chars)",
            ));
        }
        let mut versions = BTreeMap::new();
        for (Name(version), mut record) in raw_model.versions.0 {
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
        for (Name(alias), Name(version)) in raw_model.aliases.0 {
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

    fn error_of(text: &str) -> String {
        parse_registry(text, "r.yaml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "accepted".into())
    }

    #[test]
    fn a_key_given_twice_is_refused_with_its_line_in_either_spelling() {
        let same = "models:\n  m:\n    versions:\n      \"1\": {}\n      \"1\": {}\n";
        let e = error_of(same);
        assert!(e.contains("r.yaml:5:"), "{e}");
        assert!(e.contains("duplicate"), "{e}");
        // `1` and `"1"` are different YAML scalars but the same version.
        let spelled = "models:\n  m:\n    versions:\n      1: {}\n      \"1\": {}\n";
        let e = error_of(spelled);
        assert!(e.contains("duplicate entry with key \"1\""), "{e}");
        let e = error_of(&spelled.replace("1: {}", "+1: {}"));
        assert!(e.contains("duplicate entry with key \"1\""), "{e}");
        let alias = "models:\n  m:\n    aliases: { a: \"1\", a: \"1\" }\n    versions: { 1: {} }\n";
        assert!(error_of(alias).contains("duplicate"), "{}", error_of(alias));
        let field = "models:\n  m:\n    versions:\n      1: { code: { commit: a, commit: b } }\n";
        assert!(error_of(field).contains("duplicate"), "{}", error_of(field));
    }

    /// Version "0" of model `m` with an anchored schema of `n` features (`feature`, its `#`
    /// replaced by the index), and versions 1 to 999 aliasing that whole record.
    fn shared_record(n: usize, feature: &str) -> String {
        let features: Vec<String> = (0..n)
            .map(|i| feature.replace('#', &i.to_string()))
            .collect();
        let mut text = format!(
            "models:\n  m:\n    versions:\n      \"0\": &r {{ input_schema: [{}] }}\n",
            features.join(", ")
        );
        for v in 1..1_000 {
            text.push_str(&format!("      \"{v}\": *r\n"));
        }
        text
    }

    /// One anchored record aliased by many versions: linear in the text, but each alias
    /// replays the whole record. Bounded by the replay cap, whatever the record's size.
    #[test]
    fn aliases_that_replay_more_than_the_cap_are_refused() {
        let text = shared_record(2_000, "{ name: f#, type: double }");
        assert!(text.len() < 100_000);
        let e = error_of(&text);
        assert!(e.contains("too large or too complex"), "{e}");
    }

    /// The same shape at a legitimate size (one schema shared by a thousand versions, as
    /// `config/registry.yaml` shares a reference distribution) is accepted.
    #[test]
    fn a_schema_shared_by_a_thousand_versions_is_accepted() {
        let text = shared_record(40, "{ name: f#, type: double, min: 0.0, max: 1.0 }");
        let data = parse_registry(&text, "r.yaml").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(data.models["m"].versions.len(), 1_000);
        assert_eq!(
            data.models["m"].versions["999"].record.input_schema.len(),
            40
        );
    }

    /// Where values are skipped rather than typed (an MLmodel's other flavors), the classic
    /// exponential alias bomb and deep nesting are still bounded.
    #[test]
    fn exponential_aliases_and_deep_nesting_are_refused() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let (_, e) = from_yaml::<serde::de::IgnoredAny>(&bomb)
            .err()
            .unwrap_or_default();
        assert!(e.contains("too large or too complex"), "{e}");

        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let (_, e) = from_yaml::<serde::de::IgnoredAny>(&deep)
            .err()
            .unwrap_or_default();
        assert!(e.contains("limit exceeded"), "{e}");
        let fine = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(from_yaml::<serde::de::IgnoredAny>(&fine).is_ok());
    }

    /// Names read as serde_yaml read them: `on` and `no` are names, `01` and `1_000` keep
    /// their spelling (a lineage ID hashes the version string).
    #[test]
    fn names_keep_their_spelling_as_serde_yaml_read_them() {
        let text = "models:\n  on:\n    aliases: { no: 01 }\n    versions:\n      01: {}\n      1_000: {}\n      7: {}\n";
        let data = parse_registry(text, "r.yaml").unwrap_or_else(|e| unreachable!("{e}"));
        let m = &data.models["on"];
        assert_eq!(m.aliases["no"], "01");
        let versions: Vec<&str> = m.versions.keys().map(String::as_str).collect();
        assert_eq!(versions, ["01", "1_000", "7"]);
    }

    #[test]
    fn a_file_over_the_size_cap_is_refused_before_parsing() {
        let dir = std::env::temp_dir().join(format!("modelstamp-cap-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("registry.yaml");
        let _ = std::fs::write(&file, "models: {}\n");
        assert_eq!(
            read_bounded(&file, 11, "registry.max_bytes").as_deref(),
            Ok("models: {}\n")
        );
        let e = read_bounded(&file, 10, "registry.max_bytes")
            .err()
            .unwrap_or_default();
        assert_eq!(
            e,
            "larger than 10 bytes (registry.max_bytes); refused without parsing"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
