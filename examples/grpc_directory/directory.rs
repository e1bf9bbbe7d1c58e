//! A small gRPC directory service, written the way `tonic-build` would generate it (so the
//! example needs no `protoc`):
//!
//! ```proto
//! package directory;
//! service Directory { rpc GetEntry(GetEntryRequest) returns (EntryReply); }
//! message GetEntryRequest { string id = 1; }
//! message EntryReply { string id = 1; string owner_name = 2; }
//! ```
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;
use tower::Service;

pub const GET_ENTRY: &str = "/directory.Directory/GetEntry";

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetEntryRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryReply {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub owner_name: String,
}

/// The directory: answers from "the database" and counts how often it is asked.
#[derive(Clone, Default)]
pub struct Directory {
    pub calls: Arc<AtomicU32>,
}

impl Directory {
    async fn get_entry(
        &self,
        request: GetEntryRequest,
        caller: Option<String>,
    ) -> Result<EntryReply, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if request.id == "missing" {
            return Err(Status::not_found(format!("no entry {}", request.id)));
        }
        // What a caller may see depends on who it is.
        let owner_name = match caller {
            Some(caller) => format!("owner of {}, as seen by {caller}", request.id),
            None => format!("owner of {}", request.id),
        };
        Ok(EntryReply {
            owner_name,
            id: request.id,
        })
    }
}

/// The `GetEntry` method as a tonic unary service.
struct GetEntrySvc(Directory);

impl Service<Request<GetEntryRequest>> for GetEntrySvc {
    type Response = Response<EntryReply>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Response<EntryReply>, Status>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<GetEntryRequest>) -> Self::Future {
        let directory = self.0.clone();
        let caller = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Box::pin(async move {
            directory
                .get_entry(request.into_inner(), caller)
                .await
                .map(Response::new)
        })
    }
}

/// The server side of the `Directory` service: routes method paths to methods.
#[derive(Clone, Default)]
pub struct DirectoryServer(pub Directory);

impl tonic::server::NamedService for DirectoryServer {
    const NAME: &'static str = "directory.Directory";
}

impl Service<http::Request<Body>> for DirectoryServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let directory = self.0.clone();
        Box::pin(async move {
            match request.uri().path() {
                GET_ENTRY => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::<
                        EntryReply,
                        GetEntryRequest,
                    >::default());
                    Ok(grpc.unary(GetEntrySvc(directory), request).await)
                }
                _ => Ok(Status::unimplemented("no such method").into_http()),
            }
        })
    }
}

/// The client side: `get_entry` over a channel.
pub async fn get_entry(
    channel: tonic::transport::Channel,
    id: &str,
) -> Result<Response<EntryReply>, Status> {
    get_entry_as(channel, id, None).await
}

/// `get_entry`, with `authorization` metadata when `caller` is set.
pub async fn get_entry_as(
    channel: tonic::transport::Channel,
    id: &str,
    caller: Option<&str>,
) -> Result<Response<EntryReply>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = Request::new(GetEntryRequest { id: id.to_owned() });
    if let Some(caller) = caller {
        request.metadata_mut().insert(
            "authorization",
            caller
                .parse()
                .map_err(|_| Status::invalid_argument("bad caller"))?,
        );
    }
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(GET_ENTRY),
        ProstCodec::<GetEntryRequest, EntryReply>::default(),
    )
    .await
}
