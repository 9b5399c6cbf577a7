//! The cache key's SHA-256 by `sha2` (what baton-decide uses, since it builds for wasm32) against
//! aws-lc-rs (what the key used before it moved to the pure crate), over a subject token of the size
//! Baton's JWTs have. CPU time per digest, three rounds, both in the same run:
//! `cargo bench -p baton-decide --bench sha256`.

use std::time::Instant;

fn main() {
    let token = format!("eyJhbGciOiJSUzI1NiIsImtpZCI6ImRldiJ9.{}", "x".repeat(900));
    let n = 1_000_000u32;
    let mut sink = 0u8;
    for round in 1..=3 {
        let started = Instant::now();
        for i in 0..n {
            sink ^= baton_decide::key::digest(&token)[i as usize % 32];
        }
        let pure = started.elapsed() / n;
        let started = Instant::now();
        for i in 0..n {
            sink ^= aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref()[i as usize % 32];
        }
        let aws_lc = started.elapsed() / n;
        eprintln!(
            "round {round}: sha2 {pure:?} per digest, aws-lc-rs {aws_lc:?} per digest ({} B token)",
            token.len()
        );
    }
    std::hint::black_box(sink);
}
