//! Embeds the web player (mpegts.js) into the relay's watch page when `scripts/setup` has
//! fetched it into `target/web/` (or `ONAIR_MPEGTS_JS` names the file); otherwise the page
//! is built without it and tells the user how to get it.
//!
//! Also records the git commit for `onair --version` (`unknown` outside a git checkout) and
//! embeds the third-party notices that `scripts/package` generates with cargo-about
//! (`ONAIR_THIRD_PARTY_NOTICES` names the file; empty otherwise).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ONAIR_MPEGTS_JS");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let source = match std::env::var_os("ONAIR_MPEGTS_JS") {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            path
        }
        None => {
            // Watch the directory (created here if missing, so the watch is valid): when the
            // setup script drops the player into it, the next build embeds it.
            let dir = manifest.join("target").join("web");
            let _ = std::fs::create_dir_all(&dir);
            println!("cargo:rerun-if-changed={}", dir.display());
            dir.join("mpegts.js")
        }
    };
    let script = std::fs::read(&source).unwrap_or_default();
    if script.is_empty() {
        println!(
            "cargo:warning=mpegts.js not found at {}: the relay's watch page will ask for it \
             (run scripts/setup)",
            source.display()
        );
    }
    std::fs::write(out.join("mpegts.js"), script).expect("write OUT_DIR/mpegts.js");

    git_commit(&manifest);
    third_party_notices(&out);
}

/// Sets `ONAIR_GIT_COMMIT` for `onair --version`: the `ONAIR_GIT_COMMIT` environment variable
/// when given, else `git rev-parse`, else `unknown` (a source tarball, or no git installed).
fn git_commit(manifest: &std::path::Path) {
    println!("cargo:rerun-if-env-changed=ONAIR_GIT_COMMIT");
    if let Some(commit) = std::env::var("ONAIR_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
    {
        println!("cargo:rustc-env=ONAIR_GIT_COMMIT={commit}");
        return;
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(manifest)
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Rebuild when HEAD moves: watch HEAD, the branch it points to and packed refs (only files
    // that exist: a missing one would make cargo rerun this script on every build).
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let git_dir = PathBuf::from(git_dir);
        let mut watch = vec![git_dir.join("HEAD"), git_dir.join("packed-refs")];
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(git_dir.join(head_ref));
        }
        for path in watch.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rustc-env=ONAIR_GIT_COMMIT={commit}");
}

/// Copies the cargo-about notices named by `ONAIR_THIRD_PARTY_NOTICES` into `OUT_DIR`, for
/// `onair --licenses` and the About box; writes an empty file when it is unset.
fn third_party_notices(out: &std::path::Path) {
    println!("cargo:rerun-if-env-changed=ONAIR_THIRD_PARTY_NOTICES");
    let text = match std::env::var_os("ONAIR_THIRD_PARTY_NOTICES").filter(|p| !p.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "ONAIR_THIRD_PARTY_NOTICES={}: {e} (run scripts/package, which generates it)",
                    path.display()
                )
            })
        }
        None => String::new(),
    };
    std::fs::write(out.join("third-party-notices.txt"), text)
        .expect("write OUT_DIR/third-party-notices.txt");
}
