//! The file backend: a YAML file of models, aliases and version records, or a directory of
//! such files merged into one registry (a large registry split the way a Kubernetes ConfigMap
//! must split it, one key per file). A file whose bytes have not changed since the last fetch
//! is not parsed again.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use sha2::{Digest, Sha256};

use super::{LineageRecord, ModelRecord, Registry, RegistryData, VersionRecord};
use crate::config::{ConfigError, ConfigErrors};

/// Reads the registry file, or every registry file of a directory, on every fetch.
#[derive(Debug, Clone)]
pub struct FileRegistry {
    path: PathBuf,
    max_bytes: u64,
    /// What each file parsed to, by path, with the digest of the bytes it was parsed from:
    /// shared by the clones, so the reloader's next fetch parses only files that changed.
    parsed: Arc<Mutex<BTreeMap<PathBuf, Parsed>>>,
}

/// One file's parse, kept for as long as its bytes stay the same.
#[derive(Debug)]
struct Parsed {
    digest: [u8; 32],
    len: u64,
    result: Result<Arc<RegistryData>, ConfigErrors>,
}

impl FileRegistry {
    /// A registry backed by this file or directory, refused when it holds more than
    /// `max_bytes` (all files of a directory together).
    pub fn new(path: PathBuf, max_bytes: u64) -> Self {
        Self {
            path,
            max_bytes,
            parsed: Arc::default(),
        }
    }

    /// Whether this registry reads `path` with the bound `max_bytes` (so a reload may keep it
    /// and what it parsed).
    pub fn reads(&self, path: &Path, max_bytes: u64) -> bool {
        self.path == path && self.max_bytes == max_bytes
    }

    /// Read, parse (what changed) and merge, on the calling thread.
    fn load(&self) -> Result<RegistryData, ConfigErrors> {
        let error = |at: &Path, e: String| {
            ConfigErrors(vec![ConfigError::new(at.display().to_string(), e)])
        };
        let is_dir = std::fs::metadata(&self.path).is_ok_and(|m| m.is_dir());
        let files = if is_dir {
            registry_files(&self.path)
                .map_err(|e| error(&self.path, format!("cannot list: {e}")))?
                .into_iter()
                .map(|(path, _)| path)
                .collect()
        } else {
            vec![self.path.clone()]
        };
        let mut cache = self
            .parsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut kept = BTreeMap::new();
        let mut parts = Vec::with_capacity(files.len());
        let mut errs = Vec::new();
        let mut total = 0u64;
        for file in files {
            let bytes = match read_capped(&file, self.max_bytes - total) {
                Ok(Some(bytes)) => bytes,
                Ok(None) if is_dir => {
                    return Err(error(
                        &self.path,
                        format!(
                            "its files hold more than {} bytes (registry.max_bytes); refused without parsing",
                            self.max_bytes
                        ),
                    ));
                }
                Ok(None) => {
                    return Err(error(
                        &file,
                        too_large(self.max_bytes, "registry.max_bytes"),
                    ));
                }
                Err(e) => return Err(error(&file, format!("cannot read: {e}"))),
            };
            total += bytes.len() as u64;
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            let parsed = match cache.remove(&file) {
                Some(p) if p.digest == digest && p.len == bytes.len() as u64 => p,
                _ => Parsed {
                    digest,
                    len: bytes.len() as u64,
                    result: parse_file(bytes, &file, is_dir).map(Arc::new),
                },
            };
            match &parsed.result {
                Ok(data) => parts.push((file.display().to_string(), data.clone())),
                Err(e) => errs.extend(e.0.iter().cloned()),
            }
            kept.insert(file, parsed);
        }
        // Files that left the directory are forgotten with the rest of the old cache.
        *cache = kept;
        drop(cache);
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        merge(&parts, is_dir)
    }
}

impl Registry for FileRegistry {
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn fetch(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<RegistryData, ConfigErrors>> + Send + '_>> {
        let registry = self.clone();
        // Reading and parsing a large registry takes long: never on an async worker thread.
        Box::pin(async move {
            tokio::task::spawn_blocking(move || registry.load())
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

/// The registry files of a directory, in name order: its `.yaml` and `.yml` entries (symbolic
/// links followed), leaving out hidden ones (a ConfigMap mount's `..data` and its timestamped
/// directories), with their metadata.
pub fn registry_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, std::fs::Metadata)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) || name.starts_with('.') {
            continue;
        }
        if let Ok(m) = std::fs::metadata(&path)
            && m.is_file()
        {
            files.push((path, m));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// Parse one registry file; in a directory, its errors name it.
fn parse_file(bytes: Vec<u8>, file: &Path, in_dir: bool) -> Result<RegistryData, ConfigErrors> {
    let origin = file.display().to_string();
    let text = String::from_utf8(bytes)
        .map_err(|e| ConfigErrors(vec![ConfigError::new(&origin, format!("not UTF-8: {e}"))]))?;
    parse_records(&text, &origin, !in_dir).map_err(|ConfigErrors(errs)| {
        ConfigErrors(
            errs.into_iter()
                .map(|mut e| {
                    if in_dir && !e.path.starts_with(&origin) {
                        e.path = format!("{origin}: {}", e.path);
                    }
                    e
                })
                .collect(),
        )
    })
}

/// One registry from the files' records: a version or an alias given by two files is an
/// error naming both; an alias may point to a version another file gives.
fn merge(
    parts: &[(String, Arc<RegistryData>)],
    in_dir: bool,
) -> Result<RegistryData, ConfigErrors> {
    if let ([(_, only)], false) = (parts, in_dir) {
        // The registry file: what it gave was checked whole.
        return Ok(RegistryData::clone(only));
    }
    let mut errs = Vec::new();
    let mut models: BTreeMap<String, ModelRecord> = BTreeMap::new();
    let mut from: BTreeMap<(&str, &str, bool), &str> = BTreeMap::new();
    for (origin, data) in parts {
        for (name, m) in &data.models {
            let merged = models.entry(name.clone()).or_default();
            for (version, record) in &m.versions {
                if let Some(first) = from.insert((name, version, false), origin) {
                    errs.push(ConfigError::new(
                        format!("{origin}: models.{name}.versions.{version}"),
                        format!("also given by {first}; a version is given by one file"),
                    ));
                }
                merged.versions.insert(version.clone(), record.clone());
            }
            for (alias, version) in &m.aliases {
                if let Some(first) = from.insert((name, alias, true), origin) {
                    errs.push(ConfigError::new(
                        format!("{origin}: models.{name}.aliases.{alias}"),
                        format!("also given by {first}; an alias is given by one file"),
                    ));
                }
                merged.aliases.insert(alias.clone(), version.clone());
            }
        }
    }
    for (name, m) in &models {
        for (alias, version) in &m.aliases {
            if !m.versions.contains_key(version) {
                let origin = from.get(&(name, alias, true)).copied().unwrap_or_default();
                errs.push(ConfigError::new(
                    format!("{origin}: models.{name}.aliases.{alias}"),
                    format!("points to unknown version \"{version}\" (no file gives it)"),
                ));
            }
        }
    }
    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }
    Ok(RegistryData {
        models,
        datasets: Default::default(),
    })
}

fn too_large(max_bytes: u64, limit: &str) -> String {
    format!("larger than {max_bytes} bytes ({limit}); refused without parsing")
}

/// At most `max_bytes` of a file, or `None` when it holds more: at most `max_bytes + 1`
/// bytes are ever read, however fast the file grows.
fn read_capped(path: &Path, max_bytes: u64) -> std::io::Result<Option<Vec<u8>>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max_bytes).then_some(bytes))
}

/// Read a UTF-8 file of at most `max_bytes`, the bound `limit` names in the error. The bound
/// holds while the file grows: at most `max_bytes + 1` bytes are ever read.
pub fn read_bounded(path: &Path, max_bytes: u64, limit: &str) -> Result<String, String> {
    let bytes = read_capped(path, max_bytes)
        .map_err(|e| format!("cannot read: {e}"))?
        .ok_or_else(|| too_large(max_bytes, limit))?;
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
    parse_records(text, origin, true)
}

/// Parse and validate one file's records and aliases; unless the file is the `whole`
/// registry, an alias may name a version another file of the directory gives ([`merge`]
/// checks those).
fn parse_records(text: &str, origin: &str, whole: bool) -> Result<RegistryData, ConfigErrors> {
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
                    former_ids: Vec::new(),
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
            if whole && !versions.contains_key(&version) {
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
            datasets: Default::default(),
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

    /// A directory of registry files, emptied first; `files` are (name, content).
    fn registry_dir(tag: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("modelstamp-dir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        for (name, text) in files {
            let _ = std::fs::write(dir.join(name), text);
        }
        dir
    }

    fn load_errors(registry: &FileRegistry) -> Vec<String> {
        match registry.load() {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_directory_of_files_is_one_registry_with_the_ids_one_file_gives() {
        let dir = registry_dir(
            "merge",
            &[
                (
                    "aliases.yaml",
                    "models: { churn: { aliases: { champion: 1, challenger: \"2\" } } }\n",
                ),
                (
                    "churn-1.yml",
                    "models:\n  churn:\n    versions:\n      1:\n        code: { repo: \"https://git.example/churn\", commit: \"97f447d\" }\n        training_data: { name: churn-train, digest: e5d39153, upstream_tables: [crm.accounts] }\n",
                ),
                (
                    "churn-2.yaml",
                    "models: { churn: { versions: { \"2\": { code: { commit: \"1c2b\" } } } } }\n",
                ),
                // Not registry files: hidden (a ConfigMap's `..data`), or not YAML.
                (".hidden.yaml", "not: [yaml"),
                ("README.md", "not: [yaml"),
            ],
        );
        let one = parse_registry(GOOD, "r.yaml").unwrap_or_else(|e| unreachable!("{e}"));
        let merged = FileRegistry::new(dir.clone(), 1 << 20)
            .load()
            .unwrap_or_else(|e| unreachable!("{e}"));
        let ids = |d: &RegistryData| -> Vec<(String, String)> {
            (d.models["churn"].versions.iter())
                .map(|(v, r)| (v.clone(), r.lineage_id.clone()))
                .collect()
        };
        assert_eq!(ids(&merged), ids(&one));
        assert_eq!(merged.models["churn"].aliases, one.models["churn"].aliases);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_the_files_that_changed_are_parsed_again() {
        let dir = registry_dir(
            "cache",
            &[
                (
                    "a.yaml",
                    "models: { churn: { aliases: { champion: 1 }, versions: { 1: {} } } }\n",
                ),
                (
                    "b.yaml",
                    "models: { churn: { versions: { 2: { code: { commit: b1 } } } } }\n",
                ),
            ],
        );
        let registry = FileRegistry::new(dir.clone(), 1 << 20);
        let record = |d: &RegistryData, v: &str| d.models["churn"].versions[v].record.clone();
        let first = registry.load().unwrap_or_else(|e| unreachable!("{e}"));
        // A clone (what the reloader keeps) shares what was parsed.
        let again = registry
            .clone()
            .load()
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(Arc::ptr_eq(&record(&first, "1"), &record(&again, "1")));
        assert!(Arc::ptr_eq(&record(&first, "2"), &record(&again, "2")));

        // b.yaml rewritten with other bytes: parsed again; a.yaml is not.
        let _ = std::fs::write(
            dir.join("b.yaml"),
            "models: { churn: { versions: { 2: { code: { commit: b2 } } } } }\n",
        );
        let changed = registry.load().unwrap_or_else(|e| unreachable!("{e}"));
        assert!(Arc::ptr_eq(&record(&first, "1"), &record(&changed, "1")));
        assert_eq!(record(&changed, "2").code.commit.as_deref(), Some("b2"));
        assert_ne!(
            first.models["churn"].versions["2"].lineage_id,
            changed.models["churn"].versions["2"].lineage_id
        );

        // A file that leaves takes its versions with it; a file that arrives adds its own.
        let _ = std::fs::remove_file(dir.join("b.yaml"));
        let _ = std::fs::write(
            dir.join("c.yaml"),
            "models: { churn: { versions: { 3: {} } } }\n",
        );
        let moved = registry.load().unwrap_or_else(|e| unreachable!("{e}"));
        let versions: Vec<_> = moved.models["churn"].versions.keys().cloned().collect();
        assert_eq!(versions, ["1", "3"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_version_or_alias_given_twice_or_an_alias_to_nothing_is_refused_naming_the_files() {
        let dir = registry_dir(
            "twice",
            &[
                (
                    "a.yaml",
                    "models: { churn: { aliases: { champion: 1 }, versions: { 1: {} } } }\n",
                ),
                (
                    "b.yaml",
                    "models: { churn: { aliases: { champion: 1, next: 9 }, versions: { \"1\": {} } } }\n",
                ),
            ],
        );
        let (a, b) = (
            dir.join("a.yaml").display().to_string(),
            dir.join("b.yaml").display().to_string(),
        );
        assert_eq!(
            load_errors(&FileRegistry::new(dir.clone(), 1 << 20)),
            [
                format!(
                    "{b}: models.churn.versions.1: also given by {a}; a version is given by one file"
                ),
                format!(
                    "{b}: models.churn.aliases.champion: also given by {a}; an alias is given by one file"
                ),
                format!(
                    "{b}: models.churn.aliases.next: points to unknown version \"9\" (no file gives it)"
                ),
            ]
        );
        // A file that does not parse is named, with its line; the others are still read.
        let _ = std::fs::write(
            dir.join("b.yaml"),
            "models: { churn: { versions: { 2: { code: [ } } } }\n",
        );
        let errors = load_errors(&FileRegistry::new(dir.clone(), 1 << 20));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with(&format!("{b}:1:")), "{errors:?}");
        // A record's own problem is named with its file.
        let _ = std::fs::write(
            dir.join("b.yaml"),
            "models: { churn: { versions: { \"bad version\": {} } } }\n",
        );
        let errors = load_errors(&FileRegistry::new(dir.clone(), 1 << 20));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!("{b}: models.churn.versions.bad version")),
            "{errors:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_size_bound_holds_for_all_files_of_a_directory_together() {
        let record = "models: { churn: { versions: { 1: {} } } }\n";
        let other = "models: { churn: { versions: { 2: {} } } }\n";
        let dir = registry_dir("cap", &[("a.yaml", record), ("b.yaml", other)]);
        let total = (record.len() + other.len()) as u64;
        assert_eq!(
            load_errors(&FileRegistry::new(dir.clone(), total)),
            Vec::<String>::new()
        );
        assert_eq!(
            load_errors(&FileRegistry::new(dir.clone(), total - 1)),
            [format!(
                "{}: its files hold more than {} bytes (registry.max_bytes); refused without parsing",
                dir.display(),
                total - 1
            )]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
