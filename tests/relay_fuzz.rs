//! Property test over the relay's input handling: real publish and play sessions, mutated
//! (bit flips, splices, absurd chunk sizes and lengths, deep AMF, truncation, random splits)
//! and pure noise, fed to the RTMP handshake, the chunk guard, the session parser and the
//! relay's command handling; plus HTTP request heads. Nothing may panic out, and no input may
//! make the relay allocate without bound.
//!
//! Bounded in time: `ONAIR_FUZZ_CASES` (default 1500) cases per property. Inputs that once
//! broke something live in `tests/corpus/relay/` and run first.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use onair::relay::fuzz::{http_request, rtmp_connection};
use proptest::prelude::*;
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::messages::{MessagePayload, RtmpMessage};
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::time::RtmpTimestamp;

/// Counts live heap bytes and the peak since the last reset, so each case can be checked.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size > layout.size() {
                let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Most memory one connection's input may make the relay hold: the largest accepted message
/// (8 MiB) as parsed, as cached for joining viewers and as encoded for both protocols, plus
/// slack. Anything near a header's claimed 16 MiB times a few would fail this.
const MEMORY_BOUND: usize = 48 * 1024 * 1024;
/// No single allocation may exceed the largest accepted message by much.
const LARGEST_BOUND: usize = 17 * 1024 * 1024;

/// Only one case measures memory at a time.
static MEASURE: Mutex<()> = Mutex::new(());

/// Runs one connection's worth of input and checks its memory use.
fn run_case(handshake: &[u8], pieces: &[&[u8]]) -> onair::relay::fuzz::FuzzOutcome {
    let _one = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    let outcome = rtmp_connection(handshake, pieces);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        peak < MEMORY_BOUND,
        "input made the relay hold {peak} bytes"
    );
    assert!(largest < LARGEST_BOUND, "one allocation of {largest} bytes");
    outcome
}

fn string(s: &str) -> Amf0Value {
    Amf0Value::Utf8String(s.to_string())
}

fn command(name: &str, txn: f64, object: Amf0Value, args: Vec<Amf0Value>) -> RtmpMessage {
    RtmpMessage::Amf0Command {
        command_name: name.to_string(),
        transaction_id: txn,
        command_object: object,
        additional_arguments: args,
    }
}

/// What a real client sends after the handshake: connect, createStream, then publish with
/// metadata and media, or play.
fn session_bytes(publish: bool, chunk_size: u32, frames: usize, frame_size: usize) -> Vec<u8> {
    let mut serializer = ChunkSerializer::new();
    let mut out = Vec::new();
    // SetChunkSize goes out in the initial chunk size; everything after uses the new one.
    let packet = serializer
        .set_max_chunk_size(chunk_size, RtmpTimestamp::new(0))
        .unwrap();
    out.extend_from_slice(&packet.bytes);
    let mut send = |out: &mut Vec<u8>, message: RtmpMessage, ts: u32, stream: u32| {
        let payload = MessagePayload::from_rtmp_message(message, RtmpTimestamp::new(ts), stream)
            .expect("serializable");
        let packet = serializer
            .serialize(&payload, false, false)
            .expect("chunks");
        out.extend_from_slice(&packet.bytes);
    };
    let mut connect = HashMap::new();
    connect.insert("app".to_string(), string("live"));
    connect.insert("tcUrl".to_string(), string("rtmp://127.0.0.1/live"));
    send(
        &mut out,
        command("connect", 1.0, Amf0Value::Object(connect), vec![]),
        0,
        0,
    );
    send(
        &mut out,
        command("createStream", 2.0, Amf0Value::Null, vec![]),
        0,
        0,
    );
    if !publish {
        send(
            &mut out,
            command("play", 3.0, Amf0Value::Null, vec![string("test")]),
            0,
            1,
        );
        return out;
    }
    send(
        &mut out,
        command(
            "publish",
            3.0,
            Amf0Value::Null,
            vec![string("test"), string("live")],
        ),
        0,
        1,
    );
    let mut meta = HashMap::new();
    meta.insert("width".to_string(), Amf0Value::Number(320.0));
    meta.insert("height".to_string(), Amf0Value::Number(240.0));
    meta.insert("videocodecid".to_string(), Amf0Value::Number(7.0));
    send(
        &mut out,
        RtmpMessage::Amf0Data {
            values: vec![
                string("@setDataFrame"),
                string("onMetaData"),
                Amf0Value::Object(meta),
            ],
        },
        0,
        1,
    );
    let avc_header = [
        0x17, 0x00, 0, 0, 0, 0x01, 0x64, 0x00, 0x0d, 0xff, 0xe1, 0x00, 0x19, 0x67, 0x64, 0x00,
        0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00,
        0x03, 0x03, 0x20, 0xf1, 0x42, 0x99, 0x60, 0x01, 0x00, 0x04, 0x68, 0xeb, 0xe3, 0xcb,
    ];
    send(
        &mut out,
        RtmpMessage::VideoData {
            data: Bytes::copy_from_slice(&avc_header),
        },
        0,
        1,
    );
    send(
        &mut out,
        RtmpMessage::AudioData {
            data: Bytes::from_static(&[0xaf, 0x00, 0x11, 0x90]),
        },
        0,
        1,
    );
    for i in 0..frames {
        let mut data = vec![(i * 7) as u8; frame_size.max(5)];
        data[0] = if i % 10 == 0 { 0x17 } else { 0x27 };
        data[1] = 0x01;
        send(
            &mut out,
            RtmpMessage::VideoData {
                data: Bytes::from(data),
            },
            (i * 33) as u32,
            1,
        );
        send(
            &mut out,
            RtmpMessage::AudioData {
                data: Bytes::from(vec![0xaf, 0x01, i as u8, 0x21]),
            },
            (i * 33 + 5) as u32,
            1,
        );
    }
    out
}

/// Well-formed sessions the mutations start from.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        vec![
            session_bytes(true, 128, 12, 300),
            session_bytes(true, 4096, 20, 9000),
            session_bytes(true, 60_000, 4, 70_000),
            session_bytes(false, 128, 0, 0),
            session_bytes(false, 4096, 0, 0),
        ]
    })
}

/// Checked-in regression inputs: one file per input, fed whole.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/relay");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            Some((name, std::fs::read(&p).ok()?))
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    /// A chunk header with an arbitrary format, chunk stream, length and type.
    Header(usize, u8, u8, u32, u8),
    /// A SetChunkSize message with an arbitrary size.
    ChunkSize(usize, u32),
    /// A command message nesting objects or arrays `depth` deep.
    DeepAmf(usize, usize, bool),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..=255).prop_map(|(p, b)| Mutation::Flip(p, b)),
        2 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(p, v)| Mutation::Insert(p, v)),
        2 => (any::<usize>(), 1usize..200).prop_map(|(p, n)| Mutation::Delete(p, n)),
        2 => (any::<usize>(), 0u8..4, 0u8..64, prop_oneof![0u32..300, Just(0xFF_FFFF), any::<u32>().prop_map(|x| x & 0xFF_FFFF)], any::<u8>())
            .prop_map(|(p, f, c, l, t)| Mutation::Header(p, f, c, l, t)),
        1 => (any::<usize>(), prop_oneof![Just(0u32), Just(1), Just(0x7fff_ffff), Just(0xffff_ffff), any::<u32>()])
            .prop_map(|(p, s)| Mutation::ChunkSize(p, s)),
        1 => (any::<usize>(), 10usize..20_000, any::<bool>()).prop_map(|(p, d, a)| Mutation::DeepAmf(p, d, a)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(data: &mut Vec<u8>, m: &Mutation) {
    let at = |p: usize, len: usize| if len == 0 { 0 } else { p % (len + 1) };
    match m {
        Mutation::Flip(p, b) => {
            if !data.is_empty() {
                let i = p % data.len();
                data[i] ^= b;
            }
        }
        Mutation::Insert(p, v) => {
            let i = at(*p, data.len());
            data.splice(i..i, v.iter().copied());
        }
        Mutation::Delete(p, n) => {
            let i = at(*p, data.len());
            let end = (i + n).min(data.len());
            data.drain(i..end);
        }
        Mutation::Header(p, fmt, csid, len, type_id) => {
            let i = at(*p, data.len());
            let mut h = vec![(fmt << 6) | (csid & 0x3f)];
            if *fmt < 3 {
                h.extend_from_slice(&[0, 0, 1]);
            }
            if *fmt < 2 {
                h.extend_from_slice(&len.to_be_bytes()[1..]);
                h.push(*type_id);
            }
            if *fmt == 0 {
                h.extend_from_slice(&[1, 0, 0, 0]);
            }
            data.splice(i..i, h);
        }
        Mutation::ChunkSize(p, size) => {
            let i = at(*p, data.len());
            let mut m = vec![0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
            m.extend_from_slice(&size.to_be_bytes());
            data.splice(i..i, m);
        }
        Mutation::DeepAmf(p, depth, arrays) => {
            let i = at(*p, data.len());
            let mut amf = vec![0x02, 0, 7];
            amf.extend_from_slice(b"connect");
            for _ in 0..*depth {
                if *arrays {
                    amf.extend_from_slice(&[0x0A, 0, 0, 0, 1]);
                } else {
                    amf.extend_from_slice(&[0x03, 0, 1, b'a']);
                }
            }
            amf.truncate(65_000);
            // One big chunk: announce a chunk size that fits it first.
            let mut m = vec![0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
            m.extend_from_slice(&65_536u32.to_be_bytes());
            m.extend_from_slice(&[0x03, 0, 0, 0]);
            m.extend_from_slice(&(amf.len() as u32).to_be_bytes()[1..]);
            m.extend_from_slice(&[20, 0, 0, 0, 0]);
            m.extend_from_slice(&amf);
            data.splice(i..i, m);
        }
        Mutation::Truncate(p) => {
            let i = at(*p, data.len());
            data.truncate(i);
        }
    }
}

/// Splits `data` at the given points (as the network would deliver it).
fn split<'a>(data: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = points
        .iter()
        .map(|p| if data.is_empty() { 0 } else { p % data.len() })
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::new();
    let mut last = 0;
    for c in cuts {
        if c > last {
            pieces.push(&data[last..c]);
            last = c;
        }
    }
    pieces.push(&data[last..]);
    pieces
}

fn cases() -> u32 {
    std::env::var("ONAIR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
}

/// Panics inside the relay are caught and turned into errors; the default hook would print
/// a backtrace for each (and symbolizing one allocates far more than the relay ever does).
fn quiet_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("panic (caught or reported by the test): {info}");
        }))
    });
}

#[test]
fn seeds_are_accepted_unmutated() {
    quiet_panics();
    for (i, seed) in seeds().iter().enumerate() {
        let outcome = run_case(&[], &[seed]);
        assert!(outcome.error.is_none(), "seed {i}: {outcome:?}");
        if i < 3 {
            assert_eq!(
                outcome.streams, 0,
                "stream not removed when the publisher left"
            );
        }
        assert!(outcome.bytes_out > 0, "seed {i}: no replies");
    }
}

#[test]
fn corpus_inputs_are_handled() {
    quiet_panics();
    for (name, data) in corpus() {
        // `handshake-*` files go to the handshake, the others to a connection after one.
        let outcome = if name.starts_with("handshake") {
            run_case(&data, &[])
        } else {
            run_case(&[], &[&data])
        };
        assert!(
            outcome.error.is_some() || !outcome.closed || outcome.bytes_out > 0,
            "{name}: {outcome:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn mutated_sessions_never_panic_or_grow_without_bound(
        seed in 0usize..5,
        mutations in proptest::collection::vec(mutation(), 0..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        quiet_panics();
        let mut data = seeds()[seed].clone();
        for m in &mutations {
            apply(&mut data, m);
        }
        let pieces = split(&data, &cuts);
        run_case(&[], &pieces);
    }

    #[test]
    fn noise_never_panics(
        handshake in proptest::collection::vec(any::<u8>(), 0..4000),
        stream in proptest::collection::vec(any::<u8>(), 0..4000),
        head in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        quiet_panics();
        let mut hs = handshake.clone();
        if let Some(first) = hs.first_mut() {
            // Mostly the right version byte, so the handshake gets further.
            *first = 3;
        }
        run_case(&handshake, &[&stream]);
        run_case(&hs, &[]);
        let mut request = b"GET /".to_vec();
        request.extend_from_slice(&head);
        request.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        http_request(&request);
        http_request(&head);
    }
}
