//! The service end to end, as a PBX and an app use it: `companion serve` and `companion worker`
//! processes against the machine's real RabbitMQ and PostgreSQL, with the real models.
//!
//! Every test gets its own PostgreSQL database and its own queue names, and the tests of this
//! file run one at a time (one of them restarts RabbitMQ).

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use companion_proto::v1 as pb;
use companion_proto::v1::policy_service_client::PolicyServiceClient;
use companion_proto::v1::recording_service_client::RecordingServiceClient;
use companion_queue::{AmqpConfig, AmqpQueue, JobQueue};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use support::{file, speak, tool, workdir};

const PBX: &str = "pbx-token-acme-0123456789";
const OTHER_PBX: &str = "pbx-token-globex-012345678";
const USER: &str = "user-token-acme-u1-0123456";
const ADMIN: &str = "admin-token-acme-01234567";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn amqp_url() -> String {
    std::env::var("COMPANION_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn postgres_admin_url() -> String {
    std::env::var("COMPANION_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// A fresh PostgreSQL database; its URL.
fn fresh_database() -> String {
    let name = unique("companion_svc_");
    let out = Command::new("psql")
        .args([&postgres_admin_url(), "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("psql is needed by the service tests (apt-get install postgresql-client)");
    assert!(
        out.status.success(),
        "PostgreSQL is needed by the service tests (scripts/services starts it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = postgres_admin_url();
    let base = &admin[..admin.rfind('/').unwrap()];
    format!("{base}/{name}")
}

/// `N` distinct ports that were free: the listeners are held until all are chosen, so the
/// system cannot hand out one port twice.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// A `companion` process, killed when dropped; its stderr goes to a log file shown on failure.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(name: &str, args: &[String]) -> Process {
        let log = workdir().join(format!("{}.log", unique(name)));
        let child = Command::new(env!("CARGO_BIN_EXE_companion"))
            .args(args)
            .env("COMPANION_LOG", "info,whisper_rs=off")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start companion");
        Process { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        tool(
            "kill",
            &[&format!("-{signal}"), &self.child.id().to_string()],
        );
    }

    /// Waits for the process to exit by itself.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "process did not exit within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One deployment: a database, queue names, a tokens file, an API and workers.
struct Stack {
    db: String,
    prefix: String,
    tokens: PathBuf,
    audio_root: PathBuf,
    port: u16,
    metrics_port: u16,
    api: Option<Process>,
}

impl Stack {
    fn new() -> Stack {
        let tokens = file(
            &format!("{}.tsv", unique("tokens")),
            format!(
                "# token\ttenant\trole\tuser\n{PBX}\tacme\tpbx\n{OTHER_PBX}\tglobex\tpbx\n{USER}\tacme\tuser\tu1\n{ADMIN}\tacme\tadmin\n"
            )
            .as_bytes(),
        );
        let audio_root = workdir().join(unique("root"));
        std::fs::create_dir_all(&audio_root).unwrap();
        let [port, metrics_port] = free_ports();
        Stack {
            db: fresh_database(),
            prefix: unique("companion_t"),
            tokens,
            audio_root,
            port,
            metrics_port,
            api: None,
        }
    }

    fn common(&self) -> Vec<String> {
        vec![
            "--db".into(),
            self.db.clone(),
            "--amqp".into(),
            amqp_url(),
            "--queue-prefix".into(),
            self.prefix.clone(),
            "--max-attempts".into(),
            "2".into(),
            "--retry-delay-ms".into(),
            "300".into(),
            "--audio-root".into(),
            self.audio_root.display().to_string(),
        ]
    }

    async fn start_api(&mut self) {
        let mut args = vec!["serve".to_string()];
        args.extend(self.common());
        args.extend([
            "--listen".into(),
            format!("127.0.0.1:{}", self.port),
            "--tokens".into(),
            self.tokens.display().to_string(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", self.metrics_port),
            "--max-bytes".into(),
            "2000000".into(),
        ]);
        self.api = Some(Process::start("api", &args));
        self.wait_for_api().await;
    }

    fn start_worker(&self) -> Process {
        let mut args = vec!["worker".to_string()];
        args.extend(self.common());
        args.extend([
            "--concurrency".into(),
            "1".into(),
            "--drain-timeout-s".into(),
            "120".into(),
        ]);
        Process::start("worker", &args)
    }

    async fn wait_for_api(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(api) = self.api.as_mut()
                && let Some(status) = api.child.try_wait().unwrap()
            {
                panic!(
                    "the API exited ({status}) before it answered:\n{}",
                    api.log()
                );
            }
            if let Ok(mut client) = self.client().await {
                let probe = client
                    .get_result(authed(
                        pb::GetResultRequest {
                            recording_id: "probe".into(),
                        },
                        PBX,
                    ))
                    .await;
                if probe.err().map(|s| s.code()) == Some(Code::NotFound) {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the API did not come up:\n{}",
                self.api.as_ref().map(Process::log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
            .unwrap()
            .connect()
            .await
    }

    async fn client(&self) -> Result<RecordingServiceClient<Channel>, tonic::transport::Error> {
        Ok(RecordingServiceClient::new(self.channel().await?))
    }

    async fn amqp(&self) -> AmqpQueue {
        let mut config = AmqpConfig::new(amqp_url());
        config.prefix = self.prefix.clone();
        AmqpQueue::connect(config).await.expect("RabbitMQ")
    }

    /// Polls GetResult until `done` holds for it.
    async fn wait_until(
        &self,
        recording_id: &str,
        limit: Duration,
        done: impl Fn(&pb::RecordingResult) -> bool,
        workers: &[&Process],
    ) -> pb::RecordingResult {
        let mut client = self.client().await.unwrap();
        let started = Instant::now();
        loop {
            let result = client
                .get_result(authed(
                    pb::GetResultRequest {
                        recording_id: recording_id.into(),
                    },
                    PBX,
                ))
                .await
                .unwrap()
                .into_inner();
            if done(&result) {
                return result;
            }
            assert!(
                started.elapsed() < limit,
                "{recording_id} is still {:?} after {limit:?}: {result:?}\nworkers:\n{}",
                status(&result),
                workers
                    .iter()
                    .map(|w| w.log())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args([
                "-sf",
                &format!("http://127.0.0.1:{}/metrics", self.metrics_port),
            ])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn status(result: &pb::RecordingResult) -> pb::JobStatus {
    pb::JobStatus::try_from(result.status).unwrap()
}

fn finished(result: &pb::RecordingResult) -> bool {
    matches!(status(result), pb::JobStatus::Done | pb::JobStatus::Failed)
}

fn submit(recording_id: &str, user: &str, audio: &Path) -> pb::SubmitRecordingRequest {
    pb::SubmitRecordingRequest {
        recording_id: recording_id.into(),
        user_id: user.into(),
        kind: pb::RecordingKind::Voicemail as i32,
        filename: audio.file_name().unwrap().to_string_lossy().into_owned(),
        source: Some(pb::submit_recording_request::Source::Audio(
            std::fs::read(audio).unwrap(),
        )),
    }
}

fn voicemail() -> PathBuf {
    speak(
        "svc_voicemail",
        "en+f2",
        "Hi, this is Anna from the billing team. Please call me back about your invoice.",
    )
}

fn silence(name: &str, seconds: &str) -> PathBuf {
    let path = workdir().join(name);
    if !path.exists() {
        tool(
            "sox",
            &[
                "-n",
                "-r",
                "8000",
                "-c",
                "1",
                path.to_str().unwrap(),
                "trim",
                "0",
                seconds,
            ],
        );
    }
    path
}

/// A FLAC file whose header is intact and whose audio frames are garbage: it passes the API's
/// header check and fails when a worker decodes it.
fn corrupt_flac() -> PathBuf {
    let good = workdir().join("svc_good.flac");
    tool(
        "sox",
        &[voicemail().to_str().unwrap(), good.to_str().unwrap()],
    );
    let mut bytes = std::fs::read(&good).unwrap();
    let header = 8 + 34 + 200.min(bytes.len() / 4);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for b in bytes.iter_mut().skip(header) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    file("svc_corrupt.flac", &bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_voicemail_goes_through_api_queue_worker_and_store_to_every_client() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::new();
    stack.start_api().await;
    let worker = stack.start_worker();
    // The test listens for the AMQP result event like an app backend would.
    let amqp = stack.amqp().await;
    let mut events = amqp.subscribe_results("acme.#").await.unwrap();

    // A client nobody here wrote: Python grpcio stubs generated from proto/.
    let out = Command::new("scripts/python-client")
        .current_dir(env!("CARGO_MANIFEST_DIR").to_string() + "/../..")
        .args([
            "--target",
            &format!("127.0.0.1:{}", stack.port),
            "--token",
            PBX,
            "--audio",
            voicemail().to_str().unwrap(),
            "--recording-id",
            "vm-python-1",
            "--user-id",
            "u1",
            "--timeout",
            "600",
        ])
        .output()
        .expect("scripts/python-client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {stdout}\n{}\nworker:\n{}",
        String::from_utf8_lossy(&out.stderr),
        worker.log()
    );
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["health"], "SERVING", "{line}");
    assert_eq!(line["status"], "DONE", "{line}\n{}", worker.log());
    assert_eq!(line["watch_status"], "DONE", "{line}");
    assert_eq!(line["duplicate_job_id"], line["job_id"], "{line}");
    assert_eq!(line["unauthenticated"], true, "{line}");
    let transcript = line["transcript"].as_str().unwrap().to_lowercase();
    assert!(
        transcript.contains("billing") && transcript.contains("invoice"),
        "{transcript}"
    );

    // The AMQP event arrived with the routing key's ids.
    let event = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("a result event on the topic exchange")
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            event.recording_id.as_str(),
            event.user_id.as_str(),
            event.status
        ),
        ("vm-python-1", "u1", pb::JobStatus::Done as i32)
    );

    // The stored result carries every output of the pipeline.
    let mut client = stack.client().await.unwrap();
    let result = client
        .get_result(authed(
            pb::GetResultRequest {
                recording_id: "vm-python-1".into(),
            },
            USER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result.language, "en");
    assert_eq!(result.version, 1);
    assert!(result.has_tasks, "{result:?}");
    assert!(!result.result_json.is_empty());
    assert!(result.timings_ms.contains_key("asr"), "{result:?}");
    let listed = client
        .list_results(authed(pb::ListResultsRequest::default(), USER))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.results.len(), 1);

    // Reprocessing makes version 2; deleting removes every output.
    let again = client
        .reprocess(authed(
            pb::ReprocessRequest {
                recording_id: "vm-python-1".into(),
            },
            PBX,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.job_id, result.job_id);
    let second = stack
        .wait_until(
            "vm-python-1",
            Duration::from_secs(600),
            |r| r.job_id == again.job_id && finished(r),
            &[&worker],
        )
        .await;
    assert_eq!((status(&second), second.version), (pb::JobStatus::Done, 2));

    let metrics = stack.metrics();
    assert!(
        metrics.contains("companion_jobs{status=\"done\"} 2"),
        "{metrics}"
    );

    client
        .delete_recording(authed(
            pb::DeleteRecordingRequest {
                recording_id: "vm-python-1".into(),
            },
            PBX,
        ))
        .await
        .unwrap();
    let gone = client
        .get_result(authed(
            pb::GetResultRequest {
                recording_id: "vm-python-1".into(),
            },
            PBX,
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_see_only_what_their_token_allows() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::new();
    stack.start_api().await;
    let mut client = stack.client().await.unwrap();
    let audio = silence("svc_silence_1s.wav", "1");

    // Health and reflection answer without a token (probes and tools).
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(stack.channel().await.unwrap());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut reflection = ServerReflectionClient::new(stack.channel().await.unwrap());
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![list]))
        .await
        .unwrap()
        .into_inner();
    let services: Vec<String> = match answers.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("{other:?}"),
    };
    for name in [
        "companion.v1.RecordingService",
        "companion.v1.PolicyService",
        "companion.v1.UserService",
        "companion.v1.TextService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|s| s == name),
            "{name} not in {services:?}"
        );
    }

    // No token, a wrong token.
    let bare = client
        .submit_recording(Request::new(submit("r1", "u1", &audio)))
        .await
        .unwrap_err();
    assert_eq!(bare.code(), Code::Unauthenticated);
    let wrong = client
        .submit_recording(authed(submit("r1", "u1", &audio), "not-a-token-at-all-000"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);

    // Submitting twice gives the same job.
    let first = client
        .submit_recording(authed(submit("r1", "u1", &audio), PBX))
        .await
        .unwrap()
        .into_inner();
    let second = client
        .submit_recording(authed(submit("r1", "u1", &audio), PBX))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created && !second.created);
    assert_eq!(first.job_id, second.job_id);

    // Another tenant's PBX does not see acme's recording; another user neither.
    let get = |token: &str| {
        authed(
            pb::GetResultRequest {
                recording_id: "r1".into(),
            },
            token,
        )
    };
    assert_eq!(
        client.get_result(get(OTHER_PBX)).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(client.get_result(get(USER)).await.is_ok());
    assert_eq!(
        client
            .delete_recording(authed(
                pb::DeleteRecordingRequest {
                    recording_id: "r1".into()
                },
                OTHER_PBX
            ))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // The same id in another tenant is another recording.
    let globex = client
        .submit_recording(authed(submit("r1", "u1", &audio), OTHER_PBX))
        .await
        .unwrap()
        .into_inner();
    assert!(globex.created);
    assert_ne!(globex.job_id, first.job_id);

    // Users do not submit, nor list someone else's results.
    assert_eq!(
        client
            .submit_recording(authed(submit("r2", "u1", &audio), USER))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        client
            .list_results(authed(
                pb::ListResultsRequest {
                    user_id: "u2".into(),
                    ..Default::default()
                },
                USER
            ))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    // Only admins write policy.
    let mut policy = PolicyServiceClient::new(stack.channel().await.unwrap());
    let entry = pb::PolicyEntry {
        level: pb::PolicyLevel::Account as i32,
        scope_id: "main".into(),
        setting: "voicemail_tasks".into(),
        value: "off".into(),
        locked: true,
    };
    for token in [USER, PBX] {
        let denied = policy
            .set_policy(authed(
                pb::SetPolicyRequest {
                    entry: Some(entry.clone()),
                },
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{token}");
    }
    let set = policy
        .set_policy(authed(
            pb::SetPolicyRequest {
                entry: Some(entry.clone()),
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.value, "off");
    let bad_value = policy
        .set_policy(authed(
            pb::SetPolicyRequest {
                entry: Some(pb::PolicyEntry {
                    value: "maybe".into(),
                    ..entry
                }),
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_value.code(), Code::InvalidArgument);

    // Sources: file:// outside the root, other schemes, too large, not audio.
    let outside = file("svc_outside.wav", &std::fs::read(&audio).unwrap());
    let by_uri = |uri: String| pb::SubmitRecordingRequest {
        recording_id: unique("u"),
        kind: pb::RecordingKind::Voicemail as i32,
        source: Some(pb::submit_recording_request::Source::Uri(uri)),
        ..Default::default()
    };
    for uri in [
        format!("file://{}", outside.display()),
        format!(
            "file://{}/../{}",
            stack.audio_root.display(),
            outside.file_name().unwrap().to_string_lossy()
        ),
        "http://example.com/a.wav".to_string(),
    ] {
        let refused = client
            .submit_recording(authed(by_uri(uri.clone()), PBX))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{uri}: {refused:?}");
    }
    let inside = stack.audio_root.join("inside.wav");
    std::fs::copy(&audio, &inside).unwrap();
    assert!(
        client
            .submit_recording(authed(by_uri(format!("file://{}", inside.display())), PBX))
            .await
            .unwrap()
            .into_inner()
            .created
    );
    let big = silence("svc_silence_100s.wav", "100");
    let too_big = client
        .submit_recording(authed(submit("big", "u1", &big), PBX))
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::ResourceExhausted, "{too_big:?}");
    // Large files stream in chunks; the limit holds there too.
    let upload = |id: &str, bytes: Vec<u8>| {
        let mut parts = vec![pb::UploadRecordingRequest {
            part: Some(pb::upload_recording_request::Part::Header(
                pb::UploadHeader {
                    recording_id: id.into(),
                    user_id: "u1".into(),
                    kind: pb::RecordingKind::Voicemail as i32,
                    filename: "upload.wav".into(),
                },
            )),
        }];
        parts.extend(bytes.chunks(64 * 1024).map(|c| pb::UploadRecordingRequest {
            part: Some(pb::upload_recording_request::Part::Chunk(c.to_vec())),
        }));
        authed(tokio_stream::iter(parts), PBX)
    };
    let uploaded = client
        .upload_recording(upload("uploaded", std::fs::read(&audio).unwrap()))
        .await
        .unwrap()
        .into_inner();
    assert!(uploaded.created);
    let over = client
        .upload_recording(upload("uploaded-big", std::fs::read(&big).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    let text = file("svc_text.wav", b"this is not audio at all, just some text");
    let not_audio = client
        .submit_recording(authed(submit("text", "u1", &text), PBX))
        .await
        .unwrap_err();
    assert_eq!(not_audio.code(), Code::InvalidArgument);
    assert!(not_audio.message().contains("audio"), "{not_audio:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_and_crashes_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::new();
    stack.start_api().await;
    let mut client = stack.client().await.unwrap();

    // A worker killed mid-job: the job goes to the next worker and is stored once.
    let mut first = stack.start_worker();
    client
        .submit_recording(authed(submit("vm-kill", "u1", &voicemail()), PBX))
        .await
        .unwrap();
    stack
        .wait_until(
            "vm-kill",
            Duration::from_secs(300),
            |r| status(r) == pb::JobStatus::Processing,
            &[&first],
        )
        .await;
    first.signal("KILL");
    first.wait(Duration::from_secs(10));
    let second = stack.start_worker();
    let done = stack
        .wait_until("vm-kill", Duration::from_secs(600), finished, &[&second])
        .await;
    assert_eq!(status(&done), pb::JobStatus::Done, "{done:?}");
    assert_eq!((done.attempts, done.version), (2, 1), "{done:?}");

    // SIGTERM drains: the job in flight finishes before the worker exits.
    client
        .submit_recording(authed(submit("vm-drain", "u1", &voicemail()), PBX))
        .await
        .unwrap();
    let mut second = second;
    stack
        .wait_until(
            "vm-drain",
            Duration::from_secs(300),
            |r| status(r) == pb::JobStatus::Processing,
            &[&second],
        )
        .await;
    second.signal("TERM");
    let exit = second.wait(Duration::from_secs(600));
    assert!(exit.success(), "{exit:?}\n{}", second.log());
    let drained = stack
        .wait_until("vm-drain", Duration::from_secs(5), finished, &[&second])
        .await;
    assert_eq!(
        (status(&drained), drained.attempts),
        (pb::JobStatus::Done, 1)
    );

    // A corrupt recording fails with its reason after its retries and is dead-lettered; the
    // worker goes on with the next job.
    let worker = stack.start_worker();
    client
        .submit_recording(authed(submit("corrupt", "u1", &corrupt_flac()), PBX))
        .await
        .expect("the header is intact, so the API accepts it");
    client
        .submit_recording(authed(
            submit("after-corrupt", "", &silence("svc_silence_2s.wav", "2")),
            PBX,
        ))
        .await
        .unwrap();
    let failed = stack
        .wait_until("corrupt", Duration::from_secs(120), finished, &[&worker])
        .await;
    assert_eq!(status(&failed), pb::JobStatus::Failed, "{failed:?}");
    assert_eq!(failed.attempts, 2, "{failed:?}");
    let failure = failed.failure.unwrap();
    assert!(
        ["corrupt_audio", "empty_audio"].contains(&failure.kind.as_str()),
        "{failure:?}"
    );
    assert!(!failure.message.is_empty());
    let next = stack
        .wait_until(
            "after-corrupt",
            Duration::from_secs(120),
            finished,
            &[&worker],
        )
        .await;
    assert_eq!(status(&next), pb::JobStatus::Done, "{next:?}");
    let amqp = stack.amqp().await;
    let dead = amqp.take_dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].job.as_ref().unwrap().recording_id, "corrupt");
    assert!(
        dead[0].reason.contains("gave up after 2 attempts"),
        "{}",
        dead[0].reason
    );

    // RabbitMQ restarts in the middle of a batch: workers reconnect and every job finishes.
    let ids: Vec<String> = (0..6).map(|i| format!("batch-{i}")).collect();
    let quiet = silence("svc_silence_3s.wav", "3");
    for id in &ids[..3] {
        client
            .submit_recording(authed(submit(id, "", &quiet), PBX))
            .await
            .unwrap();
    }
    tool("rabbitmqctl", &["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    tool("rabbitmqctl", &["start_app"]);
    tool("rabbitmqctl", &["await_startup"]);
    // The API reconnects too: submissions during and after the restart are accepted.
    for id in &ids[3..] {
        let started = Instant::now();
        loop {
            match client
                .submit_recording(authed(submit(id, "", &quiet), PBX))
                .await
            {
                Ok(_) => break,
                Err(status) if status.code() == Code::Unavailable => {
                    assert!(started.elapsed() < Duration::from_secs(90), "{status:?}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(status) => panic!("{status:?}"),
            }
        }
    }
    for id in &ids {
        let result = stack
            .wait_until(id, Duration::from_secs(180), finished, &[&worker])
            .await;
        assert_eq!(status(&result), pb::JobStatus::Done, "{id}: {result:?}");
        assert_eq!(result.version, 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_embedded_runs_the_whole_api_without_a_broker() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = file(
        "svc_embedded_tokens.tsv",
        format!("{PBX}\tacme\tpbx\n").as_bytes(),
    );
    let [port] = free_ports();
    let _server = Process::start(
        "embedded",
        &[
            "serve".into(),
            "--embedded".into(),
            "--db".into(),
            dir.path().join("companion.db").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--tokens".into(),
            tokens.display().to_string(),
        ],
    );
    let mut stack = Stack {
        db: String::new(),
        prefix: String::new(),
        tokens,
        audio_root: dir.path().to_path_buf(),
        port,
        metrics_port: 0,
        api: None,
    };
    stack.wait_for_api().await;
    let mut client = stack.client().await.unwrap();
    let mut watch = client
        .watch_results(authed(pb::WatchResultsRequest::default(), PBX))
        .await
        .unwrap()
        .into_inner();
    client
        .submit_recording(authed(submit("vm-embedded", "u1", &voicemail()), PBX))
        .await
        .unwrap();
    let watched = tokio::time::timeout(Duration::from_secs(600), watch.message())
        .await
        .expect("a watched result")
        .unwrap()
        .unwrap();
    assert_eq!(watched.recording_id, "vm-embedded");
    assert_eq!(status(&watched), pb::JobStatus::Done, "{watched:?}");
    assert!(
        watched
            .transcript
            .unwrap()
            .text
            .to_lowercase()
            .contains("invoice")
    );
}

/// A one-request OTLP/HTTP collector: returns the path and body of the first POST.
fn otlp_collector() -> (u16, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string();
            let _ = tx.send((path, body));
        }
    });
    (port, rx)
}

#[test]
fn traces_are_exported_over_otlp() {
    let (port, received) = otlp_collector();
    let tone = workdir().join("svc_tone.wav");
    tool(
        "sox",
        &[
            "-n",
            "-r",
            "16000",
            "-c",
            "1",
            tone.to_str().unwrap(),
            "synth",
            "1",
            "sine",
            "440",
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_companion"))
        .args([
            "transcribe",
            "--asr-model",
            &support::asr_model(),
            "--db",
            workdir().join("otlp.db").to_str().unwrap(),
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{port}/v1/traces"),
            tone.to_str().unwrap(),
        ])
        .env("COMPANION_LOG", "info")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (path, body) = received
        .recv_timeout(Duration::from_secs(30))
        .expect("spans exported at exit");
    assert_eq!(path, "/v1/traces");
    // The protobuf carries the pipeline's span names and the service name.
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(b"stage") && contains(b"companion"),
        "{} bytes",
        body.len()
    );
}
