//! The layer in front of a tonic service of the application's own
//! (`examples/proto/greeter.proto`), with tonic's own server.
//!
//! It starts the server on 127.0.0.1, then acts as a machine: one call
//! without credentials (refused with `UNAUTHENTICATED` by the layer, before
//! the service runs) and one with a JWT-profile assertion in the
//! `authorization` metadata. The service reads the caller's [`Principal`]
//! from the tonic request's extensions.
//!
//! Run it with `cargo run --features grpc --example grpc_service`.

use jwt_profile::CreateKey;
use jwt_profile::store::{CachedStore, MemoryStore};
use jwt_profile::{AssertionSigner, JwtProfileLayer, KeyService, Principal, Validation, Verifier};
use tonic::{Request, Response, Status};

mod greeter {
    tonic::include_proto!("greeter.v1");
}
use greeter::greeter_client::GreeterClient;
use greeter::greeter_server::{Greeter, GreeterServer};
use greeter::{HelloReply, HelloRequest};

/// The application's own service: it knows nothing of keys or tokens, only
/// the `Principal` the layer put in the request.
struct Hello;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let who = request
            .extensions()
            .get::<Principal>()
            .ok_or_else(|| Status::unauthenticated("not behind JwtProfileLayer"))?;
        Ok(Response::new(HelloReply {
            message: format!(
                "hello {} of {} ({})",
                who.user_id,
                who.org_id,
                request.get_ref().note
            ),
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let audience = format!("http://{addr}");

    // One machine user with a server-generated key; a real deployment keeps
    // its keys in a durable store and manages them with the key API.
    let store = CachedStore::new(MemoryStore::new());
    let keys = KeyService::new(store.clone());
    let created = keys
        .create(
            &Principal::new("ci-bot", "default", "bootstrap"),
            None,
            "ci-bot",
            CreateKey::default(),
        )
        .await?;
    let key_file = created.key_file.ok_or("no key file")?;

    let verifier = Verifier::new(store, Validation::new([audience.clone()]));
    let server = tonic::transport::Server::builder()
        .layer(JwtProfileLayer::new(verifier))
        .add_service(GreeterServer::new(Hello))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    println!("serving greeter.v1.Greeter on {audience}");

    let channel = tonic::transport::Channel::from_shared(audience.clone())?
        .connect()
        .await?;
    let mut client = GreeterClient::new(channel);
    let refused = client
        .say_hello(HelloRequest {
            note: "no credentials".into(),
        })
        .await
        .expect_err("the layer refuses a call without credentials");
    println!(
        "without an assertion: {:?}: {}",
        refused.code(),
        refused.message()
    );

    // The machine's side: sign an assertion with its key file.
    let signer = AssertionSigner::from_key_file(&key_file)?;
    let mut request = Request::new(HelloRequest {
        note: "signed".into(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", signer.sign(&audience)?).parse()?,
    );
    let reply = client.say_hello(request).await?.into_inner();
    println!("with an assertion: {}", reply.message);
    Ok(())
}
