//! Registry: where lineage records come from. A [`Registry`] backend yields [`RegistryData`]
//! (models → aliases and versions → lineage records with their lineage IDs); the file backend
//! is the embedded default, and other backends (MLflow) plug in behind the same trait.

mod datasets;
mod file;
pub mod mlflow;
mod record;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use datasets::{
    DatasetVersion, DatasetVersions, Job, Stale, VERSIONS_PER_DATASET, matching, staleness,
};
pub use file::{FileRegistry, from_yaml, parse_registry, read_bounded, registry_files};
pub use record::{
    Code, Environment, Feature, LineageRecord, PredictionSpec, Promotion, Reference, TrainingData,
};

use crate::config::ConfigErrors;

/// A registry backend.
pub trait Registry: Send + Sync {
    /// A short description for logs, such as `file:/etc/modelstamp/registry.yaml`.
    fn describe(&self) -> String;
    /// Read every model, alias and version record.
    fn fetch(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<RegistryData, ConfigErrors>> + Send + '_>>;
}

/// Everything a registry holds, validated.
#[derive(Debug, Clone, Default)]
pub struct RegistryData {
    /// Models by name.
    pub models: BTreeMap<String, ModelRecord>,
    /// The dataset versions the registry's own runs used (for stale-lineage detection).
    pub datasets: DatasetVersions,
}

/// A dataset as lineage records name it: its name and where it is read from.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct DatasetKey {
    /// Dataset name.
    pub name: String,
    /// Source URI.
    pub source: Option<String>,
}

/// One model: its aliases and versions.
#[derive(Debug, Clone, Default)]
pub struct ModelRecord {
    /// Alias → version.
    pub aliases: BTreeMap<String, String>,
    /// Version → record.
    pub versions: BTreeMap<String, VersionRecord>,
}

/// One version's lineage record with its ID.
#[derive(Debug, Clone)]
pub struct VersionRecord {
    /// `ln_…` content hash of the record.
    pub lineage_id: String,
    /// The record.
    pub record: Arc<LineageRecord>,
    /// IDs the record had under an earlier canonical form, still resolved to it (an MLflow
    /// record's ID once hashed its run link; docs/registry.md, "Lineage ID: canonical form").
    pub former_ids: Vec<String>,
}

impl RegistryData {
    /// The record with this lineage ID (or one it had before; its `lineage_id` is the current
    /// one).
    pub fn by_lineage_id(&self, id: &str) -> Option<&VersionRecord> {
        self.models
            .values()
            .flat_map(|m| m.versions.values())
            .find(|v| v.lineage_id == id || v.former_ids.iter().any(|f| f == id))
    }

    /// Resolve an alias or version to a version that exists.
    pub fn resolve(&self, model: &str, version_or_alias: &str, is_alias: bool) -> Option<&str> {
        let m = self.models.get(model)?;
        let version = if is_alias {
            m.aliases.get(version_or_alias)?.as_str()
        } else {
            version_or_alias
        };
        m.versions.get_key_value(version).map(|(k, _)| k.as_str())
    }

    /// Every version's lineage record.
    pub fn records(&self) -> impl Iterator<Item = &LineageRecord> {
        self.models
            .values()
            .flat_map(|m| m.versions.values())
            .map(|v| &*v.record)
    }

    /// How many versions in all.
    pub fn version_count(&self) -> usize {
        self.models.values().map(|m| m.versions.len()).sum()
    }
}
