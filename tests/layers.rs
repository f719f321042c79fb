//! The layers, enforced: each workspace crate may depend only on the crates below it, and a few
//! module rules inside crates that the compiler cannot see. A new dependency on a higher layer,
//! or a new crate missing from the table, fails here.
//!
//! The layers, bottom to top: core, arrival (kernel arrival stamps: no krakenbook crate below
//! it); journal, exchange, testkit; store; collect, history; read;
//! archive (the cold tier: it replays with read's engine); the `krakenbook` binary (CLI and
//! facade); the benchmarks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each crate and the workspace crates its `[dependencies]` may name. `[dev-dependencies]` may
/// also name `krakenbook-testkit`.
const ALLOWED: &[(&str, &[&str])] = &[
    ("krakenbook-core", &[]),
    ("krakenbook-arrival", &[]),
    ("krakenbook-journal", &["krakenbook-core"]),
    ("krakenbook-exchange", &["krakenbook-core"]),
    ("krakenbook-testkit", &["krakenbook-core"]),
    (
        "krakenbook-store",
        &["krakenbook-core", "krakenbook-journal"],
    ),
    (
        "krakenbook-collect",
        &[
            "krakenbook-arrival",
            "krakenbook-core",
            "krakenbook-journal",
            "krakenbook-store",
        ],
    ),
    (
        "krakenbook-history",
        &["krakenbook-core", "krakenbook-journal", "krakenbook-store"],
    ),
    (
        "krakenbook-read",
        &[
            "krakenbook-core",
            "krakenbook-journal",
            "krakenbook-store",
            "krakenbook-history",
            "krakenbook-exchange",
        ],
    ),
    (
        "krakenbook-web",
        &[
            "krakenbook-core",
            "krakenbook-store",
            "krakenbook-history",
            "krakenbook-collect",
        ],
    ),
    (
        "krakenbook-archive",
        &[
            "krakenbook-core",
            "krakenbook-journal",
            "krakenbook-store",
            "krakenbook-history",
            "krakenbook-read",
        ],
    ),
    (
        "krakenbook",
        &[
            "krakenbook-archive",
            "krakenbook-core",
            "krakenbook-journal",
            "krakenbook-store",
            "krakenbook-exchange",
            "krakenbook-collect",
            "krakenbook-history",
            "krakenbook-read",
            "krakenbook-web",
        ],
    ),
    ("krakenbook-bench", &["krakenbook", "krakenbook-testkit"]),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every manifest of the workspace: the root package and each `crates/*`.
fn manifests() -> Vec<PathBuf> {
    let mut out = vec![root().join("Cargo.toml")];
    let mut dirs: Vec<_> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path().join("Cargo.toml"))
        .filter(|p| p.is_file())
        .collect();
    dirs.sort();
    out.extend(dirs);
    out
}

/// The workspace crates a table of dependencies names (by package name).
fn workspace_deps(table: Option<&toml::Value>) -> Vec<String> {
    let Some(table) = table.and_then(|t| t.as_table()) else {
        return Vec::new();
    };
    table
        .iter()
        .filter(|(name, _)| name.starts_with("krakenbook"))
        .map(|(name, spec)| {
            spec.get("package")
                .and_then(|p| p.as_str())
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

/// (package, normal and build dependencies, dev dependencies) of every workspace crate.
fn graph() -> Vec<(String, Vec<String>, Vec<String>)> {
    manifests()
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            let doc: toml::Value = toml::from_str(&text).unwrap();
            let name = doc["package"]["name"].as_str().unwrap().to_owned();
            let mut normal = workspace_deps(doc.get("dependencies"));
            normal.extend(workspace_deps(doc.get("build-dependencies")));
            let dev = workspace_deps(doc.get("dev-dependencies"));
            (name, normal, dev)
        })
        .collect()
}

/// What is wrong with a dependency graph against the table (empty when it keeps the layers).
fn violations(graph: &[(String, Vec<String>, Vec<String>)]) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (name, normal, dev) in graph {
        let Some(may) = allowed.get(name.as_str()) else {
            wrong.push(format!(
                "{name} is not in tests/layers.rs' table: give it a layer"
            ));
            continue;
        };
        for dep in normal {
            if !may.contains(&dep.as_str()) {
                wrong.push(format!("{name} depends on {dep}, which is not below it"));
            }
        }
        for dep in dev {
            if dep != "krakenbook-testkit" && !may.contains(&dep.as_str()) {
                wrong.push(format!(
                    "{name}'s tests depend on {dep}, which is not below it"
                ));
            }
        }
    }
    wrong
}

#[test]
fn every_crate_depends_only_on_the_layers_below_it() {
    let graph = graph();
    assert!(graph.len() >= 10, "found only {} crates", graph.len());
    let wrong = violations(&graph);
    assert!(wrong.is_empty(), "layers broken:\n{}", wrong.join("\n"));
}

#[test]
fn a_dependency_on_a_higher_layer_is_caught() {
    // The check itself can fail: the journal reaching up to the store, a new crate without a
    // layer, and a crate's tests using the read side.
    let graph = vec![
        (
            "krakenbook-journal".to_owned(),
            vec!["krakenbook-core".to_owned(), "krakenbook-store".to_owned()],
            vec![],
        ),
        ("krakenbook-gui".to_owned(), vec![], vec![]),
        (
            "krakenbook-store".to_owned(),
            vec![],
            vec!["krakenbook-read".to_owned()],
        ),
    ];
    let wrong = violations(&graph);
    assert_eq!(wrong.len(), 3, "{wrong:?}");
}

/// The code of a file before its `#[cfg(test)]` module (tests may use anything).
fn shipped_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Fails when a file under `dir` names any of `forbidden` outside its tests.
fn assert_no_import(dir: &str, forbidden: &[&str]) {
    let dir = root().join(dir);
    let mut wrong = Vec::new();
    for file in rust_files(&dir) {
        let code = shipped_code(&file);
        for f in forbidden {
            if code
                .lines()
                .any(|l| !l.trim_start().starts_with("//") && l.contains(f))
            {
                wrong.push(format!("{} uses {f}", file.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn core_numbers_and_wire_types_do_not_import_the_books() {
    assert_no_import("crates/core/src/num", &["crate::book", "crate::kraken"]);
    assert_no_import("crates/core/src/kraken", &["crate::book"]);
}

#[test]
fn plot_and_export_do_not_import_each_other() {
    assert_no_import("crates/read/src/plot", &["crate::export"]);
    assert_no_import("crates/read/src/export", &["crate::plot"]);
}

#[test]
fn the_protocol_server_does_not_reach_into_the_simulator() {
    let connection = rust_files(&root().join("crates/exchange/src/connection"));
    assert!(
        !connection.is_empty(),
        "crates/exchange/src/connection/ is gone"
    );
    let files = ["server.rs", "shared.rs", "faults.rs"]
        .iter()
        .map(|f| root().join("crates/exchange/src").join(f));
    for file in files.chain(connection.iter().cloned()) {
        let code = shipped_code(&file);
        assert!(
            !code.contains("sim::"),
            "{} uses the simulator",
            file.display()
        );
    }
    for file in &connection {
        let code = shipped_code(file);
        assert!(
            ![
                "super::server::",
                "super::super::server::",
                "crate::server::"
            ]
            .iter()
            .any(|s| code.contains(s)),
            "{} imports the server (use shared.rs)",
            file.display()
        );
    }
}
