//! `RecordingService`: submit, upload, read, list, watch, reprocess and delete recordings.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use companion_audio::{DecodeOptions, probe_bytes};
use companion_core::{Classify, ErrorKind, ErrorReport, RecordingKind};
use companion_proto::v1 as pb;
use companion_proto::v1::recording_service_server::RecordingService;
use companion_queue::{Job, JobQueue, ResultReady};
use companion_store::{AudioSource, NewSubmission, Outcome, Store};
use companion_telemetry::Metrics;
use sha2::{Digest, Sha256};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::auth::{Caller, Role, caller};
use crate::convert::{kind_from_proto, kind_to_proto, view_to_proto};
use crate::error::{queue_status, status_for, store_status};

/// Limits and where `file://` recordings may come from.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// `file://` sources must resolve under this directory; `None` refuses them.
    pub audio_root: Option<PathBuf>,
    /// Largest recording accepted, inline, uploaded or by reference.
    pub max_bytes: u64,
    /// Longest recording accepted (when its header declares a duration).
    pub max_duration_s: f64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        let decode = DecodeOptions::default();
        IngestConfig {
            audio_root: None,
            max_bytes: 64 * 1024 * 1024,
            max_duration_s: decode.max_duration_s,
        }
    }
}

pub struct Recordings {
    store: Store,
    queue: Arc<dyn JobQueue>,
    config: IngestConfig,
    metrics: Metrics,
    /// Turns true when the server shuts down: open watch streams end then.
    closing: tokio::sync::watch::Receiver<bool>,
}

/// Longest id accepted for recordings and users.
const MAX_ID_CHARS: usize = 200;

fn check_id(what: &str, id: &str, required: bool) -> Result<String, Status> {
    let id = id.trim();
    if id.is_empty() {
        return if required {
            Err(Status::invalid_argument(format!("{what} is required")))
        } else {
            Ok(String::new())
        };
    }
    if id.chars().count() > MAX_ID_CHARS || id.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{what} must be at most {MAX_ID_CHARS} printable characters"
        )));
    }
    Ok(id.to_string())
}

/// A new job id: unique across processes and restarts.
fn new_job_id(tenant: &str, recording_id: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = Sha256::new();
    hasher.update(nanos.to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(tenant.as_bytes());
    hasher.update([0]);
    hasher.update(recording_id.as_bytes());
    let digest = hasher.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("job_{hex}")
}

/// What a submission says about its recording, checked.
struct Header {
    recording_id: String,
    user_id: Option<String>,
    kind: RecordingKind,
    filename: String,
}

fn check_header(
    recording_id: &str,
    user_id: &str,
    kind: i32,
    filename: &str,
) -> Result<Header, Status> {
    let recording_id = check_id("recording_id", recording_id, true)?;
    let user_id = check_id("user_id", user_id, false)?;
    let kind = kind_from_proto(kind)
        .ok_or_else(|| Status::invalid_argument("kind must be VOICEMAIL or CALL"))?;
    let filename = filename.trim();
    if filename.chars().count() > 255 || filename.chars().any(char::is_control) {
        return Err(Status::invalid_argument("filename is malformed"));
    }
    Ok(Header {
        recording_id,
        user_id: (!user_id.is_empty()).then_some(user_id),
        kind,
        filename: filename.to_string(),
    })
}

impl Recordings {
    pub fn new(
        store: Store,
        queue: Arc<dyn JobQueue>,
        config: IngestConfig,
        metrics: Metrics,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> Recordings {
        Recordings {
            store,
            queue,
            config,
            metrics,
            closing,
        }
    }

    fn decode_options(&self) -> DecodeOptions {
        DecodeOptions {
            max_bytes: self.config.max_bytes,
            max_duration_s: self.config.max_duration_s,
            ..DecodeOptions::default()
        }
    }

    /// Refuses audio over the limits or in a format we do not decode, from its header.
    async fn probe(&self, bytes: Arc<Vec<u8>>, filename: &str) -> Result<(), Status> {
        let ext = companion_audio::extension_of(filename);
        let opts = self.decode_options();
        let probed =
            tokio::task::spawn_blocking(move || probe_bytes(&bytes, ext.as_deref(), &opts))
                .await
                .map_err(|e| Status::internal(format!("probe crashed: {e}")))?;
        probed
            .map(|_| ())
            .map_err(|e| status_for(e.kind(), e.to_string()))
    }

    /// Checks a `file://` source (root, existence, size, header) without keeping its bytes.
    async fn check_uri(&self, uri: &str, filename: &str) -> Result<u64, Status> {
        let root = self.config.audio_root.as_deref().ok_or_else(|| {
            Status::invalid_argument("this server accepts no file:// sources (no audio root)")
        })?;
        let path = companion_audio::source::resolve_file_uri(uri, root)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let max_bytes = self.config.max_bytes;
        let bytes =
            tokio::task::spawn_blocking(move || companion_audio::read_file(&path, max_bytes))
                .await
                .map_err(|e| Status::internal(format!("read crashed: {e}")))?
                .map_err(|e| status_for(e.kind(), e.to_string()))?;
        let size = bytes.len() as u64;
        self.probe(Arc::new(bytes), filename).await?;
        Ok(size)
    }

    /// Stores the submission and, when it is new, queues its job.
    async fn submit(
        &self,
        caller: &Caller,
        header: Header,
        source: AudioSource,
        size_bytes: u64,
        sha256: String,
    ) -> Result<pb::SubmitRecordingResponse, Status> {
        let job_id = new_job_id(&caller.tenant, &header.recording_id);
        let uri = match &source {
            AudioSource::Uri(uri) => Some(uri.clone()),
            AudioSource::Inline(_) => None,
        };
        let submission = NewSubmission {
            tenant_id: caller.tenant.clone(),
            recording_id: header.recording_id.clone(),
            user_id: header.user_id.clone(),
            kind: header.kind,
            filename: header.filename.clone(),
            source,
            sha256,
            size_bytes,
        };
        let submitted = self
            .store
            .submit(&submission, &job_id)
            .await
            .map_err(store_status)?;
        if !submitted.created {
            info!(recording_id = %header.recording_id, job_id = %submitted.job_id, "duplicate submission");
            let record = self
                .store
                .job(&submitted.job_id)
                .await
                .map_err(store_status)?;
            if let Some(record) = record
                .as_ref()
                .filter(|r| r.state == companion_store::JobState::Queued && r.attempts == 0)
            {
                // Never started: an API that died between storing the job and publishing it
                // would leave it stranded, so publish it again. Processing is idempotent per
                // job, so a job that was queued after all runs once and is announced twice.
                self.queue
                    .publish(&job_message(record))
                    .await
                    .map_err(queue_status)?;
            }
            let status = record.map_or(pb::JobStatus::Queued, |j| {
                crate::convert::status_to_proto(j.state)
            });
            return Ok(pb::SubmitRecordingResponse {
                job_id: submitted.job_id,
                created: false,
                status: status as i32,
            });
        }
        let job = Job {
            job_id: job_id.clone(),
            tenant_id: caller.tenant.clone(),
            recording_id: header.recording_id.clone(),
            user_id: header.user_id.clone().unwrap_or_default(),
            kind: kind_to_proto(header.kind) as i32,
            source: uri.map(companion_queue::proto::job::Source::Uri),
            filename: header.filename,
            ..Default::default()
        };
        if let Err(e) = self.queue.publish(&job).await {
            // Not queued: undo the submission so a retry of the call starts afresh instead of
            // finding a job that no worker will ever see.
            if let Err(undo) = self
                .store
                .delete_recording(&caller.tenant, &header.recording_id)
                .await
            {
                warn!(error = %undo, job_id, "cannot undo a submission that was not queued");
            }
            return Err(queue_status(e));
        }
        info!(recording_id = %header.recording_id, job_id, "recording queued");
        Ok(pb::SubmitRecordingResponse {
            job_id,
            created: true,
            status: pb::JobStatus::Queued as i32,
        })
    }

    async fn submit_bytes(
        &self,
        caller: &Caller,
        header: Header,
        bytes: Vec<u8>,
    ) -> Result<pb::SubmitRecordingResponse, Status> {
        let bytes = Arc::new(bytes);
        self.probe(bytes.clone(), &header.filename).await?;
        let bytes = Arc::try_unwrap(bytes).unwrap_or_else(|shared| (*shared).clone());
        let sha256: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let size = bytes.len() as u64;
        self.submit(caller, header, AudioSource::Inline(bytes), size, sha256)
            .await
    }

    /// The recording as the caller may see it: another tenant's, or another user's for a user
    /// token, is NOT_FOUND (its existence is not revealed).
    async fn visible(
        &self,
        caller: &Caller,
        recording_id: &str,
    ) -> Result<companion_store::RecordingView, Status> {
        let recording_id = check_id("recording_id", recording_id, true)?;
        let view = self
            .store
            .recording(&caller.tenant, &recording_id)
            .await
            .map_err(store_status)?;
        match view {
            Some(view)
                if caller.role != Role::User
                    || view.job.user_id.as_deref() == caller.user.as_deref() =>
            {
                Ok(view)
            }
            _ => Err(Status::not_found(format!("no recording {recording_id:?}"))),
        }
    }

    fn observe<T>(&self, method: &str, result: &Result<T, Status>) {
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.metrics.rpc(method, &format!("{code:?}"));
    }
}

/// The queue message for a stored job.
fn job_message(record: &companion_store::JobRecord) -> Job {
    Job {
        job_id: record.job_id.clone(),
        tenant_id: record.tenant_id.clone(),
        recording_id: record.recording_id.clone(),
        user_id: record.user_id.clone().unwrap_or_default(),
        kind: kind_to_proto(record.kind) as i32,
        source: record
            .source_uri
            .clone()
            .map(companion_queue::proto::job::Source::Uri),
        filename: record.filename.clone(),
        ..Default::default()
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::RecordingResult, Status>> + Send>>;

#[tonic::async_trait]
impl RecordingService for Recordings {
    async fn submit_recording(
        &self,
        request: Request<pb::SubmitRecordingRequest>,
    ) -> Result<Response<pb::SubmitRecordingResponse>, Status> {
        let result = async {
            let caller = caller(&request)?;
            caller.require(&[Role::Pbx, Role::Admin], "submit recordings")?;
            let req = request.into_inner();
            let header = check_header(&req.recording_id, &req.user_id, req.kind, &req.filename)?;
            match req.source {
                Some(pb::submit_recording_request::Source::Audio(bytes)) => {
                    self.submit_bytes(&caller, header, bytes).await
                }
                Some(pb::submit_recording_request::Source::Uri(uri)) => {
                    let size = self.check_uri(&uri, &header.filename).await?;
                    self.submit(&caller, header, AudioSource::Uri(uri), size, String::new())
                        .await
                }
                None => Err(Status::invalid_argument("a uri or the audio is required")),
            }
        }
        .await;
        self.observe("SubmitRecording", &result);
        result.map(Response::new)
    }

    async fn upload_recording(
        &self,
        request: Request<Streaming<pb::UploadRecordingRequest>>,
    ) -> Result<Response<pb::SubmitRecordingResponse>, Status> {
        let result = async {
            let caller = caller(&request)?;
            caller.require(&[Role::Pbx, Role::Admin], "upload recordings")?;
            let mut stream = request.into_inner();
            let header = match stream.message().await? {
                Some(pb::UploadRecordingRequest {
                    part: Some(pb::upload_recording_request::Part::Header(h)),
                }) => check_header(&h.recording_id, &h.user_id, h.kind, &h.filename)?,
                _ => {
                    return Err(Status::invalid_argument(
                        "the first message must be the header",
                    ));
                }
            };
            let mut bytes = Vec::new();
            while let Some(message) = stream.message().await? {
                match message.part {
                    Some(pb::upload_recording_request::Part::Chunk(chunk)) => {
                        if (bytes.len() + chunk.len()) as u64 > self.config.max_bytes {
                            return Err(Status::resource_exhausted(format!(
                                "the upload is over the limit of {} bytes",
                                self.config.max_bytes
                            )));
                        }
                        bytes.extend_from_slice(&chunk);
                    }
                    _ => {
                        return Err(Status::invalid_argument(
                            "only the first message may be a header",
                        ));
                    }
                }
            }
            self.submit_bytes(&caller, header, bytes).await
        }
        .await;
        self.observe("UploadRecording", &result);
        result.map(Response::new)
    }

    async fn get_result(
        &self,
        request: Request<pb::GetResultRequest>,
    ) -> Result<Response<pb::RecordingResult>, Status> {
        let result = async {
            let caller = caller(&request)?;
            let view = self
                .visible(&caller, &request.get_ref().recording_id)
                .await?;
            Ok(view_to_proto(&view))
        }
        .await;
        self.observe("GetResult", &result);
        result.map(Response::new)
    }

    async fn list_results(
        &self,
        request: Request<pb::ListResultsRequest>,
    ) -> Result<Response<pb::ListResultsResponse>, Status> {
        let result = async {
            let caller = caller(&request)?;
            let req = request.into_inner();
            let user = caller.user_scope(&req.user_id, false)?;
            let page_size = match req.page_size {
                0 => 20,
                n => n.min(100),
            };
            let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
            let (views, next) = self
                .store
                .list_recordings(&caller.tenant, user.as_deref(), page_size, token)
                .await
                .map_err(store_status)?;
            Ok(pb::ListResultsResponse {
                results: views.iter().map(view_to_proto).collect(),
                next_page_token: next.unwrap_or_default(),
            })
        }
        .await;
        self.observe("ListResults", &result);
        result.map(Response::new)
    }

    type WatchResultsStream = WatchStream;

    async fn watch_results(
        &self,
        request: Request<pb::WatchResultsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = caller(&request)?;
        let user = caller.user_scope(&request.get_ref().user_id, false)?;
        // Subscribe before answering, so nothing that finishes after the call is missed.
        let pattern = format!("{}.#", companion_queue::routing_word(&caller.tenant));
        let mut events = self
            .queue
            .subscribe_results(&pattern)
            .await
            .map_err(queue_status)?;
        self.metrics.rpc("WatchResults", "Ok");
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let store = self.store.clone();
        let mut closing = self.closing.clone();
        tokio::spawn(async move {
            loop {
                let event: ResultReady = tokio::select! {
                    () = tx.closed() => break,
                    _ = closing.wait_for(|closing| *closing) => break,
                    next = events.next() => match next {
                        None => break,
                        Some(Ok(event)) => event,
                        Some(Err(e)) => {
                            warn!(error = %e, "result events missed by a watcher");
                            continue;
                        }
                    },
                };
                // The routing key folds some characters; compare the real ids.
                if event.tenant_id != caller.tenant
                    || user.as_deref().is_some_and(|u| u != event.user_id)
                {
                    continue;
                }
                let message = match store.recording(&caller.tenant, &event.recording_id).await {
                    Ok(Some(view)) => view_to_proto(&view),
                    // Deleted since: nothing to show.
                    Ok(None) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(store_status(e))).await;
                        break;
                    }
                };
                if tx.send(Ok(message)).await.is_err() {
                    break;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream) as WatchStream))
    }

    async fn reprocess(
        &self,
        request: Request<pb::ReprocessRequest>,
    ) -> Result<Response<pb::SubmitRecordingResponse>, Status> {
        let result = async {
            let caller = caller(&request)?;
            caller.require(&[Role::Pbx, Role::Admin], "reprocess recordings")?;
            let view = self
                .visible(&caller, &request.get_ref().recording_id)
                .await?;
            let recording_id = view.job.recording_id.clone();
            let job_id = new_job_id(&caller.tenant, &recording_id);
            let created = self
                .store
                .reprocess(&caller.tenant, &recording_id, &job_id)
                .await
                .map_err(store_status)?
                .ok_or_else(|| Status::not_found(format!("no recording {recording_id:?}")))?;
            let job = Job {
                job_id: created.clone(),
                ..job_message(&view.job)
            };
            if let Err(e) = self.queue.publish(&job).await {
                let report = ErrorReport {
                    kind: ErrorKind::Store,
                    message: "the job could not be queued".into(),
                };
                if let Err(e) = self.store.finish(&created, Outcome::Failed(&report)).await {
                    warn!(error = %e, "cannot mark an unqueued reprocessing job failed");
                }
                return Err(queue_status(e));
            }
            Ok(pb::SubmitRecordingResponse {
                job_id: created,
                created: true,
                status: pb::JobStatus::Queued as i32,
            })
        }
        .await;
        self.observe("Reprocess", &result);
        result.map(Response::new)
    }

    async fn delete_recording(
        &self,
        request: Request<pb::DeleteRecordingRequest>,
    ) -> Result<Response<pb::DeleteRecordingResponse>, Status> {
        let result = async {
            let caller = caller(&request)?;
            caller.require(&[Role::Pbx, Role::Admin], "delete recordings")?;
            let recording_id = check_id("recording_id", &request.get_ref().recording_id, true)?;
            match self
                .store
                .delete_recording(&caller.tenant, &recording_id)
                .await
                .map_err(store_status)?
            {
                Some(_) => {
                    info!(recording_id, "recording deleted");
                    Ok(pb::DeleteRecordingResponse {})
                }
                None => Err(Status::not_found(format!("no recording {recording_id:?}"))),
            }
        }
        .await;
        self.observe("DeleteRecording", &result);
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_unique() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| new_job_id("acme", "r1")).collect();
        assert_eq!(ids.len(), 1000);
        assert!(
            ids.iter()
                .all(|id| id.starts_with("job_") && id.len() == 28)
        );
    }

    #[test]
    fn headers_are_checked() {
        let voicemail = pb::RecordingKind::Voicemail as i32;
        assert!(check_header("r1", "", voicemail, "a.wav").is_ok());
        let code = |r: Result<Header, Status>| r.err().map(|s| s.code());
        assert_eq!(
            code(check_header("", "", voicemail, "")),
            Some(tonic::Code::InvalidArgument)
        );
        assert_eq!(
            code(check_header("r1", "", 0, "")),
            Some(tonic::Code::InvalidArgument)
        );
        assert_eq!(
            code(check_header("r1", "", 7, "")),
            Some(tonic::Code::InvalidArgument)
        );
        assert_eq!(
            code(check_header(&"x".repeat(201), "", voicemail, "")),
            Some(tonic::Code::InvalidArgument)
        );
        assert_eq!(
            code(check_header("r\n1", "", voicemail, "")),
            Some(tonic::Code::InvalidArgument)
        );
    }
}
