//! OpenLineage intake: `POST /api/v1/lineage`, the endpoint Airflow, dbt (`dbt-ol`), Spark,
//! Flink and Feast emit to and Marquez accepts. A completed run that writes a dataset is a new
//! version of it (its `version` facet, else the run's ID), written at the event's time by the
//! event's job; a `DatasetEvent` with a `version` facet is one too. Anything else (a started or
//! failed run, a `JobEvent`, a dataset event without a version) is accepted and ignored.
//! Unknown fields and facets are ignored, as the spec asks of consumers.

use std::collections::BTreeSet;
use std::io::Read;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::codec::time::parse_ms;
use crate::registry::{DatasetVersion, Job};
use crate::routing::Written;

/// Largest event accepted after gzip is undone (dbt's events carry SQL and schema facets).
pub const MAX_INFLATED: usize = 4 << 20;
/// Most outputs one event may write, and symlinks one dataset may have.
pub const MAX_OUTPUTS: usize = 256;
/// Longest name, namespace, version, run ID or producer kept (bytes).
pub const MAX_FIELD: usize = 512;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    event_time: Option<String>,
    event_type: Option<String>,
    producer: Option<String>,
    run: Option<Run>,
    job: Option<JobRef>,
    #[serde(default)]
    outputs: Vec<Dataset>,
    dataset: Option<Dataset>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Run {
    run_id: String,
}

#[derive(Debug, Deserialize)]
struct JobRef {
    namespace: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct Dataset {
    namespace: String,
    name: String,
    #[serde(default)]
    facets: Facets,
}

#[derive(Debug, Default, Deserialize)]
struct Facets {
    version: Option<VersionFacet>,
    symlinks: Option<Symlinks>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionFacet {
    dataset_version: String,
}

#[derive(Debug, Deserialize)]
struct Symlinks {
    #[serde(default)]
    identifiers: Vec<Identifier>,
}

#[derive(Debug, Deserialize)]
struct Identifier {
    namespace: String,
    name: String,
}

/// One dataset an event names, and whether it is a new version.
#[derive(Debug)]
pub struct Announced {
    /// `namespace` and `name` as the event gives them.
    pub namespace: String,
    /// The dataset name.
    pub name: String,
    /// The write, or why the dataset is not one.
    pub write: Result<Written, &'static str>,
}

/// Undo `Content-Encoding` (identity or gzip), up to [`MAX_INFLATED`] bytes.
pub fn decode_body(encoding: Option<&str>, body: &[u8]) -> Result<Vec<u8>, String> {
    match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "identity") => Ok(body.to_vec()),
        Some("gzip" | "x-gzip") => {
            let mut out = Vec::new();
            let limit = u64::try_from(MAX_INFLATED).unwrap_or(u64::MAX) + 1;
            flate2::read::MultiGzDecoder::new(body)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| format!("the gzip body cannot be read: {e}"))?;
            if out.len() > MAX_INFLATED {
                return Err(format!("the event inflates past {MAX_INFLATED} bytes"));
            }
            Ok(out)
        }
        Some(other) => Err(format!(
            "Content-Encoding {other} is not supported (gzip or none)"
        )),
    }
}

/// The datasets an OpenLineage event (RunEvent, DatasetEvent or JobEvent) announces.
pub fn parse(body: &[u8]) -> Result<Vec<Announced>, String> {
    let event: Event =
        serde_json::from_slice(body).map_err(|e| format!("not an OpenLineage event: {e}"))?;
    bounded(&event)?;
    let time = event.event_time.as_deref().ok_or("eventTime is required")?;
    let written_ms = parse_ms(time)
        .ok_or_else(|| format!("eventTime {time:?} is not an RFC 3339 time with an offset"))?;
    let producer = event.producer.clone();
    let seen_in = |what: &str| match &producer {
        Some(p) => format!("OpenLineage {what} from {p}"),
        None => format!("OpenLineage {what}"),
    };
    let announce = |d: Dataset, write: Result<(String, Option<Job>), &'static str>, what: &str| {
        let names = names(&d);
        Announced {
            write: write.map(|(digest, job)| Written {
                names,
                version: DatasetVersion {
                    written_ms,
                    digest,
                    seen_in: seen_in(what),
                    job,
                },
            }),
            namespace: d.namespace,
            name: d.name,
        }
    };
    if let Some(run) = event.run {
        let job = event.job.ok_or("a RunEvent needs its job")?;
        let complete = event
            .event_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("COMPLETE"));
        let job = Job {
            namespace: job.namespace,
            name: job.name,
            run_id: Some(run.run_id.clone()),
            producer: producer.clone(),
        };
        return Ok(event
            .outputs
            .into_iter()
            .map(|mut d| {
                let write = if complete {
                    let digest = d
                        .facets
                        .version
                        .take()
                        .map_or_else(|| run.run_id.clone(), |v| v.dataset_version);
                    Ok((digest, Some(job.clone())))
                } else {
                    Err("the run has not completed")
                };
                announce(d, write, "run event")
            })
            .collect());
    }
    if let Some(mut d) = event.dataset {
        let write = match d.facets.version.take() {
            Some(v) => Ok((v.dataset_version, None)),
            None => Err("a dataset event without a version facet"),
        };
        return Ok(vec![announce(d, write, "dataset event")]);
    }
    if event.job.is_some() {
        return Ok(Vec::new());
    }
    Err("neither a RunEvent (run, job), a DatasetEvent (dataset) nor a JobEvent (job)".into())
}

/// Refuse what would cost more than an event is worth: too many outputs or symlinks, or fields
/// longer than any real name.
fn bounded(e: &Event) -> Result<(), String> {
    if e.outputs.len() > MAX_OUTPUTS {
        return Err(format!(
            "{} outputs, more than {MAX_OUTPUTS} in one event",
            e.outputs.len()
        ));
    }
    let datasets = e.outputs.iter().chain(e.dataset.as_ref());
    let mut fields: Vec<(&str, &str)> = Vec::new();
    for d in datasets {
        let links = d.facets.symlinks.iter().flat_map(|s| &s.identifiers);
        if links.clone().count() > MAX_OUTPUTS {
            return Err(format!(
                "dataset {:?} has more than {MAX_OUTPUTS} symlinks",
                d.name
            ));
        }
        fields.extend([
            ("namespace", d.namespace.as_str()),
            ("name", d.name.as_str()),
        ]);
        fields.extend(links.flat_map(|i| {
            [
                ("symlink", i.namespace.as_str()),
                ("symlink", i.name.as_str()),
            ]
        }));
        if let Some(v) = &d.facets.version {
            fields.push(("datasetVersion", v.dataset_version.as_str()));
        }
    }
    if let Some(j) = &e.job {
        fields.extend([
            ("job.namespace", j.namespace.as_str()),
            ("job.name", j.name.as_str()),
        ]);
    }
    fields.extend(e.run.iter().map(|r| ("runId", r.run_id.as_str())));
    fields.extend(e.producer.iter().map(|p| ("producer", p.as_str())));
    match fields.iter().find(|(_, v)| v.len() > MAX_FIELD) {
        Some((what, _)) => Err(format!("{what} is longer than {MAX_FIELD} bytes")),
        None => Ok(()),
    }
}

/// Every name a dataset goes by: `namespace/name`, its name alone, and the same for each of its
/// symlinks.
fn names(d: &Dataset) -> BTreeSet<String> {
    let symlinks = d.facets.symlinks.iter().flat_map(|s| &s.identifiers);
    std::iter::once((d.namespace.as_str(), d.name.as_str()))
        .chain(symlinks.map(|i| (i.namespace.as_str(), i.name.as_str())))
        .flat_map(|(ns, name)| [qualified(ns, name), name.to_string()])
        .filter(|n| !n.is_empty())
        .collect()
}

/// `namespace/name` as one URI: `s3://bucket` + `churn/train.parquet`,
/// `file` + `/data/x.csv` → `file:///data/x.csv`.
fn qualified(ns: &str, name: &str) -> String {
    match (ns, name.starts_with('/')) {
        ("file", true) => format!("file://{name}"),
        (_, true) => format!("{}{name}", ns.trim_end_matches('/')),
        _ => format!("{}/{name}", ns.trim_end_matches('/')),
    }
}

/// The answer for one announced dataset.
pub fn answer(a: &Announced, matched: Option<&[crate::registry::DatasetKey]>) -> Value {
    let mut v = json!({ "namespace": a.namespace, "name": a.name });
    match (&a.write, matched) {
        (Err(why), _) => {
            v["outcome"] = "ignored".into();
            v["why"] = (*why).into();
        }
        (Ok(_), Some(keys)) if !keys.is_empty() => {
            v["outcome"] = "matched".into();
            v["matched"] = keys
                .iter()
                .map(|k| json!({ "name": k.name, "source": k.source }))
                .collect();
        }
        (Ok(_), _) => {
            v["outcome"] = "unmatched".into();
            v["why"] = "no lineage record reads this dataset (add an [openlineage] alias if the registry names it differently)".into();
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = r#"{
      "eventType": "COMPLETE", "eventTime": "2026-12-08T10:00:00.5+01:00",
      "producer": "https://github.com/OpenLineage/OpenLineage/tree/1.40.0/integration/dbt",
      "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
      "run": {"runId": "0193f0a2-1111-7000-8000-000000000001", "facets": {"parent": {}}},
      "job": {"namespace": "dbt", "name": "warehouse.main.contacts", "facets": {"sql": {"query": "select 1"}}},
      "inputs": [{"namespace": "duckdb:///w.duckdb", "name": "warehouse.main.raw"}],
      "outputs": [
        {"namespace": "duckdb:///w.duckdb", "name": "warehouse.main.contacts",
         "facets": {"dataSource": {"name": "duckdb"}, "symlinks": {"identifiers": [
           {"namespace": "hive://h", "name": "crm.contacts", "type": "TABLE"}]}},
         "outputFacets": {"outputStatistics": {"rowCount": 10}}},
        {"namespace": "s3://ml-data", "name": "churn/train.parquet",
         "facets": {"version": {"datasetVersion": "9a41"}}}
      ]
    }"#;

    #[test]
    fn a_completed_run_writes_each_output_with_its_job() {
        let got = parse(RUN.as_bytes()).unwrap_or_default();
        assert_eq!(got.len(), 2);
        let first = got[0].write.as_ref().unwrap_or_else(|_| unreachable!());
        assert_eq!(
            first.version.written_ms, 1_796_720_400_500,
            "the offset is honoured"
        );
        assert_eq!(first.version.digest, "0193f0a2-1111-7000-8000-000000000001");
        let job = first.version.job.clone().unwrap_or_else(|| unreachable!());
        assert_eq!(job.qualified(), "dbt/warehouse.main.contacts");
        assert!(
            first
                .names
                .contains("duckdb:///w.duckdb/warehouse.main.contacts")
        );
        assert!(first.names.contains("crm.contacts"), "{:?}", first.names);
        let second = got[1].write.as_ref().unwrap_or_else(|_| unreachable!());
        assert_eq!(second.version.digest, "9a41", "the version facet wins");
        assert!(second.names.contains("s3://ml-data/churn/train.parquet"));
    }

    #[test]
    fn only_completed_runs_and_versioned_datasets_are_writes() {
        let started = RUN.replace("COMPLETE", "START");
        let got = parse(started.as_bytes()).unwrap_or_default();
        assert!(got.iter().all(|a| a.write.is_err()));
        let dataset = r#"{"eventTime": "2026-12-08T10:00:00Z", "producer": "p",
            "dataset": {"namespace": "file", "name": "/data/x.csv",
                        "facets": {"version": {"datasetVersion": "v7"}, "unknown": {"x": 1}}}}"#;
        let got = parse(dataset.as_bytes()).unwrap_or_default();
        let w = got[0].write.as_ref().unwrap_or_else(|_| unreachable!());
        assert_eq!(w.version.digest, "v7");
        assert!(w.names.contains("file:///data/x.csv"));
        let unversioned = dataset.replace(r#""version": {"datasetVersion": "v7"}, "#, "");
        assert!(
            parse(unversioned.as_bytes()).unwrap_or_default()[0]
                .write
                .is_err()
        );
        let job =
            r#"{"eventTime": "2026-12-08T10:00:00Z", "job": {"namespace": "a", "name": "b"}}"#;
        assert!(parse(job.as_bytes()).is_ok_and(|v| v.is_empty()));
    }

    #[test]
    fn bad_events_are_refused_with_the_reason() {
        let no_time = RUN.replace(r#""eventTime": "2026-12-08T10:00:00.5+01:00","#, "");
        assert_eq!(
            parse(no_time.as_bytes()).err().as_deref(),
            Some("eventTime is required")
        );
        let naive = RUN.replace("+01:00", "");
        assert!(parse(naive.as_bytes()).is_err_and(|e| e.contains("offset")));
        assert!(parse(b"[]").is_err_and(|e| e.contains("not an OpenLineage event")));
        assert!(parse(b"{\"eventTime\": \"2026-12-08T10:00:00Z\"}").is_err());
        let job = r#""name": "warehouse.main.contacts", "facets": {"sql""#;
        assert!(RUN.contains(job));
        let long = RUN.replace(
            job,
            &format!(r#""name": "{}", "facets": {{"sql""#, "x".repeat(600)),
        );
        assert!(
            parse(long.as_bytes()).is_err_and(|e| e.contains("longer than 512")),
            "a job name"
        );
        let many: Vec<String> = (0..300)
            .map(|i| format!(r#"{{"namespace": "n", "name": "t{i}"}}"#))
            .collect();
        let wide = format!(
            r#"{{"eventType": "COMPLETE", "eventTime": "2026-12-08T10:00:00Z", "run": {{"runId": "r"}},
                "job": {{"namespace": "a", "name": "b"}}, "outputs": [{}]}}"#,
            many.join(",")
        );
        assert!(parse(wide.as_bytes()).is_err_and(|e| e.contains("300 outputs")));
    }

    #[test]
    fn gzip_bodies_are_inflated_within_bounds() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = gz.write_all(RUN.as_bytes());
        let body = gz.finish().unwrap_or_default();
        assert_eq!(
            decode_body(Some("gzip"), &body).unwrap_or_default(),
            RUN.as_bytes()
        );
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let _ = bomb.write_all(&vec![b' '; MAX_INFLATED + 10]);
        let bomb = bomb.finish().unwrap_or_default();
        assert!(decode_body(Some("gzip"), &bomb).is_err_and(|e| e.contains("inflates past")));
        assert!(decode_body(Some("br"), b"x").is_err());
        assert!(decode_body(Some("gzip"), b"not gzip").is_err());
    }
}
