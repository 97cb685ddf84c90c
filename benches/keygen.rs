//! Times RSA-2048 key generation as the key service does it (aws-lc-rs),
//! for `scripts/keygen.sh`: the bench binary, run as `keygen [N]`, prints
//! one duration in ms per line.

use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    for _ in 0..n {
        let started = Instant::now();
        let pair = jwt_profile::generate_rsa_key_pair().expect("key generation");
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        std::hint::black_box(pair);
        println!("{ms:.2}");
    }
}
