//! Dataset versions as the sidecar learns of them: from the registry's own runs (MLflow dataset
//! inputs) and from lineage events (OpenLineage, `POST /events/dataset-changed`). Versions are
//! ordered by when they were written (the event's time, the run's start), never by when they
//! arrived: announcing an old snapshot late does not make it the newest, and a version trained
//! on a later snapshot is not stale.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{DatasetKey, LineageRecord};
use crate::codec::time::parse_ms;

/// At most this many versions are kept per dataset (the newest by write time).
pub const VERSIONS_PER_DATASET: usize = 16;

/// The pipeline run that wrote a dataset version (an OpenLineage job and run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Job namespace (`airflow-prod`, `dbt`).
    pub namespace: String,
    /// Job name (`churn_features`, `warehouse.main.contacts`).
    pub name: String,
    /// The run's ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// What emitted the event (the `producer` URI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub producer: Option<String>,
}

impl Job {
    /// `namespace/name`.
    pub fn qualified(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One version of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatasetVersion {
    /// When it was written (ms since the epoch): the event's time or the run's start.
    pub written_ms: i64,
    /// Its digest or version (an OpenLineage `version` facet, else the writing run's ID).
    pub digest: String,
    /// Where it was learnt of (`mlflow run …`, `OpenLineage event`, `dataset-changed event`).
    pub seen_in: String,
    /// The job that wrote it, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
}

/// Every known version per dataset, oldest first by write time, one entry per digest (at its
/// earliest write).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetVersions {
    by_key: BTreeMap<DatasetKey, Vec<DatasetVersion>>,
}

impl DatasetVersions {
    /// Learn of a version. Returns whether anything changed: a digest already known from an
    /// earlier write is not newer for being announced again.
    pub fn record(&mut self, key: DatasetKey, v: DatasetVersion) -> bool {
        let versions = self.by_key.entry(key).or_default();
        if let Some(i) = versions.iter().position(|k| k.digest == v.digest) {
            if versions[i].written_ms <= v.written_ms {
                return false;
            }
            versions.remove(i);
        }
        let at = versions.partition_point(|k| k.written_ms <= v.written_ms);
        versions.insert(at, v);
        if versions.len() > VERSIONS_PER_DATASET {
            versions.remove(0);
            // Older than every version kept: nothing learnt.
            return at != 0;
        }
        true
    }

    /// The version written last.
    pub fn newest(&self, key: &DatasetKey) -> Option<&DatasetVersion> {
        self.by_key.get(key).and_then(|v| v.last())
    }

    /// When a digest of this dataset was (first) written.
    pub fn written_ms(&self, key: &DatasetKey, digest: &str) -> Option<i64> {
        self.by_key
            .get(key)?
            .iter()
            .find(|v| v.digest == digest)
            .map(|v| v.written_ms)
    }

    /// Every dataset with its versions, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&DatasetKey, &[DatasetVersion])> {
        self.by_key.iter().map(|(k, v)| (k, v.as_slice()))
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The last write of an upstream `source` (`crm.accounts.tenure_months`): of that name,
    /// else of its table (the name without its last `.column`).
    pub fn last_write_of(&self, source: &str) -> Option<&DatasetVersion> {
        let exact = DatasetKey {
            name: source.to_string(),
            source: None,
        };
        self.newest(&exact).or_else(|| {
            let (table, _) = source.rsplit_once('.')?;
            self.newest(&DatasetKey {
                name: table.to_string(),
                source: None,
            })
        })
    }
}

/// The newest version of a dataset over several sources of knowledge.
fn newest<'a>(known: &[&'a DatasetVersions], key: &DatasetKey) -> Option<&'a DatasetVersion> {
    known
        .iter()
        .filter_map(|k| k.newest(key))
        .max_by_key(|v| v.written_ms)
}

/// Why a version's lineage is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// The dataset that has a newer version: the training dataset, or one of its upstream tables
    /// (then `upstream_of` names the training dataset).
    pub dataset: DatasetKey,
    /// The digest the version was trained on (`-` when the record has none).
    pub trained_on: String,
    /// The newer version.
    pub latest: DatasetVersion,
    /// The training dataset built from `dataset`, when `dataset` is an upstream table.
    pub upstream_of: Option<String>,
}

impl Stale {
    /// One line for people: what changed, when, by which job, and what the version was trained
    /// on.
    pub fn describe(&self) -> String {
        let by = self
            .latest
            .job
            .as_ref()
            .map(|j| format!(" by job {}", j.qualified()))
            .unwrap_or_default();
        let when = crate::codec::time::rfc3339_ms(self.latest.written_ms);
        match &self.upstream_of {
            Some(training) => format!(
                "upstream table {} was rewritten at {when}{by} ({}), after training on {training} {}",
                self.dataset.name, self.latest.seen_in, self.trained_on
            ),
            None => format!(
                "{} trained on {}, latest {} written at {when}{by} ({})",
                self.dataset.name, self.trained_on, self.latest.digest, self.latest.seen_in
            ),
        }
    }
}

/// Whether a version's lineage is stale: its training dataset has a version written after the
/// one it was trained on, or one of the dataset's upstream tables was rewritten after training.
///
/// When the trained-on digest's write time is unknown, the record's `created_at` bounds it; with
/// neither, any other digest of the training dataset counts as newer (the digest is all there
/// is to go by), and upstream tables are not judged.
pub fn staleness(record: &LineageRecord, known: &[&DatasetVersions]) -> Option<Stale> {
    let data = record.training_data.as_ref()?;
    let key = DatasetKey {
        name: data.name.clone(),
        source: data.source.clone(),
    };
    let trained_on = data.digest.clone();
    let trained_ms = trained_on
        .as_deref()
        .and_then(|d| known.iter().filter_map(|k| k.written_ms(&key, d)).min())
        .or_else(|| record.created_at.as_deref().and_then(parse_ms));
    if let Some(trained_on) = &trained_on
        && let Some(latest) = newest(known, &key)
        && latest.digest != *trained_on
        && trained_ms.is_none_or(|t| latest.written_ms > t)
    {
        return Some(Stale {
            dataset: key,
            trained_on: trained_on.clone(),
            latest: latest.clone(),
            upstream_of: None,
        });
    }
    let trained_ms = trained_ms?;
    data.upstream_tables
        .iter()
        .filter_map(|table| {
            let key = DatasetKey {
                name: table.clone(),
                source: None,
            };
            let latest = newest(known, &key)?;
            (latest.written_ms > trained_ms).then_some((key, latest))
        })
        .max_by_key(|(_, latest)| latest.written_ms)
        .map(|(key, latest)| Stale {
            dataset: key,
            trained_on: trained_on.unwrap_or_else(|| "-".into()),
            latest: latest.clone(),
            upstream_of: Some(data.name.clone()),
        })
}

/// The datasets of the registry's records that outside names refer to: a training dataset by
/// its source URI or its name, an upstream table by its name, a feature source by its name or
/// its table's. Names come from an event: an OpenLineage
/// `namespace/name`, its plain name, its symlinks, and configured aliases of any of them.
pub fn matching<'a>(
    records: impl IntoIterator<Item = &'a LineageRecord>,
    names: &BTreeSet<String>,
) -> BTreeSet<DatasetKey> {
    let mut out = BTreeSet::new();
    let table = |name: &str| DatasetKey {
        name: name.to_string(),
        source: None,
    };
    for record in records {
        if let Some(data) = &record.training_data {
            let by_source = data.source.as_ref().is_some_and(|s| names.contains(s));
            if by_source || names.contains(&data.name) {
                out.insert(DatasetKey {
                    name: data.name.clone(),
                    source: data.source.clone(),
                });
            }
            for t in data.upstream_tables.iter().filter(|t| names.contains(*t)) {
                out.insert(table(t));
            }
        }
        for source in record.input_schema.iter().filter_map(|f| f.source.as_ref()) {
            if names.contains(source) {
                out.insert(table(source));
            } else if let Some((t, _)) = source.rsplit_once('.')
                && names.contains(t)
            {
                out.insert(table(t));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Feature, ModelRecord, RegistryData, TrainingData, VersionRecord};
    use std::sync::Arc;

    fn key(name: &str, source: Option<&str>) -> DatasetKey {
        DatasetKey {
            name: name.into(),
            source: source.map(Into::into),
        }
    }

    fn version(ms: i64, digest: &str) -> DatasetVersion {
        DatasetVersion {
            written_ms: ms,
            digest: digest.into(),
            seen_in: "test".into(),
            job: None,
        }
    }

    fn record(digest: &str, created_at: Option<&str>) -> LineageRecord {
        LineageRecord {
            model: "churn".into(),
            version: "1".into(),
            training_data: Some(TrainingData {
                name: "churn-train".into(),
                source: Some("s3://d/train.parquet".into()),
                digest: Some(digest.into()),
                upstream_tables: vec!["crm.contacts".into()],
                context: None,
            }),
            created_at: created_at.map(Into::into),
            input_schema: vec![Feature {
                name: "tenure".into(),
                kind: "double".into(),
                source: Some("crm.accounts.tenure_months".into()),
                ..Feature::default()
            }],
            ..LineageRecord::default()
        }
    }

    #[test]
    fn versions_are_ordered_by_write_time_not_arrival() {
        let k = key("churn-train", Some("s3://d/train.parquet"));
        let mut known = DatasetVersions::default();
        assert!(known.record(k.clone(), version(2_000, "b")));
        assert!(known.record(k.clone(), version(1_000, "a")), "late but old");
        assert_eq!(known.newest(&k).map(|v| v.digest.as_str()), Some("b"));
        assert!(
            !known.record(k.clone(), version(3_000, "b")),
            "announced again"
        );
        assert_eq!(known.written_ms(&k, "b"), Some(2_000));
        assert!(
            known.record(k.clone(), version(500, "b")),
            "an earlier write"
        );
        assert_eq!(known.newest(&k).map(|v| v.digest.as_str()), Some("a"));
        for i in 0..40 {
            known.record(k.clone(), version(10_000 + i, &format!("v{i}")));
        }
        assert_eq!(known.iter().next().map(|(_, v)| v.len()), Some(16));
        assert_eq!(known.newest(&k).map(|v| v.digest.as_str()), Some("v39"));
        assert!(
            !known.record(k.clone(), version(1, "ancient")),
            "older than all kept"
        );
    }

    #[test]
    fn stale_means_written_after_the_trained_on_snapshot() {
        let k = key("churn-train", Some("s3://d/train.parquet"));
        let mut known = DatasetVersions::default();
        known.record(k.clone(), version(1_000, "old"));
        known.record(k.clone(), version(5_000, "trained"));
        let rec = record("trained", None);
        assert_eq!(
            staleness(&rec, &[&known]),
            None,
            "an older digest announced"
        );
        known.record(k.clone(), version(9_000, "newer"));
        let stale = staleness(&rec, &[&known]).unwrap_or_else(|| unreachable!());
        assert_eq!(
            (stale.trained_on.as_str(), stale.latest.digest.as_str()),
            ("trained", "newer")
        );
        // Its write time unknown, the record's creation bounds the trained-on snapshot.
        let rec = record("unseen", Some("1970-01-01T00:00:10Z"));
        assert_eq!(
            staleness(&rec, &[&known]),
            None,
            "written before the version was made"
        );
        let rec = record("unseen", Some("1970-01-01T00:00:08Z"));
        assert_eq!(
            staleness(&rec, &[&known]).map(|s| s.latest.digest),
            Some("newer".into())
        );
        // With neither, any other digest is newer.
        assert!(staleness(&record("unseen", None), &[&known]).is_some());
    }

    #[test]
    fn an_upstream_table_rewritten_after_training_makes_it_stale() {
        let mut known = DatasetVersions::default();
        let rec = record("d1", Some("1970-01-01T00:00:10Z"));
        known.record(key("crm.contacts", None), version(9_000, "run-a"));
        assert_eq!(
            staleness(&rec, &[&known]),
            None,
            "rewritten before training"
        );
        let mut job = version(12_000, "run-b");
        job.job = Some(Job {
            namespace: "dbt".into(),
            name: "warehouse.main.contacts".into(),
            run_id: Some("run-b".into()),
            producer: None,
        });
        known.record(key("crm.contacts", None), job);
        let stale = staleness(&rec, &[&known]).unwrap_or_else(|| unreachable!());
        assert_eq!(stale.upstream_of.as_deref(), Some("churn-train"));
        assert!(
            stale.describe().contains("crm.contacts was rewritten at 1970-01-01T00:00:12.000Z by job dbt/warehouse.main.contacts"),
            "{}",
            stale.describe()
        );
    }

    #[test]
    fn names_match_training_datasets_tables_and_feature_sources() {
        let mut registry = RegistryData::default();
        let mut m = ModelRecord::default();
        let rec = record("d1", None);
        m.versions.insert(
            "1".into(),
            VersionRecord {
                lineage_id: rec.lineage_id(),
                record: Arc::new(rec),
                former_ids: Vec::new(),
            },
        );
        registry.models.insert("churn".into(), m);
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let found = |n: &[&str]| {
            matching(registry.records(), &names(n))
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            found(&["s3://d/train.parquet"]),
            vec![key("churn-train", Some("s3://d/train.parquet"))]
        );
        assert_eq!(found(&["crm.contacts"]), vec![key("crm.contacts", None)]);
        assert_eq!(found(&["crm.accounts"]), vec![key("crm.accounts", None)]);
        assert_eq!(
            found(&["crm.accounts.tenure_months"]),
            vec![key("crm.accounts.tenure_months", None)]
        );
        assert!(found(&["crm", "s3://d/other.parquet", "contacts"]).is_empty());
    }
}
