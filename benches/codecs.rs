//! What each codec costs and stores for one realistic value (an entry of a payments
//! directory, ten short string fields, about 300 B of JSON), in one run:
//!
//! - `codecs/{json,msgpack,protobuf}/encode`: `Codec::encode_into` into a reused buffer.
//! - `codecs/{json,msgpack,protobuf}/decode`: `Codec::decode` of those bytes.
//! - printed before the groups: the encoded size of each.
//!
//! The same fields in each: a serde struct for JSON and MessagePack, its prost twin (what
//! tonic generates from the `.proto`) for Protobuf.
//!
//! Run: `cargo bench --bench codecs --features msgpack,protobuf` (see BENCHMARKS.md).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use tower_caching::codec::{Codec, Json, MsgPack, Protobuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    id: String,
    key: String,
    key_type: String,
    ispb: String,
    owner_name: String,
    owner_tax_id: String,
    branch: String,
    account: String,
    created_at: String,
    status: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EntryMessage {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    key: String,
    #[prost(string, tag = "3")]
    key_type: String,
    #[prost(string, tag = "4")]
    ispb: String,
    #[prost(string, tag = "5")]
    owner_name: String,
    #[prost(string, tag = "6")]
    owner_tax_id: String,
    #[prost(string, tag = "7")]
    branch: String,
    #[prost(string, tag = "8")]
    account: String,
    #[prost(string, tag = "9")]
    created_at: String,
    #[prost(string, tag = "10")]
    status: String,
}

fn entry() -> Entry {
    Entry {
        id: "9e3779b1-6f1c-4a51-9d0e-00000000002a".into(),
        key: "+5511000332598".into(),
        key_type: "PHONE".into(),
        ispb: "10000042".into(),
        owner_name: "Owner 42 de Souza Oliveira".into(),
        owner_tax_id: "00004398618".into(),
        branch: "0042".into(),
        account: "0000001302".into(),
        created_at: "2025-10-15T12:42:00Z".into(),
        status: "ACTIVE".into(),
    }
}

fn message(e: Entry) -> EntryMessage {
    EntryMessage {
        id: e.id,
        key: e.key,
        key_type: e.key_type,
        ispb: e.ispb,
        owner_name: e.owner_name,
        owner_tax_id: e.owner_tax_id,
        branch: e.branch,
        account: e.account,
        created_at: e.created_at,
        status: e.status,
    }
}

fn encoded<V, C: Codec<V>>(codec: &C, value: &V) -> Vec<u8> {
    let mut bytes = Vec::new();
    codec.encode_into(value, &mut bytes).unwrap();
    bytes
}

fn bench_codec<V: PartialEq + std::fmt::Debug, C: Codec<V>>(
    c: &mut Criterion,
    name: &str,
    codec: C,
    value: V,
) {
    let bytes = encoded(&codec, &value);
    let back: V = codec.decode(&bytes).unwrap();
    assert_eq!(back, value);
    let mut group = c.benchmark_group("codecs");
    let mut buffer = Vec::with_capacity(1024);
    group.bench_function(format!("{name}/encode"), |b| {
        b.iter(|| {
            buffer.clear();
            codec.encode_into(black_box(&value), &mut buffer).unwrap();
            black_box(buffer.len())
        })
    });
    group.bench_function(format!("{name}/decode"), |b| {
        b.iter(|| {
            let value: V = codec.decode(black_box(&bytes)).unwrap();
            black_box(value)
        })
    });
    group.finish();
}

fn codecs(c: &mut Criterion) {
    let json = encoded(&Json, &entry()).len();
    let msgpack = encoded(&MsgPack, &entry()).len();
    let protobuf = encoded(&Protobuf, &message(entry())).len();
    println!(
        "encoded size: json {json} B, msgpack {msgpack} B ({:.2}), protobuf {protobuf} B ({:.2})",
        msgpack as f64 / json as f64,
        protobuf as f64 / json as f64
    );
    bench_codec(c, "json", Json, entry());
    bench_codec(c, "msgpack", MsgPack, entry());
    bench_codec(c, "protobuf", Protobuf, message(entry()));
}

criterion_group!(benches, codecs);
criterion_main!(benches);
