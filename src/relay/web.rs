//! The built-in watch page: lists live streams and plays one in the browser with mpegts.js,
//! served from the binary so a streamer can check their stream with no CDN or internet access.
//!
//! mpegts.js is fetched by `scripts/setup` and embedded at build time (see `build.rs`); a build
//! made without it still serves the page, which then explains how to get the player.

/// The mpegts.js player script embedded at build time, if it was available.
pub fn mpegts_js() -> Option<&'static [u8]> {
    const JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mpegts.js"));
    (!JS.is_empty()).then_some(JS)
}

/// The watch page.
pub fn page() -> &'static str {
    PAGE
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>OnAir relay</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #111; color: #eee; }
  header { padding: 12px 20px; background: #1d1d1d; display: flex; gap: 16px; align-items: baseline; }
  header h1 { font-size: 18px; margin: 0; }
  main { padding: 16px 20px; display: grid; gap: 16px; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #333; }
  tr.selected { background: #243447; }
  button { background: #2b6cb0; color: white; border: 0; padding: 4px 12px; border-radius: 4px; cursor: pointer; }
  button:disabled { background: #444; cursor: default; }
  video { width: 100%; max-width: 960px; background: black; aspect-ratio: 16 / 9; }
  #status { color: #aaa; font-size: 13px; }
  .note { color: #e0a040; }
  code { background: #222; padding: 1px 4px; border-radius: 3px; }
</style>
</head>
<body>
<header><h1>OnAir relay</h1><span id="summary">loading…</span></header>
<main>
  <table>
    <thead><tr><th>Stream</th><th>Video</th><th>Audio</th><th>In</th><th>Viewers</th><th>Up</th><th></th></tr></thead>
    <tbody id="streams"><tr><td colspan="7">No stream yet. Publish to <code>rtmp://HOST/live/KEY</code>.</td></tr></tbody>
  </table>
  <video id="video" muted autoplay playsinline controls></video>
  <div id="status"></div>
</main>
<script src="/mpegts.js"></script>
<script>
"use strict";
// Test and debugging hook: what the page knows, updated as things happen.
const onair = window.onair = {
  streams: [], playing: null, mediaInfo: null, frames: 0, currentTime: 0,
  statistics: null, errors: [], playerAvailable: false, mseH264: null,
};
const params = new URLSearchParams(location.search);
const playKey = params.get("key");
const wanted = params.get("stream");
const video = document.getElementById("video");
const statusLine = document.getElementById("status");
let player = null;

function withKey(path) {
  return playKey ? path + (path.includes("?") ? "&" : "?") + "key=" + encodeURIComponent(playKey) : path;
}

function setStatus(text, note) {
  statusLine.textContent = text;
  statusLine.className = note ? "note" : "";
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function describeVideo(v) {
  if (!v) return "–";
  const size = v.width && v.height ? v.width + "×" + v.height : "";
  const fps = v.fps ? " @" + Math.round(v.fps * 100) / 100 : "";
  return [v.codec, size + fps].filter(Boolean).join(" ");
}

function describeAudio(a) {
  if (!a) return "–";
  const rate = a.sample_rate ? (a.sample_rate / 1000) + " kHz" : "";
  const ch = a.channels ? a.channels + " ch" : "";
  return [a.codec, rate, ch].filter(Boolean).join(" ");
}

function render(streams) {
  const body = document.getElementById("streams");
  body.replaceChildren();
  if (streams.length === 0) {
    const row = body.insertRow();
    const td = cell(row, "No stream yet. Publish to rtmp://" + location.hostname + ":1935/live/KEY.");
    td.colSpan = 7;
    return;
  }
  for (const s of streams) {
    const row = body.insertRow();
    if (onair.playing === s.key) row.className = "selected";
    cell(row, s.key);
    cell(row, describeVideo(s.video));
    cell(row, describeAudio(s.audio));
    cell(row, Math.round(s.bitrate_in_kbps) + " kbit/s");
    cell(row, s.viewers + " (" + s.rtmp_viewers + " rtmp, " + s.http_viewers + " http)");
    cell(row, s.state === "waiting"
      ? "waiting for the publisher" +
        (s.grace_left_secs == null ? "" : " (" + Math.ceil(s.grace_left_secs) + " s left)")
      : Math.floor(s.uptime_secs) + " s");
    const td = document.createElement("td");
    const button = document.createElement("button");
    button.textContent = onair.playing === s.key ? "Playing" : "Watch";
    button.disabled = !s.listed || onair.playing === s.key;
    if (!s.listed) button.title = "Published under its secret key: publish as NAME?key=KEY to watch it here";
    button.onclick = () => play(s);
    td.appendChild(button);
    row.appendChild(td);
  }
}

async function refresh() {
  try {
    const response = await fetch(withKey("/api/streams"), { cache: "no-store" });
    if (response.status === 403) {
      document.getElementById("summary").textContent = "this relay needs a play key: open /?key=PLAY_KEY";
      return;
    }
    const data = await response.json();
    onair.streams = data.streams;
    const viewers = data.streams.reduce((n, s) => n + s.viewers, 0);
    document.getElementById("summary").textContent =
      data.streams.length + " live stream(s), " + viewers + " viewer(s)";
    render(data.streams);
    if (!onair.playing) {
      const pick = data.streams.find(s => s.listed && (wanted ? s.key === wanted : true));
      if (pick && (wanted || data.streams.filter(s => s.listed).length === 1)) play(pick);
    } else if (!data.streams.some(s => s.key === onair.playing)) {
      stop();
      setStatus("The stream ended.");
    }
  } catch (e) {
    document.getElementById("summary").textContent = "relay unreachable (" + e + ")";
  }
}

function stop() {
  if (player) {
    player.destroy();
    player = null;
  }
  onair.playing = null;
}

function play(s) {
  stop();
  onair.playing = s.key;
  onair.mediaInfo = null;
  const url = withKey(s.flv_path);
  if (typeof mpegts === "undefined") {
    setStatus("The player script is not in this build (run scripts/setup and rebuild). " +
      "Play " + location.origin + url + " with ffplay or VLC instead.", true);
    return;
  }
  if (!mpegts.getFeatureList().mseLivePlayback) {
    setStatus("This browser cannot play live FLV (no Media Source Extensions). Use ffplay or VLC: " +
      location.origin + url, true);
    return;
  }
  player = mpegts.createPlayer({ type: "flv", isLive: true, url: location.origin + url }, {
    enableStashBuffer: false,
    liveBufferLatencyChasing: true,
    lazyLoad: false,
  });
  player.on(mpegts.Events.MEDIA_INFO, info => {
    onair.mediaInfo = info;
    setStatus("Playing " + s.key + ": " + (info.width || "?") + "×" + (info.height || "?") +
      " " + (info.videoCodec || "") + " " + (info.audioCodec || ""));
  });
  player.on(mpegts.Events.STATISTICS_INFO, st => { onair.statistics = st; });
  player.on(mpegts.Events.ERROR, (type, detail, info) => {
    onair.errors.push(type + ": " + detail + (info && info.msg ? " (" + info.msg + ")" : ""));
    setStatus("Player error: " + type + " " + detail, true);
  });
  player.attachMediaElement(video);
  player.load();
  const started = player.play();
  if (started && started.catch) started.catch(e => onair.errors.push("play(): " + e));
  setStatus("Connecting to " + s.key + "…");
  render(onair.streams);
}

function countFrames() {
  if (video.requestVideoFrameCallback) {
    const step = () => { onair.frames++; video.requestVideoFrameCallback(step); };
    video.requestVideoFrameCallback(step);
  }
  setInterval(() => { onair.currentTime = video.currentTime; }, 200);
}

onair.playerAvailable = typeof mpegts !== "undefined";
onair.mseH264 = !!(window.MediaSource &&
  MediaSource.isTypeSupported('video/mp4; codecs="avc1.42E01E"'));
if (!onair.playerAvailable) {
  setStatus("The player script is not in this build: run scripts/setup, rebuild, and reload. " +
    "Streams can still be played with ffplay or VLC from /APP/KEY.flv.", true);
}
countFrames();
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"#;
