//! Stop requests from the system. Ctrl-C (SIGINT), SIGTERM (systemd, `docker stop`, `kill`)
//! and SIGHUP (the terminal closed, the user logged out) all mean "stop cleanly": finish the
//! recording, close the connection politely, print the summary. Without this, SIGTERM and
//! SIGHUP would kill the process mid-write and cost the end of the recording.

/// Waits for the first stop request and names it ("Ctrl-C", "SIGTERM", "SIGHUP").
pub async fn stop_requested() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            return tokio::select! {
                _ = ctrl_c() => "Ctrl-C",
                _ = term.recv() => "SIGTERM",
                _ = hup.recv() => "SIGHUP",
            };
        }
    }
    ctrl_c().await;
    "Ctrl-C"
}

/// Ctrl-C; never resolves where it cannot be watched (so it is not taken for a request).
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
