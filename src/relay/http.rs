//! The relay's HTTP side: HTTP-FLV playback (`GET /APP/NAME.flv`), the built-in watch page
//! and the stats API (`GET /api/streams`). One request per connection; hand-written on tokio
//! because the relay needs only this much of HTTP/1.1, and every byte a client sends is
//! bounded in size and time.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;

use super::outbox::Outbox;
use super::rtmp::{is_disconnect, OUTBOUND_HIGH_WATER};
use super::stream::{Kick, PlayerFeed, PlayerItem, ViewerKind};
use super::wire::{http_flv_file_header, SharedFrame, HTTP_LAST_CHUNK};
use super::{masked_stream_id, query_param, stream_id, Relay};

/// Largest request head (request line and headers) accepted.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Time allowed to deliver the end of a stream or an error response before closing.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A parsed request line; headers are read but not needed.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, `OPTIONS`...
    pub method: String,
    /// The path, percent-decoded, without the query.
    pub path: String,
    /// The raw query string (after `?`), if any.
    pub query: Option<String>,
    /// True for HTTP/1.0 clients, which get a plain (not chunked) body.
    pub http10: bool,
}

/// Why a request head was refused, with the status to answer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// Not HTTP, or a malformed request line.
    #[error("malformed HTTP request")]
    Malformed,
    /// Head larger than [`MAX_REQUEST_HEAD`].
    #[error("request head larger than {MAX_REQUEST_HEAD} bytes")]
    TooLarge,
}

/// Parses a request head (everything up to and including the blank line).
pub fn parse_request(head: &[u8]) -> Result<Request, BadRequest> {
    if head.len() > MAX_REQUEST_HEAD {
        return Err(BadRequest::TooLarge);
    }
    let text = std::str::from_utf8(head).map_err(|_| BadRequest::Malformed)?;
    let line = text.split("\r\n").next().ok_or(BadRequest::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
        || !matches!(version, "HTTP/1.1" | "HTTP/1.0")
    {
        return Err(BadRequest::Malformed);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    let path = percent_decode(path).ok_or(BadRequest::Malformed)?;
    Ok(Request {
        method: method.to_string(),
        path,
        query,
        http10: version == "HTTP/1.0",
    })
}

/// Decodes `%XX` escapes; None for bad escapes or non-UTF-8 results.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Reads until the blank line that ends the request head.
async fn read_head(socket: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        let n = socket.read(&mut buf).await.context("read failed")?;
        if n == 0 {
            bail!("peer closed the connection before sending a request");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end + 4);
            return Ok(head);
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Err(anyhow!(BadRequest::TooLarge));
        }
    }
}

/// Headers every response carries: any page may embed the stream or read the stats, and
/// nothing is cached since it is all live.
const COMMON_HEADERS: &str = "Access-Control-Allow-Origin: *\r\n\
     Cache-Control: no-cache, no-store, must-revalidate\r\n\
     Pragma: no-cache\r\nExpires: 0\r\nConnection: close\r\nServer: onair-relay\r\n";

/// A complete response with a body.
fn response(status: &str, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{COMMON_HEADERS}\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

fn text_response(status: &str, message: &str) -> Vec<u8> {
    response(
        status,
        "text/plain; charset=utf-8",
        format!("{message}\n").as_bytes(),
        false,
    )
}

/// Serves one HTTP connection to completion.
pub(super) async fn serve(
    relay: Arc<Relay>,
    mut socket: TcpStream,
    peer: SocketAddr,
    id: u64,
    shutdown: watch::Receiver<bool>,
) {
    let limit = relay.config.handshake_timeout;
    let head = match timeout(limit, read_head(&mut socket)).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => {
            if e.downcast_ref::<BadRequest>().is_some() {
                let _ = send_final(
                    &mut socket,
                    &text_response(
                        "431 Request Header Fields Too Large",
                        "request head too large",
                    ),
                )
                .await;
            }
            tracing::warn!(%peer, "closing HTTP connection: {e:#}");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "closing HTTP connection: no request within {limit:?}");
            return;
        }
    };
    let parsed = parse_request(&head);
    drop(head);
    let request = match parsed {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%peer, "closing HTTP connection: {e}");
            let _ = send_final(
                &mut socket,
                &text_response("400 Bad Request", "bad request"),
            )
            .await;
            return;
        }
    };
    let result = route(&relay, &mut socket, peer, id, &request, shutdown).await;
    match result {
        Ok(()) => {}
        Err(e) if is_disconnect(&e) => tracing::debug!(%peer, "HTTP client left: {e:#}"),
        Err(e) => tracing::info!(%peer, "HTTP connection ended: {e:#}"),
    }
}

async fn send_final(socket: &mut TcpStream, bytes: &[u8]) -> anyhow::Result<()> {
    timeout(FINAL_FLUSH_TIMEOUT, async {
        socket.write_all(bytes).await?;
        socket.shutdown().await
    })
    .await
    .map_err(|_| anyhow!("client did not take the response in time"))?
    .context("write failed")
}

async fn route(
    relay: &Arc<Relay>,
    socket: &mut TcpStream,
    peer: SocketAddr,
    id: u64,
    request: &Request,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let head_only = request.method == "HEAD";
    if request.method == "OPTIONS" {
        let preflight = format!(
            "HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n\
             Access-Control-Allow-Headers: *\r\nAccess-Control-Max-Age: 86400\r\n{COMMON_HEADERS}\r\n"
        );
        return send_final(socket, preflight.as_bytes()).await;
    }
    if request.method != "GET" && !head_only {
        return send_final(
            socket,
            &text_response(
                "405 Method Not Allowed",
                "only GET, HEAD and OPTIONS are served",
            ),
        )
        .await;
    }
    let play_key = request.query.as_deref().and_then(|q| query_param(q, "key"));
    match request.path.as_str() {
        "/" | "/index.html" => {
            let page = super::web::page();
            send_final(
                socket,
                &response(
                    "200 OK",
                    "text/html; charset=utf-8",
                    page.as_bytes(),
                    head_only,
                ),
            )
            .await
        }
        "/mpegts.js" => match super::web::mpegts_js() {
            Some(js) => {
                send_final(
                    socket,
                    &response("200 OK", "text/javascript; charset=utf-8", js, head_only),
                )
                .await
            }
            None => {
                send_final(
                    socket,
                    &text_response(
                        "404 Not Found",
                        "this build has no mpegts.js: run scripts/setup, then rebuild",
                    ),
                )
                .await
            }
        },
        "/favicon.ico" => {
            send_final(
                socket,
                &response("204 No Content", "image/x-icon", b"", true),
            )
            .await
        }
        "/api/streams" => {
            if !relay.authorize_play(play_key) {
                return send_final(socket, &forbidden()).await;
            }
            let body = api_streams_json(relay, socket.local_addr().ok());
            send_final(
                socket,
                &response("200 OK", "application/json", body.as_bytes(), head_only),
            )
            .await
        }
        path if path.ends_with(".flv") => {
            let inner = &path[1..path.len() - 4];
            let Some((app, name)) = inner
                .split_once('/')
                .filter(|(a, n)| !a.is_empty() && !n.is_empty() && !n.contains('/'))
            else {
                return send_final(
                    socket,
                    &text_response("404 Not Found", "stream URLs look like /APP/NAME.flv"),
                )
                .await;
            };
            if !relay.authorize_play(play_key) {
                tracing::warn!(%peer, stream = %masked_stream_id(app, name), "HTTP play refused: missing or wrong play key");
                return send_final(socket, &forbidden()).await;
            }
            play_flv(relay, socket, peer, id, app, name, request, shutdown).await
        }
        _ => send_final(socket, &text_response("404 Not Found", "not found")).await,
    }
}

fn forbidden() -> Vec<u8> {
    text_response(
        "403 Forbidden",
        "play key missing or not allowed: add ?key=PLAY_KEY to the URL",
    )
}

/// The `/api/streams` document: relay counters and one entry per stream. Streams whose name
/// is a publish key appear only masked.
fn api_streams_json(relay: &Relay, http_addr: Option<SocketAddr>) -> String {
    let stats = relay.stats();
    let streams: Vec<serde_json::Value> = stats
        .streams
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            if !s.listed {
                v["key"] = serde_json::Value::String(s.masked_key.clone());
            } else {
                v["flv_path"] = serde_json::Value::String(format!("/{}.flv", s.key));
            }
            v
        })
        .collect();
    serde_json::json!({
        "server": "onair-relay",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": stats.uptime_secs,
        "connections": stats.connections,
        "refused_connections": stats.refused_connections,
        "http_port": http_addr.map(|a| a.port()),
        "streams": streams,
    })
    .to_string()
}

/// Streams one published stream as HTTP-FLV until the publisher stops or the client leaves.
#[allow(clippy::too_many_arguments)]
async fn play_flv(
    relay: &Arc<Relay>,
    socket: &mut TcpStream,
    peer: SocketAddr,
    id: u64,
    app: &str,
    name: &str,
    request: &Request,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let key = stream_id(app, name);
    if request.method == "HEAD" {
        let found = relay.stats().stream(&key).is_some();
        let head = if found {
            flv_response_head(request.http10)
        } else {
            response("404 Not Found", "text/plain", b"", true)
        };
        return send_final(socket, &head).await;
    }
    // Subscribed before looking, so a publisher arriving in between is not missed.
    let publishes = relay.publishes();
    let joined = match relay.join(&key, id, peer, ViewerKind::Http) {
        Some(joined) => Some(joined),
        None if relay.config.publisher_grace.is_zero() => None,
        None => {
            let masked = masked_stream_id(app, name);
            let grace = relay.config.publisher_grace;
            tracing::info!(%peer, stream = %masked, "nothing is published on this key yet: the HTTP-FLV player waits up to {grace:?}");
            match wait_for_stream(relay, socket, &key, id, peer, publishes, &mut shutdown).await? {
                Waited::Joined(feed, display_key) => Some((feed, display_key)),
                Waited::TimedOut => None,
                Waited::Gone => {
                    tracing::info!(%peer, stream = %masked, "waiting HTTP-FLV player left");
                    return Ok(());
                }
            }
        }
    };
    let Some((feed, display_key)) = joined else {
        tracing::info!(%peer, stream = %masked_stream_id(app, name), "HTTP play refused: nothing is published on this key");
        return send_final(
            socket,
            &text_response(
                "404 Not Found",
                "nothing is being published on this stream key",
            ),
        )
        .await;
    };
    tracing::info!(%peer, stream = %display_key, "HTTP-FLV player joined");
    let chunked = !request.http10;
    let mut items = Some(feed.items);
    let mut kick = Some(feed.kick);
    let bytes_out = feed.bytes_out;
    let mut outbox = Outbox::default();
    outbox.push(Bytes::from(flv_response_head(request.http10)));
    push_chunk(
        &mut outbox,
        http_flv_file_header(feed.has_video, feed.has_audio),
        chunked,
    );
    let (mut reader, mut writer) = socket.split();
    let mut scratch = [0u8; 512];
    let result: anyhow::Result<bool> = async {
        loop {
            if !outbox.is_empty() {
                let n = outbox
                    .write_now(|slices| writer.try_write_vectored(slices))
                    .context("write failed")?;
                bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            }
            let want_media = items.is_some() && outbox.len() < OUTBOUND_HIGH_WATER;
            tokio::select! {
                // The relay is stopping: finish the body, as when the publisher stops.
                _ = shutdown.wait_for(|stop| *stop) => return Ok(true),
                read = reader.read(&mut scratch) => {
                    // Anything after the request is ignored; end of input means the client left.
                    if read.context("read failed")? == 0 {
                        return Ok(false);
                    }
                }
                written = outbox.write_some(&mut writer), if !outbox.is_empty() => {
                    let n = written.context("write failed")?;
                    if n == 0 {
                        bail!("client stopped accepting data");
                    }
                    outbox.advance(n);
                    bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                }
                item = next_item(&mut items), if want_media => match item {
                    Some(item) => {
                        push_item(&mut outbox, item, chunked);
                        while outbox.len() < OUTBOUND_HIGH_WATER {
                            match items.as_mut().map(|rx| rx.try_recv()) {
                                Some(Ok(item)) => push_item(&mut outbox, item, chunked),
                                _ => break,
                            }
                        }
                    }
                    None => return Ok(true),
                },
                k = kicked(&mut kick) => match k {
                    Some(Kick::TooSlow) => return Ok(false),
                    None => kick = None,
                },
            }
        }
    }
    .await;
    relay.leave(&key, id);
    tracing::info!(%peer, stream = %display_key, "HTTP-FLV player left");
    if result? {
        // The publisher stopped: finish the body so the client sees a clean end.
        if chunked {
            outbox.push(Bytes::from_static(HTTP_LAST_CHUNK));
        }
        let _ = timeout(FINAL_FLUSH_TIMEOUT, async {
            outbox.write_all(socket).await?;
            socket.shutdown().await
        })
        .await;
    }
    Ok(())
}

/// How waiting for a stream nobody published yet ended.
enum Waited {
    /// A publisher claimed the key and the player joined its stream.
    Joined(PlayerFeed, String),
    /// The wait is over: answer 404 as if the request had just come.
    TimedOut,
    /// The client left or the relay is stopping.
    Gone,
}

/// Holds an HTTP-FLV request for a key nobody publishes until a publisher claims it, for at
/// most the publisher grace period. Nothing is sent meanwhile: the 200 and the FLV header
/// go out once the stream exists, so a request that times out still gets a plain 404. The
/// waiting client holds only a watch receiver, no media queue.
async fn wait_for_stream(
    relay: &Arc<Relay>,
    socket: &mut TcpStream,
    key: &str,
    id: u64,
    peer: SocketAddr,
    mut publishes: watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<Waited> {
    let until = tokio::time::Instant::now().checked_add(relay.config.publisher_grace);
    let mut scratch = [0u8; 512];
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return Ok(Waited::Gone),
            read = socket.read(&mut scratch) => {
                if read.context("read failed")? == 0 {
                    return Ok(Waited::Gone);
                }
            }
            changed = publishes.changed() => {
                if changed.is_err() {
                    return Ok(Waited::Gone);
                }
                if let Some((feed, display_key)) = relay.join(key, id, peer, ViewerKind::Http) {
                    return Ok(Waited::Joined(feed, display_key));
                }
            }
            _ = async {
                match until {
                    Some(until) => tokio::time::sleep_until(until).await,
                    None => std::future::pending().await,
                }
            } => return Ok(Waited::TimedOut),
        }
    }
}

fn flv_response_head(http10: bool) -> Vec<u8> {
    let framing = if http10 {
        ""
    } else {
        "Transfer-Encoding: chunked\r\n"
    };
    format!("HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\n{framing}{COMMON_HEADERS}\r\n")
        .into_bytes()
}

fn push_item(outbox: &mut Outbox, item: PlayerItem, chunked: bool) {
    match item {
        PlayerItem::Frame(frame) => push_frame(outbox, &frame, chunked),
        PlayerItem::Backlog(frames) => {
            for frame in &frames {
                push_frame(outbox, frame, chunked);
            }
        }
        PlayerItem::Batch(frames) => {
            for frame in frames.iter() {
                push_frame(outbox, frame, chunked);
            }
        }
    }
}

fn push_frame(outbox: &mut Outbox, frame: &SharedFrame, chunked: bool) {
    frame.push_http(outbox, chunked);
}

/// Queues one HTTP chunk, or just its data for HTTP/1.0 clients.
fn push_chunk(outbox: &mut Outbox, chunk: Bytes, chunked: bool) {
    if chunked {
        outbox.push(chunk);
        return;
    }
    // "SIZE\r\n" DATA "\r\n": keep DATA (a zero-copy slice).
    if let Some(start) = chunk.windows(2).position(|w| w == b"\r\n") {
        if chunk.len() >= start + 4 {
            outbox.push(chunk.slice(start + 2..chunk.len() - 2));
        }
    }
}

async fn next_item(
    items: &mut Option<tokio::sync::mpsc::Receiver<PlayerItem>>,
) -> Option<PlayerItem> {
    match items {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn kicked(kick: &mut Option<tokio::sync::oneshot::Receiver<Kick>>) -> Option<Kick> {
    match kick {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines() {
        let r =
            parse_request(b"GET /live/te%73t.flv?key=a&b=c HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/live/test.flv");
        assert_eq!(r.query.as_deref(), Some("key=a&b=c"));
        assert!(!r.http10);
        assert!(parse_request(b"GET / HTTP/1.0\r\n\r\n").unwrap().http10);
        for bad in [
            &b"\x16\x03\x01\x02\x00\r\n\r\n"[..],
            b"GET /\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET /%zz HTTP/1.1\r\n\r\n",
            b"GET /%ff HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
        ] {
            assert_eq!(parse_request(bad), Err(BadRequest::Malformed), "{bad:?}");
        }
        assert_eq!(
            parse_request(&vec![b'a'; MAX_REQUEST_HEAD + 1]),
            Err(BadRequest::TooLarge)
        );
    }

    #[test]
    fn http10_bodies_drop_the_chunk_framing() {
        let mut outbox = Outbox::default();
        push_chunk(&mut outbox, Bytes::from_static(b"3\r\nabc\r\n"), false);
        push_chunk(&mut outbox, Bytes::from_static(b"3\r\nabc\r\n"), true);
        assert_eq!(outbox.len(), 3 + 8);
    }
}
