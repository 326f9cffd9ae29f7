//! Crypto throughput on one core, over 64 MiB buffers.
//!
//! `cargo bench --bench crypto`. Targets (issue 2): AES-CTR ≥ 2 GB/s, MEGA MAC ≥ 1.5 GB/s,
//! Filen GCM chunks ≥ 1.5 GB/s. Criterion reports GiB/s; README converts to GB/s.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use veilfs::crypto::{filen, mega};

const SIZE: usize = 64 * 1024 * 1024;

fn mega_benches(c: &mut Criterion) {
    let fk = mega::FileKey::from_bytes24(&[7; 24]);
    let mut data = vec![0x5au8; SIZE];
    let mut group = c.benchmark_group("mega");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    group.bench_function("aes128_ctr_64MiB", |b| {
        b.iter(|| mega::ctr_apply(&fk, 0, black_box(&mut data)))
    });
    group.bench_function("chunk_macs_interleaved_64MiB", |b| {
        b.iter(|| mega::file_chunk_macs(&fk, black_box(&data)))
    });
    // One chunk alone: CBC-MAC's serial dependency chain, for comparison with the interleaved run.
    group.bench_function("chunk_mac_serial_64MiB", |b| {
        b.iter(|| {
            for chunk in data.chunks(1024 * 1024) {
                black_box(mega::chunk_mac(&fk, black_box(chunk)));
            }
        })
    });
    group.bench_function("encrypt_file_ctr_and_mac_64MiB", |b| {
        b.iter(|| mega::encrypt_file(&fk, black_box(&mut data)))
    });
    // What an upload MACs at a time: one piece of a big file (a few chunks), or a whole small
    // file (one chunk): far fewer chunks than a wide AES backend has lanes.
    group.bench_function("chunk_macs_in_8MiB_pieces_64MiB", |b| {
        b.iter(|| {
            for piece in data.chunks(8 * 1024 * 1024) {
                let chunks: Vec<&[u8]> = piece.chunks(1024 * 1024).collect();
                black_box(mega::chunk_macs(&fk, black_box(&chunks)));
            }
        })
    });
    group.bench_function("chunk_mac_of_16KiB_files_64MiB", |b| {
        b.iter(|| {
            for file in data.chunks(16 * 1024) {
                black_box(mega::chunk_macs(&fk, black_box(&[file])));
            }
        })
    });
    group.finish();
}

fn filen_benches(c: &mut Criterion) {
    let key = filen::FileKey::generate(filen::DataVersion::V3);
    let plain = vec![0x5au8; filen::CHUNK_SIZE];
    let chunks = SIZE / filen::CHUNK_SIZE;
    let mut out = Vec::with_capacity(filen::MAX_ENCRYPTED_CHUNK_LEN);
    let mut group = c.benchmark_group("filen");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    group.bench_function("gcm_encrypt_1MiB_chunks_64MiB", |b| {
        b.iter(|| {
            for _ in 0..chunks {
                key.encrypt_chunk_into(black_box(&plain), &mut out).unwrap();
            }
        })
    });
    let sealed = key.encrypt_chunk(&plain).unwrap();
    group.bench_function("gcm_decrypt_1MiB_chunks_64MiB", |b| {
        b.iter(|| {
            for _ in 0..chunks {
                key.decrypt_chunk_into(black_box(&sealed), &mut out)
                    .unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, mega_benches, filen_benches);
criterion_main!(benches);
