//! The dependency graph between services: unknown names and cycles.
//!
//! `after` only orders; `requires` orders and needs the other service ready.
//! A missing `after` target is ignored (as systemd does), a missing
//! `requires` target takes the service out, and so does being on a cycle.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{line_of_key, ConfigError, ServiceSpec};

/// Splits `specs` into those that can run and the dependency errors.
/// `texts` holds each service's file text, to name lines in errors.
pub fn check_dependencies(
    specs: Vec<ServiceSpec>,
    texts: &BTreeMap<String, String>,
) -> (Vec<ServiceSpec>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut specs: BTreeMap<String, ServiceSpec> =
        specs.into_iter().map(|s| (s.name.clone(), s)).collect();
    let line = |name: &str, key: &str| texts.get(name).map(|t| line_of_key(t, key)).unwrap_or(0);

    // Cycles first, over both kinds of edge among the loaded services.
    for cycle in find_cycles(&specs) {
        let Some(first) = cycle.first().and_then(|n| specs.get(n)) else {
            continue;
        };
        let key = if first.cfg.requires.iter().any(|d| cycle.contains(d)) {
            "requires"
        } else {
            "after"
        };
        let mut shown = cycle.clone();
        shown.push(cycle[0].clone());
        errors.push(ConfigError::Cycle {
            file: first.file.clone(),
            line: line(&first.name, key),
            cycle: shown.join(" -> "),
        });
        for n in &cycle {
            specs.remove(n);
        }
    }
    // Then missing `requires`, until nothing changes (a removal can orphan others).
    loop {
        let missing: Vec<(String, String)> = specs
            .values()
            .filter_map(|s| {
                s.cfg
                    .requires
                    .iter()
                    .find(|d| !specs.contains_key(*d))
                    .map(|d| (s.name.clone(), d.clone()))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        for (name, dep) in missing {
            if let Some(s) = specs.remove(&name) {
                errors.push(ConfigError::Invalid {
                    file: s.file.clone(),
                    line: line(&name, "requires"),
                    reason: format!(
                        "requires {dep:?}, which is not loaded (missing or invalid service file)"
                    ),
                });
            }
        }
    }
    (specs.into_values().collect(), errors)
}

/// Every cycle (as its members in order), found by depth-first search.
fn find_cycles(specs: &BTreeMap<String, ServiceSpec>) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark: BTreeMap<&str, Mark> = specs.keys().map(|k| (k.as_str(), Mark::New)).collect();
    let mut cycles = Vec::new();
    let mut in_cycle: BTreeSet<String> = BTreeSet::new();
    for start in specs.keys() {
        if mark.get(start.as_str()) != Some(&Mark::New) {
            continue;
        }
        // Iterative DFS: (node, index of next edge).
        let mut path: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        mark.insert(start.as_str(), Mark::OnPath);
        while let Some((node, next)) = path.last().copied() {
            let deps: Vec<&str> = specs
                .get(node)
                .map(|s| {
                    s.cfg
                        .after
                        .iter()
                        .chain(&s.cfg.requires)
                        .map(String::as_str)
                        .filter(|d| specs.contains_key(*d))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(dep) = deps.get(next).copied() {
                if let Some(top) = path.last_mut() {
                    top.1 += 1;
                }
                match mark.get(dep).copied() {
                    Some(Mark::New) => {
                        mark.insert(dep, Mark::OnPath);
                        path.push((dep, 0));
                    }
                    Some(Mark::OnPath) => {
                        let from = path.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                        let cycle: Vec<String> =
                            path[from..].iter().map(|(n, _)| n.to_string()).collect();
                        if cycle.iter().all(|n| !in_cycle.contains(n)) {
                            in_cycle.extend(cycle.iter().cloned());
                            cycles.push(cycle);
                        }
                    }
                    _ => {}
                }
            } else {
                mark.insert(node, Mark::Done);
                path.pop();
            }
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::config::parse_service;
    use std::path::Path;

    fn spec(name: &str, after: &[&str], requires: &[&str]) -> (ServiceSpec, String) {
        let text = format!(
            "argv = [\"/bin/true\"]\nafter = {:?}\nrequires = {:?}\n",
            after, requires
        );
        (
            parse_service(
                name,
                Path::new(&format!("/s/{name}.toml")),
                &text,
                Path::new("/"),
            )
            .unwrap(),
            text,
        )
    }

    fn check(list: Vec<(ServiceSpec, String)>) -> (Vec<String>, Vec<ConfigError>) {
        let texts = list
            .iter()
            .map(|(s, t)| (s.name.clone(), t.clone()))
            .collect();
        let (ok, errs) = check_dependencies(list.into_iter().map(|(s, _)| s).collect(), &texts);
        (ok.into_iter().map(|s| s.name).collect(), errs)
    }

    #[test]
    fn cycle_removes_only_its_members() {
        let (ok, errs) = check(vec![
            spec("a", &["b"], &[]),
            spec("b", &[], &["c"]),
            spec("c", &["a"], &[]),
            spec("d", &[], &[]),
        ]);
        assert_eq!(ok, vec!["d"]);
        assert_eq!(errs.len(), 1);
        let msg = errs[0].to_string();
        assert!(msg.contains("dependency cycle: a -> b -> c -> a"), "{msg}");
        assert!(msg.starts_with("/s/a.toml:2:"), "{msg}");
    }

    #[test]
    fn missing_requires_cascades_missing_after_is_ignored() {
        let (ok, errs) = check(vec![
            spec("a", &[], &["ghost"]),
            spec("b", &[], &["a"]),
            spec("c", &["ghost"], &[]),
        ]);
        assert_eq!(ok, vec!["c"]);
        assert_eq!(errs.len(), 2);
        assert!(
            errs.iter()
                .all(|e| matches!(e, ConfigError::Invalid { line: 3, .. })),
            "{errs:?}"
        );
    }
}
