//! The machine's side: read a key file, sign an assertion, call a URL.
//!
//! ```text
//! cargo run --example machine_login -- KEY_FILE [URL]
//! cargo run --example machine_login -- --print-token [--count N] KEY_FILE [URL]
//! cargo run --example machine_login -- --token-endpoint [--issuer ISSUER] [--scope SCOPE] KEY_FILE [URL]
//! ```
//!
//! `URL` defaults to `http://127.0.0.1:8080/whoami`; the assertion's audience
//! defaults to the URL's origin (`http://127.0.0.1:8080`), which is what the
//! example server accepts. `--audience AUD` overrides it. `--print-token`
//! prints the assertion (for `curl -H "Authorization: Bearer …"`) instead of
//! calling the URL; with `--count N` it prints N distinct assertions, one
//! per line (each with its own `jti`), for load tests.
//!
//! `--token-endpoint` logs in the way ZITADEL's client libraries do: it
//! reads the issuer's discovery document (`ISSUER/.well-known/openid-configuration`;
//! the issuer defaults to the URL's origin), signs an assertion for the
//! issuer, exchanges it at the token endpoint (RFC 7523, `scope` default
//! `openid`) and calls the URL with the access token it got. With
//! `--print-token` it prints the access token instead.

use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jwt_profile::{AssertionSigner, KeyFile};

const USAGE: &str = "usage: machine_login [--print-token [--count N]] [--audience AUD] [--token-endpoint [--issuer ISSUER] [--scope SCOPE]] KEY_FILE [URL]";

/// What `--help` prints after the usage line.
const HELP: &str = "\
Signs an assertion with KEY_FILE (a ZITADEL key file) and calls URL with it
(default http://127.0.0.1:8080/whoami).

  --audience AUD     the assertion's audience (default: URL's origin)
  --print-token      print the token instead of calling URL
  --count N          with --print-token: N distinct assertions, one per line
  --token-endpoint   log in as ZITADEL's client libraries do: discovery at
                     ISSUER/.well-known/openid-configuration, an assertion for
                     the issuer exchanged at its token endpoint, then URL
                     called with the access token
  --issuer ISSUER    the issuer, exactly as the server names it (default:
                     URL's origin; give the server's JWT_PROFILE_ISSUER when
                     it is set)
  --scope SCOPE      the scopes asked for (default: openid)";

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Sends `request` and returns the status and body.
async fn send(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, Bytes), String> {
    let uri = request.uri().clone();
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("request to {uri} failed: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer of {uri} failed: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// Discovery, then the jwt-bearer grant: the access token for `signer`.
async fn access_token(
    client: &HttpClient,
    signer: &AssertionSigner,
    issuer: &str,
    scope: &str,
) -> Result<String, String> {
    let discovery = format!("{issuer}/.well-known/openid-configuration");
    let request = http::Request::get(&discovery)
        .body(Full::default())
        .map_err(|e| e.to_string())?;
    let (status, body) = send(client, request).await?;
    let doc: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{discovery} answered {status}, not JSON: {e}"))?;
    if doc["issuer"] != issuer {
        return Err(format!(
            "{discovery} names issuer {}, not {issuer:?}",
            doc["issuer"]
        ));
    }
    let endpoint = doc["token_endpoint"]
        .as_str()
        .ok_or_else(|| format!("{discovery} names no token_endpoint"))?;
    let assertion = signer.sign(issuer).map_err(|e| e.to_string())?;
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
        .append_pair("assertion", &assertion)
        .append_pair("scope", scope)
        .finish();
    let request = http::Request::post(endpoint)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(Full::new(Bytes::from(form)))
        .map_err(|e| e.to_string())?;
    let (status, body) = send(client, request).await?;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match answer["access_token"].as_str() {
        Some(token) if status.is_success() => Ok(token.to_string()),
        _ => Err(format!(
            "the token endpoint answered {status}: {}",
            String::from_utf8_lossy(&body)
        )),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("machine_login: {message}");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut print_token = false;
    let mut audience = None;
    let mut count: u64 = 1;
    let mut token_endpoint = false;
    let mut issuer = None;
    let mut scope = "openid".to_string();
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
            "--token-endpoint" => token_endpoint = true,
            "--issuer" => match args.next() {
                Some(i) => issuer = Some(i),
                None => return fail(USAGE),
            },
            "--scope" => match args.next() {
                Some(s) => scope = s,
                None => return fail(USAGE),
            },
            "-h" | "--help" => {
                println!("{USAGE}\n\n{HELP}");
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
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let token = if token_endpoint {
        let issuer = issuer.unwrap_or_else(|| format!("{scheme}://{authority}"));
        match access_token(&client, &signer, &issuer, &scope).await {
            Ok(t) => t,
            Err(e) => return fail(e),
        }
    } else {
        match signer.sign(&audience) {
            Ok(t) => t,
            Err(e) => return fail(e),
        }
    };
    if print_token && token_endpoint {
        println!("{token}");
        return ExitCode::SUCCESS;
    }
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

    let request = match http::Request::get(uri)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::default())
    {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let (status, body) = match send(&client, request).await {
        Ok(answer) => answer,
        Err(e) => return fail(e),
    };
    eprintln!("HTTP {status}");
    println!("{}", String::from_utf8_lossy(&body));
    if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
