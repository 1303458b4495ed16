//! Helpers for the end-to-end tests: child processes that die with the test, free ports,
//! ffprobe queries, and a private nginx-rtmp instance.
#![allow(dead_code)]

pub mod proxy;
pub mod rtmp_capture;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `onair` binary under test.
pub fn onair() -> &'static str {
    env!("CARGO_BIN_EXE_onair")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < timeout,
            "nothing listens on port {port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a socket listens on 127.0.0.1:`port`, without connecting to it (a one-shot
/// server such as `ffmpeg -listen 1` would take a probe connection for its client).
pub fn wait_for_listener(port: u16, timeout: Duration) {
    let start = Instant::now();
    let needle = format!("0100007F:{port:04X} 00000000:0000 0A");
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        if table.contains(&needle) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "nothing listens on port {port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process that is killed when the test ends, with its stderr collected.
pub struct ChildGuard {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl ChildGuard {
    /// Spawns `cmd`; if stderr is piped it is drained in the background (no pipe stalls).
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        let mut child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        ChildGuard { child, stderr }
    }

    /// Waits for exit, or returns None after `timeout` (the child is then killed on drop).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // let the stderr reader catch up
                std::thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr_string(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// The child's process id (to send it other signals).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT (like Ctrl-C).
    pub fn interrupt(&self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ffprobe_json(args: &[&str], path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "json"])
        .args(args)
        .arg(path)
        .output()
        .expect("ffprobe must be installed (scripts/setup)");
    assert!(
        out.status.success(),
        "ffprobe failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe JSON")
}

/// The streams ffprobe sees in a file.
pub fn ffprobe_streams(path: &Path) -> Vec<serde_json::Value> {
    ffprobe_json(&["-show_streams"], path)["streams"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// (pts in seconds, keyframe) of each packet of stream `sel` ("v" or "a"), in file order.
pub fn ffprobe_packets(path: &Path, sel: &str) -> Vec<(f64, bool)> {
    let v = ffprobe_json(
        &[
            "-select_streams",
            sel,
            "-show_entries",
            "packet=pts_time,flags",
        ],
        path,
    );
    v["packets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let pts: f64 = p["pts_time"].as_str()?.parse().ok()?;
            let key = p["flags"].as_str().unwrap_or("").starts_with('K');
            Some((pts, key))
        })
        .collect()
}

/// Starts ffmpeg copying the stream at `url` into the FLV file `out` until the stream ends
/// (`extra` goes before the output, e.g. `-t 5`).
pub fn record_stream(url: &str, out: &Path, extra: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y", "-i", url])
            .args(extra)
            .args(["-c", "copy", "-f", "flv"])
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
}

/// Decodes the whole file with ffmpeg; panics with the decoder's complaints if there are any.
/// (The null muxer's notes about rounding timestamps to its frame rate are not about the
/// stream and are ignored.)
pub fn assert_decodes_cleanly(path: &Path) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg must be installed (scripts/setup)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        // ffmpeg folds repeats of the null muxer's notes into "Last message repeated N times"
        .filter(|l| {
            !l.starts_with("[null @") && !l.trim_start().starts_with("Last message repeated")
        })
        .collect();
    assert!(
        out.status.success() && errors.is_empty(),
        "ffmpeg decode errors in {}:\n{stderr}",
        path.display()
    );
}

/// A private nginx with the RTMP module on a free port, stopped on drop.
pub struct Nginx {
    pub rtmp_port: u16,
    _dir: tempfile::TempDir,
    _child: ChildGuard,
}

const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

impl Nginx {
    /// Starts nginx (None if nginx or its RTMP module is not installed).
    pub fn start() -> Option<Nginx> {
        if !Path::new("/usr/sbin/nginx").exists() || !Path::new(RTMP_MODULE).exists() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf: PathBuf = dir.path().join("nginx.conf");
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(
            &conf,
            format!(
                "load_module {RTMP_MODULE};\n\
                 daemon off;\nmaster_process off;\nuser root;\nworker_processes 1;\n\
                 error_log {dir}/logs/error.log warn;\npid {dir}/nginx.pid;\n\
                 events {{ worker_connections 256; }}\n\
                 rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
                   application live {{ live on; record off; wait_key on; wait_video on; }} }} }}\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let child = ChildGuard::spawn(
            Command::new("/usr/sbin/nginx")
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        wait_for_port(port, Duration::from_secs(10));
        Some(Nginx {
            rtmp_port: port,
            _dir: dir,
            _child: child,
        })
    }
}

/// Runs `onair probe` with `args` and `--json --quiet`; returns the parsed summary.
pub fn probe(args: &[&str], timeout: Duration) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("summary.json");
    let mut child = ChildGuard::spawn(
        Command::new(onair())
            .arg("probe")
            .args(args)
            .args(["--json", "--quiet"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::piped()),
    );
    let status = child.wait_timeout(timeout).expect("onair probe hung");
    let log = child.stderr_string();
    assert!(status.success(), "onair probe {args:?} failed:\n{log}");
    let text = std::fs::read_to_string(&out).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{text}\n{log}"))
}

/// The number at `key` of a probe summary (fails naming the key when it is missing).
pub fn n(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v:#}"))
}
