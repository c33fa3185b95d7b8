//! The HTTPS API: routes onto [`Registry`], and a TLS accept loop that
//! holds its own against clients that never speak, send slowly, or flood.
//!
//! Bounds: TLS handshake 10 s; request headers 10 s; a body 30 s (the
//! bandwidth upload: 120 s) and [`MAX_BODY_BYTES`]; a connection 10 min in
//! all; at most `max_connections` at once (more are closed at accept).
//! Every error is a JSON [`ErrorBody`] with a stable code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fluxnode_protocol::auth::{HEADER_NODE, HEADER_SIGNATURE};
use fluxnode_protocol::messages::{ErrorBody, MAX_BODY_BYTES};
use http_body_util::BodyExt as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::service::{now_ms, ApiError, Registry};
use crate::store::{Policy, Store};

const BODY_TIMEOUT: Duration = Duration::from_secs(30);
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(ErrorBody {
                error: self.rejection(),
            }),
        )
            .into_response()
    }
}

struct App<S> {
    registry: Registry<S>,
    admin_token: Option<String>,
}

type Shared<S> = Arc<App<S>>;

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Reads a body of at most `limit` bytes within `timeout`.
async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    // A body announced over the bound is refused before a byte of it is read.
    if axum::body::HttpBody::size_hint(&body).lower() > limit as u64 {
        return Err(too_large(limit));
    }
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ApiError::new(
            408,
            "body_timeout",
            format!("the body did not arrive within {timeout:?}"),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(e)) => Err(ApiError::bad_request("body_unreadable", e.to_string())),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        413,
        "body_too_large",
        format!("bodies are at most {limit} bytes"),
    )
}

impl ApiError {
    fn bad_request(code: &str, message: impl Into<String>) -> Self {
        ApiError::new(400, code, message)
    }
}

/// The API routes over `registry`. `admin_token` enables `PUT /v1/admin/policy`.
pub fn router<S: Store>(registry: Registry<S>, admin_token: Option<String>) -> Router {
    let app: Shared<S> = Arc::new(App {
        registry,
        admin_token,
    });
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(serde_json::json!({"ok": true})) }),
        )
        .route("/v1/register", post(register::<S>))
        .route("/v1/activate", post(activate::<S>))
        .route("/v1/sessions", post(open_session::<S>))
        .route("/v1/sessions/:id/download", get(download::<S>))
        .route("/v1/sessions/:id/upload", post(upload::<S>))
        .route("/v1/sessions/:id/evidence", post(evidence::<S>))
        .route("/v1/sessions/:id/openings", post(openings::<S>))
        .route("/v1/heartbeat", post(heartbeat::<S>))
        .route("/v1/nodes", get(nodes::<S>))
        .route("/v1/nodes/:id", get(node::<S>))
        .route("/v1/policy", get(policy::<S>).put(set_policy::<S>))
        .fallback(|| async {
            ApiError::new(404, "no_such_endpoint", "see docs/PROTOCOL.md for the API")
        })
        .with_state(app)
}

async fn register<S: Store>(
    State(a): State<Shared<S>>,
    h: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let b = read_body(body, MAX_BODY_BYTES, BODY_TIMEOUT).await?;
    Ok(Json(
        a.registry
            .register(&b, header(&h, HEADER_SIGNATURE))
            .await?,
    )
    .into_response())
}

async fn activate<S: Store>(
    State(a): State<Shared<S>>,
    h: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let b = read_body(body, MAX_BODY_BYTES, BODY_TIMEOUT).await?;
    Ok(Json(
        a.registry
            .activate(&b, header(&h, HEADER_SIGNATURE))
            .await?,
    )
    .into_response())
}

async fn open_session<S: Store>(
    State(a): State<Shared<S>>,
    h: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let b = read_body(body, MAX_BODY_BYTES, BODY_TIMEOUT).await?;
    let r = a
        .registry
        .open_session(header(&h, HEADER_NODE), &b, header(&h, HEADER_SIGNATURE))
        .await?;
    Ok(Json(r).into_response())
}

async fn download<S: Store>(
    State(a): State<Shared<S>>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let path = format!("/v1/sessions/{id}/download");
    let (bytes, key) = a
        .registry
        .bandwidth_download(
            header(&h, HEADER_NODE),
            &id,
            &path,
            header(&h, HEADER_SIGNATURE),
        )
        .await?;
    // Random bytes (nothing on the way can compress them), made as sent.
    let mut rng = fluxnode_hal::seed::Xoshiro256::from_key(&key);
    let stream = futures_util::stream::unfold(bytes, move |left| {
        let n = left.min(64 << 10) as usize;
        let chunk = (n > 0).then(|| {
            let mut buf = vec![0u8; n];
            rng.fill_bytes(&mut buf);
            Ok::<_, std::io::Error>(Bytes::from(buf))
        });
        std::future::ready(chunk.map(|c| (c, left - n as u64)))
    });
    Response::builder()
        .header("content-type", "application/octet-stream")
        .header("content-length", bytes)
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))
}

async fn upload<S: Store>(
    State(a): State<Shared<S>>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let arrived = now_ms();
    let t0 = Instant::now();
    let limit = usize::try_from(a.registry.settings.profile.bandwidth_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    let mut stream = http_body_util::Limited::new(body, limit);
    let mut len: u64 = 0;
    let read = async {
        while let Some(frame) = stream.frame().await {
            let frame = frame.map_err(|e| ApiError::new(413, "body_too_large", e.to_string()))?;
            if let Some(d) = frame.data_ref() {
                len += d.len() as u64;
            }
        }
        Ok::<_, ApiError>(())
    };
    tokio::time::timeout(UPLOAD_TIMEOUT, read)
        .await
        .map_err(|_| ApiError::new(408, "body_timeout", "the upload did not finish in 120 s"))??;
    let body_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let path = format!("/v1/sessions/{id}/upload");
    let (down, up) = a
        .registry
        .bandwidth_upload(
            header(&h, HEADER_NODE),
            &id,
            &path,
            header(&h, HEADER_SIGNATURE),
            crate::service::Upload {
                body_len: len,
                arrived_ms: arrived,
                body_ms,
            },
        )
        .await?;
    Ok(Json(serde_json::json!({"down_mbps": down, "up_mbps": up})).into_response())
}

async fn evidence<S: Store>(
    State(a): State<Shared<S>>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let b = read_body(body, MAX_BODY_BYTES, BODY_TIMEOUT).await?;
    let r = a
        .registry
        .evidence(
            header(&h, HEADER_NODE),
            &id,
            &b,
            header(&h, HEADER_SIGNATURE),
        )
        .await?;
    Ok(Json(r).into_response())
}

async fn openings<S: Store>(
    State(a): State<Shared<S>>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let b = read_body(body, MAX_BODY_BYTES, BODY_TIMEOUT).await?;
    let r = a
        .registry
        .openings(
            header(&h, HEADER_NODE),
            &id,
            &b,
            header(&h, HEADER_SIGNATURE),
        )
        .await?;
    Ok(Json(r).into_response())
}

async fn heartbeat<S: Store>(
    State(a): State<Shared<S>>,
    h: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let b = read_body(body, 4096, BODY_TIMEOUT).await?;
    let r = a
        .registry
        .heartbeat(header(&h, HEADER_NODE), &b, header(&h, HEADER_SIGNATURE))
        .await?;
    Ok(Json(r).into_response())
}

async fn nodes<S: Store>(State(a): State<Shared<S>>) -> Result<Response, ApiError> {
    Ok(Json(a.registry.node_views().await?).into_response())
}

async fn node<S: Store>(
    State(a): State<Shared<S>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(a.registry.node_view(&id).await?).into_response())
}

async fn policy<S: Store>(State(a): State<Shared<S>>) -> Result<Response, ApiError> {
    Ok(Json(a.registry.store.policy().await?).into_response())
}

async fn set_policy<S: Store>(
    State(a): State<Shared<S>>,
    h: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(token) = a.admin_token.as_deref() else {
        return Err(ApiError::new(
            403,
            "admin_disabled",
            "this registry takes no policy changes over HTTP",
        ));
    };
    let given = header(&h, "authorization")
        .strip_prefix("Bearer ")
        .unwrap_or("");
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0;
    if !same {
        return Err(ApiError::new(
            401,
            "admin_token_invalid",
            "the admin token (admin.token in the registry's directory) does not match",
        ));
    }
    let b = read_body(body, MAX_BODY_BYTES, BODY_TIMEOUT).await?;
    let p: Policy = serde_json::from_slice(&b)
        .map_err(|e| ApiError::bad_request("body_malformed", format!("policy: {e}")))?;
    a.registry.store.set_policy(&p).await?;
    tracing::info!(images = p.images.len(), "policy replaced");
    Ok(Json(p).into_response())
}

/// Limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once.
    pub max_connections: usize,
    /// TLS handshake.
    pub handshake: Duration,
    /// Request headers.
    pub headers: Duration,
    /// A whole connection.
    pub connection: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            handshake: Duration::from_secs(10),
            headers: Duration::from_secs(10),
            connection: Duration::from_secs(600),
        }
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing");
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.headers)
                .max_buf_size(64 << 10)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            match tokio::time::timeout(limits.connection, conn).await {
                Ok(Err(e)) => tracing::debug!(%peer, "connection: {e}"),
                Err(_) => tracing::debug!(%peer, "connection closed after {:?}", limits.connection),
                Ok(Ok(())) => {}
            }
        });
    }
}
