//! `onair relay`: the relay as a command, shared by the `onair` binary and the lean
//! `onair-relay` binary (which links none of the broadcaster's codec libraries).

use std::time::Duration;

use super::{start_relay, RelayConfig};
use crate::config::RelaySettings;

/// Options of `onair relay`; each overrides the `[relay]` settings for this run.
#[derive(clap::Args, Debug)]
pub struct RelayArgs {
    /// RTMP address to listen on [default: relay.listen, 127.0.0.1:1935].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// HTTP address for HTTP-FLV playback, the watch page and /api/streams
    /// [default: relay.http_listen, 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// No HTTP side: RTMP only.
    #[arg(long, conflicts_with = "http")]
    pub no_http: bool,
    /// Stream key allowed to publish (repeatable; adds to relay.keys). Without any, anyone
    /// may publish. Publish as rtmp://HOST/APP/KEY or rtmp://HOST/APP/NAME?key=KEY.
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<String>,
    /// Require players to add ?key=PLAY_KEY (RTMP stream name or HTTP URL).
    #[arg(long, value_name = "PLAY_KEY")]
    pub play_key: Option<String>,
    /// Most simultaneous connections, RTMP and HTTP together.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Seconds a connection may stay without publishing or playing (and a publisher silent).
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Milliseconds of media sent to each viewer per write (0: every message at once); more
    /// saves CPU per viewer at the cost of that much latency [default: relay.merge_ms, 30].
    #[arg(long, value_name = "MS")]
    pub merge_ms: Option<u64>,
    /// Seconds viewers wait for a publisher whose connection dropped to come back (and a
    /// player for a stream nobody publishes yet) before they are closed or refused; 0: at
    /// once [default: relay.publisher_grace_secs, 30].
    #[arg(long, value_name = "SECS")]
    pub publisher_grace: Option<u64>,
    /// Seconds between status lines (0: none).
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub stats_every: u64,
}

/// Runs the relay until Ctrl-C: prints its URLs, then a status line every few seconds.
pub async fn run(settings: RelaySettings, args: RelayArgs) -> anyhow::Result<()> {
    let mut relay_settings = settings;
    if let Some(listen) = &args.listen {
        relay_settings.listen = listen.clone();
    }
    if let Some(http) = &args.http {
        relay_settings.http_listen = http.clone();
    }
    relay_settings.keys.extend(args.keys.iter().cloned());
    if let Some(key) = &args.play_key {
        relay_settings.play_key = Some(key.clone());
    }
    if let Some(ms) = args.merge_ms {
        anyhow::ensure!(ms <= 1000, "--merge-ms must be at most 1000");
        relay_settings.merge_ms = ms;
    }
    if let Some(secs) = args.publisher_grace {
        anyhow::ensure!(
            secs <= super::resume::MAX_PUBLISHER_GRACE_SECS,
            "--publisher-grace must be at most {} seconds (one day)",
            super::resume::MAX_PUBLISHER_GRACE_SECS
        );
        relay_settings.publisher_grace_secs = secs;
    }
    if let Some(n) = args.max_connections {
        anyhow::ensure!(n > 0, "--max-connections must be at least 1");
        relay_settings.max_connections = n;
    }
    let mut config = RelayConfig::from_settings(&relay_settings, !args.no_http).map_err(|e| {
        anyhow::anyhow!("{e:#} (check --listen/--http/--key or the [relay] settings)")
    })?;
    if let Some(secs) = args.idle_timeout {
        anyhow::ensure!(
            (1..=86_400).contains(&secs),
            "--idle-timeout {secs} is invalid: give 1 to 86400 seconds"
        );
        config.idle_timeout = Duration::from_secs(secs);
    }
    let keyed = !config.publish_keys.is_empty();
    let play_suffix = if config.play_key.is_some() {
        "?key=PLAY_KEY"
    } else {
        ""
    };
    let handle = start_relay(config).await?;
    let rtmp = handle.local_addr;
    eprintln!("relay listening on rtmp://{rtmp}");
    if keyed {
        eprintln!("  publish:   rtmp://{rtmp}/live/NAME?key=KEY (KEY from --key)");
    } else {
        eprintln!("  publish:   rtmp://{rtmp}/live/KEY");
    }
    eprintln!(
        "  play:      rtmp://{rtmp}/live/{}{play_suffix}",
        if keyed { "NAME" } else { "KEY" }
    );
    if let Some(http) = handle.http_addr {
        let name = if keyed { "NAME" } else { "KEY" };
        eprintln!("  HTTP-FLV:  http://{http}/live/{name}.flv{play_suffix}");
        eprintln!("  watch:     http://{http}/{play_suffix}");
        eprintln!("  stats:     http://{http}/api/streams{play_suffix}");
    }
    eprintln!("Ctrl-C stops");
    let mut ticker = (args.stats_every > 0)
        .then(|| tokio::time::interval(Duration::from_secs(args.stats_every)));
    if let Some(t) = ticker.as_mut() {
        t.tick().await;
    }
    loop {
        tokio::select! {
            what = crate::signals::stop_requested() => {
                eprintln!("relay stopping ({what})");
                break;
            }
            _ = async {
                match ticker.as_mut() {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => eprintln!("relay: {}", handle.stats().summary()),
        }
    }
    handle.shutdown();
    // Give the connections a moment to send their players the end of the stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while handle.stats().connections > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("relay stopped");
    Ok(())
}
