//! Embeds the web player (mpegts.js) into the relay's watch page when `scripts/setup` has
//! fetched it into `target/web/` (or `ONAIR_MPEGTS_JS` names the file); otherwise the page
//! is built without it and tells the user how to get it.

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
}
