//! `companion`: voicemail and call recordings to transcripts, locally.

mod bench;
mod bench_queue;
mod eval;
mod eval_language;
mod eval_summary;
mod models_cmd;
mod output;
mod policy_cmd;
mod process;
mod service_cmd;
mod summary_cmd;
mod text_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Parser)]
#[command(
    name = "companion",
    version,
    about = "Voicemail and call recordings to transcripts, locally"
)]
struct Cli {
    /// Model cache directory.
    #[arg(long, global = true, env = "COMPANION_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, env = "COMPANION_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Export traces over OTLP (HTTP/protobuf) to this endpoint, e.g.
    /// http://otel-collector:4318/v1/traces.
    #[arg(long, global = true, env = "COMPANION_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Decode, find speech, transcribe and identify the spoken language of each file.
    Transcribe(process::ProcessArgs),
    /// Run the whole pipeline on each file (speech, then the tasks, summary, priority and
    /// translation its user's policy allows) and store the results.
    Process(process::ProcessArgs),
    /// Fetch, list, verify and convert models.
    #[command(subcommand)]
    Models(models_cmd::ModelsCommand),
    #[command(flatten)]
    Admin(policy_cmd::AdminCommand),
    /// Translate text (a file or standard input) with the local language model.
    Translate(text_cmd::TranslateArgs),
    /// Summarize a team SMS thread for an agent taking it over.
    SummarizeSms(text_cmd::SummarizeSmsArgs),
    /// A call's summary versions: show them, or store an edit as a new version.
    #[command(subcommand)]
    Summary(summary_cmd::SummaryCommand),
    /// Score a message against priority topics, with every topic's score.
    Priority(text_cmd::PriorityArgs),
    /// The gRPC API (with --embedded: plus a worker, on SQLite, without a broker).
    Serve(service_cmd::ServeArgs),
    /// Take jobs off the queue and process them (models loaded once).
    Worker(service_cmd::WorkerArgs),
    /// Throughput of the API, queue and store with a no-op processor in place of the models.
    BenchQueue(bench_queue::BenchQueueArgs),
    /// Speed and memory, side by side with faster-whisper and ffmpeg: asr, process, llm,
    /// decode, load.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Bring the store's schema up to date.
    Migrate(service_cmd::MigrateArgs),
    /// Evaluate on a labelled set: word error rates (speech MANIFEST.tsv), or language
    /// accuracy, fact recall and topic precision/recall (voicemail intelligence sets).
    Eval(eval::EvalArgs),
}

/// Logs on stderr (text or JSON lines) and, when `otlp_endpoint` is given, spans exported over
/// OTLP (HTTP/protobuf, e.g. http://collector:4318/v1/traces). Returns the tracer provider to
/// flush at exit.
fn init_tracing(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = EnvFilter::try_from_env("COMPANION_LOG")
        .unwrap_or_else(|_| EnvFilter::new("warn,whisper_rs=off"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let provider = otlp_endpoint.and_then(|endpoint| {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_timeout(std::time::Duration::from_secs(5))
            .with_headers(Default::default())
            .build();
        match exporter {
            Ok(exporter) => Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name("companion")
                            .build(),
                    )
                    .build(),
            ),
            Err(e) => {
                eprintln!("companion: OTLP export off: {e}");
                None
            }
        }
    });
    let otel = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider;
        tracing_opentelemetry::layer().with_tracer(provider.tracer("companion"))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    provider
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let tracer = init_tracing(cli.log_format, cli.otlp_endpoint.as_deref());
    let models_dir = cli
        .models_dir
        .unwrap_or_else(companion_models::ModelCache::default_dir);
    let outcome = match cli.command {
        Command::Transcribe(args) => process::run(args, process::Mode::Transcribe, &models_dir),
        Command::Process(args) => process::run(args, process::Mode::Process, &models_dir),
        Command::Models(cmd) => models_cmd::run(cmd, &models_dir).map(|()| ExitCode::SUCCESS),
        Command::Admin(cmd) => policy_cmd::run(cmd).map(|()| ExitCode::SUCCESS),
        Command::Eval(args) => eval::run(args, &models_dir),
        Command::Serve(args) => service_cmd::serve(args, &models_dir).map(|()| ExitCode::SUCCESS),
        Command::Worker(args) => service_cmd::worker(args, &models_dir).map(|()| ExitCode::SUCCESS),
        Command::BenchQueue(args) => bench_queue::run(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(cmd) => bench::run(cmd, &models_dir).map(|()| ExitCode::SUCCESS),
        Command::Migrate(args) => service_cmd::migrate(args).map(|()| ExitCode::SUCCESS),
        Command::Translate(args) => {
            text_cmd::translate(args, &models_dir).map(|()| ExitCode::SUCCESS)
        }
        Command::Summary(cmd) => summary_cmd::run(cmd).map(|()| ExitCode::SUCCESS),
        Command::Priority(args) => {
            text_cmd::priority(args, &models_dir).map(|()| ExitCode::SUCCESS)
        }
        Command::SummarizeSms(args) => {
            text_cmd::summarize_sms(args, &models_dir).map(|()| ExitCode::SUCCESS)
        }
    };
    if let Some(tracer) = tracer
        && let Err(e) = tracer.shutdown()
    {
        eprintln!("companion: OTLP export: {e}");
    }
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("companion: {err:#}");
            ExitCode::from(2)
        }
    }
}
