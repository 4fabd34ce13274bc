//! The crates' dependency order, checked: each modelstamp crate may depend only on crates
//! below it. Cargo already refuses a cycle; this refuses an upward edge before it becomes one,
//! and a new crate that has not been given its place.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

/// Bottom to top.
const ORDER: &[&str] = &[
    "modelstamp-codec",
    "modelstamp-model",
    "modelstamp-observe",
    "modelstamp-proxy",
    "modelstamp-control",
    "modelstamp",
];

fn internal_deps(manifest: &Path) -> (String, Vec<String>) {
    let text = std::fs::read_to_string(manifest).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    let name = doc["package"]["name"].as_str().unwrap().to_string();
    let deps = ["dependencies", "dev-dependencies", "build-dependencies"]
        .iter()
        .filter_map(|k| doc.get(*k).and_then(|v| v.as_table()))
        .flat_map(|t| t.keys().cloned())
        .filter(|d| d.starts_with("modelstamp"))
        .collect();
    (name, deps)
}

#[test]
fn every_crate_depends_only_on_the_layers_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut manifests = vec![root.join("Cargo.toml")];
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        manifests.push(entry.unwrap().path().join("Cargo.toml"));
    }
    let mut seen = Vec::new();
    for m in manifests {
        let (name, deps) = internal_deps(&m);
        let Some(level) = ORDER.iter().position(|n| *n == name) else {
            panic!("{name} has no place in ORDER (tests/layers.rs): give it one");
        };
        for d in deps {
            let below = ORDER.iter().position(|n| *n == d);
            assert!(
                below.is_some_and(|b| b < level),
                "{name} depends on {d}, which is not below it in {ORDER:?}"
            );
        }
        seen.push(name);
    }
    seen.sort();
    let mut want: Vec<String> = ORDER.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(seen, want, "every layer exists");
}

/// Inside the control plane the same rule, by module: the reloader (`routing`) is below the
/// canary controller, explain and admin, and follows none of them. What must follow a reload
/// (the audit log, the journal, the inspector) subscribes to it instead.
#[test]
fn the_reloader_imports_nothing_above_it_in_the_control_plane() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/control/src/routing");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for above in ["crate::canary", "crate::explain", "crate::admin"] {
            assert!(
                !text.contains(above),
                "{} imports {above}: subscribe to the reloader instead",
                path.display()
            );
        }
    }
}
