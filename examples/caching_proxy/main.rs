//! A caching reverse proxy on hyper, like nginx `proxy_cache` or Varnish: every request goes
//! to one upstream, and `HttpCacheLayer` in shared-cache (RFC 9111) mode answers what the
//! upstream's `Cache-Control`, `Expires`, `Vary` and validators allow from the cache.
//!
//! ```text
//! UPSTREAM_URL=http://127.0.0.1:3000 cargo run --example caching_proxy
//! ```
//!
//! | variable | default | |
//! |---|---|---|
//! | `UPSTREAM_URL` | (required) | the origin, `http://host:port` |
//! | `BIND_ADDR` | `127.0.0.1:8080` | where the proxy listens |
//! | `REDIS_URL` | (none: in-memory store) | a Redis to keep responses in, shared by proxies |
//! | `METRICS_ADDR` | (none) | serves Prometheus `/metrics` on its own port, apart from the proxied namespace |
//!
//! Responses carry `x-cache` (`HIT`, `MISS`, `STALE`) and `Cache-Status` (RFC 9211).
//! Interim responses (`103 Early Hints`) of the upstream are passed on to the client that
//! caused them, never stored: hyper's server cannot send 1xx responses yet, so the proxy
//! writes them to the client's socket itself while the final response is pending.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;
use tower_caching::http::{CachedResponse, HttpCacheLayer};
use tower_caching::metrics::Metrics;
use tower_caching::store::{RedisConfig, RedisStore, Store};
use tower_caching::{Cache, MemoryStore};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Headers of one connection (RFC 9110 §7.6.1): never forwarded by a proxy.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// A client connection that hyper serves and the proxy can also write interim responses
/// to: hyper writes nothing while a response is pending, so they go out first.
#[derive(Clone)]
struct Downstream(Arc<TcpStream>);

impl AsyncRead for Downstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Downstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket closes when hyper drops the connection (the last clone of it).
        Poll::Ready(Ok(()))
    }
}

/// Passes an upstream's 1xx response on to the client (best effort: a full socket buffer
/// drops it, as the final response must not wait).
fn forward_interim(client: &Downstream, status: StatusCode, headers: &http::HeaderMap) {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in headers {
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    let _ = client.0.try_write(head.as_bytes());
}

/// The upstream: the request's path and query on `UPSTREAM_URL`.
#[derive(Clone)]
struct Upstream {
    client: Client<HttpConnector, Incoming>,
    scheme: Scheme,
    authority: Authority,
}

impl tower::Service<Request<Incoming>> for Upstream {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.client, cx)
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        let path = request.uri().path_and_query().cloned();
        let mut uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        if let Some(path) = path {
            uri = uri.path_and_query(path);
        }
        *request.uri_mut() = uri.build().expect("scheme, authority and path make a URI");
        strip_hop_by_hop(request.headers_mut());
        if let Ok(host) = HeaderValue::from_str(self.authority.as_str()) {
            request.headers_mut().insert(header::HOST, host);
        }
        if let Some(client) = request.extensions().get::<Downstream>().cloned() {
            hyper::ext::on_informational(&mut request, move |interim| {
                forward_interim(&client, interim.status(), interim.headers());
            });
        }
        self.client.request(request)
    }
}

async fn serve<St: Store>(
    cache: Cache<CachedResponse, St>,
    upstream: Upstream,
    listener: TcpListener,
) -> Result<(), BoxError> {
    let proxy = ServiceBuilder::new()
        .map_response(|mut response: Response<_>| {
            strip_hop_by_hop(response.headers_mut());
            // This hop speaks HTTP/1.1, whatever the upstream spoke.
            *response.version_mut() = http::Version::HTTP_11;
            response
        })
        .layer(HttpCacheLayer::new(cache).rfc9111())
        .service(upstream);
    loop {
        let (stream, _) = listener.accept().await?;
        let proxy = proxy.clone();
        let downstream = Downstream(Arc::new(stream));
        tokio::spawn(async move {
            let client = downstream.clone();
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(client.clone());
                let call = tower::ServiceExt::oneshot(proxy.clone(), request);
                async move {
                    Ok::<_, Infallible>(match call.await {
                        Ok(response) => response.map(|body| body.boxed()),
                        // The upstream failed (refused, reset): 502, as a proxy answers.
                        Err(error) => {
                            eprintln!("upstream failed: {error}");
                            let mut response = Response::new(
                                Full::new(Bytes::from_static(b"bad gateway\n"))
                                    .map_err(|never| match never {})
                                    .boxed(),
                            );
                            *response.status_mut() = StatusCode::BAD_GATEWAY;
                            response
                        }
                    })
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(downstream), service);
            if let Err(error) = connection.await {
                eprintln!("connection ended with an error: {error}");
            }
        });
    }
}

async fn serve_metrics(addr: SocketAddr, registry: prometheus::Registry) -> Result<(), BoxError> {
    let listener = TcpListener::bind(addr).await?;
    println!("metrics on http://{addr}/metrics");
    loop {
        let (stream, _) = listener.accept().await?;
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                let mut text = String::new();
                let _ = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text);
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text)))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let upstream_url: Uri = std::env::var("UPSTREAM_URL")
        .map_err(|_| "UPSTREAM_URL is required, e.g. UPSTREAM_URL=http://127.0.0.1:3000")?
        .parse()?;
    let (Some(scheme), Some(authority)) = (
        upstream_url.scheme().cloned(),
        upstream_url.authority().cloned(),
    ) else {
        return Err("UPSTREAM_URL must be absolute, e.g. http://127.0.0.1:3000".into());
    };
    if scheme != Scheme::HTTP {
        return Err("UPSTREAM_URL must be http:// (this example has no TLS client)".into());
    }
    let bind: SocketAddr = std::env::var("BIND_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".into())
        .parse()?;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let upstream = Upstream {
        client,
        scheme,
        authority,
    };

    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder()
        .namespace("caching_proxy")
        .register(&registry)?;
    if let Ok(addr) = std::env::var("METRICS_ADDR") {
        let addr: SocketAddr = addr.parse()?;
        let registry = registry.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_metrics(addr, registry).await {
                eprintln!("metrics server failed: {error}");
            }
        });
    }

    let listener = TcpListener::bind(bind).await?;
    println!("caching proxy on http://{bind} -> {upstream_url}");
    let run = async {
        match std::env::var("REDIS_URL") {
            Ok(url) => {
                let store = RedisStore::connect_lazy(RedisConfig::new(url.as_str()))?;
                println!("store: Redis at {url}");
                let cache = Cache::builder(store).metrics(metrics).build();
                serve(cache, upstream, listener).await
            }
            Err(_) => {
                println!("store: in memory (set REDIS_URL to share it)");
                let cache = Cache::builder(MemoryStore::new()).metrics(metrics).build();
                serve(cache, upstream, listener).await
            }
        }
    };
    tokio::select! {
        result = run => result,
        _ = tokio::signal::ctrl_c() => {
            println!("stopping");
            Ok(())
        }
    }
}
