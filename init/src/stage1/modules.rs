//! Kernel module loading with finit_module(2): every module of a list, its
//! dependencies (from the trimmed modules.dep the image builder wrote) before
//! it, independent modules in parallel on one worker per CPU (under TCG the
//! kernel's signature check of each module is the slow part, and it runs on
//! the loading thread).
//!
//! Stage 1 loads what it needs to mount root and /var
//! (`/etc/fluxnode/modules.initrd`); the rest (`/etc/fluxnode/modules.late`:
//! vfat, the power button, the NIC, the watchdog) is loaded after
//! switch_root by the `modules` oneshot service (`fluxnode-modload`), or by
//! stage 2 calling [`load_list`] with root `/`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Why modules could not be loaded at all (single module failures are in the report).
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// A list or modules.dep could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A listed module is not in modules.dep.
    #[error("module {0} is not in modules.dep (image built for another kernel?)")]
    Unknown(String),
}

/// What a load run did.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Modules loaded (or already present), with the time each load took.
    pub loaded: Vec<(String, Duration)>,
    /// Modules that failed, with the reason.
    pub failed: Vec<(String, String)>,
    /// Wall time of the whole run.
    pub total: Duration,
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: uname fills a zeroed struct we own.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: the kernel NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Module name → (path relative to the modules dir, dependency names).
pub type DepMap = BTreeMap<String, (String, Vec<String>)>;

fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// Parses modules.dep.
pub fn parse_dep(text: &str) -> DepMap {
    let mut m = DepMap::new();
    for line in text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let path = path.trim();
        if !path.is_empty() {
            m.insert(
                name_of(path),
                (
                    path.to_string(),
                    deps.split_whitespace().map(name_of).collect(),
                ),
            );
        }
    }
    m
}

/// Reads the list file (one module name per line, `#` comments) and loads
/// its modules from `root`/lib/modules/`uname -r`.
pub fn load_list(root: &Path, list: &Path) -> Result<LoadReport, ModuleError> {
    let names = read_list(list)?;
    Loader::new(root)?.load(&names)
}

/// Reads a module list file (one name per line, `#` comments).
pub fn read_list(list: &Path) -> Result<Vec<String>, ModuleError> {
    let text = std::fs::read_to_string(list).map_err(|source| ModuleError::Read {
        path: list.into(),
        source,
    })?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Loads `names` and their dependencies from `root`/lib/modules/`uname -r`.
pub fn load_modules(names: &[String], root: &Path) -> Result<LoadReport, ModuleError> {
    Loader::new(root)?.load(names)
}

/// Modules already in the kernel, from /proc/modules.
pub fn loaded_now() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// A module loader that remembers what is loaded: the kernel checks a
/// module's signature before it notices the module is already there, so
/// asking again is not free.
#[derive(Debug, Clone)]
pub struct Loader {
    dir: PathBuf,
    deps: DepMap,
    loaded: BTreeSet<String>,
    /// Module files opened ahead by [`Loader::open_ahead`], by name.
    opened: std::sync::Arc<BTreeMap<String, std::fs::File>>,
}

impl Loader {
    /// Reads `root`/lib/modules/`uname -r`/modules.dep and /proc/modules.
    pub fn new(root: &Path) -> Result<Loader, ModuleError> {
        let dir = root.join("lib/modules").join(kernel_release());
        let dep_path = dir.join("modules.dep");
        let text = std::fs::read_to_string(&dep_path).map_err(|source| ModuleError::Read {
            path: dep_path,
            source,
        })?;
        Ok(Loader {
            dir,
            deps: parse_dep(&text),
            loaded: loaded_now(),
            opened: Default::default(),
        })
    }

    /// Opens the files of `names` and their dependencies (those not loaded)
    /// now, for a later [`Loader::load`] to use: the files may be deleted
    /// meanwhile (stage 1 frees the initramfs while its /var child still
    /// loads ext4). Returns how many it opened.
    pub fn open_ahead(&mut self, names: &[String]) -> Result<usize, ModuleError> {
        let mut opened = BTreeMap::new();
        for n in self.closure(names) {
            let Some((rel, _)) = self.deps.get(&n) else {
                continue;
            };
            if self.loaded.contains(&n) {
                continue;
            }
            let path = self.dir.join(rel);
            let f =
                std::fs::File::open(&path).map_err(|source| ModuleError::Read { path, source })?;
            opened.insert(n, f);
        }
        let count = opened.len();
        self.opened = std::sync::Arc::new(opened);
        Ok(count)
    }

    /// The modules directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `names` and everything they depend on (unknown names are kept as is).
    pub fn closure(&self, names: &[String]) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = names.iter().map(|n| n.replace('-', "_")).collect();
        while let Some(n) = todo.pop() {
            if let Some((_, ds)) = self.deps.get(&n) {
                todo.extend(ds.iter().filter(|d| !seen.contains(*d)).cloned());
            }
            seen.insert(n);
        }
        seen
    }

    /// True when `name` is loaded (by us or before).
    pub fn is_loaded(&self, name: &str) -> bool {
        self.loaded.contains(&name.replace('-', "_"))
    }

    /// Treats `name` as loaded from now on (a failed driver is not retried).
    pub fn mark_loaded(&mut self, name: &str) {
        self.loaded.insert(name.replace('-', "_"));
    }

    /// Loads `names` and their dependencies, skipping what is loaded.
    pub fn load(&mut self, names: &[String]) -> Result<LoadReport, ModuleError> {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8);
        let mut deps = self.deps.clone();
        // Loaded modules become leaves that need no loading.
        for l in &self.loaded {
            if let Some(e) = deps.get_mut(l) {
                e.1.clear();
            }
        }
        let already = self.loaded.clone();
        let dir = self.dir.clone();
        let table = self.deps.clone();
        let opened = self.opened.clone();
        let r = run_parallel(names, &deps, workers, &|name| {
            if already.contains(name) {
                return Ok(());
            }
            let (rel, _) = table
                .get(name)
                .ok_or_else(|| "not in modules.dep".to_string())?;
            let path = dir.join(rel);
            match opened.get(name) {
                Some(f) => finit_file(f, &path),
                None => finit(&path),
            }
        })?;
        for (n, _) in &r.loaded {
            self.loaded.insert(n.clone());
        }
        let mut r = r;
        r.loaded.retain(|(n, _)| !already.contains(n));
        Ok(r)
    }
}

/// Loads one module file; an already loaded module counts as success.
pub fn finit(path: &Path) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    finit_file(&f, path)
}

/// Loads the module file `f` (opened from `path`, named in errors).
fn finit_file(f: &std::fs::File, path: &Path) -> Result<(), String> {
    let params = CString::default();
    // SAFETY: a valid fd and a NUL-terminated empty parameter string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            std::os::fd::AsRawFd::as_raw_fd(f),
            params.as_ptr(),
            0,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(format!("{}: {e}", path.display()))
}

struct State {
    pending: Vec<String>,
    done: BTreeSet<String>,
    failed: BTreeMap<String, String>,
    running: usize,
}

/// Schedules `load` over the closure of `names`: a module starts once all
/// its dependencies are done; a failed dependency fails its dependents.
pub fn run_parallel(
    names: &[String],
    deps: &DepMap,
    workers: usize,
    load: &(dyn Fn(&str) -> Result<(), String> + Sync),
) -> Result<LoadReport, ModuleError> {
    let t0 = Instant::now();
    // The closure, dependencies first.
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        n: &str,
        deps: &DepMap,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        if !seen.insert(n.to_string()) {
            return Ok(());
        }
        let (_, ds) = deps
            .get(n)
            .ok_or_else(|| ModuleError::Unknown(n.to_string()))?;
        for d in ds {
            visit(d, deps, seen, order)?;
        }
        order.push(n.to_string());
        Ok(())
    }
    for n in names {
        visit(&n.replace('-', "_"), deps, &mut seen, &mut order)?;
    }
    let state = Mutex::new(State {
        pending: order,
        done: BTreeSet::new(),
        failed: BTreeMap::new(),
        running: 0,
    });
    let cv = Condvar::new();
    let loaded = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let job = {
                    let Ok(mut st) = state.lock() else { return };
                    loop {
                        // Fail everything whose dependency failed.
                        let mut i = 0;
                        while i < st.pending.len() {
                            let n = st.pending[i].clone();
                            let bad = deps.get(&n).and_then(|(_, ds)| {
                                ds.iter().find(|d| st.failed.contains_key(*d)).cloned()
                            });
                            if let Some(d) = bad {
                                st.pending.remove(i);
                                st.failed.insert(n, format!("dependency {d} failed"));
                            } else {
                                i += 1;
                            }
                        }
                        let ready = st.pending.iter().position(|n| {
                            deps.get(n)
                                .map(|(_, ds)| ds.iter().all(|d| st.done.contains(d)))
                                .unwrap_or(true)
                        });
                        if let Some(i) = ready {
                            st.running += 1;
                            break Some(st.pending.remove(i));
                        }
                        if st.pending.is_empty() || st.running == 0 {
                            // Nothing left, or nothing can ever become ready.
                            let stuck: Vec<String> = std::mem::take(&mut st.pending);
                            for n in stuck {
                                st.failed.insert(n, "dependency cycle".into());
                            }
                            cv.notify_all();
                            break None;
                        }
                        st = match cv.wait(st) {
                            Ok(g) => g,
                            Err(_) => return,
                        };
                    }
                };
                let Some(name) = job else { return };
                let t = Instant::now();
                let res = load(&name);
                let took = t.elapsed();
                if let Ok(mut st) = state.lock() {
                    st.running -= 1;
                    match res {
                        Ok(()) => {
                            st.done.insert(name.clone());
                            if let Ok(mut l) = loaded.lock() {
                                l.push((name, took));
                            }
                        }
                        Err(e) => {
                            st.failed.insert(name, e);
                        }
                    }
                }
                cv.notify_all();
            });
        }
    });
    let st = state.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(LoadReport {
        loaded: loaded.into_inner().unwrap_or_else(|p| p.into_inner()),
        failed: st.failed.into_iter().collect(),
        total: t0.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const DEP: &str = "kernel/a.ko: kernel/b.ko kernel/c.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko:\nkernel/d-x.ko:\nkernel/e.ko: kernel/f.ko\nkernel/f.ko:\n";

    #[test]
    fn dependencies_load_first_in_parallel() {
        let deps = parse_dep(DEP);
        let log = Mutex::new(Vec::new());
        let r = run_parallel(&["a".into(), "d-x".into()], &deps, 3, &|n| {
            log.lock().unwrap().push(n.to_string());
            Ok(())
        })
        .unwrap();
        let log = log.into_inner().unwrap();
        let pos = |n: &str| log.iter().position(|x| x == n).unwrap();
        assert!(pos("c") < pos("b") && pos("b") < pos("a"));
        assert_eq!(r.loaded.len(), 4);
        assert!(r.failed.is_empty());
    }

    #[test]
    fn failed_dependency_fails_dependents_only() {
        let deps = parse_dep(DEP);
        let r = run_parallel(&["e".into(), "c".into()], &deps, 2, &|n| {
            if n == "f" {
                Err("boom".into())
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(r.loaded.len(), 1);
        let failed: BTreeMap<_, _> = r.failed.into_iter().collect();
        assert_eq!(failed.get("f").map(String::as_str), Some("boom"));
        assert_eq!(
            failed.get("e").map(String::as_str),
            Some("dependency f failed")
        );
        assert!(matches!(
            run_parallel(&["zz".into()], &deps, 1, &|_| Ok(())),
            Err(ModuleError::Unknown(_))
        ));
    }

    #[test]
    fn closure_follows_dependencies() {
        let l = Loader {
            dir: PathBuf::new(),
            deps: parse_dep(DEP),
            loaded: BTreeSet::new(),
            opened: Default::default(),
        };
        let c = l.closure(&["a".into(), "d-x".into(), "zz".into()]);
        let want: BTreeSet<String> = ["a", "b", "c", "d_x", "zz"].map(String::from).into();
        assert_eq!(c, want);
    }

    #[test]
    fn files_opened_ahead_outlive_their_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("kernel")).unwrap();
        for m in ["a", "b", "c"] {
            std::fs::write(dir.path().join(format!("kernel/{m}.ko")), m).unwrap();
        }
        let mut l = Loader {
            dir: dir.path().into(),
            deps: parse_dep(DEP),
            loaded: ["c".to_string()].into(),
            opened: Default::default(),
        };
        // a and b; c is loaded already.
        assert_eq!(l.open_ahead(&["a".into()]).unwrap(), 2);
        std::fs::remove_dir_all(dir.path().join("kernel")).unwrap();
        let mut text = String::new();
        let mut f = l.opened.get("b").unwrap();
        std::io::Read::read_to_string(&mut f, &mut text).unwrap();
        assert_eq!(text, "b");
        // A file that is not there is an error naming it.
        let e = l.open_ahead(&["e".into()]).unwrap_err().to_string();
        assert!(e.contains("kernel/e.ko"), "{e}");
    }

    #[test]
    fn odd_dep_lines() {
        for t in ["", ":", "a", ": b", "x.ko: x.ko", "\0: \0"] {
            let _ = parse_dep(t);
        }
        // A self-dependency is a cycle, not a hang.
        let deps = parse_dep("x.ko: x.ko\n");
        let r = run_parallel(&["x".into()], &deps, 2, &|_| Ok(())).unwrap();
        assert_eq!(r.failed.len(), 1);
    }
}
