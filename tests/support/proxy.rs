//! A TCP proxy for network-failure tests: it can throttle the client-to-server direction,
//! go down (drop every connection and stop listening) and come back on the same port, and
//! keeps a copy of what each client sent for inspection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Shared switches of a running proxy.
#[derive(Default)]
pub struct ProxyControl {
    /// Client-to-server rate limit in bytes per second (0: unlimited).
    pub rate: AtomicU64,
    /// While set, no connection is accepted and existing ones are dropped.
    pub down: AtomicBool,
    /// Client-to-server bytes of each connection, in order.
    pub captures: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
}

/// A proxy listening on 127.0.0.1:`port` forwarding to `upstream`.
pub struct Proxy {
    pub port: u16,
    pub control: Arc<ProxyControl>,
}

impl Proxy {
    /// Starts the proxy on the current tokio runtime.
    pub fn start(rt: &tokio::runtime::Runtime, upstream: SocketAddr) -> Proxy {
        let port = super::free_port();
        let control = Arc::new(ProxyControl::default());
        let ctl = control.clone();
        rt.spawn(async move {
            loop {
                if ctl.down.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let socket = TcpSocket::new_v4().unwrap();
                socket.set_reuseaddr(true).unwrap();
                // small buffers: congestion must reach the publisher, not pile up here
                socket.set_recv_buffer_size(16 * 1024).unwrap();
                if socket.bind(([127, 0, 0, 1], port).into()).is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let listener = socket.listen(64).unwrap();
                loop {
                    tokio::select! {
                        r = listener.accept() => {
                            if let Ok((client, _)) = r {
                                let capture = Arc::new(Mutex::new(Vec::new()));
                                ctl.captures.lock().unwrap().push(capture.clone());
                                tokio::spawn(serve(client, upstream, ctl.clone(), capture));
                            }
                        }
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {
                            if ctl.down.load(Ordering::SeqCst) {
                                break; // dropping the listener refuses new connections
                            }
                        }
                    }
                }
            }
        });
        super::wait_for_listener(port, Duration::from_secs(5));
        Proxy { port, control }
    }

    /// Limits client-to-server throughput to `kbps` kbit/s (0: unlimited).
    pub fn throttle_kbps(&self, kbps: u64) {
        self.control.rate.store(kbps * 1000 / 8, Ordering::SeqCst);
    }

    /// Takes the "server" down or brings it back.
    pub fn set_down(&self, down: bool) {
        self.control.down.store(down, Ordering::SeqCst);
    }

    /// What the `i`th client sent.
    pub fn capture(&self, i: usize) -> Vec<u8> {
        let caps = self.control.captures.lock().unwrap();
        caps.get(i)
            .map(|c| c.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.control.captures.lock().unwrap().len()
    }
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    ctl: Arc<ProxyControl>,
    capture: Arc<Mutex<Vec<u8>>>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up_ctl = ctl.clone();
    let up = async move {
        let mut buf = vec![0u8; 4096];
        let start = tokio::time::Instant::now();
        let mut budget_base = (start, 0u64);
        loop {
            let rate = up_ctl.rate.load(Ordering::SeqCst);
            let want = if rate == 0 {
                buf.len()
            } else {
                (rate as usize / 50).clamp(256, buf.len())
            };
            let n = match cr.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            {
                let mut c = capture.lock().unwrap();
                if c.len() < 64 << 20 {
                    c.extend_from_slice(&buf[..n]);
                }
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            if rate == 0 {
                budget_base = (tokio::time::Instant::now(), 0);
                continue;
            }
            budget_base.1 += n as u64;
            let due = budget_base.0 + Duration::from_secs_f64(budget_base.1 as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
            if budget_base.0.elapsed() > Duration::from_secs(2) {
                budget_base = (tokio::time::Instant::now(), 0);
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 4096];
        loop {
            match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let killed = async {
        while !ctl.down.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = killed => {}
    }
}
