//! The watch page in a real browser: OnAir publishes to the relay, headless Chromium (driven
//! by chromedriver over the WebDriver protocol) opens `http://RELAY/`, which lists the stream
//! and plays it with mpegts.js over HTTP-FLV. Video frames must advance in the page. Then
//! mpegts.js opens a stream before its publisher comes and plays through a publisher blip.
//!
//! The watch page test is skipped (with a message) when Chromium or chromedriver is not
//! installed; the waiting-player test fails, asking for scripts/setup.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use common::*;
use onair::relay::{start_relay, RelayConfig};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One WebDriver call: a blocking HTTP/1.1 request with a JSON body, answered with JSON.
fn webdriver(port: u16, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let mut stream = StdTcpStream::connect(("127.0.0.1", port)).context("connect chromedriver")?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    // Read the head, then exactly Content-Length bytes: chromedriver may keep the
    // connection open whatever the request says.
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("chromedriver closed the connection");
        }
        response.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("chromedriver response without Content-Length: {head}"))?;
    while response.len() < head_end + length {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let json_text = String::from_utf8_lossy(&response[head_end..]).into_owned();
    let text = &json_text;
    let end = json_text
        .rfind('}')
        .map(|i| i + 1)
        .unwrap_or(json_text.len());
    let value: Value = serde_json::from_str(&json_text[..end])
        .with_context(|| format!("chromedriver answered {text}"))?;
    if let Some(error) = value["value"]["error"].as_str() {
        bail!(
            "WebDriver {method} {path}: {error}: {}",
            value["value"]["message"]
        );
    }
    Ok(value["value"].clone())
}

/// A chromedriver process and a browser session, both ended on drop.
struct Browser {
    port: u16,
    session: String,
    _driver: ChildGuard,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(log_dir: &Path) -> anyhow::Result<Browser> {
        let port = free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null());
        let driver = ChildGuard::spawn("chromedriver", cmd, log_dir);
        let deadline = Instant::now() + Duration::from_secs(15);
        while StdTcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not start:\n{}", driver.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir()?;
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--mute-audio".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
            "--window-size=1100,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            }}
        });
        let session = webdriver(port, "POST", "/session", Some(&caps))?;
        let session = session["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session id in {session}"))?
            .to_string();
        Ok(Browser {
            port,
            session,
            _driver: driver,
            _profile: profile,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        webdriver(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    fn open(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", "/url", Some(&json!({ "url": url })))
            .map(|_| ())
    }

    /// Evaluates `script` (a function body) in the page.
    fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let data = self.call("GET", "/screenshot", None)?;
        let png = base64_decode(data.as_str().unwrap_or_default())?;
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = webdriver(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

fn base64_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => bail!("bad base64"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

/// The page's `window.onair` status object.
fn page_status(browser: &Browser) -> anyhow::Result<Value> {
    let text = browser.eval("return JSON.stringify(window.onair || null);")?;
    Ok(serde_json::from_str(text.as_str().unwrap_or("null"))?)
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_page_plays_our_stream_in_headless_chromium() {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "chromium and chromedriver are needed by this test: run scripts/setup"
    );
    init_tracing();
    let relay = start_relay(RelayConfig {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..RelayConfig::new("127.0.0.1:0".parse().unwrap())
    })
    .await
    .expect("start relay");
    let http: SocketAddr = relay.http_addr.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // OnAir itself publishes: test card and tone, 640x360.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onair"));
    cmd.args(["live", "--quiet", "--duration", "40", "--size", "640x360"])
        .args(["--fps", "30", "--keyint", "1"])
        .arg("--url")
        .arg(rtmp_url(relay.local_addr, "test"));
    let mut publisher = ChildGuard::spawn("onair-live", cmd, dir.path());
    wait_until(
        "OnAir's stream on the relay",
        Duration::from_secs(20),
        || {
            if let Some(status) = publisher.try_wait() {
                panic!("onair live exited ({status}):\n{}", publisher.log());
            }
            relay
                .stats()
                .stream("live/test")
                .filter(|s| s.video_packets_in > 5)
                .map(|_| ())
        },
    )
    .await;
    let (js_head, _) = http_get(http, "/mpegts.js").await.unwrap();
    let player_built_in = js_head.status == 200;

    let page_url = format!("http://{http}/");
    let log_dir = dir.path().to_path_buf();
    let shared = relay.relay();
    let (status, history, stats) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let browser = Browser::start(&log_dir)?;
        browser.open(&page_url)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut history = Vec::new();
        loop {
            let status = page_status(&browser)?;
            history.push(status.clone());
            let frames = status["frames"].as_u64().unwrap_or(0);
            let time = status["currentTime"].as_f64().unwrap_or(0.0);
            let done = if !player_built_in {
                status["streams"].as_array().is_some_and(|s| !s.is_empty())
            } else if status["mseH264"] == true {
                frames >= 60 && time >= 2.0
            } else {
                !status["mediaInfo"].is_null()
            };
            if done || Instant::now() > deadline {
                // Relay counters while the page is still watching.
                let stats = shared.stats();
                let shot = std::env::temp_dir().join("onair-relay-watch-page.png");
                if browser.screenshot(&shot).is_ok() {
                    eprintln!("watch page screenshot: {}", shot.display());
                }
                return Ok((status, history, stats));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await
    .unwrap()
    .expect("browser session");
    eprintln!("page status: {status:#}");

    // The page listed the stream from /api/streams.
    let streams = status["streams"].as_array().expect("streams listed");
    assert!(
        streams.iter().any(|s| s["key"] == "live/test"),
        "stream not listed: {status:#}"
    );
    assert!(
        player_built_in,
        "mpegts.js is not built in: run scripts/setup (it fetches the player), then rebuild"
    );
    assert_eq!(status["playerAvailable"], true, "{status:#}");
    assert_eq!(status["playing"], "live/test", "{status:#}");
    assert!(
        status["errors"].as_array().is_some_and(|e| e.is_empty()),
        "player errors: {status:#}"
    );
    // mpegts.js fetched the FLV and its demuxer parsed the stream.
    let info = &status["mediaInfo"];
    assert_eq!(info["width"], 640, "{status:#}");
    assert_eq!(info["height"], 360, "{status:#}");
    assert!(info["videoCodec"]
        .as_str()
        .is_some_and(|c| c.starts_with("avc1")));
    assert!(info["audioCodec"]
        .as_str()
        .is_some_and(|c| c.starts_with("mp4a")));
    let stream = stats.stream("live/test").expect("still live");
    assert!(stream.http_viewers >= 1, "{stream:?}");
    assert!(stream.bytes_out > 100_000, "{stream:?}");
    if status["mseH264"] == true {
        // Frames really advance: presented-frame callbacks and the playback clock move on.
        let frames = status["frames"].as_u64().unwrap_or(0);
        let time = status["currentTime"].as_f64().unwrap_or(0.0);
        assert!(
            frames >= 60 && time >= 2.0,
            "video did not advance: {status:#}"
        );
        let earlier = history
            .iter()
            .rev()
            .nth(3)
            .and_then(|s| s["currentTime"].as_f64())
            .unwrap_or(0.0);
        assert!(time > earlier, "playback clock stuck at {time}");
    } else {
        eprintln!("this Chromium cannot decode H.264 in MSE: checked media info and bytes only");
    }
    drop(publisher);
    relay.shutdown();
}

/// Sets up an mpegts.js player of its own in the page (not the page's, which plays only
/// listed streams) on `url`, with its state in `window.early`.
const EARLY_PLAYER: &str = r#"
const url = arguments[0];
const v = document.createElement("video");
v.muted = true;
v.autoplay = true;
document.body.appendChild(v);
window.early = { frames: 0, errors: [], info: null, time: 0, mse: !!(window.MediaSource &&
  MediaSource.isTypeSupported('video/mp4; codecs="avc1.42E01E,mp4a.40.2"')) };
const p = mpegts.createPlayer({ type: "flv", isLive: true, url: url },
  { enableStashBuffer: false, lazyLoad: false });
p.on(mpegts.Events.ERROR, (t, d, i) =>
  early.errors.push(t + ": " + d + (i && i.msg ? " (" + i.msg + ")" : "")));
p.on(mpegts.Events.MEDIA_INFO, i => { early.info = { width: i.width, height: i.height }; });
p.attachMediaElement(v);
p.load();
const r = v.play();
if (r && r.catch) r.catch(() => {});
if (v.requestVideoFrameCallback) {
  const step = () => { early.frames++; v.requestVideoFrameCallback(step); };
  v.requestVideoFrameCallback(step);
}
setInterval(() => { early.time = v.currentTime; }, 100);
return true;
"#;

/// mpegts.js in Chromium opens an HTTP-FLV URL before anyone publishes on it: the relay
/// holds the request until a publisher comes, and the player then plays; the publisher is
/// killed and another takes the key a second later, and playback carries on without an error.
#[tokio::test(flavor = "multi_thread")]
async fn mpegts_js_waits_for_the_publisher_and_plays_through_a_blip() {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "chromium and chromedriver are needed: run scripts/setup"
    );
    require_ffmpeg();
    init_tracing();
    let relay = start_relay(RelayConfig {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..RelayConfig::new("127.0.0.1:0".parse().unwrap())
    })
    .await
    .expect("start relay");
    let http: SocketAddr = relay.http_addr.unwrap();
    let (js_head, _) = http_get(http, "/mpegts.js").await.unwrap();
    assert_eq!(
        js_head.status, 200,
        "mpegts.js is not built in: run scripts/setup, then rebuild"
    );
    let rtmp = rtmp_url(relay.local_addr, "early");
    let flv = format!("http://{http}/live/early.flv");
    // `?stream=` names a stream that never comes, so the page's own player stays idle.
    let page = format!("http://{http}/?stream=live/none");
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().to_path_buf();
    let shared = relay.relay();
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<(Value, Duration)> {
        let browser = Browser::start(&log_dir)?;
        browser.open(&page)?;
        browser.call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": EARLY_PLAYER, "args": [flv] })),
        )?;
        let status = || -> anyhow::Result<Value> {
            let text = browser.eval("return JSON.stringify(window.early);")?;
            Ok(serde_json::from_str(text.as_str().unwrap_or("null"))?)
        };
        let wait = |what: &str, done: &dyn Fn(&Value) -> bool| -> anyhow::Result<Value> {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let s = status()?;
                if !s["errors"].as_array().is_some_and(|e| e.is_empty()) {
                    bail!("player error while waiting for {what}: {s:#}");
                }
                if done(&s) {
                    return Ok(s);
                }
                if Instant::now() > deadline {
                    bail!("no {what}: {s:#}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        std::thread::sleep(Duration::from_millis(800));
        let before = status()?;
        if shared.stats().stream("live/early").is_some() || !before["info"].is_null() {
            bail!("something played before the publisher came: {before:#}");
        }
        let playing = |s: &Value| {
            if s["mse"] == true {
                s["frames"].as_u64().unwrap_or(0) >= 30
            } else {
                !s["info"].is_null()
            }
        };
        let first = ChildGuard::spawn("first", ffmpeg_publisher(&rtmp, 60), &log_dir);
        let s1 = wait("playback once the publisher came", &playing)?;
        let bytes_before = shared
            .stats()
            .stream("live/early")
            .map_or(0, |s| s.bytes_out);
        drop(first);
        let dropped = Instant::now();
        std::thread::sleep(Duration::from_millis(1000));
        let _second = ChildGuard::spawn("second", ffmpeg_publisher(&rtmp, 60), &log_dir);
        let (f1, t1) = (
            s1["frames"].as_u64().unwrap_or(0),
            s1["time"].as_f64().unwrap_or(0.0),
        );
        let s2 = if s1["mse"] == true {
            wait("playback after the blip", &|s: &Value| {
                s["frames"].as_u64().unwrap_or(0) >= f1 + 60
                    && s["time"].as_f64().unwrap_or(0.0) >= t1 + 2.0
            })?
        } else {
            // No H.264 in this Chromium's MSE: the player still receives the new session.
            std::thread::sleep(Duration::from_secs(3));
            status()?
        };
        let stats = shared.stats();
        let stream = stats.stream("live/early").context("stream gone")?;
        if stream.http_viewers != 1 || stream.bytes_out < bytes_before + 50_000 {
            bail!("the player did not stay on the stream: {stream:?}");
        }
        Ok((s2, dropped.elapsed()))
    })
    .await
    .unwrap();
    let (status, after) = result.expect("browser session");
    eprintln!("player {after:?} after the publisher dropped: {status:#}");
    relay.shutdown();
}
