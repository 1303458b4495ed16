//! Property test over the publisher's read path: what a real server answers a publishing
//! client (window size, bandwidth, chunk size, `_result`, `onStatus`, acknowledgements, pings),
//! mutated (bit flips, splices, absurd chunk sizes and lengths, deep AMF, truncation, random
//! splits), and pure noise, fed to the chunk guard and the client session exactly as
//! `onair live` feeds them. Whatever a server sends is an error or accepted: nothing panics
//! out, overflows the stack, or makes the publisher allocate without bound.
//!
//! Bounded in time: `ONAIR_FUZZ_CASES` (default 1500) cases per property.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use onair::publish::rtmp::parse_server_input;
use onair::rtmp_guard::ChunkGuard;
use proptest::prelude::*;
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    PublishRequestType, ServerSession, ServerSessionConfig, ServerSessionEvent,
    ServerSessionResult,
};

/// Counts live heap bytes and the peak since the last reset, so each case can be checked.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator with the caller's arguments; the
// counters are plain atomics and never affect what is allocated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which System shares.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, hence from System, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; System keeps the block on failure.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size > layout.size() {
                let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                    - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Most memory one server's input may make the publisher hold: a server may send at most
/// 64 KiB command messages, so a few MiB is already generous.
const MEMORY_BOUND: usize = 8 * 1024 * 1024;

static MEASURE: Mutex<()> = Mutex::new(());

/// A client session that has asked to connect and to publish, as `onair live` does, and the
/// bytes it sent.
fn client() -> (ClientSession, Vec<u8>) {
    let mut config = ClientSessionConfig::new();
    config.chunk_size = 4096;
    let (mut session, initial) = ClientSession::new(config).unwrap();
    let mut out = Vec::new();
    for r in initial {
        if let ClientSessionResult::OutboundResponse(p) = r {
            out.extend(p.bytes);
        }
    }
    if let ClientSessionResult::OutboundResponse(p) =
        session.request_connection("live".into()).unwrap()
    {
        out.extend(p.bytes);
    }
    (session, out)
}

/// What a real server (rml_rtmp's server session, as the relay runs it) answers a client that
/// connects and publishes: window size, bandwidth, chunk size, `_result`s and `onStatus`, in
/// the rounds a real exchange has (each answers what the client sent after the last one).
fn server_rounds() -> Vec<Vec<u8>> {
    let (mut client, mut to_server) = client();
    let (mut server, initial) = ServerSession::new(ServerSessionConfig::new()).unwrap();
    let mut transcript: Vec<Vec<u8>> = Vec::new();
    let mut pending = Vec::new();
    let answer =
        |results: Vec<ServerSessionResult>, server: &mut ServerSession, out: &mut Vec<u8>| {
            for r in results {
                match r {
                    ServerSessionResult::OutboundResponse(p) => out.extend(p.bytes),
                    ServerSessionResult::RaisedEvent(
                        ServerSessionEvent::ConnectionRequested { request_id, .. }
                        | ServerSessionEvent::PublishStreamRequested { request_id, .. },
                    ) => {
                        for r in server.accept_request(request_id).unwrap() {
                            if let ServerSessionResult::OutboundResponse(p) = r {
                                out.extend(p.bytes);
                            }
                        }
                    }
                    _ => {}
                }
            }
        };
    answer(initial, &mut server, &mut pending);
    for _ in 0..6 {
        if !to_server.is_empty() {
            let results = server.handle_input(&to_server).unwrap();
            to_server.clear();
            answer(results, &mut server, &mut pending);
        }
        let fed = std::mem::take(&mut pending);
        transcript.push(fed.clone());
        for r in client.handle_input(&fed).unwrap() {
            match r {
                ClientSessionResult::OutboundResponse(p) => to_server.extend(p.bytes),
                ClientSessionResult::RaisedEvent(ClientSessionEvent::ConnectionRequestAccepted) => {
                    if let ClientSessionResult::OutboundResponse(p) = client
                        .request_publishing("key".into(), PublishRequestType::Live)
                        .unwrap()
                    {
                        to_server.extend(p.bytes);
                    }
                }
                _ => {}
            }
        }
        if to_server.is_empty() {
            break;
        }
    }
    transcript
}

/// All of a real server's answers, as one byte string.
fn server_answers() -> Vec<u8> {
    server_rounds().concat()
}

/// Feeds `pieces` to a fresh publishing client as `onair live` does; returns the events it
/// raised, or the error that ended the connection.
fn run_case(pieces: &[&[u8]]) -> Result<Vec<String>, String> {
    let _one = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let (mut session, _) = client();
    let mut guard = ChunkGuard::new();
    let mut events = Vec::new();
    let mut result = Ok(());
    for piece in pieces {
        match parse_server_input(&mut guard, &mut session, piece) {
            Ok(results) => {
                for r in results {
                    let ClientSessionResult::RaisedEvent(e) = r else {
                        continue;
                    };
                    // as the publisher does: publish once the application accepted us
                    if matches!(e, ClientSessionEvent::ConnectionRequestAccepted) {
                        let _ = session.request_publishing("key".into(), PublishRequestType::Live);
                    }
                    events.push(format!("{e:?}"));
                }
            }
            Err(e) => {
                result = Err(e.to_string());
                break;
            }
        }
    }
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert!(
        peak < MEMORY_BOUND,
        "server input made the publisher hold {peak} bytes"
    );
    result.map(|()| events)
}

fn cases() -> u32 {
    std::env::var("ONAIR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
}

/// Splits `data` at the given fractions.
fn split<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut last = 0;
    for p in points {
        pieces.push(&data[last..p]);
        last = p;
    }
    pieces.push(&data[last..]);
    pieces
}

#[test]
fn a_real_servers_answers_are_accepted_in_any_split() {
    let rounds = server_rounds();
    assert!(rounds.len() >= 2, "{} rounds", rounds.len());
    for cuts in [vec![], vec![1], vec![5, 17, 300], (0..4096).collect()] {
        let pieces: Vec<&[u8]> = rounds.iter().flat_map(|r| split(r, &cuts)).collect();
        let events = run_case(&pieces).expect("a real server's answers refused");
        assert!(
            events
                .iter()
                .any(|e| e.contains("ConnectionRequestAccepted"))
                && events.iter().any(|e| e.contains("PublishRequestAccepted")),
            "{events:?}"
        );
    }
}

#[test]
fn deep_amf_from_the_server_is_refused() {
    let mut payload = vec![0x02, 0, 7];
    payload.extend_from_slice(b"_result");
    payload.push(0x00);
    payload.extend_from_slice(&1.0f64.to_be_bytes());
    for _ in 0..15_000 {
        payload.extend_from_slice(&[0x03, 0, 1, b'a']);
    }
    let mut bytes = vec![2, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
    bytes.extend_from_slice(&0xFF_FFFFu32.to_be_bytes());
    let len = (payload.len() as u32).to_be_bytes();
    bytes.extend_from_slice(&[3, 0, 0, 0, len[1], len[2], len[3], 20, 0, 0, 0, 0]);
    bytes.extend_from_slice(&payload);
    let err = run_case(&[&bytes]).expect_err("deep AMF accepted");
    assert!(err.contains("nested deeper"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn mutated_server_answers_never_panic_out(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        splice in proptest::option::of((any::<usize>(), proptest::collection::vec(any::<u8>(), 0..64))),
        truncate in proptest::option::of(any::<usize>()),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut data = server_answers();
        for (at, bits) in flips {
            let i = at % data.len();
            data[i] ^= bits;
        }
        if let Some((at, bytes)) = splice {
            let i = at % (data.len() + 1);
            data.splice(i..i, bytes);
        }
        if let Some(t) = truncate {
            data.truncate(t % (data.len() + 1));
        }
        let _ = run_case(&split(&data, &cuts));
    }

    #[test]
    fn noise_from_the_server_never_panics_out(
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let _ = run_case(&split(&data, &cuts));
    }
}
