//! The per-frame cost of the hot path: x264 encode of the test card, and turning an encoded
//! frame into FLV tag bytes and RTMP chunks (what the publisher does for every packet).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use onair::capture::test_card::TestCard;
use onair::clock::MediaClock;
use onair::encode::{open_video, VideoEncoderSettings};
use onair::media::{MediaKind, Packet};
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::time::RtmpTimestamp;

fn x264_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("x264");
    group.sample_size(30);
    for (w, h) in [(1280u32, 720u32), (640, 360)] {
        let settings = VideoEncoderSettings {
            width: w,
            height: h,
            encoder: "x264".into(),
            ..Default::default()
        };
        let mut enc = open_video(&settings).unwrap();
        let card = TestCard::new(MediaClock::start(), w, h, 30)
            .unwrap()
            .unpaced();
        let frames: Vec<_> = (0..60).map(|i| card.render(i, i as i64 * 33)).collect();
        let mut i = 0;
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("encode {w}x{h} veryfast zerolatency 2500k"), |b| {
            b.iter(|| {
                let out = enc.encode(&frames[i % frames.len()]).unwrap();
                i += 1;
                out
            })
        });
    }
    group.finish();
}

fn packetize(c: &mut Criterion) {
    let mut group = c.benchmark_group("flv+rtmp");
    // a typical 2.5 Mbps 30 fps inter frame is ~10 KB; a keyframe ~60 KB
    for size in [10_000usize, 60_000] {
        let packet = Packet {
            kind: MediaKind::Video,
            data: Bytes::from(vec![0x42u8; size]),
            pts_ms: 1000,
            dts_ms: 1000,
            keyframe: size > 20_000,
            disposable: false,
        };
        let mut serializer = ChunkSerializer::new();
        serializer
            .set_max_chunk_size(4096, RtmpTimestamp::new(0))
            .unwrap();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("video packet {size} B"), |b| {
            b.iter(|| {
                let body = onair::flv::video_tag_body(&packet);
                let payload = RtmpMessage::VideoData { data: body }
                    .into_message_payload(RtmpTimestamp::new(1000), 1)
                    .unwrap();
                serializer.serialize(&payload, false, false).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, x264_encode, packetize);
criterion_main!(benches);
