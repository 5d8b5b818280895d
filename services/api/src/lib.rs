//! The gRPC API of `proto/companion/v1`: recordings (submit, upload, results, watch,
//! reprocess, delete), policy, users and the text features, behind bearer-token auth with
//! tenant isolation; plus `grpc.health.v1` and server reflection (both without auth, for
//! probes and tools).

pub mod admin;
pub mod auth;
pub mod convert;
pub mod error;
pub mod recordings;
pub mod text;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use companion_language::LanguageModels;
use companion_proto::v1::policy_service_server::PolicyServiceServer;
use companion_proto::v1::recording_service_server::RecordingServiceServer;
use companion_proto::v1::text_service_server::TextServiceServer;
use companion_proto::v1::user_service_server::UserServiceServer;
use companion_queue::JobQueue;
use companion_store::Store;
use companion_telemetry::Metrics;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tracing::info;

pub use auth::{AuthError, Caller, Role, Tokens};
pub use recordings::IngestConfig;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: cannot read {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(String),
}

/// Certificate chain and private key (PEM) for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct ApiConfig {
    pub ingest: IngestConfig,
    pub tls: Option<TlsFiles>,
}

/// Everything the services share.
pub struct ApiParts {
    pub store: Store,
    pub queue: Arc<dyn JobQueue>,
    pub tokens: Arc<Tokens>,
    /// `None`: `TextService` answers UNIMPLEMENTED.
    pub language: Option<Arc<LanguageModels>>,
    pub metrics: Metrics,
}

/// Binds `addr` (port 0 picks a free one) and returns the bound address with the future that
/// serves until `shutdown` resolves; open watch streams end at shutdown and calls in flight
/// finish.
pub async fn bind(
    addr: SocketAddr,
    config: ApiConfig,
    parts: ApiParts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = Result<(), ApiError>>), ApiError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ApiError::Bind { addr, source })?;

    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| ApiError::TlsFile {
                path: path.display().to_string(),
                source,
            })
        };
        let identity = Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
    }

    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    // Inline audio rides in the request; leave room for the other fields.
    let max_message = (config.ingest.max_bytes as usize).saturating_add(4 * 1024 * 1024);
    let recordings = recordings::Recordings::new(
        parts.store.clone(),
        parts.queue.clone(),
        config.ingest,
        parts.metrics.clone(),
        closing_rx,
    );
    let admin = Arc::new(admin::Admin::new(parts.store.clone()));
    let text = text::Text::new(parts.store.clone(), parts.language.clone());
    let intercept = || parts.tokens.clone().interceptor();

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RecordingServiceServer<recordings::Recordings>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(companion_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ApiError::Reflection(e.to_string()))?;

    let router = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            RecordingServiceServer::new(recordings).max_decoding_message_size(max_message),
            intercept(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            PolicyServiceServer::from_arc(admin.clone()),
            intercept(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            UserServiceServer::from_arc(admin),
            intercept(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            TextServiceServer::new(text),
            intercept(),
        ));
    info!(%bound, tls = config.tls.is_some(), "gRPC API listening");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let serve = async move {
        let shutdown = async move {
            shutdown.await;
            info!("API shutting down");
            health
                .set_not_serving::<RecordingServiceServer<recordings::Recordings>>()
                .await;
            let _ = closing_tx.send(true);
        };
        router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(ApiError::from)
    };
    Ok((bound, serve))
}
