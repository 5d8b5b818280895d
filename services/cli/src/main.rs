//! `companion`: voicemail and call recordings to transcripts, locally.

mod bench_queue;
mod eval;
mod eval_language;
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
use tracing_subscriber::EnvFilter;

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
    /// Bring the store's schema up to date.
    Migrate(service_cmd::MigrateArgs),
    /// Evaluate on a labelled set: word error rates (speech MANIFEST.tsv), or language
    /// accuracy, fact recall and topic precision/recall (voicemail intelligence sets).
    Eval(eval::EvalArgs),
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("COMPANION_LOG")
        .unwrap_or_else(|_| EnvFilter::new("warn,whisper_rs=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
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
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("companion: {err:#}");
            ExitCode::from(2)
        }
    }
}
