//! Public-key parsing (the create-key body's `publicKey`), raw and wrapped
//! in each accepted PEM label.
#![no_main]

use jwt_profile::PublicKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = PublicKey::from_pem(data);
    if let Some((first, der)) = data.split_first() {
        let label = ["PUBLIC KEY", "RSA PUBLIC KEY"][usize::from(*first) % 2];
        let _ = PublicKey::from_spki_der(der);
        let body: String = der.chunks(48).map(|c| format!("{}\n", b64(c))).collect();
        let _ = PublicKey::from_pem(format!("-----BEGIN {label}-----\n{body}-----END {label}-----\n").as_bytes());
    }
});

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
        for _ in chunk.len()..3 {
            out.push('=');
        }
    }
    out
}
