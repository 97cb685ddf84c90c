//! The machine's side: read a key file, sign an assertion, call a URL.
//!
//! ```text
//! cargo run --example machine_login -- KEY_FILE [URL]
//! cargo run --example machine_login -- --print-token [--count N] KEY_FILE [URL]
//! ```
//!
//! `URL` defaults to `http://127.0.0.1:8080/whoami`; the assertion's audience
//! defaults to the URL's origin (`http://127.0.0.1:8080`), which is what the
//! example server accepts. `--audience AUD` overrides it. `--print-token`
//! prints the assertion (for `curl -H "Authorization: Bearer …"`) instead of
//! calling the URL; with `--count N` it prints N distinct assertions, one
//! per line (each with its own `jti`), for load tests.

use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jwt_profile::{AssertionSigner, KeyFile};

const USAGE: &str =
    "usage: machine_login [--print-token [--count N]] [--audience AUD] KEY_FILE [URL]";

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("machine_login: {message}");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut print_token = false;
    let mut audience = None;
    let mut count: u64 = 1;
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--print-token" => print_token = true,
            "--count" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => count = n,
                None => return fail(USAGE),
            },
            "--audience" => match args.next() {
                Some(a) => audience = Some(a),
                None => return fail(USAGE),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => positional.push(arg),
        }
    }
    let (key_path, url) = match positional.as_slice() {
        [key] => (key.clone(), "http://127.0.0.1:8080/whoami".to_string()),
        [key, url] => (key.clone(), url.clone()),
        _ => return fail(USAGE),
    };
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return fail(format!("bad URL {url:?}: {e}")),
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return fail(format!(
            "URL {url:?} must be absolute (http://host:port/path)"
        ));
    };
    let audience = audience.unwrap_or_else(|| format!("{scheme}://{authority}"));

    let signer = match KeyFile::load(&key_path).and_then(|f| AssertionSigner::from_key_file(&f)) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let token = match signer.sign(&audience) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    if print_token {
        if count == 1 {
            println!("{token}");
            return ExitCode::SUCCESS;
        }
        let now = chrono::Utc::now().timestamp();
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for i in 0..count {
            let claims = serde_json::json!({
                "iss": signer.user_id(), "sub": signer.user_id(), "aud": audience,
                "iat": now, "exp": now + 3600, "jti": format!("{now}-{i}"),
            });
            match signer.sign_claims(&claims) {
                Ok(t) => {
                    use std::io::Write;
                    let _ = writeln!(out, "{t}");
                }
                Err(e) => return fail(e),
            }
        }
        return ExitCode::SUCCESS;
    }

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = match http::Request::get(uri)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::new())
    {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let response = match client.request(request).await {
        Ok(r) => r,
        Err(e) => return fail(format!("request to {url} failed: {e}")),
    };
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return fail(format!("reading the answer failed: {e}")),
    };
    eprintln!("HTTP {status}");
    println!("{}", String::from_utf8_lossy(&body));
    if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
